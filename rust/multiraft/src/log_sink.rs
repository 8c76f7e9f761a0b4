//! The durability seam: what the engine writes to the node's one shared log, and how a group's
//! state is rebuilt from it. `LogSink` is implemented over `nodedb-wal` (see `wal_sink.rs`) and
//! in memory (`MemLogSink`, for tests and for simulating crashes: unsynced records are lost).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use nodedb_wal::SpaceStatus;

use raft::prelude::{ConfState, Entry, HardState, SnapshotMetadata};

use crate::codec::{decode_pb, encode_pb, Reader, Writer};
use crate::error::{DecodeError, SinkError};
use crate::ids::GroupId;
use crate::snapshot::SnapshotDescriptor;
use crate::storage::GroupStorage;

/// Payload version of a `SnapshotMark` that records its file's descriptor.
const MARK_WITH_FILE_VERSION: u8 = 2;

/// What a log record holds. Stable numbers: they are on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// One raft entry (protobuf); `index` = the entry's index.
    Entry = 1,
    /// The group's hard state (protobuf); `index` = its commit index.
    HardState = 2,
    /// The group's conf state after an applied conf change (protobuf); `index` = that entry.
    ConfState = 3,
    /// A snapshot covering the log through `index` (SnapshotMetadata protobuf): entries at or
    /// below it are dead and the log may drop them.
    SnapshotMark = 4,
    /// The group was created here; payload = `GroupMeta`.
    GroupCreated = 5,
    /// The group was removed from this node: forget every earlier record of it.
    GroupRemoved = 6,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Result<RecordKind, DecodeError> {
        Ok(match v {
            1 => RecordKind::Entry,
            2 => RecordKind::HardState,
            3 => RecordKind::ConfState,
            4 => RecordKind::SnapshotMark,
            5 => RecordKind::GroupCreated,
            6 => RecordKind::GroupRemoved,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "log record kind",
                    tag,
                })
            }
        })
    }
}

/// One record of the shared log: the shape of a `nodedb-wal` record.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    pub group: GroupId,
    pub kind: RecordKind,
    pub index: u64,
    pub payload: Vec<u8>,
}

impl LogRecord {
    pub fn entry(group: GroupId, e: &Entry) -> Self {
        LogRecord {
            group,
            kind: RecordKind::Entry,
            index: e.index,
            payload: encode_pb(e),
        }
    }
    pub fn hard_state(group: GroupId, hs: &HardState) -> Self {
        LogRecord {
            group,
            kind: RecordKind::HardState,
            index: hs.commit,
            payload: encode_pb(hs),
        }
    }
    pub fn conf_state(group: GroupId, index: u64, cs: &ConfState) -> Self {
        LogRecord {
            group,
            kind: RecordKind::ConfState,
            index,
            payload: encode_pb(cs),
        }
    }
    /// Carries the group's `GroupMeta` too: once the log drops records below the snapshot
    /// (including `GroupCreated`), the mark alone re-creates the group on replay. And the
    /// snapshot file's size and checksum, so a restart verifies the file against what was
    /// written rather than believing whatever is on disk (payload version 2; version 1, written
    /// before, has no descriptor and is still read).
    pub fn snapshot_mark(
        group: GroupId,
        gm: GroupMeta,
        meta: &SnapshotMetadata,
        file: &SnapshotDescriptor,
    ) -> Self {
        let mut w = Writer::with_capacity(18);
        w.u8(MARK_WITH_FILE_VERSION);
        w.u8(gm.sm_kind);
        w.u64(file.total_bytes);
        w.u64(file.checksum);
        let mut payload = w.buf;
        payload.extend_from_slice(&encode_pb(meta));
        LogRecord {
            group,
            kind: RecordKind::SnapshotMark,
            index: meta.index,
            payload,
        }
    }
    pub fn group_created(group: GroupId, gm: GroupMeta, cs: &ConfState) -> Self {
        let mut payload = vec![1u8, gm.sm_kind];
        payload.extend_from_slice(&encode_pb(cs));
        LogRecord {
            group,
            kind: RecordKind::GroupCreated,
            index: 0,
            payload,
        }
    }
    pub fn group_removed(group: GroupId) -> Self {
        LogRecord {
            group,
            kind: RecordKind::GroupRemoved,
            index: 0,
            payload: Vec::new(),
        }
    }
}

/// Per-group facts the engine needs on restart beyond raft state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupMeta {
    /// Which state machine applies this group (`StateMachineKind` as u8).
    pub sm_kind: u8,
}

