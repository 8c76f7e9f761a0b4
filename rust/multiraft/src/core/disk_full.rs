//! Disk full without collapse: the engine's NO_SPACE state and the stalled round.
//!
//! **NO_SPACE** (decided by `crate::no_space`, fed here): entered when the log's filesystem
//! has less free space than the log's reserve (sampled every [`SPACE_SAMPLE_EVERY_TICKS`]
//! ticks, every tick while in it, and after each segment roll) or when the log reports
//! `NoSpace`; left once free space is back above the reserve by a margin. While in it:
//! proposals and membership changes are refused with `RaftError::NoSpace` (all of them:
//! every entry, a shrinking conf change included, is a write every member must persist;
//! simplest to explain and nothing an operator needs while the disk is full), snapshots are
//! not taken, and inbound MsgAppend carrying entries, MsgSnapshot and snapshot chunks are
//! dropped before raft sees them (counted), so this node's log stops growing: its leader
//! retries later, as after a partition. Heartbeats, votes and commit updates still flow, so
//! ReadIndex reads are served.
//!
//! **A stalled round**: if the log's append or sync fails with `NoSpace` anyway (another
//! process ate the reserve), the round is kept — its Readys, records and how far it got —
//! and `round()` returns Ok. Raft-rs forbids stepping, proposing or ticking between `ready()`
//! and `advance()`, so while stalled no new Ready is taken, inbound frames are dropped
//! (counted; raft retransmits), raft is not ticked, and requests that would step raft are
//! refused (`NoSpace` for writes, `Busy` for the rest). Each later round (at most once per
//! tick) retries exactly that append + sync; once it succeeds the round finishes (persisted
//! messages, advance, apply). No proposal is answered before its entry is durable: answers
//! come from applying, which only happens after that retry's sync. Any other log error is
//! fatal as before.

use std::path::PathBuf;

use raft::prelude::{Message, MessageType};

use crate::error::{EngineError, SinkError};
use crate::ids::GroupId;
use crate::log_sink::{LogRecord, LogRepair};
use crate::metrics::Metrics;
use crate::no_space::{NoSpaceState, Transition};

use super::MultiRaftCore;

/// Free space is sampled every this many ticks (0.5 s at 100 ms), and every tick while in
/// NO_SPACE so writes resume promptly. One `statvfs` each.
pub const SPACE_SAMPLE_EVERY_TICKS: u64 = 5;

/// The reason `Busy` gives for requests that would step raft while a round is stalled.
pub(super) const STALLED: &str =
    "the log write of the last round is stalled on a full disk; retry once space is freed";

/// A round whose records could not be written for lack of space, kept to finish later.
pub(super) struct PendingRound {
    pub readys: Vec<(GroupId, raft::Ready)>,
    pub records: Vec<LogRecord>,
    pub must_sync: bool,
    pub floors_changed: bool,
    /// (group, index) of each snapshot installed in this round: the group's older snapshot
    /// files are removed once the round's records (its mark) are durable.
    pub installed_snapshots: Vec<(GroupId, u64)>,
    /// The records were appended (a failed `sync` keeps them; a failed `append` took none).
    pub appended: bool,
    /// Retries of this round's log write so far (0 until it first stalled).
    pub retries: u32,
}

/// What the core tracks about a full disk.
#[derive(Default)]
pub(super) struct DiskState {
    state: NoSpaceState,
    stalled: Option<PendingRound>,
    /// Tick of the stall or of the last retry: one retry per tick.
    retried_tick: u64,
}

impl DiskState {
    pub fn stalled(&self) -> bool {
        self.stalled.is_some()
    }
    /// Writes refused: NO_SPACE, or a stalled round (raft may not be stepped).
    pub fn refuses_writes(&self) -> bool {
        self.state.no_space() || self.stalled.is_some()
    }
    pub fn no_space(&self) -> bool {
        self.state.no_space()
    }
}

/// Messages that would make this node's log (or snapshot directory) grow.
pub(super) fn grows_log(m: &Message) -> bool {
    match m.get_msg_type() {
        MessageType::MsgAppend => !m.entries.is_empty(),
        MessageType::MsgSnapshot => true,
        _ => false,
    }
}

impl MultiRaftCore {
    /// Is the node in its NO_SPACE state (writes refused)?
    pub fn no_space(&self) -> bool {
        self.disk.no_space()
    }

    /// Is a round's log write stalled on a full disk (being retried every tick)?
    pub fn stalled(&self) -> bool {
        self.disk.stalled()
    }

    /// What the log's recovery repaired at open (torn tails discarded).
    pub fn recovery_repairs(&self) -> Vec<LogRepair> {
        self.sink.recovery_repairs()
    }

