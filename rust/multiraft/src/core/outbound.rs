//! Outbound messages: one frame per peer per round, and snapshot transfers with their outcome reported back to raft.

use super::*;

impl MultiRaftCore {
    pub(super) fn collect_transfer_results(&mut self) {
        let done = match self.transfer_results.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let now = self.ticks;
        for (peer, gid, sent) in done {
            match sent {
                Ok(()) => {
                    if let Some(t) = self.transfers.get_mut(&(peer, gid)) {
                        // Fully queued: now the receiver's ack must come within the ack timeout.
                        t.queued_tick = Some(now);
                    }
                }
                Err(damaged @ SnapshotError::Checksum { .. }) => {
                    self.finish_transfer(peer, gid, false, "damaged file");
                    self.replace_damaged_snapshot(gid, &damaged);
                }
                Err(_) => self.finish_transfer(peer, gid, false, "not sent"),
            }
        }
    }

    /// Sends one frame (or a few, past `BATCH_FRAME_BYTES_MAX`: [`frames_of`]) per destination
    /// peer; snapshots go as transfers of their own.
    pub(super) fn flush(&mut self, out: Outbox) {
        for (to, mut msgs) in out.by_peer {
            for (gid, m) in &msgs {
                if m.get_msg_type() == MessageType::MsgTimeoutNow {
                    // A transfer a follower asked for (this node's own set it already).
                    if let Some(g) = self.groups.get_mut(gid) {
                        g.lease_revoked_term = g.lease_revoked_term.max(m.term);
                    }
                }
            }
            let is_snapshot =
                |(_, m): &(GroupId, Message)| m.get_msg_type() == MessageType::MsgSnapshot;
            if msgs.iter().any(is_snapshot) {
                // Rare: only then are the messages split (and copied).
                let (snapshots, rest): (Vec<_>, Vec<_>) = msgs.into_iter().partition(is_snapshot);
                for (gid, m) in snapshots {
                    self.start_transfer(to, gid, m);
                }
                msgs = rest;
            }
            for lane in by_lane(msgs) {
                frames_of(lane, BATCH_FRAME_BYTES_MAX, |frame| {
                    self.send_batch(to, frame)
                });
            }
        }
    }

    pub(super) fn send_batch(&mut self, to: NodeId, messages: Vec<(GroupId, Message)>) {
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

    pub(super) fn start_transfer(&mut self, to: NodeId, gid: GroupId, m: Message) {
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
            slog::info!(self.logger, "snapshot transfer refused: busy";
                "group" => gid.0, "to" => to.0, "index" => key.index,
                "same_peer" => self.transfers.contains_key(&(to, gid)));
            self.report_snapshot_failure(gid, to);
            return;
        }
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.transfers.insert(
            (to, gid),
            OutgoingTransfer {
                key,
                started_tick: self.ticks,
                started: std::time::Instant::now(),
                queued_tick: None,
                cancelled: Arc::clone(&cancelled),
            },
        );
        Metrics::inc(&self.metrics.snapshots_sent);
        slog::info!(self.logger, "snapshot transfer started";
            "group" => gid.0, "to" => to.0, "index" => key.index, "bytes" => desc.total_bytes);
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
            cancelled,
        };
        let results = Arc::clone(&self.transfer_results);
        if self.inline_snapshot_sends {
            let sent = job.run().map(|_| ());
            if let Ok(mut v) = results.lock() {
                v.push((to, gid, sent));
            }
            return;
        }
        let spawned = std::thread::Builder::new()
            .name(format!("snap-send-{}-{}", gid.0, to.0))
            .spawn(move || {
                let sent = job.run().map(|_| ());
                if let Ok(mut v) = results.lock() {
                    v.push((to, gid, sent));
                }
            });
        if spawned.is_err() {
            self.transfers.remove(&(to, gid));
            self.report_snapshot_failure(gid, to);
        }
    }

    /// Called while Readys are outstanding (from `flush`): the report is stepped into raft
    /// after `advance`, since raft-rs forbids stepping between `ready()` and `advance()`.
    pub(super) fn report_snapshot_failure(&mut self, gid: GroupId, to: NodeId) {
        Metrics::inc(&self.metrics.snapshot_send_failures);
        self.deferred_reports
            .push((gid, to, PeerReport::SnapshotFailure));
    }

    pub(super) fn apply_deferred_reports(&mut self) {
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
}