/// The node's durable log, shared by all groups.
///
/// Contract: `append` buffers (no fsync); `sync` makes every appended record durable with one
/// fsync — THE durability point; nothing appended before a successful `sync` may be assumed
/// durable. `take_replay` hands over, once, the durable records found at open, in append order.
/// `compact` lets the log drop a group's records with index ≤ its floor (entries covered by a
/// snapshot); a group absent from `floors` keeps everything. State kinds (`HardState`,
/// `ConfState`, `SnapshotMark`, `GroupCreated`) are never lost to compaction: the latest of each
/// per group survives (nodedb-wal "sticky kinds"). `forget_group` ends a group's history; it
/// replays as a `GroupRemoved` record.
///
/// Disk full: `SinkError::NoSpace` does not break the log. From `append` (and
/// `forget_group`) it means nothing of the batch was appended: append it again later. From
/// `sync` it means what was appended stays buffered, in order, and a later `sync` writes it.
/// Any other error is fatal.
pub trait LogSink: Send {
    fn append(&mut self, records: &[LogRecord]) -> Result<(), SinkError>;
    fn sync(&mut self) -> Result<(), SinkError>;
    fn compact(&mut self, floors: &[(GroupId, u64)]) -> Result<(), SinkError>;
    fn forget_group(&mut self, group: GroupId) -> Result<(), SinkError>;
    fn take_replay(&mut self) -> Result<Vec<LogRecord>, SinkError>;
    /// Where the log lives, for messages about it: the directory, and the file whose torn
    /// tail recovery cut off when there was one.
    fn location(&self) -> String {
        "the log".to_string()
    }
    /// Free space where the log lives and the reserve it keeps, for the engine's NO_SPACE
    /// state (one `statvfs`); `None` for a log without a disk, or when the query failed.
    fn space(&self) -> Option<SpaceStatus> {
        None
    }
    /// True once after the log started a new segment since the last call (the engine samples
    /// `space` then: a roll is when a log takes new disk space).
    fn take_rolled(&mut self) -> bool {
        false
    }
    /// Gives back disk space the log holds ahead of need (a segment prepared in advance);
    /// true if it did. The engine asks as it enters NO_SPACE.
    fn release_spare_space(&mut self) -> bool {
        false
    }
    /// What recovery repaired at open (a torn tail cut off or zeroed), for operators.
    fn recovery_repairs(&self) -> Vec<LogRepair> {
        Vec::new()
    }
}

/// A repair recovery made at open: the bytes of a write that never completed, discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRepair {
    /// The segment file repaired.
    pub file: PathBuf,
    /// Where its valid records end (the bytes from here were discarded).
    pub offset_bytes: u64,
    /// Bytes discarded (truncated away, or zeroed in a preallocated segment).
    pub discarded_bytes: u64,
    /// Why those bytes were judged a torn write.
    pub reason: String,
}

impl std::fmt::Display for LogRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: discarded {} bytes from byte offset {} ({})",
            self.file.display(),
            self.discarded_bytes,
            self.offset_bytes,
            self.reason
        )
    }
}

/// The record kinds that are state (latest value wins), as nodedb-wal's sticky kinds.
pub const STATE_KINDS: [RecordKind; 4] = [
    RecordKind::HardState,
    RecordKind::ConfState,
    RecordKind::SnapshotMark,
    RecordKind::GroupCreated,
];

/// A group's state rebuilt from the log.
#[derive(Debug, Clone)]
pub struct RecoveredGroup {
    pub meta: GroupMeta,
    pub storage: GroupStorage,
    /// The size and checksum its newest snapshot mark recorded for the snapshot file (`None`:
    /// no snapshot, or a mark written before marks recorded them).
    pub snapshot_file: Option<SnapshotDescriptor>,
}

#[derive(Default)]
struct Fold {
    meta: Option<GroupMeta>,
    /// Membership at creation (used when no snapshot survives).
    created_cs: Option<ConfState>,
    hard_state: HardState,
    /// The newest snapshot mark seen, with the file descriptor it recorded.
    snapshot: Option<(SnapshotMetadata, Option<SnapshotDescriptor>)>,
    /// The log with raft's overwrite rule: an entry at index i replaces i and everything after.
    entries: BTreeMap<u64, Entry>,
}

