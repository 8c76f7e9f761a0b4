//! Inbound frames: raft batches stepped into their groups, snapshot chunks and acks.

use super::*;

impl MultiRaftCore {
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
                let Some(g) = self.groups.get(&key.group) else {
                    Metrics::inc(&self.metrics.inbound_unknown_group);
                    return;
                };
                if g.restoring.is_some() {
                    // One restore per group at a time; the leader's transfer times out and is
                    // retried if raft still needs it once this one is installed.
                    Metrics::inc(&self.metrics.snapshot_chunks_dropped_restoring);
                    return;
                }
                match self.snapshots.receive(*c) {
                    Ok(ChunkOutcome::InProgress) => self.stream_received(key.group),
                    Ok(ChunkOutcome::Complete(received)) => {
                        // Sealed (fsync, rename) and decoded off the driver thread (by the
                        // stream that decoded it while it arrived, else by the restore
                        // thread); raft sees the MsgSnapshot once the state is ready to swap
                        // in (`finish_restore`), so nothing waits on it here.
                        let stream = self.streams.remove(&key.group);
                        let Some(g) = self.groups.get_mut(&key.group) else {
                            return;
                        };
                        g.restoring = Some(key);
                        g.decoded = None;
                        let received = match stream {
                            Some(stream) if stream.id == received.id() => {
                                stream.complete(received);
                                return;
                            }
                            _ => received,
                        };
                        let decoder = g.sm.snapshot_decoder();
                        let job = SnapshotJob::Restore { received, decoder };
                        if let Err(SnapshotJob::Restore { received, decoder }) =
                            self.snapshot_work.submit(job)
                        {
                            // No thread: do it here.
                            let files = self.snapshots.files().clone();
                            let done = crate::snapshot_worker::run_job(
                                &files,
                                SnapshotJob::Restore { received, decoder },
                            );
                            if let SnapshotDone::Restored {
                                from,
                                key,
                                message,
                                result,
                                took,
                            } = done
                            {
                                if let Err(e) =
                                    self.finish_restore(from, key, message, result, took)
                                {
                                    self.fatal.get_or_insert(e);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.streams.remove(&key.group); // its file is gone: cancelled
                        slog::info!(self.logger, "snapshot chunk refused";
                            "group" => key.group.0, "index" => key.index, "error" => %e);
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
                    self.finish_transfer(a.from, a.key.group, a.ok, "acknowledged");
                }
            }
        }
    }

    /// Feeds what arrived of `group`'s transfer to the stream decoding it, starting one for
    /// a new transfer (the one of an older transfer is dropped: cancelled).
    fn stream_received(&mut self, group: GroupId) {
        let Some(receiving) = self.snapshots.receiving(group) else {
            self.streams.remove(&group);
            return;
        };
        if self
            .streams
            .get(&group)
            .is_none_or(|s| s.id != receiving.id)
        {
            self.streams.remove(&group);
            let Some(g) = self.groups.get(&group) else {
                return;
            };
            let decoder = g.sm.snapshot_decoder();
            if let Some(stream) =
                self.snapshot_work
                    .start_stream(receiving.id, receiving.path.clone(), decoder)
            {
                self.streams.insert(group, stream);
            }
        }
        if let Some(stream) = self.streams.get(&group) {
            stream.advance(receiving.contiguous);
        }
    }

    /// Drops the streams whose transfer is gone (its partial file swept, its group removed).
    pub(super) fn drop_dead_streams(&mut self) {
        let snapshots = &self.snapshots;
        self.streams.retain(|group, stream| {
            snapshots
                .receiving(*group)
                .is_some_and(|r| r.id == stream.id)
        });
    }

    pub(super) fn send_ack(&mut self, to: NodeId, key: SnapshotKey, ok: bool) {
        let ack = SnapshotAck {
            from: self.cfg.node_id,
            key,
            ok,
        };
        if self.net.send(to, Frame::Ack(ack)).is_err() {
            Metrics::inc(&self.metrics.send_errors);
        }
    }

    pub(super) fn finish_transfer(
        &mut self,
        peer: NodeId,
        gid: GroupId,
        ok: bool,
        how: &'static str,
    ) {
        let Some(transfer) = self.transfers.remove(&(peer, gid)) else {
            return;
        };
        transfer
            .cancelled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if ok {
            self.metrics
                .snapshot_send_seconds
                .observe_since(transfer.started);
        }
        slog::info!(self.logger, "snapshot transfer ended";
            "group" => gid.0, "to" => peer.0, "index" => transfer.key.index, "ok" => ok, "how" => how,
            "ms" => transfer.started.elapsed().as_millis() as u64);
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

    pub(super) fn step_message(&mut self, gid: GroupId, mut m: Message) {
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
}
