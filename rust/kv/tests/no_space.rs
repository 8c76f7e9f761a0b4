//! Disk full without collapse (issue 13 part 5), driven by hand over a simulated network:
//! - a round whose log append or sync fails with `NoSpace` stalls instead of stopping the
//!   engine, acknowledges nothing before its records are durable, and finishes once a retry
//!   succeeds (log doubles that fail N times);
//! - NO_SPACE (free space below the log's reserve) refuses writes with `RaftError::NoSpace`
//!   naming the data dir, keeps ReadIndex reads working, stops a follower's log from growing
//!   (appends dropped, counted) and ends by itself once space is back: writes resume and the
//!   follower catches up;
//! - on a real full tmpfs (root only) with the real WAL: the engine keeps running, refuses
//!   writes, resumes after space is freed, and every acknowledged write survives a restart.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{factory, put, Readers, SimCluster};
use nodedb_kv::KV_STATE_MACHINE;
use nodedb_multiraft::core::{ProposeOutcome, Reply, SPACE_SAMPLE_EVERY_TICKS};
use nodedb_multiraft::error::RaftError;
use nodedb_multiraft::log_sink::{LogRecord, MemLogSink, RecordKind, SpaceStatus};
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::{
    GroupId, GroupRole, Metrics, MultiRaftConfig, MultiRaftCore, NodeId, WalSink,
};

const G: GroupId = GroupId(1);
const GIB: u64 = 1 << 30;

type Answer<T> = Arc<Mutex<Option<Result<T, RaftError>>>>;

fn plenty() -> Option<SpaceStatus> {
    Some(SpaceStatus {
        available_bytes: 100 * GIB,
        reserve_bytes: GIB,
    })
}

fn below_reserve() -> Option<SpaceStatus> {
    Some(SpaceStatus {
        available_bytes: GIB / 2,
        reserve_bytes: GIB,
    })
}

fn has_entry(records: &[LogRecord], index: u64) -> bool {
    records
        .iter()
        .any(|r| r.group == G && r.kind == RecordKind::Entry && r.index == index)
}

/// A round error fails the test: a full disk must never stop the engine.
type Cluster = SimCluster<MemLogSink, Readers>;

impl Cluster {
    /// `n` founding voters of group 1 (KV), each with an in-memory log that reports plenty
    /// of free space.
    fn new(n: u64) -> Cluster {
        Cluster::founding(n, G, KV_STATE_MACHINE, |sink| {
            sink.set_space(plenty());
            let readers: Readers = Arc::default();
            (Arc::clone(&readers), factory(readers))
        })
    }

    fn sink(&self, id: NodeId) -> &MemLogSink {
        &self.nodes[&id].sink
    }

    /// Proposes on `at`; the answer lands in the returned cell. Checked at the moment it is
    /// given: an acknowledged entry is already in `at`'s durable log.
    fn propose_on(&mut self, at: NodeId, cmd: Vec<u8>) -> Answer<ProposeOutcome> {
        let cell: Answer<ProposeOutcome> = Arc::default();
        let (out, sink) = (Arc::clone(&cell), self.sink(at).clone());
        let reply = Reply::new(move |r: Result<ProposeOutcome, RaftError>| {
            if let Ok(outcome) = &r {
                assert!(
                    has_entry(&sink.durable(), outcome.index),
                    "entry {} acknowledged before it was durable here",
                    outcome.index
                );
            }
            *out.lock().expect("lock") = Some(r);
        });
        self.core(at).propose(G, &[cmd], reply);
        cell
    }

    fn read_index_on(&mut self, at: NodeId) -> Answer<u64> {
        let cell: Answer<u64> = Arc::default();
        let out = Arc::clone(&cell);
        self.core(at).read_index(
            G,
            Reply::new(move |r| {
                *out.lock().expect("lock") = Some(r);
            }),
        );
        cell
    }

    fn get(&self, at: NodeId, key: &str) -> Option<Vec<u8>> {
        self.nodes[&at].reg.lock().expect("lock")[&G].get(key.as_bytes())
    }

    fn last_index(&self, at: NodeId) -> u64 {
        self.nodes[&at]
            .core
            .as_ref()
            .expect("up")
            .status(G)
            .expect("status")
            .last_index
    }
}

