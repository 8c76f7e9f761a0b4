//! Per-group raft-rs `Storage`: the log since the last snapshot, hard state, conf state and the
//! snapshot's metadata, all in memory. Durability is not this type's job: the driver writes
//! every change to the shared log (`LogSink`) first and rebuilds this from the log's replay.

use std::cell::Cell;

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::group::outgoing_snapshot;
use crate::snapshot::SnapshotDescriptor;

/// In-memory view of one group's durable Raft state. Read by raft-rs through `Storage`; mutated
/// only by the driver, in the order the log records it.
#[derive(Default, Debug, Clone)]
pub struct GroupStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index/term/conf of the last snapshot (0/0 for a fresh group).
    snapshot_meta: SnapshotMetadata,
    /// Entries `snapshot_meta.index + 1 ..= last_index`, contiguous.
    entries: Vec<Entry>,
    /// The snapshot offered to followers behind the compacted log: metadata plus a descriptor in
    /// `data` (the state itself travels as file chunks, see `snapshot.rs`). `None` until the
    /// state machine has snapshotted once.
    outgoing: Option<Snapshot>,
    /// Bytes of the last snapshot file offered (0: none yet): how much log the next snapshot
    /// waits for (`core::compaction::snapshot_due`).
    last_snapshot_bytes: u64,
    /// Set when raft asked for a snapshot we cannot serve (none yet, too old, or without the
    /// peer in its membership): the driver builds a fresh one and raft asks again.
    snapshot_wanted: Cell<bool>,
}

