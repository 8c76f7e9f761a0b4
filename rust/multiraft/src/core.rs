//! `MultiRaftCore`: every Raft group of a node, driven by explicit calls — `tick`, `step_frame`,
//! `propose`, `read_index`, ... and `round`, which handles all pending Readys. It owns the log,
//! the network endpoint and the state machines but no thread and no clock, so tests drive it
//! step by step over a simulated network; `driver.rs` is the thread that drives it in time.
//!
//! # One round (`round`), in this order
//! 1. Gather a `Ready` from every group that has one.
//! 2. Send the messages raft allows before persistence (a leader's appends: raft thesis
//!    10.2.1), batched: one frame per destination peer across all groups.
//! 3. Apply the committed entries of every Ready without a snapshot, and answer their proposals
//!    and reads. raft-rs 0.7 hands out only committed entries at or below this node's persisted
//!    index (`RaftLog::next_entries_since`), so they are durable on a quorum and on this node
//!    already; answering them before this round's fsync (raft-rs' own order: apply, then
//!    persist) spares every commit under load one fsync of the NEXT entries' wait.
//! 4. Persist: install received snapshots (restore the state machine), append every group's
//!    new entries and changed hard state to the log as one batch, then ONE `sync` (fsync) if
//!    any group's Ready `must_sync` (entries, snapshot, term/vote; a commit-only hard state
//!    rides along with the next sync). **This sync is the durability point**: nothing below
//!    depends on records that had to be synced and were not.
//! 5. Send the persisted messages (votes, append responses), again one frame per peer.
//!    Asserts nothing is unsynced first (persisted-before-send).
//! 6. Apply the committed entries of Readys that carried a snapshot (after installing it);
//!    advance each group; handle its `LightReady` (new commit index, leader messages, more
//!    committed entries to apply), then `advance_apply`.
//! 7. Housekeeping: fail proposals of groups whose leader stepped down; snapshot and compact
//!    groups past the threshold.
//!
//! A full disk does not stop the engine: NO_SPACE refuses writes, and a round whose append or
//! sync meets a full disk stalls and is retried (`core/disk_full.rs`).

mod disk_full;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::prelude::{ConfChangeV2, ConfState, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};
use tokio::sync::oneshot;

use crate::codec::{encode_commands, Frame, RaftBatch, SnapshotAck, SnapshotKey};
use crate::config::MultiRaftConfig;
use crate::error::{EngineError, RaftError, SnapshotError};
use crate::group::{
    answer_reads, apply_entries, fail_all, install_snapshot, issue_reads, le_u64,
    leads_with_commit, outgoing_snapshot, resend_pre_votes, snapshot_meta, sorted_ids,
    step_down_check, Group, PendingConf, PendingProposal, PendingRead, DEFERRED_READ_MSGS_MAX,
};
use crate::ids::{GroupId, NodeId};
use crate::log_sink::{recover, GroupMeta, LogRecord, LogSink};
use crate::lost_tail::{find_lost_tails, LostTail, LostTailPolicy};
use crate::metrics::Metrics;
use crate::network::RaftNetwork;
use crate::snapshot::{ChunkOutcome, SnapshotDescriptor, SnapshotStore, TransferJob};
use crate::state_machine::{StateMachine, StateMachineFactory, StateMachineKind};
use crate::storage::GroupStorage;

pub use self::disk_full::SPACE_SAMPLE_EVERY_TICKS;
use self::disk_full::{grows_log, DiskState, PendingRound, STALLED};

/// One frame carries at most this many bytes of raft messages (a 64 MiB wire frame holds it
/// with room to spare); more go in further frames.
pub const BATCH_FRAME_BYTES_MAX: usize = 16 << 20;
/// Concurrent outgoing snapshot transfers; more are refused back to raft (it retries).
pub const SNAPSHOT_SENDS_MAX: usize = 4;
/// A snapshot transfer still queuing chunks after this many ticks (60 s at 100 ms) is reported
/// failed; raft then retries with a fresh snapshot.
pub const SNAPSHOT_TRANSFER_TIMEOUT_TICKS: u64 = 600;
/// Index and term of the bootstrap snapshot every founding voter starts from.
pub const BOOTSTRAP_INDEX: u64 = 1;
pub const BOOTSTRAP_TERM: u64 = 1;
/// Orphaned `.partial` files are swept every this many ticks.
pub const ORPHAN_SWEEP_EVERY_TICKS: u64 = 100;

/// How one request is answered: exactly once, from the driver thread. A oneshot sender for
/// async Rust callers; the Python binding settles its asyncio future directly (no extra hop).
pub struct Reply<T>(Box<dyn FnOnce(Result<T, RaftError>) + Send>);

impl<T> Reply<T> {
    pub fn new(f: impl FnOnce(Result<T, RaftError>) + Send + 'static) -> Self {
        Reply(Box::new(f))
    }
    /// Answers the request (a dropped receiver is fine: the caller gave up).
    pub fn send(self, r: Result<T, RaftError>) {
        (self.0)(r)
    }
}

impl<T: Send + 'static> From<oneshot::Sender<Result<T, RaftError>>> for Reply<T> {
    fn from(tx: oneshot::Sender<Result<T, RaftError>>) -> Self {
        Reply::new(move |r| {
            let _ = tx.send(r);
        })
    }
}

/// A proposal's outcome: the entry's index and one state-machine result per command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposeOutcome {
    pub index: u64,
    pub results: Vec<Vec<u8>>,
}

/// How a group starts on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRole {
    /// A founding voter: every founding member is created with the same `peers` (this node
    /// included) and no log.
    Voter { peers: Vec<NodeId> },
    /// Joins an existing group: starts empty and learns log/snapshot and membership from the
    /// leader, after the control plane added it as a learner there (`ConfChange`).
    Learner,
}

/// A raft role, as reported in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// A group's state on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Non-empty while a joint configuration is in effect (the voters being replaced).
    pub voters_outgoing: Vec<NodeId>,
    /// On the leader: the highest log index known replicated on each member (itself included);
    /// empty elsewhere. A learner whose `matched` reached the leader's commit has caught up.
    pub matched: Vec<(NodeId, u64)>,
}

/// A membership change, expressed as raft-rs ConfChangeV2 steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    AddLearner(NodeId),
    /// Promote a learner (or add a new voter) — with others in one joint change if many.
    AddVoter(NodeId),
    Remove(NodeId),
}

