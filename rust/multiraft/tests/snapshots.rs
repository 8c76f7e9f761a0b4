//! Snapshots off the driver thread (issue 16): a group keeps committing and electing while a
//! snapshot of it is written, and a crash before a snapshot's rename leaves the previous one.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::sim_cluster::SimCluster;
use common::{factory, Journals, JOURNAL};
use nodedb_multiraft::codec::SnapshotKey;
use nodedb_multiraft::error::SmError;
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::state_machine::{
    Command, SnapshotBytes, SnapshotView, StateMachine, StateMachineKind,
};
use nodedb_multiraft::{GroupId, Metrics, MultiRaftCore, NodeId, StateMachineFactory};

type Cluster = SimCluster<MemLogSink, Journals>;

const G: GroupId = GroupId(1);
/// Bound of every wait on a snapshot thread.
const WAIT: Duration = Duration::from_secs(20);

/// Holds snapshot writers until opened (a large state being written, as long as the test
/// wants); counts the writers that reached it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, usize)>, Condvar)>);

impl Gate {
    fn pass(&self) {
        let (lock, cv) = &*self.0;
        let mut st = lock.lock().expect("gate");
        st.1 += 1;
        cv.notify_all();
        let _ = cv.wait_timeout_while(st, WAIT, |st| !st.0).expect("gate");
    }
    fn wait_for_writers(&self, n: usize) -> bool {
        let (lock, cv) = &*self.0;
        let st = lock.lock().expect("gate");
        let (st, _) = cv
            .wait_timeout_while(st, WAIT, |st| st.1 < n)
            .expect("gate");
        st.1 >= n
    }
    fn open(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().expect("gate").0 = true;
        cv.notify_all();
    }
}

/// Makes the snapshot view of a journal's state (its `snapshot()` bytes).
type ViewOf = Box<dyn Fn(Vec<u8>) -> Result<Box<dyn SnapshotView>, SmError> + Send + Sync>;

/// The journal, whose snapshot view `view_of` makes: the one delegating wrapper of these tests.
struct Viewed {
    inner: Box<dyn StateMachine>,
    view_of: Arc<ViewOf>,
}

impl StateMachine for Viewed {
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Result<Vec<Vec<u8>>, SmError> {
        self.inner.apply_batch(commands)
    }
    fn snapshot(&self) -> Result<Vec<u8>, SmError> {
        self.inner.snapshot()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), SmError> {
        self.inner.restore(data)
    }
    fn snapshot_view(&self) -> Result<Box<dyn SnapshotView>, SmError> {
        (self.view_of)(self.inner.snapshot()?)
    }
}

/// The journal factory, each state machine's snapshot view made by `view_of`.
fn viewed_factory(journals: Journals, view_of: ViewOf) -> Box<dyn StateMachineFactory> {
    let mut inner = factory(journals);
    let view_of = Arc::new(view_of);
    Box::new(
        move |g: GroupId, kind: StateMachineKind| -> Result<Box<dyn StateMachine>, SmError> {
            Ok(Box::new(Viewed {
                inner: inner.create(g, kind)?,
                view_of: Arc::clone(&view_of),
            }))
        },
    )
}

/// A snapshot view that waits at the gate before writing its bytes.
struct GatedView {
    bytes: Vec<u8>,
    gate: Gate,
}

impl SnapshotView for GatedView {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> Result<(), SmError> {
        self.gate.pass();
        out.write_all(&self.bytes)
            .map_err(|e| SmError::Other(e.to_string()))
    }
}

fn gated_factory(journals: Journals, gate: Gate) -> Box<dyn StateMachineFactory> {
    viewed_factory(
        journals,
        Box::new(move |bytes| {
            Ok(Box::new(GatedView {
                bytes,
                gate: gate.clone(),
            }))
        }),
    )
}

fn applied(c: &Cluster, id: NodeId) -> Vec<(u64, Vec<u8>)> {
    let entries = c.nodes[&id].reg.lock().expect("lock")[&G].clone();
    let snapshot = entries.lock().expect("lock").clone();
    snapshot
}

fn snapshots_taken(c: &mut Cluster, id: NodeId) -> u64 {
    Metrics::get(&c.core(id).metrics().snapshots_taken)
}

/// Ticks until `cond` holds, bounded in real time (the snapshot threads run in real time).
fn tick_until(c: &mut Cluster, mut cond: impl FnMut(&mut Cluster) -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        c.pump();
        if cond(c) {
            return true;
        }
        c.tick();
    }
    cond(c)
}

