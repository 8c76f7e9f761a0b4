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
//!
//! This file holds the round and the request path (propose, read); the rest of the core's
//! `impl` lives beside it in `core/`: `groups` (create, recover, remove), `inbound` (frames
//! in), `outbound` (frames and snapshot transfers out), `control` (membership, leadership,
//! status), `compaction` (snapshots and log compaction), `types` (the API's values).

mod compaction;
mod control;
mod disk_full;
mod groups;
mod inbound;
mod outbound;
mod propose;
mod types;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::prelude::{ConfChangeV2, ConfState, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};

use crate::codec::{Frame, RaftBatch, SnapshotAck, SnapshotKey};
use crate::config::MultiRaftConfig;
use crate::error::{EngineError, RaftError, SnapshotError};
use crate::group::{
    answer_reads, apply_entries, fail_all, install_snapshot, issue_reads, le_u64,
    leads_with_commit, lease_holds, resend_pre_votes, snapshot_meta, sorted_ids, step_down_check,
    Group, PendingConf, PendingRead, ReadLease, DEFERRED_READ_MSGS_MAX,
};
use crate::ids::{GroupId, NodeId};
use crate::lease_board::LeaseBoard;
use crate::log_sink::{recover, GroupMeta, LogRecord, LogSink};
use crate::lost_tail::{find_lost_tails, LostTail, LostTailPolicy};
use crate::metrics::Metrics;
use crate::network::{Lane, RaftNetwork};
use crate::snapshot::{ChunkOutcome, SnapshotDescriptor, SnapshotStore, TransferJob};
use crate::snapshot_worker::{RestoreStream, SnapshotDone, SnapshotJob, SnapshotWorkers};
use crate::state_machine::{StateMachine, StateMachineFactory, StateMachineKind};
use crate::storage::GroupStorage;

pub use self::disk_full::SPACE_SAMPLE_EVERY_TICKS;
use self::disk_full::{grows_log, DiskState, PendingRound, STALLED};
pub use self::types::{
    Gather, GroupRole, GroupStatus, MembershipChange, ProposeOutcome, ReadPoint, Reply, Role,
};

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

struct OutgoingTransfer {
    key: SnapshotKey,
    started_tick: u64,
    started: std::time::Instant,
    /// When the sender thread queued the last chunk; the ack must follow within
    /// `snapshot_ack_timeout_ticks` (a lost chunk or a dead receiver never acks).
    queued_tick: Option<u64>,
    /// Tells the sender thread to stop (see `TransferJob::cancelled`).
    cancelled: Arc<std::sync::atomic::AtomicBool>,
}