struct OutgoingTransfer {
    key: SnapshotKey,
    started_tick: u64,
    /// When the sender thread queued the last chunk; the ack must follow within
    /// `snapshot_ack_timeout_ticks` (a lost chunk or a dead receiver never acks).
    queued_tick: Option<u64>,
}

/// Completed snapshot sends reported by transfer threads: (peer, group, all chunks queued).
type TransferResults = Arc<Mutex<Vec<(NodeId, GroupId, bool)>>>;

/// All Raft groups of one node. See the module docs for the round order.
pub struct MultiRaftCore {
    cfg: MultiRaftConfig,
    logger: slog::Logger,
    sink: Box<dyn LogSink>,
    net: Arc<dyn RaftNetwork>,
    factory: Box<dyn StateMachineFactory>,
    snapshots: SnapshotStore,
    groups: BTreeMap<GroupId, Group>,
    transfers: HashMap<(NodeId, GroupId), OutgoingTransfer>,
    transfer_results: TransferResults,
    next_read_ctx: u64,
    /// (group, leader or 0, term) since the last `take_leader_changes`.
    leader_changes: Vec<(GroupId, u64, u64)>,
    /// Records that must be durable before persisted messages go out, appended since the last
    /// successful sync (the persisted-before-send check).
    unsynced_records: usize,
    ticks: u64,
    metrics: Arc<Metrics>,
    /// Send snapshot chunks from the calling thread (deterministic tests) instead of a thread
    /// per transfer.
    inline_snapshot_sends: bool,
    /// Peer reports raised while Readys were outstanding, stepped in after `advance`.
    deferred_reports: Vec<(GroupId, NodeId, PeerReport)>,
    /// Groups whose lost-tail state open forgot ([`LostTailPolicy::Discard`]).
    discarded: Vec<LostTail>,
    /// Groups a leader's heartbeat showed to have lost acknowledged entries (fatal).
    lost_at_runtime: Vec<LostTail>,
    /// NO_SPACE state and a round stalled on a full disk (`core/disk_full.rs`).
    disk: DiskState,
}

/// A transport outcome raft must hear about.
#[derive(Debug, Clone, Copy)]
enum PeerReport {
    Unreachable,
    SnapshotFailure,
}

impl MultiRaftCore {
    /// Opens the engine: validates the config, replays the log, restores each group's state
    /// machine from its latest snapshot, and recreates every group found.
    pub fn open(
        cfg: MultiRaftConfig,
        mut sink: Box<dyn LogSink>,
        net: Arc<dyn RaftNetwork>,
        factory: Box<dyn StateMachineFactory>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, EngineError> {
        cfg.validate()?;
        let mut snapshots = SnapshotStore::open(cfg.data_dir.join("snapshots"))?;
        snapshots.remove_orphans(Duration::from_secs(cfg.orphan_partial_max_age_secs))?;
        let records = sink.take_replay()?;
        let mut recovered = recover(&records)?;
        let lost = find_lost_tails(&recovered);
        if !lost.is_empty() {
            if cfg.lost_tail == LostTailPolicy::Refuse {
                return Err(EngineError::LostTail {
                    lost,
                    location: sink.location(),
                });
            }
            // --rejoin: this node's copy of each such group is forgotten (durably, before
            // anything else is written) and the control plane rejoins it as a learner.
            for tail in &lost {
                recovered.remove(&tail.group);
                sink.forget_group(tail.group)?;
                snapshots.remove_group(tail.group)?;
            }
            sink.sync()?;
        }
        let mut core = MultiRaftCore {
            logger: crate::raft_log::root_logger(cfg.node_id.0),
            sink,
            net,
            factory,
            snapshots,
            groups: BTreeMap::new(),
            transfers: HashMap::new(),
            transfer_results: Arc::default(),
            next_read_ctx: initial_read_ctx(cfg.node_id),
            leader_changes: Vec::new(),
            unsynced_records: 0,
            ticks: 0,
            metrics,
            inline_snapshot_sends: false,
            deferred_reports: Vec::new(),
            discarded: lost,
            lost_at_runtime: Vec::new(),
            disk: DiskState::default(),
            cfg,
        };
        for (gid, rg) in recovered {
            core.start_group(gid, rg.meta, rg.storage)?;
        }
        Ok(core)
    }

    /// Re-creates a recovered group: its state machine restored from the latest snapshot.
    fn start_group(
        &mut self,
        gid: GroupId,
        meta: GroupMeta,
        mut storage: GroupStorage,
    ) -> Result<(), EngineError> {
        if meta.sm_kind == 0 {
            return Err(EngineError::Recovery {
                group: gid,
                reason: "no state machine kind recorded".into(),
            });
        }
        let kind = StateMachineKind(meta.sm_kind);
        let mut sm = self
            .factory
            .create(gid, kind)
            .map_err(SnapshotError::from)?;
        let snap_meta = storage.snapshot_meta().clone();
        if snap_meta.index > 0 {
            let key = SnapshotKey {
                group: gid,
                index: snap_meta.index,
                term: snap_meta.term,
            };
            let desc = self.find_descriptor(&key)?;
            let data = self.snapshots.read(&key, &desc)?;
            sm.restore(&data).map_err(SnapshotError::from)?;
            storage.set_outgoing(outgoing_snapshot(snap_meta, desc));
        }
        self.insert_group(gid, meta, storage, sm)
    }

    fn insert_group(
        &mut self,
        gid: GroupId,
        meta: GroupMeta,
        storage: GroupStorage,
        sm: Box<dyn StateMachine>,
    ) -> Result<(), EngineError> {
        let applied = storage.snapshot_meta().index;
        let logger = self.logger.new(slog::o!("group" => gid.0));
        let config = self.cfg.raft_config(applied, !sm.commit_broadcast_wanted());
        let raw = RawNode::new(&config, storage, &logger)?;
        let was_leader = raw.raft.state == StateRole::Leader;
        let started_empty = raw.store().last() == 0;
        self.groups.insert(
            gid,
            Group {
                id: gid,
                meta,
                raw,
                sm,
                proposals: VecDeque::new(),
                confs: VecDeque::new(),
                reads: Vec::new(),
                deferred_read_msgs: Vec::new(),
                applied_index: applied,
                pre_vote_tick: None,
                published_leader: None,
                was_leader,
                started_empty,
            },
        );
        Ok(())
    }

    /// The descriptor of a local snapshot file (size and checksum recomputed from the file:
    /// the log records only the metadata).
    fn find_descriptor(&self, key: &SnapshotKey) -> Result<SnapshotDescriptor, EngineError> {
        let path = self.snapshots.path(key, "snap");
        let data = std::fs::read(&path).map_err(|e| EngineError::Recovery {
            group: key.group,
            reason: format!("snapshot file {} unreadable: {e}", path.display()),
        })?;
        Ok(SnapshotDescriptor {
            total_bytes: data.len() as u64,
            checksum: xxhash_rust::xxh3::xxh3_64(&data),
        })
    }

    /// Sends snapshot chunks on the calling thread: for tests that drive the core by hand and
    /// must not race a sender thread against their simulated time.
    pub fn set_inline_snapshot_sends(&mut self, inline: bool) {
        self.inline_snapshot_sends = inline;
    }

    /// The groups whose state open forgot because their log lost its acknowledged tail
    /// (only with [`LostTailPolicy::Discard`]); the control plane rejoins them.
    pub fn discarded_groups(&self) -> &[LostTail] {
        &self.discarded
    }

    pub fn config(&self) -> &MultiRaftConfig {
        &self.cfg
    }
    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups.keys().copied().collect()
    }
    pub fn has_group(&self, g: GroupId) -> bool {
        self.groups.contains_key(&g)
    }