fn taken<T: Clone>(cell: &Answer<T>) -> Option<Result<T, RaftError>> {
    cell.lock().expect("lock").clone()
}

fn metric(
    c: &mut Cluster,
    id: NodeId,
    f: impl Fn(&Metrics) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    Metrics::get(f(c.core(id).metrics()))
}

fn assert_no_space(err: &RaftError, data_dir: &Path) {
    match err {
        RaftError::NoSpace { data_dir: d } => assert_eq!(d, data_dir),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&data_dir.display().to_string()) && text.contains("resume by themselves"),
        "{text}"
    );
}

#[test]
fn a_sync_that_hits_a_full_disk_stalls_the_round_and_acknowledges_only_after_the_retry() {
    let mut c = Cluster::new(1);
    let me = c.elect(G);
    let first = c.propose_on(me, put("a", b"1"));
    c.pump();
    assert!(matches!(taken(&first), Some(Ok(_))), "healthy commit");

    c.sink(me).fail_no_space(0, 3);
    let p = c.propose_on(me, put("b", b"2"));
    let q = c.propose_on(me, put("c", b"3"));
    c.pump();
    let core = c.core(me);
    assert!(core.stalled() && core.no_space(), "stalled, not stopped");
    assert!(
        taken(&p).is_none() && taken(&q).is_none(),
        "nothing acknowledged"
    );
    assert_eq!(metric(&mut c, me, |m| &m.log_stalls), 1);
    // While stalled: a new proposal is refused (raft may not be stepped), no busy loop.
    let refused = c.propose_on(me, put("d", b"4"));
    let data_dir = c.nodes[&me].cfg.data_dir.clone();
    assert_no_space(
        &taken(&refused).expect("answered at once").unwrap_err(),
        &data_dir,
    );
    assert!(
        !c.core(me).has_ready(),
        "a stalled round waits for the next tick"
    );
    assert_eq!(
        c.core(me).round().expect("round"),
        0,
        "no retry within the tick"
    );
    // Two more failing retries (one per tick), then the fourth sync succeeds.
    for _ in 0..2 {
        c.tick();
        assert!(c.core(me).stalled());
        assert!(taken(&p).is_none());
    }
    c.tick();
    assert!(!c.core(me).stalled(), "the retry landed");
    for cell in [&p, &q] {
        let outcome = taken(cell).expect("answered").expect("committed");
        assert!(has_entry(&c.sink(me).durable(), outcome.index));
    }
    assert_eq!(c.get(me, "b").as_deref(), Some(&b"2"[..]));
    assert_eq!(c.get(me, "c").as_deref(), Some(&b"3"[..]));
    // The log reports plenty of space: NO_SPACE ends by itself and writes resume.
    assert!(c.drive_until(2 * SPACE_SAMPLE_EVERY_TICKS as usize, |c| !c
        .core(me)
        .no_space()));
    let after = c.propose_on(me, put("e", b"5"));
    c.pump();
    assert!(matches!(taken(&after), Some(Ok(_))), "{:?}", taken(&after));
    assert_eq!(metric(&mut c, me, |m| &m.no_space_entered), 1);
}