/// `msgs` in order to `send`, in frames of at most `max` bytes each, or of one message larger
/// than that: a message that would take a frame past `max` starts the next one. (A frame was a
/// full one plus the message that crossed `max`: 16 MiB and a 63 MiB entry went over the
/// transport's 64 MiB and were refused, every retransmission alike while the traffic lasted.)
fn frames_of(
    msgs: Vec<(GroupId, Message)>,
    max: usize,
    mut send: impl FnMut(Vec<(GroupId, Message)>),
) {
    let mut frame = Vec::new();
    let mut bytes = 0usize;
    for (gid, m) in msgs {
        let size = protobuf::Message::compute_size(&m) as usize + 16;
        if !frame.is_empty() && bytes + size > max {
            send(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += size;
        frame.push((gid, m));
    }
    if !frame.is_empty() {
        send(frame);
    }
}

/// A peer's messages of one round as the lists to send, signals first ([`Lane`]): one list when
/// they all take one lane (the usual round), else two (rare: only then are they copied).
fn by_lane(msgs: Vec<(GroupId, Message)>) -> Vec<Vec<(GroupId, Message)>> {
    let log = |(_, m): &(GroupId, Message)| Lane::of_message(m) == Lane::Log;
    if msgs.iter().all(log) || !msgs.iter().any(log) {
        return vec![msgs];
    }
    let (log, signal): (Vec<_>, Vec<_>) = msgs.into_iter().partition(log);
    vec![signal, log]
}

#[cfg(test)]
mod tests {
    use raft::prelude::Entry;

    use super::*;

    fn append_of(data_bytes: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        let e = Entry {
            data: vec![0u8; data_bytes].into(),
            ..Entry::default()
        };
        m.entries = vec![e].into();
        m
    }

    #[test]
    fn frames_stay_within_the_bound_or_hold_one_larger_message_in_order() {
        const MIB: usize = 1 << 20;
        let sizes = [3 * MIB, 10 * MIB, 60 * MIB, 1024, 1024, 15 * MIB, 2 * MIB];
        let msgs: Vec<(GroupId, Message)> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (GroupId(i as u64), append_of(*n)))
            .collect();
        let mut frames = Vec::new();
        frames_of(msgs, 16 * MIB, |f| frames.push(f));
        let groups: Vec<Vec<u64>> = frames
            .iter()
            .map(|f| f.iter().map(|(g, _)| g.0).collect())
            .collect();
        assert_eq!(groups, vec![vec![0, 1], vec![2], vec![3, 4, 5], vec![6]]);
        for frame in &frames {
            let bytes: usize = frame
                .iter()
                .map(|(_, m)| protobuf::Message::compute_size(m) as usize + 16)
                .sum();
            assert!(bytes <= 16 * MIB || frame.len() == 1, "{bytes} bytes");
        }
        frames_of(Vec::new(), 16 * MIB, |_| panic!("a frame of nothing"));
    }

    fn message(kind: MessageType) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m
    }

    #[test]
    fn heartbeats_leave_a_round_apart_from_its_appends_and_first() {
        let kinds = |lists: &[Vec<(GroupId, Message)>]| -> Vec<Vec<(u64, MessageType)>> {
            lists
                .iter()
                .map(|l| l.iter().map(|(g, m)| (g.0, m.get_msg_type())).collect())
                .collect()
        };
        let mixed = vec![
            (GroupId(1), append_of(32 << 20)),
            (GroupId(2), message(MessageType::MsgHeartbeat)),
            (GroupId(3), append_of(10)),
            (GroupId(4), message(MessageType::MsgRequestVoteResponse)),
        ];
        assert_eq!(
            kinds(&by_lane(mixed)),
            vec![
                vec![
                    (2, MessageType::MsgHeartbeat),
                    (4, MessageType::MsgRequestVoteResponse)
                ],
                vec![(1, MessageType::MsgAppend), (3, MessageType::MsgAppend)],
            ]
        );
        let appends = vec![(GroupId(1), append_of(10)), (GroupId(2), append_of(10))];
        assert_eq!(by_lane(appends).len(), 1, "the usual round stays one list");
        let signals = vec![(GroupId(1), message(MessageType::MsgHeartbeatResponse))];
        assert_eq!(by_lane(signals).len(), 1);
    }

    #[test]
    fn a_frame_takes_the_log_lane_if_it_carries_an_append() {
        let batch = |messages: Vec<(GroupId, Message)>| {
            Frame::Batch(RaftBatch {
                from: NodeId(1),
                messages,
            })
        };
        let heartbeat = (GroupId(1), message(MessageType::MsgHeartbeat));
        assert_eq!(Lane::of(&batch(vec![heartbeat.clone()])), Lane::Signal);
        assert_eq!(
            Lane::of(&batch(vec![heartbeat, (GroupId(2), append_of(1))])),
            Lane::Log
        );
        let ack = SnapshotAck {
            from: NodeId(2),
            key: SnapshotKey {
                group: GroupId(1),
                index: 5,
                term: 1,
            },
            ok: true,
        };
        assert_eq!(Lane::of(&Frame::Ack(ack)), Lane::Signal);
    }
}