    /// Creates a group on this node (durably: the creation is synced before returning).
    /// Refused in NO_SPACE. If the sync meets a full disk after the creation was appended, the
    /// group is created here (the log holds its creation, in order, durable with the next
    /// sync) but the call fails with `NoSpace`: not acknowledged as durable.
    pub fn add_group(
        &mut self,
        gid: GroupId,
        role: GroupRole,
        kind: StateMachineKind,
    ) -> Result<(), EngineError> {
        if self.groups.contains_key(&gid) {
            return Err(EngineError::GroupExists(gid));
        }
        if kind.0 == 0 {
            return Err(EngineError::Config {
                field: "kind",
                reason: "0 is no state machine kind".into(),
            });
        }
        if self.disk.refuses_writes() {
            return Err(self.no_space_engine_error());
        }
        let mut cs = ConfState::default();
        if let GroupRole::Voter { peers } = &role {
            if !peers.contains(&self.cfg.node_id) || peers.iter().any(|p| p.0 == 0) {
                return Err(EngineError::Config {
                    field: "peers",
                    reason: format!(
                        "must include this node ({}) and no id 0: {peers:?}",
                        self.cfg.node_id
                    ),
                });
            }
            cs.voters = peers.iter().map(|p| p.0).collect();
            cs.voters.sort_unstable();
            cs.voters.dedup();
        }
        let meta = GroupMeta { sm_kind: kind.0 };
        let sm = self
            .factory
            .create(gid, kind)
            .map_err(SnapshotError::from)?;
        let mut storage = GroupStorage::new(cs.clone());
        let mut records = vec![LogRecord::group_created(gid, meta, &cs)];
        if matches!(role, GroupRole::Voter { .. }) {
            // Founders start from a snapshot of the empty state at index 1 holding the initial
            // membership, so the log starts at 2 and a node that joins later gets that
            // snapshot first: it learns the founding voters, which no log entry records.
            let snap = snapshot_meta(BOOTSTRAP_INDEX, BOOTSTRAP_TERM, cs);
            let key = SnapshotKey {
                group: gid,
                index: snap.index,
                term: snap.term,
            };
            let desc = self
                .snapshots
                .write(&key, &sm.snapshot().map_err(SnapshotError::from)?)?;
            storage
                .install_snapshot(snap.clone())
                .map_err(|e| EngineError::Raft(raft::Error::Store(e)))?;
            storage.set_outgoing(outgoing_snapshot(snap.clone(), desc));
            records.push(LogRecord::snapshot_mark(gid, meta, &snap));
        }
        self.sink.append(&records).inspect_err(|e| {
            if e.is_no_space() {
                self.note_no_space(); // nothing appended: no group
            }
        })?;
        match self.sink.sync() {
            Ok(()) => self.insert_group(gid, meta, storage, sm),
            Err(e) if e.is_no_space() => {
                self.note_no_space();
                self.insert_group(gid, meta, storage, sm)?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a group from this node: its pending requests fail, its log history is released
    /// and its snapshot files deleted. Allowed in NO_SPACE (it ends with less on disk), not
    /// while a round is stalled. On a full disk: the group stays if its forget record could
    /// not be appended; if only the sync failed it is gone here (the record is in the log, in
    /// order) but the call fails with `NoSpace` and the snapshot files stay until it is durable.
    pub fn remove_group(&mut self, gid: GroupId) -> Result<(), EngineError> {
        if !self.groups.contains_key(&gid) {
            return Err(EngineError::GroupNotFound(gid));
        }
        if self.disk.stalled() {
            return Err(self.no_space_engine_error());
        }
        self.sink.forget_group(gid).inspect_err(|e| {
            if e.is_no_space() {
                self.note_no_space();
            }
        })?;
        if let Some(mut g) = self.groups.remove(&gid) {
            fail_all(&mut g, &RaftError::GroupNotFound { group: gid });
            self.leader_changes.push((gid, 0, 0));
        }
        self.transfers.retain(|(_, g), _| *g != gid);
        self.sink.sync().inspect_err(|e| {
            if e.is_no_space() {
                self.note_no_space();
            }
        })?;
        self.snapshots.remove_group(gid)?;
        Ok(())
    }

    /// One tick for every group; expires overdue reads and snapshot transfers; samples the
    /// log's free space when due. While a round is stalled raft is not ticked (raft-rs: no
    /// state change between `ready` and `advance`); reads still expire.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.sample_space_if_due();
        let stalled = self.disk.stalled();
        let timeout = self.cfg.read_index_timeout_ticks;
        let now = self.ticks;
        for g in self.groups.values_mut() {
            if !stalled {
                g.raw.tick();
                resend_pre_votes(g, now);
                issue_reads(g, now); // resends what went unanswered
            }
            let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut g.reads)
                .into_iter()
                .partition(|r| now.saturating_sub(r.started_tick) >= timeout);
            g.reads = kept;
            for r in expired {
                r.reply.send(Err(RaftError::Timeout {
                    op: "read_index",
                    timeout_ms: timeout * self.cfg.tick_interval.as_millis() as u64,
                }));
            }
        }
        let ack_timeout = self.cfg.snapshot_ack_timeout_ticks;
        let stale: Vec<(NodeId, GroupId)> = self
            .transfers
            .iter()
            .filter(|_| !stalled) // reporting a failure steps raft: after the stall
            .filter(|(_, t)| {
                now.saturating_sub(t.started_tick) >= SNAPSHOT_TRANSFER_TIMEOUT_TICKS
                    || t.queued_tick
                        .is_some_and(|q| now.saturating_sub(q) >= ack_timeout)
            })
            .map(|(k, _)| *k)
            .collect();
        for (peer, gid) in stale {
            self.finish_transfer(peer, gid, false);
        }
        if now % ORPHAN_SWEEP_EVERY_TICKS == 0 {
            let age = Duration::from_secs(self.cfg.orphan_partial_max_age_secs);
            if let Ok(n) = self.snapshots.remove_orphans(age) {
                Metrics::add(&self.metrics.orphan_partials_removed, n as u64);
            }
        }
    }

    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Feeds one inbound frame. Dropped (counted) while a round is stalled; snapshot chunks
    /// are dropped in NO_SPACE (they are written to disk).
    pub fn step_frame(&mut self, frame: Frame) {
        if self.disk.stalled() {
            Metrics::inc(&self.metrics.inbound_dropped_stalled);
            return;
        }
        match frame {
            Frame::Batch(b) => {
                for (gid, m) in b.messages {
                    self.step_message(gid, m);
                }
            }
            Frame::Chunk(_) if self.disk.no_space() => {
                Metrics::inc(&self.metrics.appends_dropped_no_space);
            }
            Frame::Chunk(c) => {
                let (from, key) = (c.from, c.key);
                if !self.groups.contains_key(&key.group) {
                    Metrics::inc(&self.metrics.inbound_unknown_group);
                    return;
                }
                match self.snapshots.receive(*c) {
                    Ok(ChunkOutcome::InProgress) => {}
                    Ok(ChunkOutcome::Complete(m)) => {
                        Metrics::inc(&self.metrics.snapshots_received);
                        self.step_message(key.group, *m);
                        self.send_ack(from, key, true);
                    }
                    Err(_) => {
                        Metrics::inc(&self.metrics.snapshot_receive_errors);
                        self.send_ack(from, key, false);
                    }
                }
            }
            Frame::Ack(a) => {
                if self
                    .transfers
                    .get(&(a.from, a.key.group))
                    .is_some_and(|t| t.key == a.key)
                {
                    self.finish_transfer(a.from, a.key.group, a.ok);
                }
            }
        }
    }

    fn send_ack(&mut self, to: NodeId, key: SnapshotKey, ok: bool) {
        let ack = SnapshotAck {
            from: self.cfg.node_id,
            key,
            ok,
        };
        if self.net.send(to, Frame::Ack(ack)).is_err() {
            Metrics::inc(&self.metrics.send_errors);
        }
    }

    fn finish_transfer(&mut self, peer: NodeId, gid: GroupId, ok: bool) {
        if self.transfers.remove(&(peer, gid)).is_none() {
            return;
        }
        if let Some(g) = self.groups.get_mut(&gid) {
            let status = if ok {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            g.raw.report_snapshot(peer.0, status);
        }
        if !ok {
            Metrics::inc(&self.metrics.snapshot_send_failures);
        }
    }

    fn step_message(&mut self, gid: GroupId, mut m: Message) {
        let Some(g) = self.groups.get_mut(&gid) else {
            Metrics::inc(&self.metrics.inbound_unknown_group);
            return;
        };
        let last_index = g.raw.raft.raft_log.last_index();
        if m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > last_index && g.started_empty
        {
            // A replica created empty here (a joiner, or one rejoining after `--rejoin` forgot
            // its copy) acknowledged nothing; a leader whose progress still holds the matched
            // index of the copy this node lost sends a commit beyond our log. Clamped, so
            // raft-rs does not panic; the entries come by snapshot and append.
            m.commit = last_index;
        }
        if m.get_msg_type() == MessageType::MsgHeartbeat
            && m.term >= g.raw.raft.term
            && m.commit > last_index
        {
            // A leader sends a follower at most the index that follower acknowledged: one
            // beyond our log means entries we acknowledged are gone (raft-rs would panic).
            // Recorded, and made durable as the commit index, by the next round, which stops
            // the engine; the next open refuses the group until it rejoins.
            if !self.lost_at_runtime.iter().any(|t| t.group == gid) {
                self.lost_at_runtime.push(LostTail {
                    group: gid,
                    commit_index: m.commit,
                    last_index: g.raw.raft.raft_log.last_index(),
                });
            }
            return;
        }
        if self.disk.no_space() && grows_log(&m) {
            // NO_SPACE: this node's log must not grow. Like a partition for appends: the
            // leader retries; heartbeats (commit) and votes still get through.
            Metrics::inc(&self.metrics.appends_dropped_no_space);
            return;
        }
        if is_vote_request(&m) && g.raw.store().last() == 0 {
            // An empty replica (a learner not yet filled, or one rejoining after losing its
            // log) holds nothing to judge a candidate by: its vote could elect a leader that
            // lacks entries this node once acknowledged. No voter is ever empty (founders
            // start from a snapshot, joiners are promoted only once caught up), so this costs
            // no election its vote could legitimately decide.
            Metrics::inc(&self.metrics.votes_refused_empty);
            return;
        }
        if m.get_msg_type() == MessageType::MsgReadIndex
            && g.raw.raft.state == StateRole::Leader
            && !leads_with_commit(g)
        {
            // raft-rs 0.7 would drop it (no entry of this term committed yet): the follower's
            // read would wait for its deadline. Held and stepped once we have one.
            if g.deferred_read_msgs.len() < DEFERRED_READ_MSGS_MAX {
                g.deferred_read_msgs.push(m);
            }
            return;
        }
        if g.raw.step(m).is_err() {
            // Stale-term or unknown-peer messages: raft's normal noise, counted not logged.
            Metrics::inc(&self.metrics.step_errors);
        }
    }

    fn group_mut(&mut self, gid: GroupId) -> Result<&mut Group, RaftError> {
        self.groups
            .get_mut(&gid)
            .ok_or(RaftError::GroupNotFound { group: gid })
    }

    /// Proposes one entry holding `commands`; `reply` gets (index, one result per command)
    /// after commit and apply, or a typed error.
    pub fn propose(
        &mut self,
        gid: GroupId,
        commands: &[Vec<u8>],
        reply: impl Into<Reply<ProposeOutcome>>,
    ) {
        self.propose_for(None, gid, commands, reply);
    }

    /// [`MultiRaftCore::propose`] of commands written for the `kind` state machine: refused
    /// unless the group runs that one. A request path that speaks one state machine's language
    /// (the KV protocol) must not feed another group's log — group 0's metadata machine, or a
    /// host's — with bytes that group would take for its own commands.
    pub fn propose_for(
        &mut self,
        kind: Option<StateMachineKind>,
        gid: GroupId,
        commands: &[Vec<u8>],
        reply: impl Into<Reply<ProposeOutcome>>,
    ) {
        let reply = reply.into();
        let limit = self.cfg.pending_proposals_max;
        let no_space = self.disk.refuses_writes().then(|| self.data_dir());
        let r = (|| {
            let g = self.group_mut(gid)?;
            if let Some(kind) = kind {
                if g.meta.sm_kind != kind.0 {
                    return Err(RaftError::Invalid {
                        reason: format!("group {} does not run {kind}", gid.0),
                    });
                }
            }
            if g.raw.raft.state != StateRole::Leader {
                return Err(RaftError::NotLeader {
                    group: gid,
                    leader_hint: NodeId::from_raft(g.raw.raft.leader_id),
                });
            }
            if let Some(data_dir) = &no_space {
                // NO_SPACE (or a stalled round): a leader refuses; a follower still names the
                // leader above, whose disk may have room.
                return Err(RaftError::NoSpace {
                    data_dir: data_dir.clone(),
                });
            }
            if g.proposals.len() >= limit {
                return Err(RaftError::Busy {
                    reason: "too many pending proposals in this group",
                });
            }
            if commands.is_empty() {
                return Err(RaftError::Invalid {
                    reason: "empty proposal batch".into(),
                });
            }
            let before = g.raw.raft.raft_log.last_index();
            g.raw
                .propose(Vec::new(), encode_commands(commands))
                .map_err(|_| RaftError::Busy {
                    reason: "raft dropped the proposal (uncommitted limit or leader transfer)",
                })?;
            let index = g.raw.raft.raft_log.last_index();
            debug_assert_eq!(index, before + 1);
            Ok((index, g.raw.raft.term))
        })();
        match r {
            Ok((index, term)) => {
                Metrics::inc(&self.metrics.proposals);
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.proposals
                        .push_back(PendingProposal { index, term, reply });
                }
            }
            Err(e) => {
                if matches!(e, RaftError::Busy { .. }) {
                    Metrics::inc(&self.metrics.proposals_busy);
                }
                if matches!(e, RaftError::NoSpace { .. }) {
                    Metrics::inc(&self.metrics.proposals_no_space);
                }
                reply.send(Err(e));
            }
        }
    }

    /// Confirms leadership with a quorum (raft ReadIndex); `reply` gets the read index once
    /// this node has applied through it, so a local read is linearizable.
    pub fn read_index(&mut self, gid: GroupId, reply: impl Into<Reply<u64>>) {
        let reply = reply.into();
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let now = self.ticks;
        if let Err(e) = self.group_mut(gid) {
            reply.send(Err(e));
            return;
        }
        if self.disk.stalled() {
            reply.send(Err(RaftError::Busy { reason: STALLED })); // may not step raft now
            return;
        }
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        // Sent now if a leader that can answer is known, else once there is one (a read
        // waits out an election instead of failing: `issue_reads`); the ReadIndex deadline
        // bounds the wait.
        g.reads.push(PendingRead {
            ctx,
            started_tick: now,
            read_index: None,
            sent_to: 0,
            sent_tick: now,
            reply,
        });
        issue_reads(g, now);
    }

    /// Proposes a membership change (ConfChangeV2; several changes enter a joint config that
    /// raft leaves automatically). `reply` gets the voters after it applied.
    pub fn change_membership(
        &mut self,
        gid: GroupId,
        changes: &[MembershipChange],
        reply: impl Into<Reply<Vec<NodeId>>>,
    ) {
        let reply = reply.into();
        let no_space = self.disk.refuses_writes().then(|| self.data_dir());
        let r = (|| {
            let g = self.group_mut(gid)?;
            if g.raw.raft.state != StateRole::Leader {
                return Err(RaftError::NotLeader {
                    group: gid,
                    leader_hint: NodeId::from_raft(g.raw.raft.leader_id),
                });
            }
            if let Some(data_dir) = &no_space {
                // Every conf change is an entry every member must persist, a shrinking one too.
                return Err(RaftError::NoSpace {
                    data_dir: data_dir.clone(),
                });
            }
            if changes.is_empty() || changes.iter().any(|c| node_of(c).0 == 0) {
                return Err(RaftError::Invalid {
                    reason: format!("bad membership change {changes:?}"),
                });
            }
            let mut cc = ConfChangeV2::default();
            cc.set_changes(
                changes
                    .iter()
                    .map(|c| {
                        let mut s = raft::prelude::ConfChangeSingle::default();
                        let (t, n) = match c {
                            MembershipChange::AddLearner(n) => {
                                (raft::prelude::ConfChangeType::AddLearnerNode, n)
                            }
                            MembershipChange::AddVoter(n) => {
                                (raft::prelude::ConfChangeType::AddNode, n)
                            }
                            MembershipChange::Remove(n) => {
                                (raft::prelude::ConfChangeType::RemoveNode, n)
                            }
                        };
                        s.set_change_type(t);
                        s.node_id = n.0;
                        s
                    })
                    .collect::<Vec<_>>()
                    .into(),
            );
            g.raw
                .propose_conf_change(Vec::new(), cc)
                .map_err(|e| RaftError::Invalid {
                    reason: format!("conf change refused: {e}"),
                })?;
            Ok((g.raw.raft.raft_log.last_index(), g.raw.raft.term))
        })();
        match r {
            Ok((index, term)) => {
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.confs.push_back(PendingConf { index, term, reply });
                }
            }
            Err(e) => {
                if matches!(e, RaftError::NoSpace { .. }) {
                    Metrics::inc(&self.metrics.proposals_no_space);
                }
                reply.send(Err(e));
            }
        }
    }