#[test]
fn an_append_that_hits_a_full_disk_is_appended_again_and_nothing_doubles() {
    let mut c = Cluster::new(1);
    let me = c.elect(G);
    c.sink(me).fail_no_space(2, 0);
    let p = c.propose_on(me, put("k", b"v"));
    c.pump();
    assert!(c.core(me).stalled());
    c.tick();
    assert!(c.core(me).stalled(), "second append fails too");
    c.tick();
    let outcome = taken(&p).expect("answered").expect("committed");
    let entries = c
        .sink(me)
        .durable()
        .iter()
        .filter(|r| r.kind == RecordKind::Entry && r.index == outcome.index)
        .count();
    assert_eq!(entries, 1, "the batch landed once");
    assert_eq!(c.get(me, "k").as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_stalled_leader_of_three_acknowledges_nothing_until_its_own_log_has_the_entry() {
    let mut c = Cluster::new(3);
    let leader = c.elect(G);
    c.sink(leader).fail_no_space(0, 4);
    let p = c.propose_on(leader, put("x", b"1"));
    // The followers receive, persist and acknowledge the entry; the leader is stalled.
    for _ in 0..3 {
        c.tick();
        assert!(
            taken(&p).is_none(),
            "acknowledged while the leader's log lacked it"
        );
    }
    assert!(metric(&mut c, leader, |m| &m.inbound_dropped_stalled) > 0);
    assert!(
        c.drive_until(50, |_| taken(&p).is_some()),
        "completes after the stall"
    );
    assert!(matches!(taken(&p), Some(Ok(_))), "{:?}", taken(&p));
}

#[test]
fn no_space_refuses_writes_keeps_reads_and_resumes_by_itself() {
    let mut c = Cluster::new(3);
    let leader = c.elect(G);
    let first = c.propose_on(leader, put("k1", b"v1"));
    assert!(c.drive_until(20, |_| taken(&first).is_some()));
    let followers: Vec<NodeId> = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    assert!(c.drive_until(20, |c| followers.iter().all(|f| c.get(*f, "k1").is_some())));

    // The leader's disk falls below the reserve: writes refused, reads served everywhere.
    c.sink(leader).set_space(below_reserve());
    assert!(c.drive_until(2 * SPACE_SAMPLE_EVERY_TICKS as usize, |c| c
        .core(leader)
        .no_space()));
    let refused = c.propose_on(leader, put("k2", b"v2"));
    let data_dir = c.nodes[&leader].cfg.data_dir.clone();
    assert_no_space(
        &taken(&refused).expect("refused at once").unwrap_err(),
        &data_dir,
    );
    assert!(metric(&mut c, leader, |m| &m.proposals_no_space) >= 1);
    for at in c.nodes.keys().copied().collect::<Vec<_>>() {
        let read = c.read_index_on(at);
        assert!(
            c.drive_until(20, |_| taken(&read).is_some()),
            "read on {at:?}"
        );
        assert!(
            matches!(taken(&read), Some(Ok(_))),
            "{at:?}: {:?}",
            taken(&read)
        );
    }

    // A follower fills up too; the leader gets space back. Writes resume (leader + the other
    // follower are a quorum); the full follower's log does not grow.
    let full = followers[0];
    c.sink(full).set_space(below_reserve());
    c.sink(leader).set_space(plenty());
    assert!(c.drive_until(3 * SPACE_SAMPLE_EVERY_TICKS as usize, |c| {
        c.core(full).no_space() && !c.core(leader).no_space()
    }));
    let full_last = c.last_index(full);
    let resumed = c.propose_on(leader, put("k3", b"v3"));
    assert!(c.drive_until(20, |_| taken(&resumed).is_some()));
    assert!(
        matches!(taken(&resumed), Some(Ok(_))),
        "{:?}",
        taken(&resumed)
    );
    c.drive_until(10, |_| false);
    assert_eq!(
        c.last_index(full),
        full_last,
        "the full follower's log did not grow"
    );
    assert!(metric(&mut c, full, |m| &m.appends_dropped_no_space) > 0);
    assert!(c.get(full, "k3").is_none());

    // Its space comes back: it leaves NO_SPACE by itself and catches up.
    c.sink(full).set_space(plenty());
    assert!(
        c.drive_until(100, |c| c.get(full, "k3").is_some()),
        "caught up"
    );
    assert!(!c.core(full).no_space());
    assert_eq!(metric(&mut c, full, |m| &m.no_space), 0);
}

// --- the real WAL on a full tmpfs ------------------------------------------------------------

/// A tmpfs of `size_bytes` on a fresh directory, unmounted on drop; `None` without root.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CAP_SYS_ADMIN)");
            return None;
        }
        Some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn wal_core(
    dir: &Path,
    net: &SimNetwork,
    readers: &Readers,
    free_space_reserve: Option<u64>,
) -> MultiRaftCore {
    let options = nodedb_wal::WalOptions {
        segment_bytes_max: 64 << 10,
        write_buffer_bytes: 4096,
        free_space_reserve,
        ..nodedb_wal::WalOptions::default()
    };
    wal_core_with(dir, net, readers, options)
}

fn wal_core_with(
    dir: &Path,
    net: &SimNetwork,
    readers: &Readers,
    options: nodedb_wal::WalOptions,
) -> MultiRaftCore {
    let sink = WalSink::open(&dir.join("raft"), options).expect("wal open");
    MultiRaftCore::open(
        MultiRaftConfig::new(NodeId(1), dir),
        Box::new(sink),
        Arc::new(net.endpoint(NodeId(1))),
        factory(Arc::clone(readers)),
        Arc::new(Metrics::default()),
    )
    .expect("open")
}

/// Ticks and rounds until `cond` (bounded); a round error fails the test.
fn drive(
    core: &mut MultiRaftCore,
    ticks: usize,
    mut cond: impl FnMut(&MultiRaftCore) -> bool,
) -> bool {
    for _ in 0..ticks {
        while core.round().expect("a full disk is not fatal") > 0 {}
        if cond(core) {
            return true;
        }
        core.tick();
    }
    cond(core)
}

/// Operator probe, session 31: on a small volume the segment the log prepared ahead of need
/// held the node below its reserve, and nothing could free it but a restart. Entering NO_SPACE
/// now gives it back, and the node leaves NO_SPACE with the other file still there.
#[test]
fn entering_no_space_gives_back_the_prepared_segment() {
    const MIB: u64 = 1 << 20;
    let Some(fs) = Tmpfs::mount(32 << 20) else {
        return;
    };
    let data_dir: PathBuf = fs.dir.path().join("node");
    let net = SimNetwork::new(1, 1000);
    let readers: Readers = Arc::default();
    let options = nodedb_wal::WalOptions {
        segment_bytes_max: 4 << 20,
        write_buffer_bytes: 4096,
        free_space_reserve: Some(4 * MIB), // leave threshold: 5 MiB
        ..nodedb_wal::WalOptions::default()
    };
    let mut core = wal_core_with(&data_dir, &net, &readers, options);
    let raft = data_dir.join("raft");
    let prepared = || {
        std::fs::read_dir(&raft).expect("raft dir").any(|e| {
            let e = e.expect("entry");
            e.file_name().to_string_lossy().ends_with(".wal.prep")
                && e.metadata().is_ok_and(|m| m.len() == 4 * MIB)
        })
    };
    let began = std::time::Instant::now();
    while !prepared() {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "no segment prepared"
        );
        std::thread::sleep(Duration::from_millis(10)); // a bounded poll of the worker's file
    }
    // Another file takes the disk down to 3 MiB free, below the reserve.
    let free = |dir: &Path| {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(dir)
            .output();
        let text = String::from_utf8(out.expect("df").stdout).expect("utf8");
        text.lines()
            .nth(1)
            .expect("avail")
            .trim()
            .parse::<u64>()
            .expect("bytes")
    };
    let filler_bytes = free(fs.dir.path()) - 3 * MIB;
    std::fs::write(
        fs.dir.path().join("filler"),
        vec![0xAB; filler_bytes as usize],
    )
    .expect("fill");
    assert!(
        drive(&mut core, 50, |c| Metrics::get(
            &c.metrics().no_space_entered
        ) > 0),
        "entered NO_SPACE"
    );
    assert!(!prepared(), "the prepared segment was given back");
    assert!(
        drive(&mut core, 50, |c| !c.no_space()),
        "left NO_SPACE with the filler still there ({} bytes free)",
        free(fs.dir.path())
    );
}

