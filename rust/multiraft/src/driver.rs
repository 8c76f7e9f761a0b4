//! `MultiRaft`: the thread that drives a `MultiRaftCore` in real time, and its async API.
//!
//! # Driver loop (one dedicated OS thread; fsync blocks, so it stays off the async runtime)
//! 1. Wait for input until the next tick is due (no wait if a group has a Ready pending).
//! 2. Take that input and up to `round_input_max - 1` more (commands and inbound frames share
//!    one bounded queue): group commit happens here — everything that arrived while the last
//!    fsync ran is handled by the next round.
//! 3. Tick every group if the tick is due (one tick for all groups).
//! 4. `core.round()`: gather Readys → send → persist with ONE fsync → send persisted messages →
//!    apply → advance (order and durability point documented in `core.rs`).
//! 5. A log error stops the engine: every pending request and every queued one gets `Stopped`.
//!    A full disk does not: the core refuses writes (NO_SPACE) and stalls a round whose log
//!    write failed, retrying it every tick (`core/disk_full.rs`); `MultiRaft::no_space`.
//!
//! Queues are bounded: a full command queue answers `Busy`; a full inbound queue drops the
//! frame and counts it in `Metrics::inbound_dropped_full` (raft retransmits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::codec::Frame;
use crate::config::MultiRaftConfig;
use crate::core::{
    GroupRole, GroupStatus, MembershipChange, MultiRaftCore, ProposeOutcome, ReadPoint, Reply,
};
use crate::error::{EngineError, RaftError};
use crate::group::ReadLease;
use crate::ids::{GroupId, NodeId};
use crate::lease_board::LeaseBoard;
use crate::log_sink::{LogRepair, LogSink};
use crate::lost_tail::LostTail;
use crate::metrics::Metrics;
use crate::network::RaftNetwork;
use crate::state_machine::{StateMachineFactory, StateMachineKind};

mod inbound;
mod input;
mod watchdog;
pub use inbound::Inbound;
use input::{handle, refuse, refuse_with, Input};
use watchdog::Progress;

/// How long a request the driver dropped unanswered waits for the reason the driver stopped
/// (recorded right after a panic's unwinding; far longer than that takes).
const STOP_REASON_WAIT: Duration = Duration::from_secs(1);

struct Shared {
    metrics: Arc<Metrics>,
    inbound_queued: AtomicUsize,
    commands_queued: AtomicUsize,
    inbound_capacity: usize,
    command_capacity: usize,
    /// Why the driver thread ended (None while it runs); watchers await the change.
    stopped: watch::Sender<Option<String>>,
    /// Each group's (leader, term) as this node knows it (leader 0: none known).
    leaders: Mutex<HashMap<GroupId, (u64, u64)>>,
    /// Bumped whenever a group's leader changes; `wait_leader` waits on it.
    leader_epoch: watch::Sender<u64>,
    /// The driver loop's last sign of life (`watchdog`).
    progress: Progress,
}

