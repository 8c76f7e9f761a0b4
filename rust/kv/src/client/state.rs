//! The client core's state behind its one lock: routing and learned leaders, peer health, the
//! write session, and the queues of items per (target, lane). Pure: no I/O, every decision
//! takes `now`; [`super::KvClient`] does the sending.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nodedb_wire::ReadLevel;

use super::error::{Failure, KvError};
use super::retry::Lesson;
use super::{Completion, Outcome};
use crate::peer_health::{monotonic_s, PeerHealth};
use crate::routing::Routing;
use crate::serve::KvServer;
use crate::session::SessionState;

/// Items per KV_REQUEST (kv.py `BATCH_COMMANDS_MAX`).
pub const BATCH_ITEMS_MAX: usize = 4096;
/// Bytes of items per KV_REQUEST (kv.py `BATCH_BYTES_MAX`; below the 1 MiB message bound).
pub const BATCH_BYTES_MAX: usize = 512 << 10;
/// KV_REQUESTs per (target, lane) in flight at once (kv.py `REMOTE_IN_FLIGHT_MAX`).
pub const REMOTE_IN_FLIGHT_MAX: usize = 4;
/// Fresh routing tables asked for because a group's members found no leader
/// ([`super::retry::LeaderSearch`]), at most one per this long: a group that is electing answers
/// so too, on every client, and each ask costs one routing request to a node.
pub const LEADERLESS_REFRESH_PAUSE: Duration = Duration::from_millis(250);
/// Targets with a suspicion channel (`State::suspects`), at most (forgotten all at once past it).
const SUSPECT_TARGETS_MAX: usize = 4096;

/// What one KV_REQUEST carries: commands, or reads at one level and staleness bound.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Lane {
    Propose,
    Read {
        level: ReadLevel,
        /// The staleness bound's bits (an f64 is not `Eq`/`Hash`).
        stale_s_bits: u64,
    },
}

impl Lane {
    pub fn read(level: ReadLevel, stale_s: f64) -> Lane {
        Lane::Read {
            level,
            stale_s_bits: stale_s.to_bits(),
        }
    }

    pub fn stale_s(self) -> f64 {
        match self {
            Lane::Propose => 0.0,
            Lane::Read { stale_s_bits, .. } => f64::from_bits(stale_s_bits),
        }
    }
}

/// What the caller asked for, which decides the answer it gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CallKind {
    Put,
    Delete,
    Cas,
    PutMany,
    Get,
    GetMany,
}

impl CallKind {
    pub fn is_write(self) -> bool {
        matches!(
            self,
            CallKind::Put | CallKind::Delete | CallKind::Cas | CallKind::PutMany
        )
    }
}

pub struct Progress {
    pub results: Vec<Option<Vec<u8>>>,
    pub remaining: usize,
    pub finished: bool,
}

/// One call: its items, deadline, session seqs and whom to tell.
pub struct Call {
    pub kind: CallKind,
    pub deadline: Instant,
    /// Group of each item (for the error a failed item raises).
    pub groups: Vec<u64>,
    /// Session seqs `first..first + count` (writes; count 0 for reads).
    pub seqs: (u64, u64),
    /// Taken once when the call resolves.
    pub completion: Mutex<Option<Box<dyn Completion>>>,
    pub progress: Mutex<Progress>,
}

impl Call {
    pub fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_finished(&self) -> bool {
        self.progress().finished
    }
}

/// One command or key of a call, as it travels (a retry resends the same bytes).
pub struct Item {
    pub call: Arc<Call>,
    pub slot: usize,
    pub group: u64,
    pub lane: Lane,
    pub payload: Vec<u8>,
    pub attempt: usize,
    pub last: Option<KvError>,
    /// The key's vShard (to re-route it when its group answers Moved).
    pub vshard: u32,
    /// Times its vShard's state refused it (Paused, Moved): paces its retries.
    pub refused: u32,
    /// Its attempts in a row that found no leader: when to ask for a fresh routing table.
    pub search: super::retry::LeaderSearch,
    /// Its attempts that ran out of time ([`super::retry::backed_off`]).
    pub timeouts: u32,
}