/// Completed snapshot sends reported by transfer threads: (peer, group, Ok once every chunk
/// was queued).
type TransferResults = Arc<Mutex<Vec<(NodeId, GroupId, Result<(), SnapshotError>)>>>;

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
    /// The snapshot threads: builds and restores off the driver thread.
    snapshot_work: SnapshotWorkers,
    /// Received snapshots being decoded while they arrive, by group.
    streams: HashMap<GroupId, RestoreStream>,
    /// Peer reports raised while Readys were outstanding, stepped in after `advance`.
    deferred_reports: Vec<(GroupId, NodeId, PeerReport)>,
    /// Groups whose lost-tail state open forgot ([`LostTailPolicy::Discard`]).
    discarded: Vec<LostTail>,
    /// Groups a leader's heartbeat showed to have lost acknowledged entries (fatal).
    lost_at_runtime: Vec<LostTail>,
    /// A fatal error met outside a round (a received snapshot its state machine cannot decode,
    /// decoded on this thread): the next round returns it.
    fatal: Option<EngineError>,
    /// NO_SPACE state and a round stalled on a full disk (`core/disk_full.rs`).
    disk: DiskState,
    /// The lease views of the groups this node leads, for readers on other threads.
    lease_board: Arc<LeaseBoard>,
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
        let snapshot_work =
            SnapshotWorkers::new(snapshots.files().clone(), cfg.node_id.0.to_string());
        let mut core = MultiRaftCore {
            snapshot_work,
            streams: HashMap::new(),
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
            fatal: None,
            disk: DiskState::default(),
            lease_board: Arc::default(),
            cfg,
        };
        for (gid, rg) in recovered {
            core.start_group(gid, rg)?;
        }
        Ok(core)
    }

    /// Sends snapshot chunks, and builds and restores snapshots, on the calling thread: for
    /// tests that drive the core by hand and must not race a thread against their simulated
    /// time.
    pub fn set_inline_snapshot_work(&mut self, inline: bool) {
        self.inline_snapshot_sends = inline;
        self.snapshot_work.inline = inline;
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
    /// Where this engine publishes its groups' read leases ([`LeaseBoard`]).
    pub fn lease_board(&self) -> Arc<LeaseBoard> {
        Arc::clone(&self.lease_board)
    }
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups.keys().copied().collect()
    }
    pub fn has_group(&self, g: GroupId) -> bool {
        self.groups.contains_key(&g)
    }

    /// One tick for every group; expires overdue reads and snapshot transfers; samples the
    /// log's free space when due. While a round is stalled raft is not ticked (raft-rs: no
    /// state change between `ready` and `advance`); reads still expire.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.sample_space_if_due();
        let stalled = self.disk.stalled();
        let tick_ms = self.cfg.tick_interval.as_millis() as u64;
        let now = self.ticks;
        for g in self.groups.values_mut() {
            if !stalled {
                g.raw.tick();
                resend_pre_votes(g, now);
                issue_reads(g, now); // resends what went unanswered
            }
            let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut g.reads)
                .into_iter()
                .partition(|r| now >= r.expires_tick);
            g.reads = kept;
            for r in expired {
                r.reply.send(Err(RaftError::Timeout {
                    op: "read_index",
                    timeout_ms: (r.expires_tick - r.started_tick) * tick_ms,
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
            self.finish_transfer(peer, gid, false, "timed out");
        }
        if now % ORPHAN_SWEEP_EVERY_TICKS == 0 {
            let age = Duration::from_secs(self.cfg.orphan_partial_max_age_secs);
            if let Ok(n) = self.snapshots.remove_orphans(age) {
                Metrics::add(&self.metrics.orphan_partials_removed, n as u64);
            }
            self.drop_dead_streams();
        }
    }

    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    fn group_mut(&mut self, gid: GroupId) -> Result<&mut Group, RaftError> {
        self.groups
            .get_mut(&gid)
            .ok_or(RaftError::GroupNotFound { group: gid })
    }

    /// Confirms leadership with a quorum (raft ReadIndex); `reply` gets the read index once
    /// this node has applied through it, so a local read is linearizable.
    pub fn read_index(&mut self, gid: GroupId, reply: impl Into<Reply<u64>>) {
        let reply = reply.into();
        self.read_index_leased(
            gid,
            None,
            None,
            Reply::new(move |r: Result<ReadPoint, RaftError>| reply.send(r.map(|p| p.index))),
        );
    }

    /// [`Self::read_index`], answered with the commit index and no quorum round when this
    /// node leads `gid` and the caller's `lease` holds ([`lease_holds`]).
    pub fn read_index_leased(
        &mut self,
        gid: GroupId,
        lease: Option<ReadLease>,
        timeout: Option<std::time::Duration>,
        reply: impl Into<Reply<ReadPoint>>,
    ) {
        let reply = reply.into();
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let now = self.ticks;
        let tick_ms = self.cfg.tick_interval.as_millis().max(1);
        let asked = timeout.map_or(0, |t| t.as_millis().div_ceil(tick_ms));
        let expires_tick = now
            + u64::try_from(asked)
                .unwrap_or(u64::MAX / 2)
                .max(self.cfg.read_index_timeout_ticks);
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
        Metrics::inc(&self.metrics.read_index_requests);
        if lease.is_some_and(|lease| lease_holds(g, lease, std::time::Instant::now())) {
            Metrics::inc(&self.metrics.read_index_leased);
            let index = g.raw.raft.raft_log.committed;
            if g.applied_index >= index {
                // The usual case: answered now, without queueing (or re-sorting the queue).
                reply.send(Ok(ReadPoint {
                    index,
                    by_lease: true,
                }));
                return;
            }
            g.reads.push(PendingRead {
                ctx,
                started_tick: now,
                expires_tick,
                read_index: Some(index),
                sent_to: g.raw.raft.id,
                sent_tick: now,
                by_lease: true,
                reply,
            });
            return;
        }
        // Sent now if a leader that can answer is known, else once there is one (a read
        // waits out an election instead of failing: `issue_reads`); the ReadIndex deadline
        // bounds the wait.
        g.reads.push(PendingRead {
            ctx,
            started_tick: now,
            expires_tick,
            read_index: None,
            sent_to: 0,
            sent_tick: now,
            by_lease: false,
            reply,
        });
        issue_reads(g, now);
    }

    /// Fails every pending request of every group (shutdown, or a fatal error). A proposal or
    /// membership change raft already took may still commit under the next leader (its entry
    /// can be on the followers' logs): `LeadershipLost`, outcome unknown, as at a step-down;
    /// answering it `Stopped` told a host it failed, and a host retrying then applied it twice
    /// (embedding probe, session 30). Reads have no effect: `Stopped` with the reason.
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
            || self.snapshot_work.has_done()
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
        if let Some(fatal) = self.fatal.take() {
            return Err(fatal);
        }
        if self.disk.stalled() {
            return self.retry_stalled_round();
        }
        self.collect_transfer_results();
        self.collect_snapshot_work()?;
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
        // Before anything of this round leaves: a leadership transfer started since the last
        // round ends the lease here before its target hears of it (lease_board.rs).
        self.publish_leases(readys.iter().map(|(gid, _)| *gid));
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
            apply_entries(g, rd.take_committed_entries(), &self.metrics)?;
            take_read_states(g, rd);
            answer_reads(g);
        }
        // (4) persist every group, then ONE sync
        let mut records = Vec::new();
        let mut must_sync = false;
        let mut floors_changed = false;
        let mut installed_snapshots = Vec::new();
        for (gid, rd) in readys.iter_mut() {
            let Some(g) = self.groups.get_mut(gid) else {
                continue;
            };
            // raft-rs: new entries, a snapshot, or a term/vote change must be durable before
            // the persisted messages go out. A commit-only hard state need not be: it rides
            // along with the next sync (a lost commit index is re-learned from the leader).
            must_sync |= rd.must_sync();
            if !rd.snapshot().is_empty() {
                let started = std::time::Instant::now();
                install_snapshot(g, &self.snapshots, rd.snapshot().clone(), &mut records)?;
                installed_snapshots.push((*gid, rd.snapshot().get_metadata().index));
                self.metrics.snapshot_apply_seconds.observe_since(started);
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
            installed_snapshots,
            appended: false,
            retries: 0,
        })
    }

    /// Steps (5) to (7) of a round whose records are durable (see the module docs).
    fn finish_round(&mut self, round: PendingRound) -> Result<usize, EngineError> {
        let PendingRound {
            mut readys,
            mut floors_changed,
            installed_snapshots,
            ..
        } = round;
        // (5) persisted messages — votes and append acks promise what is now on disk.
        assert_eq!(self.unsynced_records, 0, "persisted-before-send violated");
        for (gid, index) in installed_snapshots {
            self.snapshots.remove_older(gid, index)?; // their marks are durable now
        }
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
            apply_entries(g, rd.take_committed_entries(), &self.metrics)?;
            take_read_states(g, &mut rd);
            let mut light = g.raw.advance(rd);
            if let Some(c) = light.commit_index() {
                g.raw.mut_store().set_commit(c);
            }
            out.add(gid, light.take_messages());
            apply_entries(g, light.take_committed_entries(), &self.metrics)?;
            g.raw.advance_apply();
            answer_reads(g);
            step_down_check(g);
            issue_reads(g, self.ticks); // a new leader (or none any more), a first commit
            let known = (g.raw.raft.leader_id, g.raw.raft.term);
            if g.published_leader != Some(known) {
                g.published_leader = Some(known);
                if known.0 != 0 {
                    self.metrics.leader_changed(gid.0);
                }
                self.leader_changes.push((gid, known.0, known.1));
            }
            // Before this round's last messages leave (the commit index they carry).
            crate::lease_board::publish(g);
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

    /// Publishes the lease views of `gids` that changed since their last publication.
    fn publish_leases(&mut self, gids: impl Iterator<Item = GroupId>) {
        for gid in gids {
            if let Some(g) = self.groups.get_mut(&gid) {
                crate::lease_board::publish(g);
            }
        }
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