impl Shared {
    fn publish_leaders(&self, changes: Vec<(GroupId, u64, u64)>) {
        if changes.is_empty() {
            return;
        }
        {
            let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
            for (group, leader, term) in changes {
                leaders.insert(group, (leader, term));
            }
        }
        self.leader_epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    /// (leader if known, term) of `group`.
    fn known(&self, group: GroupId) -> (Option<NodeId>, u64) {
        let leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        match leaders.get(&group) {
            Some(&(leader, term)) => ((leader != 0).then_some(NodeId(leader)), term),
            None => (None, 0),
        }
    }
}

/// A running Multi-Raft engine. Dropping it shuts it down.
pub struct MultiRaft {
    node_id: NodeId,
    tick_interval: Duration,
    /// See [`MultiRaft::election_timeout_min`].
    election_timeout_min: Duration,
    inbound: Inbound,
    thread: Mutex<Option<JoinHandle<()>>>,
    discarded: Vec<LostTail>,
    /// What the log's recovery repaired at open.
    repairs: Vec<LogRepair>,
    /// The driver's published read leases (`MultiRaft::lease_read`).
    leases: Arc<LeaseBoard>,
}

impl MultiRaft {
    /// Opens the engine (log replay, group recovery) on the calling thread, then starts the
    /// driver thread.
    pub fn start(
        cfg: MultiRaftConfig,
        sink: Box<dyn LogSink>,
        net: Arc<dyn RaftNetwork>,
        factory: Box<dyn StateMachineFactory>,
    ) -> Result<MultiRaft, EngineError> {
        let metrics = Arc::new(Metrics::default());
        let core = MultiRaftCore::open(cfg.clone(), sink, net, factory, Arc::clone(&metrics))?;
        let discarded = core.discarded_groups().to_vec();
        let leases = core.lease_board();
        let repairs = core.recovery_repairs();
        for repair in &repairs {
            Metrics::inc(&metrics.wal_torn_tail_repairs_total);
            Metrics::add(
                &metrics.wal_torn_tail_bytes_discarded_total,
                repair.discarded_bytes,
            );
        }
        let (tx, rx) = sync_channel(cfg.command_queue_capacity + cfg.inbound_queue_capacity);
        let shared = Arc::new(Shared {
            metrics,
            inbound_queued: AtomicUsize::new(0),
            commands_queued: AtomicUsize::new(0),
            inbound_capacity: cfg.inbound_queue_capacity,
            command_capacity: cfg.command_queue_capacity,
            stopped: watch::Sender::new(None),
            leaders: Mutex::new(HashMap::new()),
            leader_epoch: watch::Sender::new(0),
            progress: Progress::default(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread_leases = Arc::clone(&leases);
        let thread = std::thread::Builder::new()
            .name(format!("multiraft-{}", cfg.node_id.0))
            .spawn(move || {
                let after_panic = Arc::clone(&thread_shared);
                // The queue outlives a panic: until the reason is recorded, a request must
                // still be able to enter it, not be refused without one.
                let run = std::panic::AssertUnwindSafe(|| drive(core, &rx, thread_shared));
                match std::panic::catch_unwind(run) {
                    Ok(core) => {
                        // The queue first: nothing may wait in it while a host's state
                        // machines are dropped (they may wait for the GIL).
                        drop(rx);
                        drop(core);
                    }
                    Err(payload) => {
                        // The panic hook printed it; the host learns it through `stopped()`.
                        // The core is gone with the unwound stack: its pending callers learn
                        // the reason from `stopped()` too (`wait`); queued ones are refused
                        // with it here.
                        thread_leases.clear();
                        let text = panic_text(payload.as_ref());
                        let reason = format!("driver thread panicked: {text}");
                        after_panic.stopped.send_replace(Some(reason.clone()));
                        while let Ok(input) = rx.try_recv() {
                            refuse(input, &reason);
                        }
                    }
                }
            })
            .map_err(|e| EngineError::Thread(e.to_string()))?;
        watchdog::spawn(
            cfg.node_id,
            cfg.driver_stall_max,
            Arc::clone(&shared),
            Arc::clone(&leases),
        )
        .map_err(|e| EngineError::Thread(e.to_string()))?;
        Ok(MultiRaft {
            node_id: cfg.node_id,
            tick_interval: cfg.tick_interval,
            election_timeout_min: cfg.tick_interval.saturating_mul(
                u32::try_from(cfg.election_ticks.saturating_sub(1)).unwrap_or(u32::MAX),
            ),
            inbound: Inbound { tx, shared },
            thread: Mutex::new(Some(thread)),
            discarded,
            repairs,
            leases,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }
    pub fn tick_interval(&self) -> Duration {
        self.tick_interval
    }
    /// The shortest time after a voter last heard from the leader before it may vote for
    /// another candidate: raft-rs ignores votes while fewer than `election_ticks` ticks passed,
    /// and the first of those ticks may come right after the message, so `election_ticks - 1`
    /// tick intervals. A lease granted by a quorum's acknowledgement must end before it (the
    /// KV's lease reads).
    pub fn election_timeout_min(&self) -> Duration {
        self.election_timeout_min
    }
    pub fn inbound(&self) -> Inbound {
        self.inbound.clone()
    }
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.inbound.shared.metrics)
    }
    /// The groups open forgot because their log lost its acknowledged tail
    /// ([`crate::LostTailPolicy::Discard`]).
    pub fn discarded_groups(&self) -> &[LostTail] {
        &self.discarded
    }

    /// What the log's recovery repaired at open (a torn tail cut off or zeroed: file, offset,
    /// bytes discarded, why); also counted in `Metrics::wal_torn_tail_*`. Rust has no log
    /// subscriber: the host logs these.
    pub fn recovery_repairs(&self) -> &[LogRepair] {
        &self.repairs
    }

    /// Is the node in its NO_SPACE state (writes refused with `RaftError::NoSpace` until space
    /// is freed; reads served)? Also `Metrics::no_space` (1/0).
    pub fn no_space(&self) -> bool {
        Metrics::get(&self.inbound.shared.metrics.no_space) != 0
    }

    /// Why the engine stopped, if it did.
    pub fn stopped_reason(&self) -> Option<String> {
        self.inbound.shared.stopped.borrow().clone()
    }

    /// Resolves with the reason once the driver thread has ended for any reason (a shutdown, a
    /// fatal log error, a panic): a host that can no longer serve learns it at once.
    pub async fn stopped(&self) -> String {
        let mut rx = self.inbound.shared.stopped.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "engine dropped".to_string(),
        };
        reason
    }

    fn submit<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Input,
    ) -> oneshot::Receiver<Result<T, RaftError>> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.submit_with(make, reply_tx.into());
        reply_rx
    }

