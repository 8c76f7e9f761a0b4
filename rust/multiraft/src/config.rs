//! Engine configuration: every limit is a number with its reason, checked when the engine opens.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::EngineError;
use crate::ids::NodeId;
use crate::lost_tail::LostTailPolicy;

/// One tick drives every group. 100 ms keeps 256 groups' heartbeats at a few thousand small
/// messages per second per peer (batched into one frame per peer per round).
pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Heartbeat every tick (100 ms): a follower notices a dead leader within its election timeout.
pub const DEFAULT_HEARTBEAT_TICKS: usize = 1;
/// Election timeout 8 ticks; raft-rs randomizes it in [8, 16) ticks = [0.8, 1.6) s. With pre-vote
/// adding one loopback round trip, a SIGKILLed leader is replaced in under 1.7 s in the worst
/// case, inside the failover target (p99 ≤ 2 s).
pub const DEFAULT_ELECTION_TICKS: usize = 8;
/// 1 MiB per append message: large enough to batch thousands of 100-byte entries, small enough
/// that a heartbeat is never stuck behind a huge frame.
pub const DEFAULT_MAX_SIZE_PER_MSG_BYTES: u64 = 1 << 20;
/// 256 in-flight appends per follower (raft-rs default): with 1 MiB messages that bounds one
/// follower's unacknowledged window to 256 MiB, far more than a loopback/LAN BDP needs.
pub const DEFAULT_MAX_INFLIGHT_MSGS: usize = 256;
/// 32 MiB of proposed-but-uncommitted entries per group; above it proposals fail with `Busy`
/// instead of queueing without bound (raft-rs defaults to NO_LIMIT).
pub const DEFAULT_MAX_UNCOMMITTED_BYTES: u64 = 32 << 20;
/// Committed entries handed to a state machine per Ready: bounds the apply work of one round.
pub const DEFAULT_MAX_COMMITTED_BYTES_PER_READY: u64 = 16 << 20;
/// Commands (proposals, reads, admin) queued to the driver; a full queue answers `Busy`.
pub const DEFAULT_COMMAND_QUEUE_CAPACITY: usize = 8192;
/// Inbound raft frames queued to the driver; a full queue drops the frame (raft retransmits)
/// and counts it.
pub const DEFAULT_INBOUND_QUEUE_CAPACITY: usize = 4096;
/// Proposals awaiting apply per group; above it `Busy`.
pub const DEFAULT_PENDING_PROPOSALS_MAX: usize = 65_536;
/// A group snapshots its state machine and compacts its log after this many applied entries.
pub const DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES: u64 = 20_000;
/// A group also snapshots after this many bytes of applied entries: the log since the last
/// snapshot is held in memory, and a new replica is fed from it, so big entries compact sooner.
pub const DEFAULT_SNAPSHOT_THRESHOLD_BYTES: u64 = 32 << 20;
/// Snapshot transfer chunk (issue 4): 4 MiB, well below the 64 MiB frame limit.
pub const DEFAULT_INSTALL_SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;
/// A `.partial` snapshot untouched this long belongs to a dead transfer and is removed.
pub const DEFAULT_ORPHAN_PARTIAL_MAX_AGE_SECS: u64 = 300;
/// A ReadIndex request not answered within this many ticks fails with `Timeout` (2 election
/// timeouts: long enough to ride out one election).
pub const DEFAULT_READ_INDEX_TIMEOUT_TICKS: u64 = 32;
/// A snapshot whose chunks were all queued must be acknowledged within this many ticks
/// (5 s), else the transfer is reported failed and raft retries.
pub const DEFAULT_SNAPSHOT_ACK_TIMEOUT_TICKS: u64 = 50;
/// Driver work bound: commands and inbound frames handled per round before the Ready pass, so
/// a flood of input cannot starve ticks and fsyncs.
pub const DEFAULT_ROUND_INPUT_MAX: usize = 4096;
/// Far beyond any apply, snapshot or sync that still makes progress (a host state machine's
/// restore of gigabytes on the driver thread included), short of lingering for good.
pub const DEFAULT_DRIVER_STALL_MAX: Duration = Duration::from_secs(60);

