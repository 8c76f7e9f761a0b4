//! One Raft group inside the engine: its RawNode, state machine and pending requests, and the
//! pure-ish steps the round applies to it — apply committed entries in batches, apply conf
//! changes, install a received snapshot, answer reads, fail requests on step-down.

use std::collections::VecDeque;

use raft::prelude::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, StateRole};

use crate::codec::{decode_commands, decode_pb, SnapshotKey};
use crate::core::{ProposeOutcome, ReadPoint, Reply};
use crate::error::{EngineError, RaftError, SnapshotError};
use crate::ids::{GroupId, NodeId};
use crate::log_sink::{GroupMeta, LogRecord};
use crate::metrics::Metrics;
use crate::snapshot::{SnapshotDescriptor, SnapshotStore};
use crate::state_machine::{Command, DecodedState, StateMachine};
use crate::storage::GroupStorage;

pub(crate) struct PendingProposal {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) started: std::time::Instant,
    pub(crate) reply: Reply<ProposeOutcome>,
}

pub(crate) struct PendingConf {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) reply: Reply<Vec<NodeId>>,
}

pub(crate) struct PendingRead {
    pub(crate) ctx: u64,
    pub(crate) started_tick: u64,
    /// Answered Timeout at this tick unless confirmed before (the caller's deadline, at least
    /// `read_index_timeout_ticks` after `started_tick`).
    pub(crate) expires_tick: u64,
    /// Set once raft confirmed leadership: the read may proceed when applied ≥ this.
    pub(crate) read_index: Option<u64>,
    /// The leader this read's ReadIndex request went to (this node when it leads), and when;
    /// 0 while it waits to be sent (no leader known, or a new leader that has not committed
    /// an entry of its term yet). See [`issue_reads`].
    pub(crate) sent_to: u64,
    pub(crate) sent_tick: u64,
    /// Answered from the caller's read lease (no quorum round).
    pub(crate) by_lease: bool,
    pub(crate) reply: Reply<ReadPoint>,
}

/// Followers' ReadIndex requests a leader holds until it has committed an entry of its term
/// (raft-rs 0.7 drops them silently before that), at most.
pub(crate) const DEFERRED_READ_MSGS_MAX: usize = 4096;
/// A ReadIndex request unanswered this many ticks is sent again (its message or the answer may
/// have been lost: a dropped frame, a connection to a restarted peer); raft-rs leaders answer
/// a repeated context once.
pub(crate) const READ_RESEND_TICKS: u64 = 3;

pub(crate) struct Group {
    pub(crate) id: GroupId,
    pub(crate) meta: GroupMeta,
    pub(crate) raw: RawNode<GroupStorage>,
    pub(crate) sm: Box<dyn StateMachine>,
    pub(crate) proposals: VecDeque<PendingProposal>,
    pub(crate) confs: VecDeque<PendingConf>,
    pub(crate) reads: Vec<PendingRead>,
    /// Followers' ReadIndex messages held while this node leads without an entry of its term
    /// committed (stepped once it has one).
    pub(crate) deferred_read_msgs: Vec<raft::prelude::Message>,
    pub(crate) applied_index: u64,
    /// Entry bytes applied since the last snapshot: with the entry count, what decides the next
    /// one, so a log of big entries is compacted (and a new replica fed one snapshot, not the
    /// whole history by appends) before it holds more than `snapshot_threshold_bytes` in memory.
    pub(crate) applied_bytes_since_snapshot: u64,
    /// The tick this node last sent pre-vote requests while a pre-candidate (None otherwise):
    /// see [`resend_pre_votes`].
    pub(crate) pre_vote_tick: Option<u64>,
    /// (leader, term) last published to the driver's leader map
    /// (`MultiRaftCore::take_leader_changes`).
    pub(crate) published_leader: Option<(u64, u64)>,
    pub(crate) was_leader: bool,
    /// The term in which this node, as leader, started handing leadership away (0: never). A
    /// transfer's target campaigns without waiting out the followers' election timeout, so no
    /// read lease of that term is honoured after it ([`lease_holds`]).
    pub(crate) lease_revoked_term: u64,
    /// When this node was last seen becoming the group's leader (at the end of that round).
    pub(crate) leader_since: Option<std::time::Instant>,
    /// Where this group's lease view is published, and the view last published there
    /// (`lease_board::publish`).
    pub(crate) lease_board: std::sync::Arc<crate::lease_board::LeaseBoard>,
    pub(crate) published_lease: Option<crate::lease_board::LeaseView>,
    /// Created empty in this engine's lifetime (a learner a leader fills), not recovered from
    /// the log: it has never acknowledged anything it could have lost.
    pub(crate) started_empty: bool,
    /// A snapshot of this group is being written on the snapshot thread (at most one).
    pub(crate) building: bool,
    /// The state machine failed to give its state for a snapshot: the next try waits until
    /// the group has applied up to this index (another threshold's worth of entries).
    pub(crate) snapshot_retry_index: u64,
    /// Received snapshots in a row the state machine could not decode (`finish_restore`).
    pub(crate) decode_failures: u32,
    /// A received snapshot is being sealed and decoded on the snapshot thread (at most one;
    /// chunks of another transfer are dropped meanwhile). raft has not seen its MsgSnapshot
    /// yet: until the state is decoded the group acks and votes on its own log only.
    pub(crate) restoring: Option<SnapshotKey>,
    /// The state decoded from the snapshot `key`, swapped in when raft installs that snapshot
    /// (in the round its MsgSnapshot is stepped in; dropped at the next round if raft did not).
    pub(crate) decoded: Option<(SnapshotKey, DecodedState)>,
}