    /// Asks the leader to hand leadership to `to` (raft's MsgTransferLeader).
    pub fn transfer_leader(&mut self, gid: GroupId, to: NodeId) -> Result<(), RaftError> {
        if self.disk.stalled() {
            return Err(RaftError::Busy { reason: STALLED });
        }
        let g = self.group_mut(gid)?;
        if g.raw.raft.state != StateRole::Leader {
            return Err(RaftError::NotLeader {
                group: gid,
                leader_hint: NodeId::from_raft(g.raw.raft.leader_id),
            });
        }
        g.raw.transfer_leader(to.0);
        Ok(())
    }

    /// Starts an election now (tests and operator tools; normally the tick does this).
    pub fn campaign(&mut self, gid: GroupId) -> Result<(), RaftError> {
        if self.disk.stalled() {
            return Err(RaftError::Busy { reason: STALLED });
        }
        let g = self.group_mut(gid)?;
        g.raw.campaign().map_err(|e| RaftError::Invalid {
            reason: e.to_string(),
        })
    }

    pub fn status(&self, gid: GroupId) -> Result<GroupStatus, RaftError> {
        let g = self
            .groups
            .get(&gid)
            .ok_or(RaftError::GroupNotFound { group: gid })?;
        let r = &g.raw.raft;
        let cs = r.store().conf_state();
        Ok(GroupStatus {
            group: gid,
            role: r.state.into(),
            term: r.term,
            leader: NodeId::from_raft(r.leader_id),
            commit_index: r.raft_log.committed,
            applied_index: g.applied_index,
            last_index: r.raft_log.last_index(),
            snapshot_index: r.store().snapshot_meta().index,
            voters: sorted_ids(&cs.voters),
            learners: sorted_ids(&cs.learners),
            voters_outgoing: sorted_ids(&cs.voters_outgoing),
            matched: if r.state == StateRole::Leader {
                let mut m: Vec<(NodeId, u64)> = r
                    .prs()
                    .iter()
                    .map(|(id, pr)| (NodeId(*id), pr.matched))
                    .collect();
                m.sort_unstable();
                m
            } else {
                Vec::new()
            },
        })
    }