impl GroupStorage {
    /// A fresh group whose initial membership is `conf_state` (empty for a learner that will be
    /// filled in by the leader's log or snapshot).
    pub fn new(conf_state: ConfState) -> Self {
        GroupStorage {
            conf_state,
            ..Default::default()
        }
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }
    pub fn snapshot_meta(&self) -> &SnapshotMetadata {
        &self.snapshot_meta
    }
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }
    pub fn set_commit(&mut self, commit_index: u64) {
        self.hard_state.commit = commit_index;
    }
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }
    /// Offers the snapshot `meta` written as `desc` to followers behind the compacted log.
    pub(crate) fn offer_snapshot(&mut self, meta: SnapshotMetadata, desc: SnapshotDescriptor) {
        self.last_snapshot_bytes = desc.total_bytes;
        self.outgoing = Some(outgoing_snapshot(meta, desc));
    }
    pub fn last_snapshot_bytes(&self) -> u64 {
        self.last_snapshot_bytes
    }
    /// Stops offering the outgoing snapshot (its file was found damaged) and asks for a new one,
    /// built at the next applied index: until then raft's requests find none and wait.
    pub(crate) fn withdraw_outgoing(&mut self) {
        self.outgoing = None;
        self.snapshot_wanted.set(true);
    }

    /// Did raft ask for a snapshot we could not serve since the last call?
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    fn first(&self) -> u64 {
        self.snapshot_meta.index + 1
    }
    pub(crate) fn last(&self) -> u64 {
        self.snapshot_meta.index + self.entries.len() as u64
    }

    /// Appends entries from a Ready (or from log replay): an entry at an index we already hold
    /// replaces it and everything after it (raft's log-matching overwrite). Entries at or below
    /// the snapshot are ignored (already covered by it). Returns an error string on a gap,
    /// which can only come from a corrupt log, never from raft-rs.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), String> {
        let Some(first_new) = ents.first() else {
            return Ok(());
        };
        let skip = self.first().saturating_sub(first_new.index) as usize;
        if skip >= ents.len() {
            return Ok(());
        }
        let ents = &ents[skip..];
        let start = ents[0].index;
        if start > self.last() + 1 {
            return Err(format!(
                "gap: appending index {start} after last index {}",
                self.last()
            ));
        }
        self.entries.truncate((start - self.first()) as usize);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    /// Drops entries `≤ through_index` after a snapshot at `meta.index == through_index`; the
    /// entries after it stay (followers may still need them). Conf state and snapshot metadata
    /// move to the snapshot's.
    pub fn compact_to_snapshot(&mut self, meta: SnapshotMetadata) {
        let through = meta.index;
        if through <= self.snapshot_meta.index {
            return;
        }
        if through >= self.last() {
            self.entries.clear();
        } else {
            let drop_count = (through - self.snapshot_meta.index) as usize;
            self.entries.drain(..drop_count);
        }
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(through);
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot_meta = meta;
    }

    /// Installs a received snapshot: the whole log is replaced by it unless it is stale.
    pub fn install_snapshot(&mut self, meta: SnapshotMetadata) -> Result<(), StorageError> {
        if meta.index < self.snapshot_meta.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if meta.index == self.snapshot_meta.index {
            return Ok(()); // already installed (a replayed copy)
        }
        // Keep the log if it holds the snapshot's last entry with the same term (a follower that
        // already had these entries), else drop it all.
        let keep = meta.index <= self.last()
            && meta.index > self.snapshot_meta.index
            && self.term_at(meta.index) == Some(meta.term);
        if !keep {
            self.entries.clear();
            let through = meta.index;
            self.hard_state.term = self.hard_state.term.max(meta.term);
            self.hard_state.commit = self.hard_state.commit.max(through);
            self.conf_state = meta.get_conf_state().clone();
            self.snapshot_meta = meta;
        } else {
            self.compact_to_snapshot(meta);
        }
        Ok(())
    }

    fn term_at(&self, idx: u64) -> Option<u64> {
        if idx == self.snapshot_meta.index {
            return Some(self.snapshot_meta.term);
        }
        if idx < self.first() || idx > self.last() {
            return None;
        }
        Some(self.entries[(idx - self.first()) as usize].term)
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut out = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_at(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.outgoing {
            Some(s) if s.get_metadata().index >= request_index && includes(s, to) => Ok(s.clone()),
            // Not built yet, older than requested, or from before `to` joined (raft-rs refuses
            // to restore a snapshot whose membership lacks the receiver): the driver builds a
            // fresh one and raft asks again on a later heartbeat.
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

fn includes(s: &Snapshot, peer: u64) -> bool {
    let cs = s.get_metadata().get_conf_state();
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .any(|id| *id == peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let mut s = GroupStorage::default();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)])
            .expect("append");
        s.append(&[ent(2, 2)]).expect("overwrite");
        assert_eq!(s.last_index().ok(), Some(2));
        assert_eq!(s.term(2).ok(), Some(2));
        assert!(s.append(&[ent(5, 2)]).is_err(), "gap must be refused");
    }

    #[test]
    fn compaction_keeps_tail_and_reports_compacted() {
        let mut s = GroupStorage::default();
        s.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>())
            .expect("append");
        let meta = SnapshotMetadata {
            index: 6,
            term: 1,
            ..Default::default()
        };
        s.compact_to_snapshot(meta);
        assert_eq!(s.first_index().ok(), Some(7));
        assert_eq!(s.last_index().ok(), Some(10));
        assert_eq!(s.term(6).ok(), Some(1));
        assert!(matches!(
            s.entries(5, 8, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.entries(7, 11, None, ctx()).map(|v| v.len()).ok(), Some(4));
        // Entries at or below the snapshot are ignored on append (replay after compaction).
        s.append(&[ent(5, 1), ent(6, 1)])
            .expect("old entries ignored");
        assert_eq!(s.last_index().ok(), Some(10));
    }

    #[test]
    fn install_snapshot_replaces_divergent_log() {
        let mut s = GroupStorage::default();
        s.append(&[ent(1, 1), ent(2, 1)]).expect("append");
        let mut meta = SnapshotMetadata {
            index: 20,
            term: 4,
            ..Default::default()
        };
        s.install_snapshot(meta.clone()).expect("install");
        assert_eq!(s.first_index().ok(), Some(21));
        assert_eq!(s.last_index().ok(), Some(20));
        assert_eq!(s.hard_state().commit, 20);
        meta.index = 10;
        assert!(s.install_snapshot(meta).is_err(), "stale snapshot refused");
    }
}