#[test]
fn a_group_keeps_committing_and_electing_while_its_snapshot_is_written() {
    let gate = Gate::default();
    let mut c = Cluster::founding_with(
        3,
        G,
        JOURNAL,
        |cfg| cfg.snapshot_threshold_entries = 8,
        |_| {
            let journals = Journals::default();
            (journals.clone(), gated_factory(journals, gate.clone()))
        },
    );
    let leader = c.elect(G);
    for i in 0..10u8 {
        c.propose_via(leader, None, G, &[vec![i]])
            .expect("proposal");
    }
    // Every node passed the threshold: its snapshot thread is held in the writer.
    assert!(gate.wait_for_writers(3), "three builds reached the writer");
    for id in [1, 2, 3].map(NodeId) {
        assert_eq!(snapshots_taken(&mut c, id), 0, "node {id}: still writing");
    }
    // Before, the driver thread wrote the snapshot: nothing below could run meanwhile.
    for i in 10..20u8 {
        c.propose_via(leader, None, G, &[vec![i]])
            .expect("commits while the snapshot is written");
    }
    let to = if leader == NodeId(1) {
        NodeId(2)
    } else {
        NodeId(1)
    };
    c.core(leader).transfer_leader(G, to).expect("transfer");
    assert!(
        c.drive_until(100, |c| c.a_leader(G) == Some(to)),
        "a new leader elected while the snapshots are written"
    );
    c.propose_via(to, None, G, &[b"after".to_vec()])
        .expect("the new leader commits");
    gate.open();
    assert!(
        tick_until(&mut c, |c| [1, 2, 3]
            .map(NodeId)
            .iter()
            .all(|id| snapshots_taken(c, *id) >= 1
                && c.core(*id).status(G).expect("status").snapshot_index > 0)),
        "the builds completed and the logs are compacted behind them"
    );
    let reference = applied(&c, to);
    assert_eq!(reference.len(), 21);
    assert!(
        c.drive_until(50, |c| [1, 2, 3]
            .map(NodeId)
            .iter()
            .all(|id| applied(c, *id) == reference)),
        "every node applied the same"
    );
}

#[test]
fn a_crash_between_the_tmp_file_and_its_rename_leaves_the_previous_snapshot() {
    let mut c = Cluster::founding(1, G, JOURNAL, |_| {
        let journals = Journals::default();
        (journals.clone(), factory(journals))
    });
    let id = c.elect(G);
    for i in 0..5u8 {
        c.propose_via(id, None, G, &[vec![i]]).expect("proposal");
    }
    c.core(id).snapshot_group(G).expect("snapshot");
    let first = c.core(id).status(G).expect("status").snapshot_index;
    assert!(first > 1, "snapshot taken at {first}");
    for i in 5..10u8 {
        c.propose_via(id, None, G, &[vec![i]]).expect("proposal");
    }
    let st = c.core(id).status(G).expect("status");
    // The process dies while the next snapshot is being written: its `.tmp` holds part of
    // the state, never renamed, no mark in the log.
    let snapshots = c.nodes[&id].cfg.data_dir.join("snapshots");
    let key = SnapshotKey {
        group: G,
        index: st.applied_index,
        term: st.term,
    };
    let tmp = snapshots.join(format!(
        "g{}-i{:020}-t{}.tmp",
        key.group.0, key.index, key.term
    ));
    std::fs::write(&tmp, b"half a snapshot").expect("tmp");
    let node = c.nodes.get_mut(&id).expect("node");
    node.core = None;
    node.sink.crash();
    let journals = Journals::default();
    let mut core = MultiRaftCore::open(
        node.cfg.clone(),
        Box::new(node.sink.clone()),
        Arc::new(c.net.endpoint(id)),
        factory(journals.clone()),
        Arc::new(Metrics::default()),
    )
    .expect("reopen: the tmp file is not read");
    assert_eq!(
        core.status(G).expect("status").snapshot_index,
        first,
        "the previous snapshot is the group's"
    );
    let entries = journals.lock().expect("lock")[&G].clone();
    let restored: Vec<u8> = entries
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(
        restored,
        (0..5u8).collect::<Vec<_>>(),
        "state restored from the previous snapshot"
    );
    // The log replays the rest (and the node, elected again, appends its no-op); a new
    // snapshot is written past the dead one.
    for _ in 0..50 {
        core.tick();
        core.round().expect("round");
    }
    let applied = core.applied_index(G).expect("group");
    assert!(applied >= st.applied_index, "{applied}");
    core.snapshot_group(G).expect("snapshot again");
    assert_eq!(core.status(G).expect("status").snapshot_index, applied);
    let all: Vec<u8> = entries
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(all, (0..10u8).collect::<Vec<_>>());
}