/// A call that has its outcome, to hand to its completion outside the lock.
pub struct Finished {
    pub call: Arc<Call>,
    pub outcome: Outcome,
}

#[derive(Default)]
pub struct LaneQueue {
    pub pending: VecDeque<Item>,
    pub in_flight: usize,
}

/// (target, lane, probe): a probe goes to a member while no leader of its groups is known (or
/// only one the client avoids). Probes travel in requests of their own: the member may hold
/// them until it knows a leader ([`crate::serve`]), which must not delay requests to a leader,
/// and their answer times are not the cluster's (they do not feed the attempt bound).
pub type LaneKey = (u64, Lane, bool);
pub type Batch = (LaneKey, Vec<Item>);

pub struct State {
    pub routing: Option<Routing>,
    /// group → leader as last learned (0 = unknown: ask the members in turn).
    pub leaders: HashMap<u64, u64>,
    /// Nodes to try after the others, and the bound of one attempt.
    pub health: PeerHealth,
    pub session: SessionState,
    pub lanes: HashMap<LaneKey, LaneQueue>,
    pub pending_items: usize,
    pub flush_scheduled: bool,
    pub closed: bool,
    /// Per target, woken when one attempt to it timed out: every other attempt waiting on the
    /// same node gives up then too (the node is suspect for all of them, not one at a time).
    pub suspects: HashMap<u64, Arc<tokio::sync::Notify>>,
    /// This node's serving side, when the client runs inside a node: its own share of a
    /// request is served in process ([`super::KvClient::serve_locally`]).
    pub local: Option<Weak<KvServer>>,
    /// A Moved answer, or a group none of whose members found a leader, came since the last
    /// routing table: the caller may fetch a fresh one.
    pub routing_stale: bool,
    /// Told once when the table goes stale ([`super::KvClient::watch_routing`]).
    pub routing_watch: Option<super::RoutingWatch>,
    /// When a leaderless group or an unanswered attempt last made the table stale (rate
    /// limit, [`LEADERLESS_REFRESH_PAUSE`]).
    pub leaderless_refresh_at: Option<Instant>,
}

impl State {
    pub fn new(session: SessionState) -> State {
        State {
            routing: None,
            leaders: HashMap::new(),
            health: PeerHealth::default(),
            session,
            lanes: HashMap::new(),
            pending_items: 0,
            flush_scheduled: false,
            closed: false,
            suspects: HashMap::new(),
            local: None,
            routing_stale: false,
            routing_watch: None,
            leaderless_refresh_at: None,
        }
    }

    /// The suspicion channel of `target` (see `suspects`).
    pub fn suspect_channel(&mut self, target: u64) -> Arc<tokio::sync::Notify> {
        if self.suspects.len() >= SUSPECT_TARGETS_MAX && !self.suspects.contains_key(&target) {
            self.suspects.clear(); // a bound: attempts waiting on a dropped channel keep their timer
        }
        Arc::clone(self.suspects.entry(target).or_default())
    }

    /// A probe's answer named, as a group's leader, a node this client holds back: the member
    /// names an avoided node only once it was elected after the probe arrived
    /// ([`crate::serve`]), so it is alive: tried again at once instead of after `DOWN_HOLD_S`.
    pub fn revive_named(&mut self, failed: &HashMap<u64, KvError>) {
        for err in failed.values() {
            if let KvError::NotLeader { hint } = err {
                if *hint != 0 {
                    self.health.revive(*hint);
                }
            }
        }
    }

    /// One attempt to `target` timed out: the channel that wakes every other attempt waiting
    /// on it, to notify once this state's lock is let go. A woken attempt may run at once on
    /// the notifying thread ([`crate::inline`]) and take the lock: notified under it, two
    /// attempts timing out together on one node deadlocked the client.
    pub fn suspected(&self, target: u64) -> Option<Arc<tokio::sync::Notify>> {
        self.suspects.get(&target).cloned()
    }

    /// A node answered after `elapsed`.
    pub fn answered(&mut self, elapsed: Duration, now: Instant) {
        self.health
            .answered(elapsed.as_secs_f64(), monotonic_s(now));
    }