    pub(super) fn data_dir(&self) -> PathBuf {
        self.cfg.data_dir.clone()
    }

    pub(super) fn no_space_engine_error(&self) -> EngineError {
        EngineError::NoSpace {
            data_dir: self.data_dir(),
        }
    }

    /// Counted, and said once each way (operator probe, session 31: entering and leaving
    /// NO_SPACE wrote no line at all, so the log never showed why writes were refused).
    /// Entering, the log gives back the segment it prepared ahead of need: on a small volume
    /// that file of zeros was what held the node below its reserve, for good; the next sample
    /// may then find it out.
    fn note(&mut self, t: Transition, why: &str) {
        let dir = self.cfg.data_dir.display();
        match t {
            Transition::Entered => {
                Metrics::inc(&self.metrics.no_space_entered);
                Metrics::set(&self.metrics.no_space, 1);
                tracing::warn!(
                    "NO_SPACE: {why} on the disk of {dir}: writes refused until space is freed \
                     there (reads go on)"
                );
                if self.sink.release_spare_space() {
                    tracing::info!("NO_SPACE: released the log's prepared segment in {dir}");
                }
            }
            Transition::Left => {
                Metrics::set(&self.metrics.no_space, 0);
                tracing::info!("NO_SPACE over: {why} on the disk of {dir}; writes taken again");
            }
            Transition::Unchanged => {}
        }
    }

    /// The log (or a snapshot write) hit a full disk.
    pub(super) fn note_no_space(&mut self) {
        let t = self.disk.state.no_space_error();
        self.note(t, "a write failed with ENOSPC");
    }

    /// One free-space sample of the log's filesystem into the NO_SPACE state.
    pub(super) fn sample_space(&mut self) {
        if let Some(sample) = self.sink.space() {
            let t = self.disk.state.observe(sample);
            if !matches!(t, Transition::Unchanged) {
                let why = format!(
                    "{} bytes free, the reserve is {}",
                    sample.available_bytes, sample.reserve_bytes
                );
                self.note(t, &why);
            }
        }
    }

    /// Called every tick: samples when due. Not while a round is stalled: the state stays
    /// NO_SPACE until its write landed (the retry, this tick, is the better sample).
    pub(super) fn sample_space_if_due(&mut self) {
        if self.disk.stalled() {
            return;
        }
        if self.disk.no_space() || self.ticks % SPACE_SAMPLE_EVERY_TICKS == 0 {
            self.sample_space();
        }
    }

    /// Writes a round's records (append, then the one sync): Ok, or the round stalls on a
    /// full disk; any other log error is fatal.
    pub(super) fn persist_round(&mut self, mut round: PendingRound) -> Result<usize, EngineError> {
        match self.write_round(&mut round) {
            Ok(()) => self.finish_round(round),
            Err(e) if e.is_no_space() => {
                if round.retries == 0 {
                    Metrics::inc(&self.metrics.log_stalls);
                }
                self.note_no_space();
                self.disk.retried_tick = self.ticks;
                self.disk.stalled = Some(round);
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_round(&mut self, round: &mut PendingRound) -> Result<(), SinkError> {
        if !round.appended && !round.records.is_empty() {
            self.sink.append(&round.records)?;
            round.appended = true;
            Metrics::add(&self.metrics.records_written, round.records.len() as u64);
            if round.must_sync {
                self.unsynced_records += round.records.len();
            }
            if self.sink.take_rolled() {
                self.sample_space();
            }
        }
        if round.must_sync {
            // DURABILITY POINT: entries, term/vote and snapshot marks of every group in this
            // round become durable here, with one fsync. Nothing after this line runs before it
            // (a stalled round finishes only after a retry of this sync succeeded).
            let started = std::time::Instant::now();
            self.sink.sync()?;
            self.metrics.wal_fsync_seconds.observe_since(started);
            Metrics::inc(&self.metrics.fsyncs);
            self.unsynced_records = 0;
        }
        Ok(())
    }

    /// The stalled round's append + sync again, at most once per tick.
    pub(super) fn retry_stalled_round(&mut self) -> Result<usize, EngineError> {
        if self.ticks == self.disk.retried_tick {
            return Ok(0);
        }
        self.disk.retried_tick = self.ticks;
        match self.disk.stalled.take() {
            Some(mut round) => {
                round.retries += 1;
                self.persist_round(round)
            }
            None => Ok(0),
        }
    }

    /// A failure of snapshotting or compaction: a full disk is noted and skipped (the log is
    /// intact; it is tried again later), anything else is returned.
    pub(super) fn tolerate_no_space(
        &mut self,
        r: Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        match r {
            Err(e) if e.is_no_space() => {
                self.note_no_space();
                Ok(())
            }
            other => other,
        }
    }
}