/// A snapshot file damaged at rest (one byte changed, the size kept) refuses the reopen,
/// naming the file: restoring it would give this node a state no other replica has. Put back,
/// the same log opens and restores it.
#[test]
fn a_snapshot_file_damaged_at_rest_refuses_the_open_naming_it() {
    let mut c = Cluster::founding(1, G, JOURNAL, |_| {
        let journals = Journals::default();
        (journals.clone(), factory(journals))
    });
    let id = c.elect(G);
    for i in 0..5u8 {
        c.propose_via(id, None, G, &[vec![i; 64]])
            .expect("proposal");
    }
    c.core(id).snapshot_group(G).expect("snapshot");
    let st = c.core(id).status(G).expect("status");
    let path = c.nodes[&id].cfg.data_dir.join("snapshots").join(format!(
        "g{}-i{:020}-t{}.snap",
        G.0, st.snapshot_index, st.term
    ));
    let good = std::fs::read(&path).expect("the snapshot file");
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x20;
    std::fs::write(&path, &bad).expect("damage");
    let node = c.nodes.get_mut(&id).expect("node");
    node.core = None;
    let (cfg, sink) = (node.cfg.clone(), node.sink.clone());
    let reopen = || {
        MultiRaftCore::open(
            cfg.clone(),
            Box::new(sink.clone()),
            Arc::new(c.net.endpoint(id)),
            factory(Journals::default()),
            Arc::new(Metrics::default()),
        )
    };
    let err = match reopen() {
        Ok(_) => panic!("a damaged snapshot file was restored"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("checksum"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    std::fs::write(&path, &good).expect("put back");
    let core = reopen().expect("the undamaged file opens");
    assert_eq!(
        core.status(G).expect("status").snapshot_index,
        st.snapshot_index
    );
}

/// Where the journal's snapshot fails while `failing` is set: giving its view (a host's
/// `snapshot()` raising), or writing it on the snapshot thread (its view's `encode()`).
#[derive(Clone, Copy)]
enum Fails {
    View,
    Write,
}

struct FailingView(Vec<u8>);

impl SnapshotView for FailingView {
    fn write_to(self: Box<Self>, _out: &mut dyn std::io::Write) -> Result<(), SmError> {
        Err(SmError::Other(format!(
            "encode of {} bytes raised",
            self.0.len()
        )))
    }
}

/// The journal factory whose snapshots fail at `at` while `failing` is set.
fn failing_factory(
    journals: Journals,
    failing: Arc<std::sync::atomic::AtomicBool>,
    at: Fails,
) -> Box<dyn StateMachineFactory> {
    viewed_factory(
        journals,
        Box::new(move |state| -> Result<Box<dyn SnapshotView>, SmError> {
            if !failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(Box::new(SnapshotBytes(state)));
            }
            match at {
                Fails::View => Err(SmError::Other("snapshot() raised OSError(ENOSPC)".into())),
                Fails::Write => Ok(Box::new(FailingView(state))),
            }
        }),
    )
}

/// Found by an embedding probe: every replica reaches the snapshot threshold at the same
/// index, so a `snapshot()` that raised, fatal to the engine, stopped the whole cluster at
/// once. Now the group goes on committing, the failure is counted, and a later snapshot is
/// taken once the state machine gives its state again.
#[test]
fn a_state_machine_that_cannot_snapshot_stops_no_group() {
    for at in [Fails::View, Fails::Write] {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let threshold = 8;
        let mut c = Cluster::founding_with(
            3,
            G,
            JOURNAL,
            |cfg| cfg.snapshot_threshold_entries = threshold,
            |_| {
                let journals = Journals::default();
                let f = failing_factory(journals.clone(), Arc::clone(&failing), at);
                (journals, f)
            },
        );
        let leader = c.elect(G);
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        let taken_before: Vec<u64> = ids.iter().map(|id| snapshots_taken(&mut c, *id)).collect();
        for i in 0..3 * threshold {
            c.propose_via(leader, None, G, &[vec![i as u8]])
                .expect("committed while every snapshot fails");
        }
        let failed = |c: &mut Cluster, id: NodeId| {
            Metrics::get(&c.core(id).metrics().snapshot_state_machine_errors)
        };
        assert!(
            tick_until(&mut c, |c| ids.iter().all(|id| failed(c, *id) >= 1)),
            "every replica counted its failed snapshot"
        );
        for (id, before) in ids.iter().zip(&taken_before) {
            assert_eq!(
                snapshots_taken(&mut c, *id),
                *before,
                "none taken on {id:?}"
            );
            // Tried again only after another threshold's worth of entries, not every round.
            assert!(failed(&mut c, *id) <= 3, "{}", failed(&mut c, *id));
        }
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        for i in 0..2 * threshold {
            c.propose_via(leader, None, G, &[vec![i as u8]])
                .expect("committed");
        }
        assert!(
            tick_until(&mut c, |c| ids
                .iter()
                .zip(&taken_before)
                .all(|(id, before)| snapshots_taken(c, *id) > *before)),
            "a snapshot is taken once the state machine gives its state"
        );
        assert_eq!(applied(&c, leader).len(), (5 * threshold) as usize);
    }
}