/// Configuration of one node's Multi-Raft engine.
#[derive(Clone, Debug)]
pub struct MultiRaftConfig {
    /// This node's Raft id (≥ 1).
    pub node_id: NodeId,
    /// Root of the node's durable state; snapshots live under `data_dir/snapshots/`.
    pub data_dir: PathBuf,
    /// Wall-clock length of one tick.
    pub tick_interval: Duration,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Base election timeout in ticks (randomized by raft-rs in [e, 2e)).
    pub election_ticks: usize,
    /// raft-rs `max_size_per_msg`.
    pub max_size_per_msg_bytes: u64,
    /// raft-rs `max_inflight_msgs`.
    pub max_inflight_msgs: usize,
    /// raft-rs `max_uncommitted_size`.
    pub max_uncommitted_bytes: u64,
    /// raft-rs `max_committed_size_per_ready`.
    pub max_committed_bytes_per_ready: u64,
    /// Capacity of the driver's command queue.
    pub command_queue_capacity: usize,
    /// Capacity of the driver's inbound frame queue.
    pub inbound_queue_capacity: usize,
    /// Pending proposals per group.
    pub pending_proposals_max: usize,
    /// Applied entries between state-machine snapshots (log compaction).
    pub snapshot_threshold_entries: u64,
    /// A group also snapshots once it applied this many entry bytes since its last snapshot.
    pub snapshot_threshold_bytes: u64,
    /// Chunk size of snapshot transfer.
    pub install_snapshot_chunk_bytes: usize,
    /// Age after which an untouched `.partial` snapshot is deleted.
    pub orphan_partial_max_age_secs: u64,
    /// ReadIndex deadline in ticks.
    pub read_index_timeout_ticks: u64,
    /// Ack deadline of a fully queued snapshot transfer, in ticks.
    pub snapshot_ack_timeout_ticks: u64,
    /// Commands + frames handled per driver round.
    pub round_input_max: usize,
    /// What open does with a group whose log lost its acknowledged tail.
    pub lost_tail: LostTailPolicy,
    /// A driver thread that begins no loop for this long is stuck: the engine stops (the
    /// driver's watchdog). Zero: not watched.
    pub driver_stall_max: Duration,
}

/// The relations between the engine's timings: [`MultiRaftConfig::validate`] checks them, and
/// the Python config checks a config file's values with this same function (through the
/// binding) before anything starts, so the rule lives here alone.
pub fn check_timings(
    tick_interval: Duration,
    heartbeat_ticks: usize,
    election_ticks: usize,
    driver_stall_max: Duration,
) -> Result<(), EngineError> {
    let bad = |field: &'static str, reason: String| Err(EngineError::Config { field, reason });
    if tick_interval.is_zero() {
        return bad("tick_interval", "must be > 0".into());
    }
    if heartbeat_ticks == 0 {
        return bad("heartbeat_ticks", "must be ≥ 1".into());
    }
    if election_ticks <= heartbeat_ticks {
        return bad(
            "election_ticks",
            format!(
                "{election_ticks} ticks must exceed the heartbeat's {heartbeat_ticks}, or \
                 followers campaign against a live leader"
            ),
        );
    }
    if !driver_stall_max.is_zero() && driver_stall_max < tick_interval * 2 {
        return bad(
            "driver_stall_max",
            format!(
                "must be 0 (not watched) or at least two ticks ({} ms), got {} ms",
                (tick_interval * 2).as_millis(),
                driver_stall_max.as_millis()
            ),
        );
    }
    Ok(())
}