    /// TEST HOOK: this node's randomized election timeout of `gid`, in ticks (raft-rs draws it
    /// at random on every term change); lets deterministic tests order candidates.
    #[doc(hidden)]
    pub fn set_election_timeout_ticks(&mut self, gid: GroupId, ticks: usize) {
        if let Some(g) = self.groups.get_mut(&gid) {
            g.raw.raft.set_randomized_election_timeout(ticks);
        }
    }

    /// Every group whose known leader or term changed since the last call, as (group, leader,
    /// term), oldest first (leader 0: none known, or the group was removed): the driver
    /// publishes them (`MultiRaft::wait_leader`).
    pub fn take_leader_changes(&mut self) -> Vec<(GroupId, u64, u64)> {
        std::mem::take(&mut self.leader_changes)
    }

    /// Does this node lead `gid`?
    pub fn is_leader(&self, gid: GroupId) -> bool {
        self.groups
            .get(&gid)
            .is_some_and(|g| g.raw.raft.state == StateRole::Leader)
    }

    /// Fails every pending request of every group (shutdown).
    pub fn fail_all_pending(&mut self, reason: &str) {
        let e = RaftError::Stopped {
            reason: reason.to_string(),
        };
        for g in self.groups.values_mut() {
            fail_all(g, &e);
        }
    }

