//! Groups coming and going: created (`add_group`), re-created from the log on open, removed.

use super::*;
use crate::log_sink::RecoveredGroup;

impl MultiRaftCore {
    /// Re-creates a recovered group: its state machine restored from the latest snapshot,
    /// whose file must match the size and checksum its mark recorded (a damaged or replaced
    /// file refuses the open, naming it, instead of restoring a state the other replicas do not
    /// have). A mark from before marks recorded them has nothing to check against.
    pub(super) fn start_group(
        &mut self,
        gid: GroupId,
        recovered: RecoveredGroup,
    ) -> Result<(), EngineError> {
        let RecoveredGroup {
            meta,
            mut storage,
            snapshot_file,
        } = recovered;
        if meta.sm_kind == 0 {
            return Err(EngineError::Recovery {
                group: gid,
                reason: "no state machine kind recorded".into(),
            });
        }
        let kind = StateMachineKind::from_tag(meta.sm_kind);
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
            let desc = match snapshot_file {
                Some(recorded) => recorded,
                None => self.find_descriptor(&key)?,
            };
            let data = self.snapshots.read(&key, &desc)?;
            sm.restore(&data).map_err(SnapshotError::from)?;
            storage.offer_snapshot(snap_meta, desc);
        }
        self.insert_group(gid, meta, storage, sm)
    }

    pub(super) fn insert_group(
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
                applied_bytes_since_snapshot: 0,
                pre_vote_tick: None,
                published_leader: None,
                was_leader,
                lease_revoked_term: 0,
                leader_since: None,
                lease_board: Arc::clone(&self.lease_board),
                published_lease: None,
                started_empty,
                building: false,
                snapshot_retry_index: 0,
                decode_failures: 0,
                restoring: None,
                decoded: None,
            },
        );
        Ok(())
    }

    /// The descriptor of a local snapshot file (size and checksum recomputed from the file:
    /// the log records only the metadata).
    pub(super) fn find_descriptor(
        &self,
        key: &SnapshotKey,
    ) -> Result<SnapshotDescriptor, EngineError> {
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
        if kind.tag() == 0 {
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
        let meta = GroupMeta {
            sm_kind: kind.tag(),
        };
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
            storage.offer_snapshot(snap.clone(), desc);
            records.push(LogRecord::snapshot_mark(gid, meta, &snap, &desc));
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
            self.lease_board.set(gid, None);
        }
        self.transfers.retain(|(_, g), _| *g != gid);
        self.sink.sync().inspect_err(|e| {
            if e.is_no_space() {
                self.note_no_space();
            }
        })?;
        self.streams.remove(&gid);
        self.snapshots.remove_group(gid)?;
        Ok(())
    }
}
