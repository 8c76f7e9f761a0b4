//! Snapshots past the threshold and log compaction behind them.

use super::*;
use crate::state_machine::DecodedState;
use raft::prelude::SnapshotMetadata;

/// A log since the last snapshot counts each entry as at least this many bytes (its record and
/// its place in memory), so a log of empty entries is compacted too.
const ENTRY_BYTES_MIN: u64 = 64;
/// Received snapshots of one group in a row its state machine could not decode before the
/// engine stops: one may be a damaged transfer, three are the machine's own failing.
const DECODE_FAILURES_MAX: u32 = 3;
/// The next snapshot waits until the log since the last one holds this fraction of its size.
const LOG_PER_SNAPSHOT_DIVISOR: u64 = 4;

/// Whether a group that applied `entries` entries of `bytes` bytes since its last snapshot,
/// whose file had `last_bytes`, takes a new one: past either threshold, and once that log holds
/// a quarter of the last snapshot's size. Why the second rule: a snapshot serializes the whole
/// state, so with the thresholds alone a group of several GiB was serialized again for every
/// 32 MiB written, and loading a group cost the square of its size in snapshots (each node
/// writing them on two shared cores slowed every write wave). Now each byte of state is
/// serialized about four times per its size written; the log kept in memory and replayed at a
/// restart stays under a quarter of the state (or the thresholds).
pub(crate) fn snapshot_due(
    entries: u64,
    bytes: u64,
    last_bytes: u64,
    threshold_entries: u64,
    threshold_bytes: u64,
) -> bool {
    if entries == 0 {
        return false;
    }
    let past = entries >= threshold_entries || bytes >= threshold_bytes;
    let log = bytes.max(entries.saturating_mul(ENTRY_BYTES_MIN));
    past && log >= last_bytes / LOG_PER_SNAPSHOT_DIVISOR
}

impl MultiRaftCore {
    /// Starts a snapshot of every group [`snapshot_due`] says is due, or whose leader was asked
    /// for a snapshot it could not serve; not of a group whose snapshot is being built already. The file is
    /// written on the snapshot thread; `collect_snapshot_work` finishes it. Returns whether the
    /// log's floors changed (only if a build had to run here: no thread could be started).
    pub(super) fn maybe_snapshot(&mut self) -> Result<bool, EngineError> {
        if self.disk.no_space() {
            return Ok(false); // a snapshot writes a file and a mark: not on a full disk
        }
        let threshold = self.cfg.snapshot_threshold_entries;
        let threshold_bytes = self.cfg.snapshot_threshold_bytes;
        let due: Vec<GroupId> = self
            .groups
            .values()
            .filter(|g| {
                let wanted = g.raw.store().take_snapshot_wanted();
                let since =
                    g.applied_index - g.raw.store().snapshot_meta().index.min(g.applied_index);
                let due = snapshot_due(
                    since,
                    g.applied_bytes_since_snapshot,
                    g.raw.store().last_snapshot_bytes(),
                    threshold,
                    threshold_bytes,
                );
                let retry = g.applied_index >= g.snapshot_retry_index;
                !g.building && retry && (due || (wanted && since > 0))
            })
            .map(|g| g.id)
            .collect();
        let mut finished_here = false;
        for gid in due {
            finished_here |= self.start_snapshot(gid)?;
        }
        Ok(finished_here)
    }

    /// The key and metadata of a snapshot of `g` at its applied index, or None if its last
    /// snapshot is there already.
    fn snapshot_point(g: &Group) -> Result<Option<(SnapshotKey, SnapshotMetadata)>, EngineError> {
        let index = g.applied_index;
        if index <= g.raw.store().snapshot_meta().index {
            return Ok(None);
        }
        let term = g.raw.store().term(index)?;
        let key = SnapshotKey {
            group: g.id,
            index,
            term,
        };
        // The conf state in storage is the one at the applied index (conf entries are applied
        // to it in order).
        Ok(Some((
            key,
            snapshot_meta(index, term, g.raw.store().conf_state().clone()),
        )))
    }

