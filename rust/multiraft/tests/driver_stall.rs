//! A driver thread stuck in a state machine (an apply that does not return, as a host's store
//! hung on a lock or a dead disk): the watchdog ends the engine with a reason that says so,
//! requests are refused with it, and a shutdown does not wait for the stuck thread.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nodedb_multiraft::error::SmError;
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::state_machine::{Command, StateMachine, StateMachineKind};
use nodedb_multiraft::{GroupId, GroupRole, MultiRaft, MultiRaftConfig, NodeId, RaftError};

const T: Duration = Duration::from_secs(5);
const KIND: StateMachineKind = StateMachineKind::new(7, "stuck");
const STALL_MAX: Duration = Duration::from_millis(400);
const TICK: Duration = Duration::from_millis(20);
/// The command whose apply does not return until the test lets it.
const HANG: &[u8] = b"hang";

/// Released once by the test (bounded, so a failing test never leaves the thread for good).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (lock, cv) = &*self.0;
        let open = lock.lock().expect("gate");
        let _ = cv
            .wait_timeout_while(open, Duration::from_secs(30), |open| !*open)
            .expect("gate");
    }
    fn open(&self) {
        let (lock, cv) = &*self.0;
        *lock.lock().expect("gate") = true;
        cv.notify_all();
    }
}

struct Stuck(Gate);

impl StateMachine for Stuck {
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Result<Vec<Vec<u8>>, SmError> {
        if commands.iter().any(|c| c.data == HANG) {
            self.0.wait();
        }
        Ok(vec![b"applied".to_vec(); commands.len()])
    }
    fn snapshot(&self) -> Result<Vec<u8>, SmError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _data: &[u8]) -> Result<(), SmError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_stuck_in_an_apply_ends_the_engine_naming_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(7, 10_000);
    let gate = Gate::default();
    let machines = gate.clone();
    let mut cfg = MultiRaftConfig::new(NodeId(1), dir.path().join("n1"));
    cfg.tick_interval = TICK;
    cfg.driver_stall_max = STALL_MAX;
    let engine = MultiRaft::start(
        cfg,
        Box::new(MemLogSink::new()),
        Arc::new(net.endpoint(NodeId(1))),
        Box::new(move |_g: GroupId, _k: StateMachineKind| {
            Ok(Box::new(Stuck(machines.clone())) as Box<dyn StateMachine>)
        }),
    )
    .expect("start");
    let g = GroupId(1);
    let sole = GroupRole::Voter {
        peers: vec![NodeId(1)],
    };
    engine.add_group(g, sole, KIND, T).await.expect("add");
    engine.campaign(g, T).await.expect("campaign");
    // Idle ticks and ordinary applies are progress: longer than the bound, nothing stops.
    for _ in 0..3 {
        engine
            .propose(g, b"ok".to_vec(), T)
            .await
            .expect("an apply that returns");
        tokio::time::sleep(STALL_MAX / 2).await;
    }
    assert_eq!(engine.stopped_reason(), None);

    let stuck_at = Instant::now();
    let engine = Arc::new(engine);
    let hung = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move { engine.propose(g, HANG.to_vec(), T).await })
    };
    let reason = tokio::time::timeout(T, engine.stopped())
        .await
        .expect("the watchdog ends the engine");
    let took = stuck_at.elapsed();
    assert!(
        reason.starts_with("the driver thread made no progress for"),
        "{reason}"
    );
    assert!(reason.contains("apply_batch"), "{reason}");
    // The watchdog wakes 4 times per bound: it fires within a wake of the bound.
    assert!(
        took >= STALL_MAX / 2 && took < STALL_MAX * 5,
        "ended after {took:?}"
    );
    match engine.groups(T).await {
        Err(RaftError::Stopped { reason: why }) => assert_eq!(why, reason),
        other => panic!("a request after the stall is refused with its reason, got {other:?}"),
    }
    let closing = Instant::now();
    engine.shutdown();
    assert!(
        closing.elapsed() < Duration::from_secs(1),
        "shutdown waited {:?} for the stuck thread",
        closing.elapsed()
    );
    gate.open(); // the thread gets past its apply, answers it (it did apply) and ends
    let outcome = tokio::time::timeout(T, hung)
        .await
        .expect("answered")
        .expect("task");
    if let Ok(applied) = outcome {
        assert_eq!(
            applied.results,
            vec![b"applied".to_vec()],
            "its real result"
        );
    }
}