#[test]
fn a_real_disk_below_the_reserve_refuses_writes_then_resumes_and_loses_nothing() {
    real_full_disk(None); // the default reserve: NO_SPACE before the disk is full
}

#[test]
fn a_real_enospc_stalls_the_round_then_resumes_and_loses_nothing() {
    real_full_disk(Some(0)); // no reserve: the log's own write meets ENOSPC
}

fn real_full_disk(free_space_reserve: Option<u64>) {
    let Some(fs) = Tmpfs::mount(4 << 20) else {
        return;
    };
    let data_dir: PathBuf = fs.dir.path().join("node");
    let net = SimNetwork::new(1, 1000);
    let readers: Readers = Arc::default();
    let mut core = wal_core(&data_dir, &net, &readers, free_space_reserve);
    core.add_group(
        G,
        GroupRole::Voter {
            peers: vec![NodeId(1)],
        },
        KV_STATE_MACHINE,
    )
    .expect("group");
    core.campaign(G).expect("campaign");
    assert!(drive(&mut core, 50, |c| c.is_leader(G)));
    // Another process fills the disk while this node writes.
    let filler = fs.dir.path().join("filler");
    std::fs::write(&filler, vec![0xAB; 3 << 20]).ok();
    let mut acked: Vec<String> = Vec::new();
    let mut unanswered: Vec<(String, Answer<ProposeOutcome>)> = Vec::new();
    let mut refused = 0;
    let value = "v".repeat(2000);
    for i in 0..2000 {
        let cell: Answer<ProposeOutcome> = Arc::default();
        let out = Arc::clone(&cell);
        core.propose(
            G,
            &[put(&format!("key{i}"), value.as_bytes())],
            Reply::new(move |r| {
                *out.lock().expect("lock") = Some(r);
            }),
        );
        assert!(drive(&mut core, 20, |_| cell.lock().expect("lock").is_some()) || core.stalled());
        match taken(&cell) {
            Some(Ok(_)) => acked.push(format!("key{i}")),
            Some(Err(RaftError::NoSpace { data_dir: d })) => {
                assert_eq!(d, data_dir);
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            None => unanswered.push((format!("key{i}"), cell)), // in a stalled round
            Some(Err(e)) => panic!("unexpected {e}"),
        }
    }
    assert!(refused >= 3, "the disk never filled: {} acked", acked.len());
    eprintln!(
        "reserve {free_space_reserve:?}: writes refused after {} acknowledged",
        acked.len()
    );
    assert!(core.no_space());
    assert!(!acked.is_empty());
    if free_space_reserve == Some(0) {
        // The log itself met ENOSPC and stalled its round. The stall may already be over: the
        // WAL's background preparer deletes a next segment it could not finish, and that space
        // lets the round's retry through, while the engine stays in NO_SPACE (refusing writes)
        // until its space sample says the reserve is back.
        assert!(
            Metrics::get(&core.metrics().log_stalls) > 0,
            "without a reserve the log itself met ENOSPC (stalled now: {}, {} unanswered)",
            core.stalled(),
            unanswered.len()
        );
    }
    // Space is freed: no restart, writes resume by themselves.
    std::fs::remove_file(&filler).expect("free");
    assert!(
        drive(&mut core, 200, |c| !c.no_space() && !c.stalled()),
        "left NO_SPACE"
    );
    for (key, cell) in unanswered {
        assert!(
            matches!(taken(&cell), Some(Ok(_))),
            "{key}: {:?}",
            taken(&cell)
        );
        acked.push(key);
    }
    for i in 0..20 {
        let key = format!("after{i}");
        let cell: Answer<ProposeOutcome> = Arc::default();
        let out = Arc::clone(&cell);
        core.propose(
            G,
            &[put(&key, b"x")],
            Reply::new(move |r| {
                *out.lock().expect("lock") = Some(r);
            }),
        );
        assert!(drive(&mut core, 20, |_| cell
            .lock()
            .expect("lock")
            .is_some()));
        assert!(matches!(taken(&cell), Some(Ok(_))), "{:?}", taken(&cell));
        acked.push(key);
    }
    // Restart: every acknowledged write is there.
    drop(core);
    let readers: Readers = Arc::default();
    let mut core = wal_core(&data_dir, &net, &readers, free_space_reserve);
    core.campaign(G).expect("campaign");
    assert!(drive(&mut core, 50, |c| c.is_leader(G)));
    let reader = readers.lock().expect("lock")[&G].clone();
    assert!(drive(&mut core, 50, |_| acked
        .iter()
        .all(|k| reader.get(k.as_bytes()).is_some())));
}

// --- the threaded driver ---------------------------------------------------------------------

const T: std::time::Duration = std::time::Duration::from_secs(5);

fn start_engine(
    cfg: MultiRaftConfig,
    sink: Box<dyn nodedb_multiraft::LogSink>,
    net: &SimNetwork,
) -> nodedb_multiraft::MultiRaft {
    let id = cfg.node_id;
    let engine = nodedb_multiraft::MultiRaft::start(
        cfg,
        sink,
        Arc::new(net.endpoint(id)),
        factory(Readers::default()),
    )
    .expect("start");
    let inbound = engine.inbound();
    net.attach(id, move |f| inbound.deliver(f));
    engine
}

/// Group 1 (KV) with node 1 as its only voter, and node 1 its leader.
async fn elect_alone(engine: &nodedb_multiraft::MultiRaft) {
    let peers = vec![NodeId(1)];
    engine
        .add_group(G, GroupRole::Voter { peers }, KV_STATE_MACHINE, T)
        .await
        .expect("group");
    engine.campaign(G, T).await.expect("campaign");
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + T;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not within {T:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await; // polling a flag
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_stalls_then_completes_and_reports_no_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(3, 1000);
    let mut cfg = MultiRaftConfig::new(NodeId(1), dir.path().join("n1"));
    cfg.tick_interval = std::time::Duration::from_millis(20);
    let data_dir = cfg.data_dir.clone();
    let sink = MemLogSink::new();
    sink.set_space(plenty());
    let engine = start_engine(cfg, Box::new(sink.clone()), &net);
    elect_alone(&engine).await;
    engine.propose(G, put("a", b"1"), T).await.expect("healthy");

    // A stalled log write: the proposal completes once a retry lands; the engine never stops.
    sink.fail_no_space(0, 3);
    let out = engine
        .propose(G, put("b", b"2"), T)
        .await
        .expect("after the stall");
    assert!(has_entry(&sink.durable(), out.index));
    assert!(engine.stopped_reason().is_none());
    let m = engine.metrics();
    assert_eq!(Metrics::get(&m.log_stalls), 1);
    until("NO_SPACE left after the stall", || !engine.no_space()).await;

    // Below the reserve: NO_SPACE, writes refused naming the data dir, reads served.
    sink.set_space(below_reserve());
    until("NO_SPACE entered", || engine.no_space()).await;
    assert_eq!(Metrics::get(&m.no_space), 1);
    match engine.propose(G, put("c", b"3"), T).await {
        Err(e) => assert_no_space(&e, &data_dir),
        Ok(o) => panic!("a write was accepted in NO_SPACE: {o:?}"),
    }
    engine.read_index(G, T).await.expect("reads are served");
    sink.set_space(plenty());
    until("NO_SPACE left", || !engine.no_space()).await;
    engine
        .propose(G, put("c", b"3"), T)
        .await
        .expect("writes resume");
    assert_eq!(Metrics::get(&m.no_space_entered), 2);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_repair_is_reported_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = SimNetwork::new(4, 1000);
    let cfg = MultiRaftConfig::new(NodeId(1), dir.path().join("n1"));
    let wal_dir = cfg.data_dir.join("raft");
    let options = || nodedb_wal::WalOptions {
        preallocate: false, // the segment ends at its last record: a tail is easy to tear
        ..nodedb_wal::WalOptions::default()
    };
    let engine = start_engine(
        cfg.clone(),
        Box::new(WalSink::open(&wal_dir, options()).expect("wal")),
        &net,
    );
    assert!(engine.recovery_repairs().is_empty());
    elect_alone(&engine).await;
    engine.propose(G, put("a", b"1"), T).await.expect("write");
    engine.shutdown();
    drop(engine);
    net.detach(NodeId(1));
    // A write that never completed: a few bytes of a frame after the last record.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&wal_dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let last = segments.pop().expect("a segment");
    let len = std::fs::metadata(&last).expect("meta").len();
    let mut bytes = std::fs::read(&last).expect("read");
    bytes.extend_from_slice(&[0xAB; 10]);
    std::fs::write(&last, bytes).expect("tear");

    let engine = start_engine(
        cfg,
        Box::new(WalSink::open(&wal_dir, options()).expect("wal")),
        &net,
    );
    let repairs = engine.recovery_repairs().to_vec();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert_eq!(repairs[0].file, last);
    assert_eq!(
        (repairs[0].offset_bytes, repairs[0].discarded_bytes),
        (len, 10)
    );
    assert!(!repairs[0].reason.is_empty());
    let m = engine.metrics();
    assert_eq!(Metrics::get(&m.wal_torn_tail_repairs_total), 1);
    assert_eq!(Metrics::get(&m.wal_torn_tail_bytes_discarded_total), 10);
    engine.shutdown();
}