    /// Takes the state machine's view of `gid` (cheap, on this thread) and hands it to the
    /// snapshot thread. Returns whether it was finished here instead (no thread).
    fn start_snapshot(&mut self, gid: GroupId) -> Result<bool, EngineError> {
        let Some(g) = self.groups.get_mut(&gid) else {
            return Ok(false);
        };
        let Some((key, meta)) = Self::snapshot_point(g)? else {
            return Ok(false);
        };
        let view = match g.sm.snapshot_view() {
            Ok(view) => view,
            Err(e) => {
                let failed = Err(EngineError::from(SnapshotError::from(e)));
                return self.tolerate_state_machine(gid, failed).map(|()| false);
            }
        };
        g.building = true;
        // Entries applied from here on count toward the next snapshot.
        g.applied_bytes_since_snapshot = 0;
        let job = SnapshotJob::Build { key, meta, view };
        if let Err(SnapshotJob::Build { key, meta, view }) = self.snapshot_work.submit(job) {
            // No thread: write it here (slow for a big state, but correct).
            if let Some(g) = self.groups.get_mut(&gid) {
                g.building = false;
            }
            let desc = self.snapshots.files().write_view(&key, view);
            let r = self.finish_build(key, meta, desc);
            let r = self.tolerate_state_machine(gid, r);
            self.tolerate_no_space(r)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The state machine could not give its state (a host's `snapshot()`, or its view's
    /// `encode()`, raised): the group's state is intact and only its compaction waits, so the
    /// engine goes on. Every replica reaches the threshold at the same index: when this was
    /// fatal, one raising `snapshot()` stopped the whole cluster within 10 ms (embedding
    /// probe, session 30). Logged, counted, and tried again once another threshold's worth of
    /// entries has applied; meanwhile the log grows and a follower needing a snapshot waits.
    fn tolerate_state_machine(
        &mut self,
        gid: GroupId,
        r: Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let Err(EngineError::Snapshot(SnapshotError::Sm(e))) = r else {
            return r;
        };
        Metrics::inc(&self.metrics.snapshot_state_machine_errors);
        let threshold = self.cfg.snapshot_threshold_entries;
        if let Some(g) = self.groups.get_mut(&gid) {
            g.snapshot_retry_index = g.applied_index.saturating_add(threshold);
            g.building = false;
        }
        slog::error!(self.logger, "snapshot not taken: the state machine failed to give its \
            state; the group's log grows until a later one succeeds";
            "group" => gid.0, "error" => %e, "retry_after_entries" => threshold);
        Ok(())
    }

    /// The snapshot file a transfer was reading no longer has the xxh3 recorded when it was
    /// written (damaged at rest since): it is not offered again, and a new snapshot replaces it
    /// once an entry is applied past it; a leader proposes an empty one for that (applied as a
    /// no-op, like its election entry), so the followers waiting for a snapshot get one soon.
    pub(super) fn replace_damaged_snapshot(&mut self, gid: GroupId, damaged: &SnapshotError) {
        Metrics::inc(&self.metrics.snapshot_files_damaged);
        slog::error!(self.logger, "snapshot file damaged: not sent, a new snapshot replaces it";
            "group" => gid.0, "error" => %damaged);
        // NO_SPACE: no entry (the log must not grow) and no snapshot until space is freed.
        let grow = !self.disk.no_space();
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        g.raw.mut_store().withdraw_outgoing();
        if grow && g.raw.raft.state == StateRole::Leader {
            // Dropped (a leadership transfer under way): the next write serves as well.
            let _ = g.raw.propose(Vec::new(), Vec::new());
        }
    }

    /// Snapshots one group now at its applied index, on this thread, and compacts its log to
    /// it. Refused in NO_SPACE (a snapshot is a file and a log record).
    pub fn snapshot_group(&mut self, gid: GroupId) -> Result<(), EngineError> {
        if self.disk.refuses_writes() && self.groups.contains_key(&gid) {
            return Err(self.no_space_engine_error());
        }
        let Some(g) = self.groups.get_mut(&gid) else {
            return Err(EngineError::GroupNotFound(gid));
        };
        let Some((key, meta)) = Self::snapshot_point(g)? else {
            return Ok(());
        };
        let view = g.sm.snapshot_view().map_err(SnapshotError::from)?;
        g.applied_bytes_since_snapshot = 0;
        let desc = self.snapshots.files().write_view(&key, view)?;
        self.finish_build(key, meta, Ok(desc))?;
        Ok(())
    }

    /// A snapshot file is durable (or failed): record its mark, compact the group's in-memory
    /// log to it and offer it to followers. A snapshot older than the group's current one (a
    /// received snapshot was installed meanwhile) or of a removed group is deleted.
    fn finish_build(
        &mut self,
        key: SnapshotKey,
        meta: SnapshotMetadata,
        desc: Result<SnapshotDescriptor, SnapshotError>,
    ) -> Result<(), EngineError> {
        let gid = key.group;
        let Some(g) = self.groups.get_mut(&gid) else {
            let _ = std::fs::remove_file(self.snapshots.path(&key, "snap"));
            return Ok(());
        };
        let desc = desc?;
        if key.index <= g.raw.store().snapshot_meta().index || self.disk.no_space() {
            let _ = std::fs::remove_file(self.snapshots.path(&key, "snap"));
            return Ok(());
        }
        // The mark must be durable before the log may drop what it covers.
        self.sink
            .append(&[LogRecord::snapshot_mark(gid, g.meta, &meta, &desc)])?;
        self.sink.sync()?;
        self.unsynced_records = 0;
        g.raw.mut_store().compact_to_snapshot(meta.clone());
        g.raw.mut_store().offer_snapshot(meta, desc);
        self.snapshots.remove_older(gid, key.index)?;
        Metrics::inc(&self.metrics.snapshots_taken);
        Ok(())
    }

    /// Picks up what the snapshot threads finished: builds are recorded and the log compacted
    /// behind them; a restored snapshot's state is kept for raft's install and its MsgSnapshot
    /// stepped (then acked to the leader); a failed one is acked as failed. A full disk here is
    /// noted and tried again later (the next snapshot), not fatal.
    pub(super) fn collect_snapshot_work(&mut self) -> Result<(), EngineError> {
        // A state decoded for a snapshot raft did not install in the round its MsgSnapshot was
        // stepped in (stale by then) is dropped, off this thread (freeing a large state takes
        // time).
        for g in self.groups.values_mut() {
            if let Some((_, stale)) = g.decoded.take() {
                let _ = std::thread::Builder::new()
                    .name("snap-drop".into())
                    .spawn(move || drop(stale));
            }
        }
        let mut built = false;
        for done in self.snapshot_work.take_done() {
            match done {
                SnapshotDone::Built {
                    key,
                    meta,
                    result,
                    took,
                } => {
                    if let Some(g) = self.groups.get_mut(&key.group) {
                        g.building = false;
                    }
                    match &result {
                        Ok(d) => slog::info!(self.logger, "snapshot built";
                            "group" => key.group.0, "index" => key.index,
                            "bytes" => d.total_bytes, "ms" => took.as_millis() as u64),
                        Err(e) => slog::warn!(self.logger, "snapshot build failed";
                            "group" => key.group.0, "index" => key.index, "error" => %e),
                    }
                    let gid = key.group;
                    let r = self.finish_build(key, meta, result);
                    let r = self.tolerate_state_machine(gid, r);
                    self.tolerate_no_space(r)?;
                    built = true;
                }
                SnapshotDone::Restored {
                    from,
                    key,
                    message,
                    result,
                    took,
                } => self.finish_restore(from, key, message, result, took)?,
            }
        }
        if built {
            let compacted = self.compact_log();
            self.tolerate_no_space(compacted)?;
        }
        Ok(())
    }

    pub(super) fn finish_restore(
        &mut self,
        from: NodeId,
        key: SnapshotKey,
        message: Message,
        result: Result<DecodedState, SnapshotError>,
        took: std::time::Duration,
    ) -> Result<(), EngineError> {
        let Some(g) = self.groups.get_mut(&key.group) else {
            let _ = std::fs::remove_file(self.snapshots.path(&key, "snap"));
            return Ok(());
        };
        g.restoring = None;
        if matches!(result, Err(SnapshotError::Restore { .. })) {
            g.decode_failures += 1;
        } else if result.is_ok() {
            g.decode_failures = 0;
        }
        match result {
            // The state machine could not decode whole transfers, again and again: every
            // resend fails alike (it was fetched forever, the node Ready and serving nothing
            // of the group: embedding probe, session 30). Fatal, as a failed restore is.
            Err(e @ SnapshotError::Restore { .. }) if g.decode_failures >= DECODE_FAILURES_MAX => {
                return Err(e.into());
            }
            Ok(state) => {
                slog::info!(self.logger, "received snapshot decoded";
                    "group" => key.group.0, "index" => key.index, "ms" => took.as_millis() as u64);
                g.decoded = Some((key, state));
                Metrics::inc(&self.metrics.snapshots_received);
                self.step_message(key.group, message);
                self.send_ack(from, key, true);
            }
            Err(e) => {
                slog::warn!(self.logger, "received snapshot refused";
                    "group" => key.group.0, "error" => %e);
                let _ = std::fs::remove_file(self.snapshots.path(&key, "snap"));
                Metrics::inc(&self.metrics.snapshot_receive_errors);
                self.send_ack(from, key, false);
            }
        }
        Ok(())
    }

    pub(super) fn compact_log(&mut self) -> Result<(), EngineError> {
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

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    const ENTRIES: u64 = 20_000;
    const BYTES: u64 = 32 << 20;

    #[test]
    fn a_small_state_snapshots_at_the_thresholds() {
        assert!(!snapshot_due(0, 0, 0, ENTRIES, BYTES), "nothing applied");
        assert!(!snapshot_due(
            ENTRIES - 1,
            BYTES - 1,
            1 << 20,
            ENTRIES,
            BYTES
        ));
        assert!(
            snapshot_due(ENTRIES, 10, 1 << 20, ENTRIES, BYTES),
            "entries"
        );
        assert!(snapshot_due(1, BYTES, 1 << 20, ENTRIES, BYTES), "bytes");
        assert!(snapshot_due(ENTRIES, 0, 0, ENTRIES, BYTES), "the first one");
    }

    #[test]
    fn a_large_state_waits_for_a_quarter_of_its_size_in_log() {
        let state = 2u64 << 30;
        assert!(!snapshot_due(ENTRIES, BYTES, state, ENTRIES, BYTES));
        assert!(!snapshot_due(
            ENTRIES * 4,
            state / 4 - 1,
            state,
            ENTRIES,
            BYTES
        ));
        assert!(snapshot_due(ENTRIES, state / 4, state, ENTRIES, BYTES));
        // Empty entries count too, so a log of no-ops is still compacted.
        let entries = state / 4 / 64;
        assert!(snapshot_due(entries, 0, state, ENTRIES, BYTES));
    }
}