    /// How long one attempt may wait for its answer.
    pub fn attempt_timeout(&self, now: Instant) -> Duration {
        Duration::from_secs_f64(self.health.attempt_timeout_s(monotonic_s(now)))
    }

    /// kv.py `_target`: the leader as last learned, else routing's; 0 when unknown or down.
    pub fn target(&self, group: u64, now: Instant) -> u64 {
        let leader = match self.leaders.get(&group) {
            Some(&leader) => leader,
            None => self
                .routing
                .as_ref()
                .and_then(|r| r.route(group))
                .map_or(0, |r| r.leader),
        };
        if leader != 0 && self.health.avoid(leader, monotonic_s(now)) {
            return 0;
        }
        leader
    }

    /// kv.py `_next_member`: with no leader known, the members in turn, those that answered
    /// lately first (this node among them only when its own server answers in process).
    fn next_member(&self, group: u64, tried: usize, me: u64, here: bool, now: Instant) -> u64 {
        let Some(route) = self.routing.as_ref().and_then(|r| r.route(group)) else {
            return 0;
        };
        let mut members: Vec<u64> = route
            .voters
            .iter()
            .copied()
            .filter(|&m| here || m != me)
            .collect();
        if members.is_empty() {
            members.clone_from(&route.voters);
        }
        let pool = self.health.preferred(&members, monotonic_s(now));
        if pool.is_empty() {
            return 0;
        }
        pool[tried % pool.len()]
    }

    /// Where an item goes: the leader as known (false), else a member in turn (true: a probe).
    /// This node (`me`) only when its own server answers in process (every lane).
    pub fn pick(&self, group: u64, attempt: usize, me: u64, now: Instant) -> Option<(u64, bool)> {
        let here = self.local.is_some();
        let target = self.target(group, now);
        if target != 0 && (target != me || here) {
            return Some((target, false));
        }
        let member = self.next_member(group, attempt, me, here, now);
        (member != 0).then_some((member, true))
    }

    /// kv.py `_failed`: `node` did not answer: forget it as leader, try the others first.
    pub fn failed(&mut self, group: u64, node: u64, me: u64, now: Instant) {
        if node != 0 && node != me {
            self.health.failed(node, monotonic_s(now));
        }
        self.leaders.insert(group, 0);
    }

    /// Apply what a failed attempt taught ([`super::retry::judge`]).
    pub fn learn(&mut self, group: u64, lesson: Lesson, me: u64, now: Instant) {
        match lesson {
            Lesson::Nothing => {}
            Lesson::Leader(hint) => {
                self.leaders.insert(group, hint);
            }
            Lesson::Failed(node) => self.failed(group, node, me, now),
        }
    }

    pub fn group_of(&self, key: &[u8]) -> Result<u64, KvError> {
        self.locate(key).map(|(_, group)| group)
    }

    /// `key`'s vShard and group.
    pub fn locate(&self, key: &[u8]) -> Result<(u32, u64), KvError> {
        let routing = self.routing.as_ref().ok_or(KvError::Unavailable(
            "Client not connected: call `await connect()` first".into(),
        ))?;
        Ok(routing.locate(key))
    }

    /// A group answered that `vshard` moved to `group`: route it there from now on (until the
    /// next routing table), and note that the table is stale; the routing watcher to call (the
    /// first time), if one waits.
    pub fn moved(&mut self, vshard: u32, group: u64) -> Option<super::RoutingWatch> {
        // To a group the table does not know (added since), only the answered item goes there
        // (it waits for a fresh table); new calls keep asking the old group until then.
        if self.knows_group(group) {
            if let Some(routing) = self.routing.as_mut() {
                routing.moved(vshard, group);
            }
        }
        self.stale()
    }

    /// Every member the table names for a group found no leader ([`super::retry::LeaderSearch`]):
    /// the table is stale (its replicas may all have moved elsewhere). The routing watcher to
    /// call, if one waits. At most one such ask per [`LEADERLESS_REFRESH_PAUSE`], and none while
    /// the table is stale already (a fresh one is on its way, or the caller has no way to fetch
    /// one): no refresh storm.
    pub fn leaderless(&mut self, now: Instant) -> Option<super::RoutingWatch> {
        self.paced_stale(now)
    }