pub(crate) fn lost(group: GroupId, leader: u64) -> RaftError {
    RaftError::LeadershipLost {
        group,
        leader_hint: NodeId::from_raft(leader),
    }
}

pub(crate) fn snapshot_meta(index: u64, term: u64, cs: ConfState) -> SnapshotMetadata {
    SnapshotMetadata {
        index,
        term,
        conf_state: Some(cs).into(),
        ..Default::default()
    }
}

pub(crate) fn sorted_ids(ids: &[u64]) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = ids.iter().map(|i| NodeId(*i)).collect();
    v.sort_unstable();
    v
}

pub(crate) fn le_u64(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.try_into().ok()?;
    Some(u64::from_le_bytes(a))
}

pub(crate) fn outgoing_snapshot(meta: SnapshotMetadata, desc: SnapshotDescriptor) -> Snapshot {
    let mut s = Snapshot::default();
    s.set_metadata(meta);
    s.data = desc.encode().into();
    s
}

pub(crate) fn fail_all(g: &mut Group, e: &RaftError) {
    let taken = lost(g.id, 0); // outcome unknown: see `Core::fail_all_pending`
    for p in g.proposals.drain(..) {
        p.reply.send(Err(taken.clone()));
    }
    for p in g.confs.drain(..) {
        p.reply.send(Err(taken.clone()));
    }
    for r in g.reads.drain(..) {
        r.reply.send(Err(e.clone()));
    }
}

/// A leader that stepped down fails what it promised: the entries may still commit under the
/// new leader, so the error is `LeadershipLost` (outcome unknown), never silence. Reads are
/// not promises of an effect: those not yet confirmed are sent again to the next leader
/// ([`issue_reads`]), those confirmed are answered once applied.
pub(crate) fn step_down_check(g: &mut Group) {
    let leader = g.raw.raft.state == StateRole::Leader;
    if g.was_leader && !leader {
        let e = lost(g.id, g.raw.raft.leader_id);
        for p in g.proposals.drain(..) {
            p.reply.send(Err(e.clone()));
        }
        for p in g.confs.drain(..) {
            p.reply.send(Err(e.clone()));
        }
        g.deferred_read_msgs.clear();
    }
    if leader && !g.was_leader {
        g.leader_since = Some(std::time::Instant::now());
    } else if !leader {
        g.leader_since = None;
    }
    g.was_leader = leader;
}