/// Folds records (in append order) into per-group storage: the newest snapshot mark, then the
/// entries after it (which must be contiguous), then the newest hard state.
///
/// Tolerates what nodedb-wal produces: state records re-written at the start of each segment
/// (equal or older values, possibly before `GroupCreated`), and segments dropped by compaction
/// (entries at or below the snapshot floor gone). Records of a group after its `GroupRemoved`
/// start it afresh (a group re-added later). A gap after the snapshot is corruption.
pub fn recover(records: &[LogRecord]) -> Result<BTreeMap<GroupId, RecoveredGroup>, SinkError> {
    let mut folds: BTreeMap<GroupId, Fold> = BTreeMap::new();
    for r in records {
        if r.kind == RecordKind::GroupRemoved {
            folds.remove(&r.group);
            continue;
        }
        let f = folds.entry(r.group).or_default();
        fold_record(f, r).map_err(|reason| SinkError::Backend(format!("{}: {reason}", r.group)))?;
    }
    let mut out = BTreeMap::new();
    for (g, f) in folds {
        let group = finish(f).map_err(|reason| SinkError::Backend(format!("{g}: {reason}")))?;
        out.insert(g, group);
    }
    Ok(out)
}

fn fold_record(f: &mut Fold, r: &LogRecord) -> Result<(), String> {
    let pb = |e: DecodeError| e.to_string();
    match r.kind {
        RecordKind::Entry => {
            let e: Entry = decode_pb(&r.payload).map_err(pb)?;
            drop(f.entries.split_off(&e.index));
            f.entries.insert(e.index, e);
        }
        RecordKind::HardState => {
            let hs: HardState = decode_pb(&r.payload).map_err(pb)?;
            // A re-written copy is equal or older: never move term or commit backwards.
            let cur = &f.hard_state;
            if (hs.term, hs.commit) >= (cur.term, cur.commit) {
                f.hard_state = hs;
            }
        }
        // Membership is recovered from snapshots and re-applied conf entries; kind 3 is
        // reserved and ignored.
        RecordKind::ConfState => {}
        RecordKind::GroupCreated => {
            let (meta, rest) = split_meta(&r.payload).map_err(|e| e.to_string())?;
            let cs: ConfState = decode_pb(rest).map_err(pb)?;
            f.meta.get_or_insert(meta);
            f.created_cs.get_or_insert(cs);
        }
        RecordKind::SnapshotMark => {
            let (meta, file, rest) = split_mark(&r.payload).map_err(|e| e.to_string())?;
            let snap: SnapshotMetadata = decode_pb(rest).map_err(pb)?;
            f.meta.get_or_insert(meta);
            if f.snapshot
                .as_ref()
                .is_none_or(|(s, _)| snap.index > s.index)
            {
                f.snapshot = Some((snap, file));
            }
        }
        RecordKind::GroupRemoved => {}
    }
    Ok(())
}

fn finish(f: Fold) -> Result<RecoveredGroup, String> {
    let meta = f
        .meta
        .ok_or("records without GroupCreated or SnapshotMark")?;
    let mut storage = GroupStorage::new(f.created_cs.unwrap_or_default());
    let mut hs = f.hard_state;
    let mut floor = 0;
    let snapshot_file = f.snapshot.as_ref().and_then(|(_, file)| *file);
    if let Some((snap, _)) = f.snapshot {
        floor = snap.index;
        if snap.term > hs.term {
            // Cannot happen with records we write (the hard state is written with the mark);
            // if it did, a vote from an older term must not carry over.
            hs.term = snap.term;
            hs.vote = 0;
        }
        storage.install_snapshot(snap).map_err(|e| e.to_string())?;
    }
    let mut entries = f.entries;
    let tail: Vec<Entry> = entries.split_off(&(floor + 1)).into_values().collect();
    for (expected, e) in (floor + 1..).zip(tail.iter()) {
        if e.index != expected {
            return Err(format!(
                "log gap: expected entry {expected} (snapshot at {floor}), found {}",
                e.index
            ));
        }
    }
    storage.append(&tail)?;
    // A commit index beyond the last entry means acknowledged entries were lost; it is kept
    // as found for `lost_tail::find_lost_tails`, which the engine runs before raft sees it.
    hs.commit = hs.commit.max(floor);
    storage.set_hard_state(hs);
    Ok(RecoveredGroup {
        meta,
        storage,
        snapshot_file,
    })
}