    /// Does any group have work for `round`? Not while a round is stalled: it is retried at
    /// the next tick, not in a busy loop.
    pub fn has_ready(&self) -> bool {
        if self.disk.stalled() {
            return false;
        }
        self.groups.values().any(|g| g.raw.has_ready())
            || self
                .transfer_results
                .lock()
                .map(|v| !v.is_empty())
                .unwrap_or(false)
    }

    /// Handles every pending Ready (see the module docs for the order). Returns the number of
    /// groups that had one. A log error is fatal: the caller must stop the engine; a full disk
    /// is not: the round stalls and the next rounds retry its log write (`core/disk_full.rs`).
    pub fn round(&mut self) -> Result<usize, EngineError> {
        if !self.lost_at_runtime.is_empty() {
            return Err(self.stop_for_lost_tail());
        }
        if self.disk.stalled() {
            return self.retry_stalled_round();
        }
        self.collect_transfer_results();
        // (1) gather
        let mut readys = Vec::new();
        for (gid, g) in self.groups.iter_mut() {
            if g.raw.has_ready() {
                readys.push((*gid, g.raw.ready()));
            }
        }
        if readys.is_empty() {
            return Ok(0);
        }
        Metrics::inc(&self.metrics.rounds);
        // (2) messages sendable before persistence (leader appends / heartbeats)
        let mut out = Outbox::default();
        for (gid, rd) in readys.iter_mut() {
            out.add(*gid, rd.take_messages());
        }
        self.flush(out);
        // (3) committed entries (durable on a quorum and here: raft-rs hands out none above
        // the persisted index) applied and answered now, not after this round's fsync.
        for (gid, rd) in readys.iter_mut() {
            if !rd.snapshot().is_empty() {
                continue; // applied after the snapshot is installed, in (6)
            }
            let Some(g) = self.groups.get_mut(gid) else {
                continue;
            };
            apply_entries(g, rd.take_committed_entries(), &self.metrics);
            take_read_states(g, rd);
            answer_reads(g);
        }
        // (4) persist every group, then ONE sync
        let mut records = Vec::new();
        let mut must_sync = false;
        let mut floors_changed = false;
        for (gid, rd) in readys.iter_mut() {
            let Some(g) = self.groups.get_mut(gid) else {
                continue;
            };
            // raft-rs: new entries, a snapshot, or a term/vote change must be durable before
            // the persisted messages go out. A commit-only hard state need not be: it rides
            // along with the next sync (a lost commit index is re-learned from the leader).
            must_sync |= rd.must_sync();
            if !rd.snapshot().is_empty() {
                install_snapshot(g, &self.snapshots, rd.snapshot().clone(), &mut records)?;
                Metrics::inc(&self.metrics.snapshots_installed);
                floors_changed = true;
            }
            if !rd.entries().is_empty() {
                for e in rd.entries() {
                    records.push(LogRecord::entry(*gid, e));
                }
                g.raw
                    .mut_store()
                    .append(rd.entries())
                    .map_err(|reason| EngineError::Recovery {
                        group: *gid,
                        reason,
                    })?;
            }
            if let Some(hs) = rd.hs() {
                records.push(LogRecord::hard_state(*gid, hs));
                g.raw.mut_store().set_hard_state(hs.clone());
            }
        }
        // Append, then ONE sync: the durability point is in `write_round` (core/disk_full.rs).
        self.persist_round(PendingRound {
            readys,
            records,
            must_sync,
            floors_changed,
            appended: false,
            retries: 0,
        })
    }