/// A pre-candidate sends its pre-vote requests again every tick until it wins or stops being
/// one. raft-rs sends them once per election timeout, and a voter that heard from the old
/// leader less than an election timeout ago ignores them without an answer (check-quorum's
/// lease). Timeouts are randomized per node in ticks, so a candidate whose timeout expired one
/// tick before the lease of the only other live voter was ignored, and waited a whole timeout
/// more (up to 0.5 s at defaults; issue 13, failover tail); so was one whose requests were
/// lost. That lease ends within a tick, so the next tick's requests are granted. Pre-votes
/// change no term and no vote: sending them again disturbs nothing.
pub(crate) fn resend_pre_votes(g: &mut Group, now_tick: u64) {
    if g.raw.raft.state != StateRole::PreCandidate {
        g.pre_vote_tick = None;
        return;
    }
    match g.pre_vote_tick {
        Some(sent) if now_tick > sent => {
            // Refused only in states where raft-rs would not campaign; raft-rs's lines about it
            // go out at DEBUG (a re-send, not a new election: `raft_log::as_repeat`).
            let _ = crate::raft_log::as_repeat(|| g.raw.campaign());
            g.pre_vote_tick = Some(now_tick);
        }
        Some(_) => {}
        None => g.pre_vote_tick = Some(now_tick),
    }
}

/// Has this node's leadership committed an entry of its term? Before that raft-rs 0.7 drops
/// ReadIndex requests (the new leader does not know the commit index yet).
pub(crate) fn leads_with_commit(g: &Group) -> bool {
    g.raw.raft.state == StateRole::Leader && g.raw.raft.commit_to_current_term()
}

/// A read lease a caller holds on a group: a quorum acknowledged a message this node sent at
/// `from` (with check-quorum and pre-vote none of those voters votes for another candidate
/// before `from` + [`crate::MultiRaft::election_timeout_min`]), trusted until `until` (the
/// caller's margin for clock rates taken off that bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLease {
    pub from: std::time::Instant,
    pub until: std::time::Instant,
}

/// May this node answer a read of `g` with its commit index, without a quorum round, under
/// `lease`? It proves no other leader exists now if it was earned while this node led
/// continuously since (`leader_since`), unless a leadership transfer of this term let a target
/// campaign inside it. Decided on the driver thread at `now`, which is the read's
/// linearization point: the commit index then covers every write acknowledged before, and the
/// read is answered once applied through it (a pause after this point cannot make it stale).
pub(crate) fn lease_holds(g: &Group, lease: ReadLease, now: std::time::Instant) -> bool {
    crate::lease_board::LeaseView::of(g).holds(lease, now)
}

/// Sends every unconfirmed read's ReadIndex request where it can be answered now: to the
/// leader this node knows (itself included, once it committed an entry of its term), again
/// when the leader changed since it was sent or it went unanswered `READ_RESEND_TICKS`. A
/// read waits while no leader is known: an election is under way, and sending it to the old
/// leader (or dropping it) would cost its caller a timeout (issue 13, failover tail). Also
/// steps the followers' requests a new leader held back. Any ReadIndex answer after a read
/// was issued is a valid read point, so sending one twice is safe.
pub(crate) fn issue_reads(g: &mut Group, now_tick: u64) {
    let leader = g.raw.raft.leader_id;
    let ready = leader != 0 && (leader != g.raw.raft.id || leads_with_commit(g));
    if !ready {
        return;
    }
    if !g.deferred_read_msgs.is_empty() && leads_with_commit(g) {
        for m in std::mem::take(&mut g.deferred_read_msgs) {
            let _ = g.raw.step(m);
        }
    }
    for i in 0..g.reads.len() {
        let r = &g.reads[i];
        let due = r.read_index.is_none()
            && (r.sent_to != leader || now_tick.saturating_sub(r.sent_tick) >= READ_RESEND_TICKS);
        if !due {
            continue;
        }
        let ctx = r.ctx;
        g.raw.read_index(ctx.to_le_bytes().to_vec());
        let r = &mut g.reads[i];
        r.sent_to = leader;
        r.sent_tick = now_tick;
    }
}

pub(crate) fn answer_reads(g: &mut Group) {
    let applied = g.applied_index;
    let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut g.reads)
        .into_iter()
        .partition(|r| r.read_index.is_some_and(|i| i <= applied));
    g.reads = waiting;
    for r in ready {
        r.reply.send(Ok(ReadPoint {
            index: r.read_index.unwrap_or(applied),
            by_lease: r.by_lease,
        }));
    }
}