    /// Queues a command answered through `reply` (from the driver thread); a full queue or a
    /// stopped engine answers at once, on the calling thread.
    fn submit_with<T>(&self, make: impl FnOnce(Reply<T>) -> Input, reply: Reply<T>) {
        let s = &self.inbound.shared;
        if let Some(reason) = self.stopped_reason() {
            // Stopped: the queue may outlive its last drain for a moment (the thread still
            // dropping the core); a command let in then would be dropped unanswered.
            reply.send(Err(RaftError::Stopped { reason }));
            return;
        }
        if s.commands_queued.fetch_add(1, Ordering::AcqRel) >= s.command_capacity {
            s.commands_queued.fetch_sub(1, Ordering::AcqRel);
            Metrics::inc(&s.metrics.proposals_busy);
            reply.send(Err(RaftError::Busy {
                reason: "engine command queue full",
            }));
            return;
        }
        if let Err(e) = self.inbound.tx.try_send(make(reply)) {
            s.commands_queued.fetch_sub(1, Ordering::AcqRel);
            let (input, err) = match e {
                TrySendError::Full(i) => (
                    i,
                    RaftError::Busy {
                        reason: "engine command queue full",
                    },
                ),
                TrySendError::Disconnected(i) => (
                    i,
                    RaftError::Stopped {
                        reason: self
                            .stopped_reason()
                            .unwrap_or_else(|| "engine stopped".into()),
                    },
                ),
            };
            refuse_with(input, err);
        }
    }

    /// Callback form of `propose_batch` for bindings: `reply` runs on the driver thread (or at
    /// once on this thread if the queue is full / the engine stopped). No deadline here: the
    /// caller bounds its own wait.
    pub fn propose_batch_with(
        &self,
        group: GroupId,
        commands: Vec<Vec<u8>>,
        reply: Reply<ProposeOutcome>,
    ) {
        self.propose_for_with(None, group, commands, reply);
    }

    /// `propose_batch_with` of commands for the `kind` state machine (`Some`): refused with
    /// `RaftError::Invalid` unless the group runs it (see `MultiRaftCore::propose_for`).
    pub fn propose_for_with(
        &self,
        kind: Option<StateMachineKind>,
        group: GroupId,
        commands: Vec<Vec<u8>>,
        reply: Reply<ProposeOutcome>,
    ) {
        self.submit_with(
            |reply| Input::Propose {
                kind,
                group,
                commands,
                reply,
            },
            reply,
        );
    }

    /// Each of `commands` as its own entry (its own index), proposed in one call and one raft
    /// proposal message: `reply` gets one outcome per command, in order, once all are
    /// answered (an `Err` for the whole when the call never ran). What a host's concurrent
    /// proposals share is the crossing, the append and the broadcast, not the entry, so a host
    /// state machine still sees one index per command.
    pub fn propose_each_for_with(
        &self,
        kind: Option<StateMachineKind>,
        group: GroupId,
        commands: Vec<Vec<u8>>,
        reply: Reply<Vec<Result<ProposeOutcome, RaftError>>>,
    ) {
        self.submit_with(
            |reply| Input::ProposeEach {
                kind,
                group,
                commands,
                reply,
            },
            reply,
        );
    }