/// A snapshot mark's meta, the file descriptor it recorded (version 2) or none (version 1),
/// and the encoded `SnapshotMetadata`.
fn split_mark(payload: &[u8]) -> Result<(GroupMeta, Option<SnapshotDescriptor>, &[u8]), SinkError> {
    match payload {
        [MARK_WITH_FILE_VERSION, sm_kind, rest @ ..] => {
            let mut r = Reader::new(rest);
            let file = SnapshotDescriptor {
                total_bytes: r.u64()?,
                checksum: r.u64()?,
            };
            Ok((
                GroupMeta { sm_kind: *sm_kind },
                Some(file),
                &rest[r.position()..],
            ))
        }
        _ => split_meta(payload).map(|(meta, rest)| (meta, None, rest)),
    }
}

fn split_meta(payload: &[u8]) -> Result<(GroupMeta, &[u8]), SinkError> {
    match payload {
        [1, sm_kind, rest @ ..] => Ok((GroupMeta { sm_kind: *sm_kind }, rest)),
        [v, _, ..] => Err(SinkError::Decode(DecodeError::Version(*v))),
        _ => Err(SinkError::Decode(DecodeError::Truncated {
            offset: 0,
            need_bytes: 2,
            have_bytes: payload.len(),
        })),
    }
}

#[derive(Default)]
struct MemInner {
    durable: Vec<LogRecord>,
    buffered: Vec<LogRecord>,
    syncs: u64,
    failing: bool,
    /// The next this-many `append` / `sync` calls fail with `SinkError::NoSpace`.
    no_space_appends: u32,
    no_space_syncs: u32,
    space: Option<SpaceStatus>,
}

/// In-memory `LogSink`. Clones share one log, so a test can "restart" a node by opening a new
/// engine on a clone; `crash()` drops what was appended but never synced, like a power cut.
#[derive(Clone, Default)]
pub struct MemLogSink {
    inner: Arc<Mutex<MemInner>>,
}