/// Installs a snapshot received from the leader (its file is already verified on disk).
pub(crate) fn install_snapshot(
    g: &mut Group,
    store: &SnapshotStore,
    snap: Snapshot,
    records: &mut Vec<LogRecord>,
) -> Result<(), EngineError> {
    let meta = snap.get_metadata().clone();
    let key = SnapshotKey {
        group: g.id,
        index: meta.index,
        term: meta.term,
    };
    let desc = SnapshotDescriptor::decode(snap.get_data()).map_err(|e| EngineError::Recovery {
        group: g.id,
        reason: format!("snapshot descriptor: {e}"),
    })?;
    match g.decoded.take() {
        // Decoded on the snapshot thread: a swap here.
        Some((k, state)) if k == key => {
            g.sm.install_decoded(state)
                .map_err(|source| SnapshotError::Restore {
                    path: store.path(&key, "snap"),
                    source,
                })?
        }
        _ => {
            let data = store.read(&key, &desc)?;
            g.sm.restore(&data)
                .map_err(|source| SnapshotError::Restore {
                    path: store.path(&key, "snap"),
                    source,
                })?;
        }
    }
    g.raw
        .mut_store()
        .install_snapshot(meta.clone())
        .map_err(|e| EngineError::Raft(raft::Error::Store(e)))?;
    g.raw.mut_store().offer_snapshot(meta.clone(), desc);
    g.applied_index = meta.index;
    g.applied_bytes_since_snapshot = 0;
    // The older snapshot files go only once this mark is durable (`finish_round`): a crash
    // before the round's sync restarts from the previous mark, which needs its file.
    records.push(LogRecord::snapshot_mark(g.id, g.meta, &meta, &desc));
    // Whatever was pending here is superseded by the snapshot.
    let e = lost(g.id, g.raw.raft.leader_id);
    for p in g.proposals.drain(..) {
        p.reply.send(Err(e.clone()));
    }
    Ok(())
}

/// Applies committed entries in order: runs of normal entries go to the state machine as one
/// batch; a conf change entry is applied to raft between runs. Answers matching proposals.
/// `Err`: the state machine failed (`EngineError::Apply`), nothing after it was applied.
pub(crate) fn apply_entries(
    g: &mut Group,
    entries: Vec<Entry>,
    metrics: &Metrics,
) -> Result<(), EngineError> {
    let mut run: Vec<Entry> = Vec::new();
    for e in entries {
        if e.index <= g.applied_index {
            continue; // already covered by an installed snapshot
        }
        match e.get_entry_type() {
            EntryType::EntryNormal => run.push(e),
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                apply_run(g, std::mem::take(&mut run), metrics)?;
                apply_conf_entry(g, &e);
            }
        }
    }
    apply_run(g, run, metrics)
}