    /// Callback form of `read_index` (see `propose_batch_with`); the read waits for a quorum's
    /// confirmation up to `timeout` (at least `read_index_timeout_ticks`), resent meanwhile as
    /// leaders change: a caller with a long deadline (a replica catching up a backlog) is not
    /// cut short at the engine's bound (embedding probe, session 30: 20 s asked, 3.2 s given).
    pub fn read_index_with(&self, group: GroupId, timeout: Duration, reply: Reply<u64>) {
        self.submit_with(
            |reply| Input::ReadIndex {
                group,
                lease: None,
                timeout: Some(timeout),
                reply,
            },
            Reply::new(move |r: Result<ReadPoint, RaftError>| reply.send(r.map(|p| p.index))),
        );
    }

    async fn wait<T>(
        &self,
        op: &'static str,
        rx: oneshot::Receiver<Result<T, RaftError>>,
        timeout: Duration,
    ) -> Result<T, RaftError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            // Dropped unanswered: the driver thread ended, maybe unwinding a panic whose reason
            // is recorded only once the unwinding is done. Say why it stopped, not just that.
            Ok(Err(_)) => Err(RaftError::Stopped {
                reason: tokio::time::timeout(STOP_REASON_WAIT, self.stopped())
                    .await
                    .unwrap_or_else(|_| "engine dropped the request".into()),
            }),
            Err(_) => Err(RaftError::Timeout {
                op,
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Proposes one command; resolves after commit and apply with (index, [result]).
    pub async fn propose(
        &self,
        group: GroupId,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<ProposeOutcome, RaftError> {
        self.propose_batch(group, vec![data], timeout).await
    }

    /// Proposes many commands as ONE entry; resolves with its index and one result each.
    pub async fn propose_batch(
        &self,
        group: GroupId,
        commands: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ProposeOutcome, RaftError> {
        self.propose_for(None, group, commands, timeout).await
    }

    /// `propose_batch` of commands for the `kind` state machine (`Some`): refused with
    /// `RaftError::Invalid` unless the group runs it (see `MultiRaftCore::propose_for`).
    pub async fn propose_for(
        &self,
        kind: Option<StateMachineKind>,
        group: GroupId,
        commands: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ProposeOutcome, RaftError> {
        let rx = self.submit(|reply| Input::Propose {
            kind,
            group,
            commands,
            reply,
        });
        self.wait("propose", rx, timeout).await
    }

    /// `propose_each_for_with` as a future: one outcome per command, in order, or an `Err` for
    /// the whole call (its deadline, a stopped engine).
    pub async fn propose_each_for(
        &self,
        kind: Option<StateMachineKind>,
        group: GroupId,
        commands: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<Result<ProposeOutcome, RaftError>>, RaftError> {
        let rx = self.submit(|reply| Input::ProposeEach {
            kind,
            group,
            commands,
            reply,
        });
        self.wait("propose", rx, timeout).await
    }

    /// Confirms leadership with a quorum; resolves with the read index once applied locally.
    pub async fn read_index(&self, group: GroupId, timeout: Duration) -> Result<u64, RaftError> {
        Ok(self.read_index_leased(group, None, timeout).await?.index)
    }

    /// `read_index`, answered without a quorum round while this node leads `group` and
    /// `lease` (the caller's read lease) holds: see `MultiRaftCore::read_index_leased`.
    pub async fn read_index_leased(
        &self,
        group: GroupId,
        lease: Option<ReadLease>,
        timeout: Duration,
    ) -> Result<ReadPoint, RaftError> {
        let rx = self.submit(|reply| Input::ReadIndex {
            group,
            lease,
            timeout: None,
            reply,
        });
        self.wait("read_index", rx, timeout).await
    }

    /// Changes membership (ConfChangeV2; several changes go through a joint configuration).
    /// Resolves with the voters after the change applied on this node.
    pub async fn change_membership(
        &self,
        group: GroupId,
        changes: Vec<MembershipChange>,
        timeout: Duration,
    ) -> Result<Vec<NodeId>, RaftError> {
        let rx = self.submit(|reply| Input::Membership {
            group,
            changes,
            reply,
        });
        self.wait("change_membership", rx, timeout).await
    }

    /// Asks this node (the leader) to hand leadership of `group` to `to`. Resolves when the
    /// request is made; watch `status` for the outcome.
    pub async fn transfer_leader(
        &self,
        group: GroupId,
        to: NodeId,
        timeout: Duration,
    ) -> Result<(), RaftError> {
        let rx = self.submit(|reply| Input::TransferLeader { group, to, reply });
        self.wait("transfer_leader", rx, timeout).await
    }

    pub async fn status(
        &self,
        group: GroupId,
        timeout: Duration,
    ) -> Result<GroupStatus, RaftError> {
        let rx = self.submit(|reply| Input::Status { group, reply });
        self.wait("status", rx, timeout).await
    }

    pub async fn groups(&self, timeout: Duration) -> Result<Vec<GroupId>, RaftError> {
        let rx = self.submit(|reply| Input::ListGroups { reply });
        self.wait("groups", rx, timeout).await
    }

    /// Every group's status, in one driver request.
    pub async fn statuses(&self, timeout: Duration) -> Result<Vec<GroupStatus>, RaftError> {
        let rx = self.submit(|reply| Input::Statuses { reply });
        self.wait("statuses", rx, timeout).await
    }

    /// Creates a group on this node (durably).
    pub async fn add_group(
        &self,
        group: GroupId,
        role: GroupRole,
        kind: StateMachineKind,
        timeout: Duration,
    ) -> Result<(), RaftError> {
        let rx = self.submit(|reply| Input::AddGroup {
            group,
            role,
            kind,
            reply,
        });
        self.wait("add_group", rx, timeout).await
    }

    pub async fn remove_group(&self, group: GroupId, timeout: Duration) -> Result<(), RaftError> {
        let rx = self.submit(|reply| Input::RemoveGroup { group, reply });
        self.wait("remove_group", rx, timeout).await
    }

    /// Snapshots `group` now and compacts its log (normally done past the threshold).
    pub async fn snapshot_now(&self, group: GroupId, timeout: Duration) -> Result<(), RaftError> {
        let rx = self.submit(|reply| Input::SnapshotNow { group, reply });
        self.wait("snapshot_now", rx, timeout).await
    }

    /// May a linearizable read of `group` under `lease` be answered from this node's local
    /// state now, without asking the driver? True when this node leads the group, the lease
    /// holds ([`crate::ReadLease`]) and the state covers every commit index the driver
    /// published (`lease_board.rs` says why that is linearizable). Call it once the read has
    /// arrived, with `now` taken after that, and read the state after it. False while the
    /// engine is stopped.
    pub fn lease_read(&self, group: GroupId, lease: ReadLease, now: Instant) -> bool {
        let readable = self.inbound.shared.stopped.borrow().is_none()
            && self.leases.readable_now(group, lease, now);
        if readable {
            Metrics::inc(&self.inbound.shared.metrics.read_lease_local);
        }
        readable
    }

    /// The leader of `group` this node knows (itself included), as of the last round.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.inbound.shared.known(group).0
    }

    /// Every group's (leader if known, term) as this node knows it, as of leader epoch `.0`
    /// (pass it to [`MultiRaft::leaders_changed`] to wait for the next change).
    pub fn leaders(&self) -> (u64, Vec<(GroupId, Option<NodeId>, u64)>) {
        let shared = &self.inbound.shared;
        let epoch = *shared.leader_epoch.borrow();
        let leaders = shared.leaders.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = leaders
            .iter()
            .map(|(&g, &(leader, term))| (g, (leader != 0).then_some(NodeId(leader)), term))
            .collect();
        out.sort_by_key(|(g, _, _)| *g);
        (epoch, out)
    }

    /// Waits until the leader epoch differs from `since` (some group's leader changed, as this
    /// node sees it) or `timeout` passes or the engine stops; returns the epoch then.
    pub async fn leaders_changed(&self, since: u64, timeout: Duration) -> u64 {
        let mut epochs = self.inbound.shared.leader_epoch.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            tokio::select! {
                _ = epochs.wait_for(|e| *e != since) => {}
                _ = self.stopped() => {}
            }
        })
        .await;
        let epoch = *epochs.borrow();
        epoch
    }

    /// Waits until this node knows a leader of `group` that is not in `avoid`, or one elected
    /// after the call (a later term: even a node in `avoid` is alive then), for at most
    /// `timeout`, and returns it (None: none such within the time). A request that reached a
    /// node which knows no leader (an election is under way) or only one its sender could not
    /// reach (`avoid`: it will be replaced) waits here and is answered as soon as the new leader
    /// is known, instead of sending its caller polling (issue 13, failover tail).
    pub async fn wait_leader(
        &self,
        group: GroupId,
        avoid: &[NodeId],
        timeout: Duration,
    ) -> Option<NodeId> {
        let shared = &self.inbound.shared;
        let mut epochs = shared.leader_epoch.subscribe();
        let until = tokio::time::Instant::now() + timeout;
        epochs.borrow_and_update();
        let (_, term_at_start) = shared.known(group);
        loop {
            let (leader, term) = shared.known(group);
            if let Some(leader) = leader.filter(|l| !avoid.contains(l) || term > term_at_start) {
                return Some(leader);
            }
            if self.stopped_reason().is_some() {
                return None;
            }
            match tokio::time::timeout_at(until, epochs.changed()).await {
                Ok(Ok(())) => {
                    epochs.borrow_and_update();
                }
                Ok(Err(_)) | Err(_) => return None, // sender gone, or the time is up
            }
        }
    }

    /// Starts an election in `group` now (a sole founding voter need not wait a timeout).
    pub async fn campaign(&self, group: GroupId, timeout: Duration) -> Result<(), RaftError> {
        let rx = self.submit(|reply| Input::Campaign { group, reply });
        self.wait("campaign", rx, timeout).await
    }

    /// Stops the driver: pending and queued requests get `Stopped`. Idempotent; blocks until
    /// the thread exited (one round at most), except on the driver thread itself (the last
    /// handle released by a reply's callback), which cannot wait for itself: it stops after
    /// the round it is in.
    pub fn shutdown(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        let current = std::thread::current().id();
        if thread.as_ref().is_some_and(|h| h.thread().id() == current) {
            let _ = self.inbound.tx.try_send(Input::Shutdown);
            return;
        }
        let handle = thread.take();
        drop(thread);
        if self.inbound.shared.progress.stalled() {
            // Stuck (the watchdog ended the engine): it stops if it ever gets past where it is.
            let _ = self.inbound.tx.try_send(Input::Shutdown);
            return;
        }
        let _ = self.inbound.tx.send(Input::Shutdown);
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for MultiRaft {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Failpoint (tests of a host's fail-fast path): the driver thread panics this many milliseconds
/// after it starts. Read once per engine; unset in production, where it costs one branch a round.
pub const FAILPOINT_DRIVER_PANIC_AFTER_MS: &str = "NODEDB_FAILPOINT_DRIVER_PANIC_AFTER_MS";

fn failpoint_panic_at() -> Option<Instant> {
    let ms: u64 = std::env::var(FAILPOINT_DRIVER_PANIC_AFTER_MS)
        .ok()?
        .parse()
        .ok()?;
    Some(Instant::now() + Duration::from_millis(ms))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Runs the engine until it stops; returns the core for the thread to drop after the queue (a
/// host state machine may wait for the GIL as it goes).
fn drive(mut core: MultiRaftCore, rx: &Receiver<Input>, shared: Arc<Shared>) -> MultiRaftCore {
    let tick = core.config().tick_interval;
    let input_max = core.config().round_input_max;
    let mut next_tick = Instant::now() + tick;
    let failpoint = failpoint_panic_at();
    let reason: String = 'outer: loop {
        shared.progress.beat();
        let now = Instant::now();
        if failpoint.is_some_and(|at| now >= at) {
            panic!("failpoint {FAILPOINT_DRIVER_PANIC_AFTER_MS}");
        }
        let wait = if core.has_ready() {
            Duration::ZERO
        } else {
            next_tick.saturating_duration_since(now)
        };
        match rx.recv_timeout(wait) {
            Ok(input) => {
                if handle(&mut core, input, &shared) {
                    break 'outer "shutdown".to_string();
                }
                for _ in 1..input_max {
                    match rx.try_recv() {
                        Ok(input) => {
                            if handle(&mut core, input, &shared) {
                                break 'outer "shutdown".to_string();
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break 'outer "all handles dropped".to_string(),
        }
        let now = Instant::now();
        if now >= next_tick {
            core.tick();
            next_tick += tick;
            if next_tick < now {
                // Fell behind (a long fsync or a stall): skip missed ticks rather than burst.
                next_tick = now + tick;
            }
        }
        if let Err(e) = core.round() {
            break 'outer format!("fatal: {e}");
        }
        shared.publish_leaders(core.take_leader_changes());
    };
    core.lease_board().clear();
    shared.stopped.send_replace(Some(reason.clone()));
    core.fail_all_pending(&reason);
    while let Ok(input) = rx.try_recv() {
        refuse(input, &reason);
    }
    core
}