    /// A node gave no answer ([`KvError::is_no_answer`]): the members' addresses come with
    /// the routing table, and a member restarted at another address is reached only once a
    /// fresh table names it (a client kept trying the old one while the node led the group,
    /// ~2 s of failover in chaos). Paced with [`Self::leaderless`]: a node that is simply down
    /// costs one small routing request per pause.
    pub fn unanswered(&mut self, now: Instant) -> Option<super::RoutingWatch> {
        self.paced_stale(now)
    }

    fn paced_stale(&mut self, now: Instant) -> Option<super::RoutingWatch> {
        let paced = self
            .leaderless_refresh_at
            .is_some_and(|at| now.saturating_duration_since(at) < LEADERLESS_REFRESH_PAUSE);
        if self.routing_stale || paced {
            return None;
        }
        self.leaderless_refresh_at = Some(now);
        self.stale()
    }

    /// Mark the table stale; the routing watcher to call (the first time), if one waits.
    fn stale(&mut self) -> Option<super::RoutingWatch> {
        self.routing_stale = true;
        self.routing_watch.take()
    }

    /// How many members the table names for `group` (0 when it does not know the group).
    pub fn members(&self, group: u64) -> usize {
        self.routing
            .as_ref()
            .and_then(|r| r.route(group))
            .map_or(0, |r| r.voters.len())
    }

    /// Whether the routing table has a route for `group`.
    pub fn knows_group(&self, group: u64) -> bool {
        self.routing
            .as_ref()
            .is_some_and(|r| r.route(group).is_some())
    }

    pub fn enqueue(&mut self, key: LaneKey, item: Item) {
        self.lanes.entry(key).or_default().pending.push_back(item);
        self.pending_items += 1;
    }

    /// Take batches from `key`'s queue while slots are free (the caller sends them, outside
    /// the lock): at most `BATCH_ITEMS_MAX` items and `BATCH_BYTES_MAX` bytes each (one item
    /// alone is always taken), at most `REMOTE_IN_FLIGHT_MAX` in flight per lane.
    pub fn take_batches(&mut self, key: LaneKey, out: &mut Vec<Batch>) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        let mut taken = 0usize;
        while lane.in_flight < REMOTE_IN_FLIGHT_MAX && !lane.pending.is_empty() {
            let mut batch: Vec<Item> = Vec::new();
            let mut size = 0usize;
            while let Some(front) = lane.pending.front() {
                if !batch.is_empty()
                    && (batch.len() >= BATCH_ITEMS_MAX
                        || size + front.payload.len() > BATCH_BYTES_MAX)
                {
                    break;
                }
                let Some(item) = lane.pending.pop_front() else {
                    break;
                };
                taken += 1;
                if item.call.is_finished() {
                    continue; // its call already failed: not sent
                }
                size += item.payload.len();
                batch.push(item);
            }
            if batch.is_empty() {
                continue;
            }
            lane.in_flight += 1;
            out.push((key, batch));
        }
        let idle = lane.pending.is_empty() && lane.in_flight == 0;
        self.pending_items -= taken;
        if idle {
            self.lanes.remove(&key);
        }
    }

    /// Record `item`'s outcome; when its call is complete (every item answered, or one
    /// failed), the call goes to `out` and its session seqs are finished.
    pub fn complete(
        &mut self,
        item: Item,
        outcome: Result<Option<Vec<u8>>, KvError>,
        out: &mut Vec<Finished>,
    ) {
        let mut progress = item.call.progress();
        if progress.finished {
            return;
        }
        let done = match outcome {
            Ok(value) => {
                progress.results[item.slot] = value;
                progress.remaining -= 1;
                (progress.remaining == 0).then(|| Ok(std::mem::take(&mut progress.results)))
            }
            Err(error) => Some(Err(Failure {
                group: item.group,
                error,
            })),
        };
        let Some(outcome) = done else {
            return;
        };
        progress.finished = true;
        drop(progress);
        let (first, count) = item.call.seqs;
        if count > 0 {
            self.session.finish(first..first + count);
        }
        out.push(Finished {
            call: item.call,
            outcome,
        });
    }
}

#[cfg(test)]
mod tests;