impl MemLogSink {
    pub fn new() -> Self {
        Self::default()
    }
    /// Loses every unsynced record.
    pub fn crash(&self) {
        self.lock().buffered.clear();
    }
    /// While set, every `sync` fails (a dying disk) and keeps its records unsynced.
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }
    /// The next `appends` appends and `syncs` syncs fail with `SinkError::NoSpace` like a full
    /// disk under nodedb-wal: a failed append takes nothing, a failed sync keeps what was
    /// appended (a later sync makes it durable).
    pub fn fail_no_space(&self, appends: u32, syncs: u32) {
        let mut inner = self.lock();
        inner.no_space_appends = appends;
        inner.no_space_syncs = syncs;
    }
    /// What `space()` reports from now on (`None`: no disk, the default).
    pub fn set_space(&self, space: Option<SpaceStatus>) {
        self.lock().space = space;
    }
    /// The durable records (what a restart would replay).
    pub fn durable(&self) -> Vec<LogRecord> {
        self.lock().durable.clone()
    }
    /// Number of `sync` calls so far (the fsync count a real log would have done).
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }
    pub fn durable_len(&self) -> usize {
        self.lock().durable.len()
    }
    /// Drops the last `n` durable entry records of `group` (a disk that lost an acknowledged
    /// tail; state records, e.g. the hard state with its commit index, stay).
    pub fn lose_last_entries(&self, group: GroupId, n: usize) {
        let mut inner = self.lock();
        for _ in 0..n {
            let last = inner
                .durable
                .iter()
                .rposition(|r| r.group == group && r.kind == RecordKind::Entry);
            if let Some(at) = last {
                inner.durable.remove(at);
            }
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // A panic while holding this lock already failed the test that caused it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn injected_no_space() -> SinkError {
    SinkError::NoSpace {
        dir: PathBuf::from("mem"),
        reason: "no space left on the device holding mem (injected)".into(),
    }
}

impl LogSink for MemLogSink {
    fn append(&mut self, records: &[LogRecord]) -> Result<(), SinkError> {
        let mut g = self.lock();
        if g.no_space_appends > 0 {
            g.no_space_appends -= 1;
            return Err(injected_no_space());
        }
        g.buffered.extend_from_slice(records);
        Ok(())
    }
    fn sync(&mut self) -> Result<(), SinkError> {
        let mut g = self.lock();
        if g.failing {
            return Err(SinkError::Backend("fdatasync: EIO (injected)".into()));
        }
        if g.no_space_syncs > 0 {
            g.no_space_syncs -= 1;
            return Err(injected_no_space());
        }
        let moved = std::mem::take(&mut g.buffered);
        g.durable.extend(moved);
        g.syncs += 1;
        Ok(())
    }
    /// Drops entry records at or below each floor (state records are kept: latest wins).
    fn compact(&mut self, floors: &[(GroupId, u64)]) -> Result<(), SinkError> {
        let floors: BTreeMap<GroupId, u64> = floors.iter().copied().collect();
        self.lock().durable.retain(|r| {
            r.kind != RecordKind::Entry || floors.get(&r.group).is_none_or(|f| r.index > *f)
        });
        Ok(())
    }
    fn forget_group(&mut self, group: GroupId) -> Result<(), SinkError> {
        let mut g = self.lock();
        if g.no_space_appends > 0 {
            g.no_space_appends -= 1;
            return Err(injected_no_space());
        }
        g.buffered.push(LogRecord::group_removed(group));
        Ok(())
    }
    fn take_replay(&mut self) -> Result<Vec<LogRecord>, SinkError> {
        Ok(self.lock().durable.clone())
    }
    fn space(&self) -> Option<SpaceStatus> {
        self.lock().space
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    const FILE: SnapshotDescriptor = SnapshotDescriptor {
        total_bytes: 4096,
        checksum: 0x0123_4567_89ab_cdef,
    };

    #[test]
    fn a_snapshot_mark_recovers_the_file_it_recorded_and_an_old_mark_none() {
        let (g, gm) = (GroupId(3), GroupMeta { sm_kind: 1 });
        let snap = SnapshotMetadata {
            index: 9,
            term: 2,
            ..Default::default()
        };
        let out = recover(&[LogRecord::snapshot_mark(g, gm, &snap, &FILE)]).expect("recover");
        assert_eq!(out[&g].snapshot_file, Some(FILE));
        assert_eq!(out[&g].meta, gm);
        assert_eq!(out[&g].storage.snapshot_meta().index, 9);
        // A mark written before marks recorded their file (payload version 1).
        let mut old = vec![1u8, gm.sm_kind];
        old.extend_from_slice(&encode_pb(&snap));
        let old = LogRecord {
            group: g,
            kind: RecordKind::SnapshotMark,
            index: 9,
            payload: old,
        };
        let out = recover(&[old]).expect("recover a version 1 mark");
        assert_eq!(out[&g].snapshot_file, None);
        assert_eq!(out[&g].storage.snapshot_meta().index, 9);
        // The newest mark's file wins.
        let newer = SnapshotMetadata {
            index: 12,
            ..snap.clone()
        };
        let file2 = SnapshotDescriptor {
            total_bytes: 1,
            checksum: 2,
        };
        let out = recover(&[
            LogRecord::snapshot_mark(g, gm, &newer, &file2),
            LogRecord::snapshot_mark(g, gm, &snap, &FILE),
        ])
        .expect("recover");
        assert_eq!(out[&g].snapshot_file, Some(file2));
    }

    #[test]
    fn a_version_2_mark_cut_inside_its_descriptor_is_refused() {
        let mut payload = vec![MARK_WITH_FILE_VERSION, 1];
        payload.extend_from_slice(&[0; 10]);
        let cut = LogRecord {
            group: GroupId(3),
            kind: RecordKind::SnapshotMark,
            index: 9,
            payload,
        };
        assert!(recover(&[cut]).is_err());
    }

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn recover_rebuilds_log_hard_state_and_overwrites() {
        let g = GroupId(7);
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 2,
            ..Default::default()
        };
        let recs = vec![
            LogRecord::group_created(g, GroupMeta { sm_kind: 1 }, &cs),
            LogRecord::entry(g, &ent(1, 1)),
            LogRecord::entry(g, &ent(2, 1)),
            LogRecord::entry(g, &ent(3, 1)),
            LogRecord::entry(g, &ent(3, 3)),
            LogRecord::hard_state(g, &hs),
        ];
        let out = recover(&recs).expect("recover");
        let s = &out[&g].storage;
        assert_eq!(s.last_index().ok(), Some(3));
        assert_eq!(s.term(3).ok(), Some(3));
        assert_eq!(s.hard_state(), &hs);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    }

    #[test]
    fn removed_group_is_forgotten_and_group_without_meta_is_an_error() {
        let g = GroupId(1);
        let cs = ConfState::default();
        let recs = vec![
            LogRecord::group_created(g, GroupMeta { sm_kind: 1 }, &cs),
            LogRecord::group_removed(g),
        ];
        assert!(recover(&recs).expect("recover").is_empty());
        let orphan = vec![LogRecord::entry(g, &ent(1, 1))];
        assert!(recover(&orphan).is_err());
    }

    #[test]
    fn rewritten_state_records_do_not_roll_back() {
        // What a segment roll produces: state records re-written (in kind order) after newer ones.
        let g = GroupId(2);
        let gm = GroupMeta { sm_kind: 1 };
        let cs_old = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let mut cs_new = cs_old.clone();
        cs_new.learners = vec![4];
        let snap = SnapshotMetadata {
            index: 5,
            term: 2,
            conf_state: Some(cs_old.clone()).into(),
            ..Default::default()
        };
        let hs = HardState {
            term: 2,
            commit: 8,
            ..Default::default()
        };
        let mut recs = vec![LogRecord::group_created(g, gm, &cs_old)];
        recs.push(LogRecord::snapshot_mark(g, gm, &snap, &FILE));
        for i in 6..=8 {
            recs.push(LogRecord::entry(g, &ent(i, 2)));
        }
        recs.push(LogRecord::conf_state(g, 7, &cs_new));
        recs.push(LogRecord::hard_state(g, &hs));
        // Segment roll: re-written copies, then the group goes on.
        recs.push(LogRecord::hard_state(g, &hs));
        recs.push(LogRecord::conf_state(g, 7, &cs_new));
        recs.push(LogRecord::snapshot_mark(g, gm, &snap, &FILE));
        recs.push(LogRecord::group_created(g, gm, &cs_old));
        let out = recover(&recs).expect("recover");
        let s = &out[&g].storage;
        assert_eq!(s.first_index().ok(), Some(6));
        assert_eq!(s.last_index().ok(), Some(8));
        // Membership comes from the snapshot (raft re-applies conf entries after it); the
        // reserved ConfState kind is ignored.
        assert_eq!(s.conf_state(), &cs_old);
        assert_eq!(s.hard_state(), &hs);
        // The same log with the early segment compacted away (only the header copies remain
        // before the surviving entries) recovers the same state.
        let tail: Vec<LogRecord> = recs[7..].iter().chain(recs[2..5].iter()).cloned().collect();
        let out2 = recover(&tail).expect("recover compacted");
        assert_eq!(out2[&g].storage.conf_state(), &cs_old);
        assert_eq!(out2[&g].storage.last_index().ok(), Some(8));
        assert_eq!(out2[&g].storage.hard_state(), &hs);
    }

    #[test]
    fn mem_sink_loses_unsynced_records_on_crash() {
        let mut s = MemLogSink::new();
        let g = GroupId(1);
        s.append(&[LogRecord::entry(g, &ent(1, 1))])
            .expect("append");
        s.sync().expect("sync");
        s.append(&[LogRecord::entry(g, &ent(2, 1))])
            .expect("append");
        s.crash();
        assert_eq!(s.take_replay().expect("replay").len(), 1);
    }

    #[test]
    fn segment_dropped_by_compaction_leaves_a_replayable_log() {
        // seg2 starts with the re-written SnapshotMark(1) of its creation time, then entries
        // 101..150 and a newer SnapshotMark(150); seg1 (entries 2..100) was deleted because
        // every entry in it is at or below the floor 150.
        let g = GroupId(3);
        let gm = GroupMeta { sm_kind: 1 };
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let snap = |index: u64| SnapshotMetadata {
            index,
            term: 2,
            conf_state: Some(cs.clone()).into(),
            ..Default::default()
        };
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 160,
            ..Default::default()
        };
        let mut recs = vec![
            LogRecord::group_created(g, gm, &cs),
            LogRecord::snapshot_mark(g, gm, &snap(1), &FILE),
        ];
        for i in 101..=160 {
            recs.push(LogRecord::entry(g, &ent(i, 2)));
        }
        recs.push(LogRecord::snapshot_mark(g, gm, &snap(150), &FILE));
        recs.push(LogRecord::hard_state(g, &hs));
        let out = recover(&recs).expect("replayable");
        let s = &out[&g].storage;
        assert_eq!(s.first_index().ok(), Some(151));
        assert_eq!(s.last_index().ok(), Some(160));
        assert_eq!(s.hard_state(), &hs);
        // Without the newer mark the same records are a real gap: refused, not panicked on.
        recs.retain(|r| !(r.kind == RecordKind::SnapshotMark && r.index == 150));
        let err = recover(&recs).expect_err("gap refused");
        assert!(err.to_string().contains("gap"), "{err}");
    }
}