pub(crate) fn apply_run(
    g: &mut Group,
    run: Vec<Entry>,
    metrics: &Metrics,
) -> Result<(), EngineError> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Ok(());
    };
    let (first_index, last_index) = (first.index, last.index);
    g.applied_bytes_since_snapshot += run.iter().map(|e| e.data.len() as u64).sum::<u64>();
    // Decode every entry's commands; an entry that does not decode (cannot happen for entries
    // we proposed; the log is crc-checked) is applied as empty and its proposer told.
    // (index, term, its commands — None if undecodable)
    type Decoded<'a> = (u64, u64, Option<Vec<&'a [u8]>>);
    let mut decoded: Vec<Decoded<'_>> = Vec::with_capacity(run.len());
    for e in &run {
        if e.data.is_empty() {
            decoded.push((e.index, e.term, Some(Vec::new()))); // leader's no-op
        } else {
            decoded.push((e.index, e.term, decode_commands(&e.data).ok()));
        }
    }
    let commands: Vec<Command<'_>> = decoded
        .iter()
        .flat_map(|(index, _, cmds)| {
            cmds.iter().flatten().map(move |data| Command {
                index: *index,
                data,
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let failed = |reason: String| EngineError::Apply {
        group: g.id,
        first: first_index,
        last: last_index,
        reason,
    };
    let results = if commands.is_empty() {
        Vec::new()
    } else {
        g.sm.apply_batch(&commands)
            .map_err(|e| failed(e.to_string()))?
    };
    if results.len() != commands.len() {
        return Err(failed(format!(
            "{} results for {} commands",
            results.len(),
            commands.len()
        )));
    }
    let mut results = results.into_iter();
    Metrics::add(&metrics.commands_applied, commands.len() as u64);
    let applied = std::time::Instant::now(); // one clock read for both histograms
    metrics.apply_batch_seconds.observe(applied - started);
    // Published before any answer leaves: a caller that got one reads its write from the
    // lease (`lease_board.rs`).
    g.applied_index = last_index;
    crate::lease_board::publish(g);
    for (index, term, cmds) in &decoded {
        let mine: Vec<Vec<u8>> = match cmds {
            Some(c) => results.by_ref().take(c.len()).collect(),
            None => Vec::new(),
        };
        while g.proposals.front().is_some_and(|p| p.index < *index) {
            if let Some(p) = g.proposals.pop_front() {
                p.reply.send(Err(lost(g.id, g.raw.raft.leader_id)));
            }
        }
        if g.proposals.front().is_some_and(|p| p.index == *index) {
            if let Some(p) = g.proposals.pop_front() {
                let r = if p.term != *term {
                    Err(lost(g.id, g.raw.raft.leader_id))
                } else if cmds.is_none() {
                    Err(RaftError::Invalid {
                        reason: "committed entry did not decode".into(),
                    })
                } else {
                    let waited = applied.saturating_duration_since(p.started);
                    metrics.proposal_commit_seconds.observe(waited);
                    Ok(ProposeOutcome {
                        index: *index,
                        results: mine,
                    })
                };
                p.reply.send(r);
            }
        }
    }
    Ok(())
}

/// Applies a committed conf change to raft and storage. Membership is made durable by snapshot
/// marks only: on restart raft re-applies every committed conf entry after the last snapshot,
/// in order, so the recovered membership always matches the recovered applied index (a
/// separately persisted conf state could run ahead of it and be applied twice).
pub(crate) fn apply_conf_entry(g: &mut Group, e: &Entry) {
    let cc: Result<ConfChangeV2, String> = match e.get_entry_type() {
        EntryType::EntryConfChangeV2 => decode_pb(&e.data).map_err(|x| x.to_string()),
        // v1 entries are never proposed by this engine; decoded for completeness.
        _ => decode_pb::<ConfChange>(&e.data)
            .map(|c| {
                let mut single = raft::prelude::ConfChangeSingle::default();
                single.set_change_type(c.get_change_type());
                single.node_id = c.node_id;
                let mut v2 = ConfChangeV2::default();
                v2.set_changes(vec![single].into());
                v2
            })
            .map_err(|x| x.to_string()),
    };
    let result = cc.and_then(|cc| g.raw.apply_conf_change(&cc).map_err(|x| x.to_string()));
    // An Err is refused by raft on every node alike (e.g. an invalid joint transition).
    if let Ok(cs) = &result {
        g.raw.mut_store().set_conf_state(cs.clone());
    }
    g.applied_index = e.index;
    g.applied_bytes_since_snapshot += e.data.len() as u64;
    while g.confs.front().is_some_and(|p| p.index < e.index) {
        if let Some(p) = g.confs.pop_front() {
            p.reply.send(Err(lost(g.id, g.raw.raft.leader_id)));
        }
    }
    if g.confs.front().is_some_and(|p| p.index == e.index) {
        if let Some(p) = g.confs.pop_front() {
            let r = match (&result, p.term == e.term) {
                (_, false) => Err(lost(g.id, g.raw.raft.leader_id)),
                (Ok(cs), true) => Ok(sorted_ids(&cs.voters)),
                (Err(reason), true) => Err(RaftError::Invalid {
                    reason: format!("conf change not applied: {reason}"),
                }),
            };
            p.reply.send(r);
        }
    }
}