    /// Steps (5) to (7) of a round whose records are durable (see the module docs).
    fn finish_round(&mut self, round: PendingRound) -> Result<usize, EngineError> {
        let PendingRound {
            mut readys,
            mut floors_changed,
            ..
        } = round;
        // (5) persisted messages — votes and append acks promise what is now on disk.
        assert_eq!(self.unsynced_records, 0, "persisted-before-send violated");
        let mut out = Outbox::default();
        for (gid, rd) in readys.iter_mut() {
            out.add(*gid, rd.take_persisted_messages());
        }
        self.flush(out);
        // (6) apply what waited for a snapshot, advance, light ready
        let mut out = Outbox::default();
        let groups_handled = readys.len();
        for (gid, mut rd) in readys {
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            apply_entries(g, rd.take_committed_entries(), &self.metrics);
            take_read_states(g, &mut rd);
            let mut light = g.raw.advance(rd);
            if let Some(c) = light.commit_index() {
                g.raw.mut_store().set_commit(c);
            }
            out.add(gid, light.take_messages());
            apply_entries(g, light.take_committed_entries(), &self.metrics);
            g.raw.advance_apply();
            answer_reads(g);
            step_down_check(g);
            issue_reads(g, self.ticks); // a new leader (or none any more), a first commit
            let known = (g.raw.raft.leader_id, g.raw.raft.term);
            if g.published_leader != Some(known) {
                g.published_leader = Some(known);
                self.leader_changes.push((gid, known.0, known.1));
            }
        }
        self.flush(out);
        self.apply_deferred_reports();
        // (7) snapshots past the threshold (none in NO_SPACE; a full disk here is noted and
        // tried again later, not fatal)
        floors_changed |= self.maybe_snapshot()?;
        if floors_changed {
            let compacted = self.compact_log();
            self.tolerate_no_space(compacted)?;
        }
        Ok(groups_handled)
    }

    /// Persists each lost group's attested commit index (so the next open refuses it too,
    /// instead of serving until the next heartbeat) and returns the error that stops the
    /// engine.
    fn stop_for_lost_tail(&mut self) -> EngineError {
        let lost = std::mem::take(&mut self.lost_at_runtime);
        let mut records = Vec::new();
        for tail in &lost {
            if let Some(g) = self.groups.get(&tail.group) {
                let mut hs = g.raw.raft.hard_state();
                hs.commit = hs.commit.max(tail.commit_index);
                records.push(LogRecord::hard_state(tail.group, &hs));
            }
        }
        let persisted = self.sink.append(&records).and_then(|()| self.sink.sync());
        let location = self.sink.location();
        match persisted {
            Ok(()) => EngineError::LostTail { lost, location },
            Err(e) => EngineError::Stopped(format!(
                "{}; recording it in the log failed too: {e}",
                EngineError::LostTail { lost, location }
            )),
        }
    }

    fn collect_transfer_results(&mut self) {
        let done: Vec<(NodeId, GroupId, bool)> = match self.transfer_results.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let now = self.ticks;
        for (peer, gid, ok) in done {
            if !ok {
                self.finish_transfer(peer, gid, false);
            } else if let Some(t) = self.transfers.get_mut(&(peer, gid)) {
                // Fully queued: now the receiver's ack must come within the ack timeout.
                t.queued_tick = Some(now);
            }
        }
    }

    /// Sends one frame (or a few, past `BATCH_FRAME_BYTES_MAX`) per destination peer.
    fn flush(&mut self, out: Outbox) {
        for (to, msgs) in out.by_peer {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            for (gid, m) in msgs {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.start_transfer(to, gid, m);
                    continue;
                }
                bytes += protobuf::Message::compute_size(&m) as usize + 16;
                batch.push((gid, m));
                if bytes >= BATCH_FRAME_BYTES_MAX {
                    self.send_batch(to, std::mem::take(&mut batch));
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                self.send_batch(to, batch);
            }
        }
    }

    fn send_batch(&mut self, to: NodeId, messages: Vec<(GroupId, Message)>) {
        let n = messages.len() as u64;
        let groups: Vec<GroupId> = messages.iter().map(|(g, _)| *g).collect();
        let frame = Frame::Batch(RaftBatch {
            from: self.cfg.node_id,
            messages,
        });
        Metrics::inc(&self.metrics.frames_sent);
        Metrics::add(&self.metrics.messages_sent, n);
        if self.net.send(to, frame).is_err() {
            Metrics::inc(&self.metrics.send_errors);
            for gid in groups {
                self.deferred_reports
                    .push((gid, to, PeerReport::Unreachable));
            }
        }
    }

