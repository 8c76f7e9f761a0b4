//! Snapshots past the threshold and log compaction behind them.

use super::*;

impl MultiRaftCore {
    /// Snapshots every group that applied `snapshot_threshold_entries` or
    /// `snapshot_threshold_bytes` since its last one, or whose leader was asked for a snapshot it
    /// could not serve.
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
                since >= threshold
                    || (since > 0 && g.applied_bytes_since_snapshot >= threshold_bytes)
                    || (wanted && since > 0)
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
        g.applied_bytes_since_snapshot = 0;
        g.raw
            .mut_store()
            .set_outgoing(outgoing_snapshot(meta, desc));
        self.snapshots.remove_older(gid, index)?;
        Metrics::inc(&self.metrics.snapshots_taken);
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
