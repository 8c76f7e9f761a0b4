//! Counters and latency histograms of the engine, readable from any thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use nodedb_obs::{Histogram, HistogramSnapshot};

/// Monotonic counters. Relaxed ordering: they are statistics, never synchronisation.
#[derive(Default, Debug)]
pub struct Metrics {
    pub rounds: AtomicU64,
    pub fsyncs: AtomicU64,
    pub records_written: AtomicU64,
    pub proposals: AtomicU64,
    pub proposals_busy: AtomicU64,
    /// ReadIndex requests taken (each one quorum round unless it rides another's): a
    /// linearizable read costs one; lease and follower reads none.
    pub read_index_requests: AtomicU64,
    /// Of those, answered at once from a leader's lease (no quorum round).
    pub read_index_leased: AtomicU64,
    /// Linearizable reads answered from the lease off the driver (`MultiRaft::lease_read`).
    pub read_lease_local: AtomicU64,
    pub commands_applied: AtomicU64,
    pub frames_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub step_errors: AtomicU64,
    pub inbound_dropped_full: AtomicU64,
    pub inbound_decode_errors: AtomicU64,
    /// Frames whose claimed sender (frame or raft message `from`) is not the node id of the
    /// certificate they arrived under: dropped unseen.
    pub inbound_forged_sender: AtomicU64,
    pub inbound_unknown_group: AtomicU64,
    pub snapshots_taken: AtomicU64,
    /// Snapshots the state machine could not give its state for (a host's `snapshot()` raised):
    /// not fatal, the group's log grows until one succeeds.
    pub snapshot_state_machine_errors: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshot_send_failures: AtomicU64,
    /// Snapshot files found damaged while being sent (not sent; a new snapshot replaces them).
    pub snapshot_files_damaged: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshot_receive_errors: AtomicU64,
    /// Snapshot chunks dropped because the group was still restoring an earlier snapshot.
    pub snapshot_chunks_dropped_restoring: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub orphan_partials_removed: AtomicU64,
    /// Vote requests an empty replica dropped (see `MultiRaftCore::step_message`).
    pub votes_refused_empty: AtomicU64,
    /// 1 while the node is in its NO_SPACE state (writes refused), else 0: a gauge.
    pub no_space: AtomicU64,
    /// Times the node entered NO_SPACE.
    pub no_space_entered: AtomicU64,
    /// Inbound MsgAppend with entries and MsgSnapshot (and snapshot chunks) dropped unstepped in
    /// NO_SPACE, so the log stops growing (the leader retries, as after a partition).
    pub appends_dropped_no_space: AtomicU64,
    /// Proposals and membership changes refused with `RaftError::NoSpace`.
    pub proposals_no_space: AtomicU64,
    /// Rounds whose log append/sync hit a full disk and stalled (kept, retried each tick).
    pub log_stalls: AtomicU64,
    /// Inbound frames dropped while a round was stalled (raft may not step then).
    pub inbound_dropped_stalled: AtomicU64,
    /// Torn tails the log's recovery repaired at open (0 or 1 per open).
    pub wal_torn_tail_repairs_total: AtomicU64,
    /// Bytes those repairs discarded (truncated or zeroed).
    pub wal_torn_tail_bytes_discarded_total: AtomicU64,
    /// The round's one log sync (the durability point).
    pub wal_fsync_seconds: Histogram,
    /// A proposal taken by the leader until its entry applied here and the caller was answered.
    pub proposal_commit_seconds: Histogram,
    /// One run of committed commands through the state machine's `apply_batch`.
    pub apply_batch_seconds: Histogram,
    /// A snapshot sent to a follower, from the first chunk until its ack.
    pub snapshot_send_seconds: Histogram,
    /// A received snapshot installed (state machine restore and log reset).
    pub snapshot_apply_seconds: Histogram,
    /// Leader changes seen per group (a new leader or a new term with one); elections are rare,
    /// so a lock is fine here.
    leader_changes: Mutex<BTreeMap<u64, u64>>,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn set(c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }

    /// Group `group` has a leader it did not have before (or the same one in a new term).
    pub fn leader_changed(&self, group: u64) {
        if let Ok(mut m) = self.leader_changes.lock() {
            *m.entry(group).or_default() += 1;
        }
    }

    /// Every counter by its exported name (what a host shows as metrics).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let rows: [(&'static str, &AtomicU64); 36] = [
            ("rounds", &self.rounds),
            ("read_index_requests", &self.read_index_requests),
            ("read_index_leased", &self.read_index_leased),
            ("read_lease_local", &self.read_lease_local),
            ("fsyncs", &self.fsyncs),
            ("records_written", &self.records_written),
            ("proposals", &self.proposals),
            ("proposals_busy", &self.proposals_busy),
            ("commands_applied", &self.commands_applied),
            ("frames_sent", &self.frames_sent),
            ("messages_sent", &self.messages_sent),
            ("send_errors", &self.send_errors),
            ("step_errors", &self.step_errors),
            ("inbound_dropped_full", &self.inbound_dropped_full),
            ("inbound_decode_errors", &self.inbound_decode_errors),
            ("inbound_forged_sender", &self.inbound_forged_sender),
            ("inbound_unknown_group", &self.inbound_unknown_group),
            ("snapshots_taken", &self.snapshots_taken),
            (
                "snapshot_state_machine_errors",
                &self.snapshot_state_machine_errors,
            ),
            ("snapshots_sent", &self.snapshots_sent),
            ("snapshot_send_failures", &self.snapshot_send_failures),
            ("snapshot_files_damaged", &self.snapshot_files_damaged),
            ("snapshots_received", &self.snapshots_received),
            ("snapshot_receive_errors", &self.snapshot_receive_errors),
            (
                "snapshot_chunks_dropped_restoring",
                &self.snapshot_chunks_dropped_restoring,
            ),
            ("snapshots_installed", &self.snapshots_installed),
            ("orphan_partials_removed", &self.orphan_partials_removed),
            ("no_space", &self.no_space),
            ("no_space_entered", &self.no_space_entered),
            ("appends_dropped_no_space", &self.appends_dropped_no_space),
            ("proposals_no_space", &self.proposals_no_space),
            ("log_stalls", &self.log_stalls),
            ("inbound_dropped_stalled", &self.inbound_dropped_stalled),
            (
                "wal_torn_tail_repairs_total",
                &self.wal_torn_tail_repairs_total,
            ),
            (
                "wal_torn_tail_bytes_discarded_total",
                &self.wal_torn_tail_bytes_discarded_total,
            ),
            ("votes_refused_empty", &self.votes_refused_empty),
        ];
        rows.iter().map(|(k, v)| (*k, Metrics::get(v))).collect()
    }

    /// Leader changes seen, by group.
    pub fn leader_changes(&self) -> BTreeMap<u64, u64> {
        self.leader_changes
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Every histogram of the engine by family name (without `nodedb_raft_`).
    pub fn histograms(&self) -> [(&'static str, HistogramSnapshot); 5] {
        [
            (
                "wal_fsync_duration_seconds",
                self.wal_fsync_seconds.snapshot(),
            ),
            (
                "proposal_commit_duration_seconds",
                self.proposal_commit_seconds.snapshot(),
            ),
            (
                "apply_batch_duration_seconds",
                self.apply_batch_seconds.snapshot(),
            ),
            (
                "snapshot_send_duration_seconds",
                self.snapshot_send_seconds.snapshot(),
            ),
            (
                "snapshot_apply_duration_seconds",
                self.snapshot_apply_seconds.snapshot(),
            ),
        ]
    }
}