    fn start_transfer(&mut self, to: NodeId, gid: GroupId, m: Message) {
        let snap = m.get_snapshot();
        let key = SnapshotKey {
            group: gid,
            index: snap.get_metadata().index,
            term: snap.get_metadata().term,
        };
        let desc = SnapshotDescriptor::decode(snap.get_data());
        let busy =
            self.transfers.len() >= SNAPSHOT_SENDS_MAX || self.transfers.contains_key(&(to, gid));
        let Ok(desc) = desc else {
            self.report_snapshot_failure(gid, to);
            return;
        };
        if busy {
            self.report_snapshot_failure(gid, to);
            return;
        }
        self.transfers.insert(
            (to, gid),
            OutgoingTransfer {
                key,
                started_tick: self.ticks,
                queued_tick: None,
            },
        );
        Metrics::inc(&self.metrics.snapshots_sent);
        let job = TransferJob {
            net: Arc::clone(&self.net),
            from: self.cfg.node_id,
            to,
            key,
            path: self.snapshots.path(&key, "snap"),
            desc,
            chunk_bytes: self.cfg.install_snapshot_chunk_bytes,
            message: m,
            chunk_timeout: self.cfg.tick_interval * 50,
        };
        let results = Arc::clone(&self.transfer_results);
        if self.inline_snapshot_sends {
            let ok = job.run().is_ok();
            if let Ok(mut v) = results.lock() {
                v.push((to, gid, ok));
            }
            return;
        }
        let spawned = std::thread::Builder::new()
            .name(format!("snap-send-{}-{}", gid.0, to.0))
            .spawn(move || {
                let ok = job.run().is_ok();
                if let Ok(mut v) = results.lock() {
                    v.push((to, gid, ok));
                }
            });
        if spawned.is_err() {
            self.transfers.remove(&(to, gid));
            self.report_snapshot_failure(gid, to);
        }
    }

    /// Called while Readys are outstanding (from `flush`): the report is stepped into raft
    /// after `advance`, since raft-rs forbids stepping between `ready()` and `advance()`.
    fn report_snapshot_failure(&mut self, gid: GroupId, to: NodeId) {
        Metrics::inc(&self.metrics.snapshot_send_failures);
        self.deferred_reports
            .push((gid, to, PeerReport::SnapshotFailure));
    }

    fn apply_deferred_reports(&mut self) {
        for (gid, to, report) in std::mem::take(&mut self.deferred_reports) {
            if let Some(g) = self.groups.get_mut(&gid) {
                match report {
                    PeerReport::Unreachable => g.raw.report_unreachable(to.0),
                    PeerReport::SnapshotFailure => {
                        g.raw.report_snapshot(to.0, SnapshotStatus::Failure)
                    }
                }
            }
        }
    }

    /// Snapshots every group that applied `snapshot_threshold_entries` since its last one, or
    /// whose leader was asked for a snapshot it could not serve.
    fn maybe_snapshot(&mut self) -> Result<bool, EngineError> {
        if self.disk.no_space() {
            return Ok(false); // a snapshot writes a file and a mark: not on a full disk
        }
        let threshold = self.cfg.snapshot_threshold_entries;
        let due: Vec<GroupId> = self
            .groups
            .values()
            .filter(|g| {
                let wanted = g.raw.store().take_snapshot_wanted();
                let since =
                    g.applied_index - g.raw.store().snapshot_meta().index.min(g.applied_index);
                since >= threshold || (wanted && since > 0)
            })
            .map(|g| g.id)
            .collect();
        for gid in &due {
            let taken = self.snapshot_group(*gid);
            self.tolerate_no_space(taken)?;
            if self.disk.no_space() {
                break;
            }
        }
        Ok(!due.is_empty())
    }

    /// Snapshots one group now at its applied index and compacts its log to it. Refused in
    /// NO_SPACE (a snapshot is a file and a log record).
    pub fn snapshot_group(&mut self, gid: GroupId) -> Result<(), EngineError> {
        if self.disk.refuses_writes() && self.groups.contains_key(&gid) {
            return Err(self.no_space_engine_error());
        }
        let Some(g) = self.groups.get_mut(&gid) else {
            return Err(EngineError::GroupNotFound(gid));
        };
        let index = g.applied_index;
        if index <= g.raw.store().snapshot_meta().index {
            return Ok(());
        }
        let term = g.raw.store().term(index)?;
        let data = g.sm.snapshot().map_err(SnapshotError::from)?;
        let key = SnapshotKey {
            group: gid,
            index,
            term,
        };
        let desc = self.snapshots.write(&key, &data)?;
        let meta = snapshot_meta(index, term, g.raw.store().conf_state().clone());
        // The mark must be durable before the log may drop what it covers.
        self.sink
            .append(&[LogRecord::snapshot_mark(gid, g.meta, &meta)])?;
        self.sink.sync()?;
        self.unsynced_records = 0;
        g.raw.mut_store().compact_to_snapshot(meta.clone());
        g.raw
            .mut_store()
            .set_outgoing(outgoing_snapshot(meta, desc));
        self.snapshots.remove_older(gid, index)?;
        Metrics::inc(&self.metrics.snapshots_taken);
        Ok(())
    }

    fn compact_log(&mut self) -> Result<(), EngineError> {
        let floors: Vec<(GroupId, u64)> = self
            .groups
            .values()
            .map(|g| (g.id, g.raw.store().snapshot_meta().index))
            .collect();
        self.sink.compact(&floors)?;
        Ok(())
    }

    /// Applied index of a group (tests and status).
    pub fn applied_index(&self, gid: GroupId) -> Option<u64> {
        self.groups.get(&gid).map(|g| g.applied_index)
    }
}

fn node_of(c: &MembershipChange) -> NodeId {
    match c {
        MembershipChange::AddLearner(n)
        | MembershipChange::AddVoter(n)
        | MembershipChange::Remove(n) => *n,
    }
}

/// Outbound messages of a round, grouped by destination peer across groups.
#[derive(Default)]
struct Outbox {
    by_peer: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
}

impl Outbox {
    fn add(&mut self, gid: GroupId, msgs: Vec<Message>) {
        for m in msgs {
            self.by_peer.entry(NodeId(m.to)).or_default().push((gid, m));
        }
    }
}

/// The first ReadIndex context of this engine. raft-rs leaders key pending ReadIndex requests by
/// context alone and ignore a request whose context is already pending, so contexts must not
/// collide across nodes (every engine counting from 1 did: a follower's read that met a
/// leader's own read with the same number was never answered) nor across restarts of one
/// node: the node id in the top 24 bits, a start taken from the clock below.
fn initial_read_ctx(node: NodeId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    ((node.0 & 0xff_ffff) << 40) | (u64::from(nanos) << 8)
}

/// Marks the reads `rd` confirms with their read index (answered once applied up to it).
fn take_read_states(g: &mut Group, rd: &mut raft::Ready) {
    for rs in rd.take_read_states() {
        let ctx = le_u64(&rs.request_ctx);
        if let Some(p) = g.reads.iter_mut().find(|p| Some(p.ctx) == ctx) {
            p.read_index = Some(rs.index);
        }
    }
}

fn is_vote_request(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    )
}