impl MultiRaftConfig {
    /// Defaults for everything but identity and location.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        MultiRaftConfig {
            node_id,
            data_dir: data_dir.into(),
            tick_interval: DEFAULT_TICK_INTERVAL,
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
            election_ticks: DEFAULT_ELECTION_TICKS,
            max_size_per_msg_bytes: DEFAULT_MAX_SIZE_PER_MSG_BYTES,
            max_inflight_msgs: DEFAULT_MAX_INFLIGHT_MSGS,
            max_uncommitted_bytes: DEFAULT_MAX_UNCOMMITTED_BYTES,
            max_committed_bytes_per_ready: DEFAULT_MAX_COMMITTED_BYTES_PER_READY,
            command_queue_capacity: DEFAULT_COMMAND_QUEUE_CAPACITY,
            inbound_queue_capacity: DEFAULT_INBOUND_QUEUE_CAPACITY,
            pending_proposals_max: DEFAULT_PENDING_PROPOSALS_MAX,
            snapshot_threshold_entries: DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
            snapshot_threshold_bytes: DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            install_snapshot_chunk_bytes: DEFAULT_INSTALL_SNAPSHOT_CHUNK_BYTES,
            orphan_partial_max_age_secs: DEFAULT_ORPHAN_PARTIAL_MAX_AGE_SECS,
            read_index_timeout_ticks: DEFAULT_READ_INDEX_TIMEOUT_TICKS,
            snapshot_ack_timeout_ticks: DEFAULT_SNAPSHOT_ACK_TIMEOUT_TICKS,
            round_input_max: DEFAULT_ROUND_INPUT_MAX,
            lost_tail: LostTailPolicy::Refuse,
            driver_stall_max: DEFAULT_DRIVER_STALL_MAX,
        }
    }

    /// Checks each field and the relations between them; the error names the field.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field: &'static str, reason: String| Err(EngineError::Config { field, reason });
        if self.node_id.0 == 0 {
            return bad("node_id", "must be ≥ 1 (raft reserves 0)".into());
        }
        check_timings(
            self.tick_interval,
            self.heartbeat_ticks,
            self.election_ticks,
            self.driver_stall_max,
        )?;
        let positive: [(&'static str, u64); 12] = [
            (
                "snapshot_ack_timeout_ticks",
                self.snapshot_ack_timeout_ticks,
            ),
            ("max_size_per_msg_bytes", self.max_size_per_msg_bytes),
            ("max_inflight_msgs", self.max_inflight_msgs as u64),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes),
            (
                "max_committed_bytes_per_ready",
                self.max_committed_bytes_per_ready,
            ),
            ("command_queue_capacity", self.command_queue_capacity as u64),
            ("inbound_queue_capacity", self.inbound_queue_capacity as u64),
            ("pending_proposals_max", self.pending_proposals_max as u64),
            (
                "snapshot_threshold_entries",
                self.snapshot_threshold_entries,
            ),
            ("snapshot_threshold_bytes", self.snapshot_threshold_bytes),
            (
                "install_snapshot_chunk_bytes",
                self.install_snapshot_chunk_bytes as u64,
            ),
            ("read_index_timeout_ticks", self.read_index_timeout_ticks),
        ];
        for (field, value) in positive {
            if value == 0 {
                return bad(field, "must be > 0".into());
            }
        }
        if self.round_input_max == 0 {
            return bad("round_input_max", "must be > 0".into());
        }
        // raft-rs refuses a group whose uncommitted limit does not exceed one message.
        if self.max_uncommitted_bytes <= self.max_size_per_msg_bytes {
            return bad(
                "max_uncommitted_bytes",
                format!(
                    "must exceed max_size_per_msg_bytes ({})",
                    self.max_size_per_msg_bytes
                ),
            );
        }
        // A chunk must fit in one wire frame (64 MiB payload limit, docs/WIRE.md) with headroom.
        if self.install_snapshot_chunk_bytes > 32 << 20 {
            return bad("install_snapshot_chunk_bytes", "must be ≤ 32 MiB".into());
        }
        if self.max_size_per_msg_bytes > 32 << 20 {
            return bad("max_size_per_msg_bytes", "must be ≤ 32 MiB".into());
        }
        Ok(())
    }

    /// The raft-rs config of one group on this node: every limit set explicitly.
    /// `skip_bcast_commit`: the group's state machine does not want a commit broadcast
    /// ([`crate::state_machine::StateMachine::commit_broadcast_wanted`]).
    pub(crate) fn raft_config(&self, applied_index: u64, skip_bcast_commit: bool) -> raft::Config {
        raft::Config {
            id: self.node_id.0,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied: applied_index,
            max_size_per_msg: self.max_size_per_msg_bytes,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: self.election_ticks,
            max_election_tick: 2 * self.election_ticks,
            read_only_option: raft::ReadOnlyOption::Safe,
            // Groups whose state machine waives it do not broadcast a new commit index on
            // their own: it rides on the next append or heartbeat (one tick at most). For the
            // KV the broadcast cost every write wave an extra frame to each follower, a
            // follower round and a response: 11 % of the CPU per write at 64 clients
            // (BENCHMARKS.md).
            skip_bcast_commit,
            // OFF: raft-rs 0.7 `try_batching` can merge re-sent entries into an earlier empty
            // MsgAppend with a different prev index (is_continuous_ents is true for an empty
            // message), producing an append whose entries do not follow its index; a follower
            // then acknowledges entries it does not hold. Seen under reordering with a lagging
            // follower. Frames are batched per peer by the engine anyway.
            batch_append: false,
            priority: 0,
            max_uncommitted_size: self.max_uncommitted_bytes,
            max_committed_size_per_ready: self.max_committed_bytes_per_ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn refused_field(result: Result<(), EngineError>) -> &'static str {
        match result {
            Err(EngineError::Config { field, .. }) => field,
            other => panic!("expected a config refusal, got {other:?}"),
        }
    }

    #[test]
    fn timings_the_engine_refuses_name_their_field() {
        let stall = DEFAULT_DRIVER_STALL_MAX;
        assert!(check_timings(TICK, 1, 5, stall).is_ok());
        assert_eq!(
            refused_field(check_timings(Duration::ZERO, 1, 5, stall)),
            "tick_interval"
        );
        assert_eq!(
            refused_field(check_timings(TICK, 0, 5, stall)),
            "heartbeat_ticks"
        );
        assert_eq!(
            refused_field(check_timings(TICK, 5, 5, stall)),
            "election_ticks"
        );
        let one_tick = Duration::from_millis(100);
        assert_eq!(
            refused_field(check_timings(TICK, 1, 5, one_tick)),
            "driver_stall_max"
        );
        assert!(
            check_timings(TICK, 1, 5, Duration::ZERO).is_ok(),
            "0: not watched"
        );
        assert!(check_timings(TICK, 1, 5, TICK * 2).is_ok());
    }

    #[test]
    fn validate_applies_the_same_timing_rules() {
        let mut cfg = MultiRaftConfig::new(NodeId(1), "/nonexistent");
        cfg.election_ticks = cfg.heartbeat_ticks;
        assert_eq!(refused_field(cfg.validate()), "election_ticks");
    }
}
