//! Counters of the engine, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters. Relaxed ordering: they are statistics, never synchronisation.
#[derive(Default, Debug)]
pub struct Metrics {
    pub rounds: AtomicU64,
    pub fsyncs: AtomicU64,
    pub records_written: AtomicU64,
    pub proposals: AtomicU64,
    pub proposals_busy: AtomicU64,
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
    pub snapshots_sent: AtomicU64,
    pub snapshot_send_failures: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshot_receive_errors: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub orphan_partials_removed: AtomicU64,
    /// Vote requests an empty replica dropped (see `MultiRaftCore::step_message`).
    pub votes_refused_empty: AtomicU64,
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
}
