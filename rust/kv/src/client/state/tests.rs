//! The state's routing, health and batching rules at a fixed `now`.

use super::*;
use crate::peer_health::DOWN_HOLD_S;
use crate::routing::{Route, VSHARDS};

pub(crate) fn state_with(leader: u64, voters: Vec<u64>) -> State {
    let mut st = State::new(SessionState::new(1));
    st.routing = Some(Routing::new(vec![1; VSHARDS], [(1, Route { leader, voters })]).unwrap());
    st
}

fn call(kind: CallKind, items: usize) -> Arc<Call> {
    Arc::new(Call {
        kind,
        deadline: Instant::now() + Duration::from_secs(5),
        groups: vec![1; items],
        seqs: (0, 0),
        completion: Mutex::new(None),
        progress: Mutex::new(Progress {
            results: vec![None; items],
            remaining: items,
            finished: false,
        }),
    })
}

fn item(call: &Arc<Call>, slot: usize, bytes: usize) -> Item {
    Item {
        call: Arc::clone(call),
        slot,
        group: 1,
        lane: Lane::Propose,
        payload: vec![0; bytes],
        attempt: 0,
        last: None,
        vshard: 0,
        refused: 0,
        search: Default::default(),
        timeouts: 0,
    }
}

#[test]
fn one_timed_out_attempt_wakes_every_attempt_waiting_on_that_node() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut st = state_with(1, vec![1, 2]);
    let on_1 = st.suspect_channel(1);
    let on_2 = st.suspect_channel(2);
    rt.block_on(async {
        let a = on_1.notified();
        let b = on_2.notified();
        tokio::pin!(a, b);
        a.as_mut().enable();
        b.as_mut().enable();
        st.suspected(1).expect("node 1's channel").notify_waiters();
        assert!(
            st.suspected(3).is_none(),
            "no channel for a node no attempt waits on"
        );
        let woke = tokio::time::timeout(Duration::from_secs(5), a).await;
        assert!(woke.is_ok(), "the waiter on node 1 was woken");
        let other = tokio::time::timeout(Duration::from_millis(50), b).await;
        assert!(other.is_err(), "the one on node 2 was not");
    });
}

#[test]
fn attempt_timeout_follows_the_slowest_recent_answer() {
    let now = Instant::now();
    let mut st = state_with(1, vec![1]);
    assert_eq!(st.attempt_timeout(now), Duration::from_millis(300), "floor");
    st.answered(Duration::from_millis(200), now);
    assert_eq!(st.attempt_timeout(now), Duration::from_millis(600));
    st.answered(Duration::from_millis(900), now);
    assert_eq!(st.attempt_timeout(now), Duration::from_secs(1), "ceiling");
    // Two half-lives later the 900 ms answer counts as 225 ms.
    let later = now + Duration::from_secs(4);
    let t = st.attempt_timeout(later).as_secs_f64();
    assert!((t - 0.675).abs() < 1e-9, "{t}");
}

#[test]
fn target_follows_hints_and_skips_failed_nodes() {
    let now = Instant::now();
    let mut st = state_with(2, vec![1, 2, 3]);
    assert_eq!(st.pick(1, 0, 99, now), Some((2, false)), "routing's leader");
    st.learn(1, Lesson::Leader(3), 99, now);
    assert_eq!(
        st.pick(1, 0, 99, now),
        Some((3, false)),
        "a learned leader wins"
    );
    st.learn(1, Lesson::Failed(3), 99, now);
    // Leader forgotten, node 3 down: members in turn (probes), those not down first.
    assert_eq!(st.pick(1, 0, 99, now), Some((1, true)));
    assert_eq!(st.pick(1, 1, 99, now), Some((2, true)));
    let hold_passed = now + Duration::from_secs_f64(2.0 * DOWN_HOLD_S);
    assert_eq!(st.pick(1, 0, 99, hold_passed), Some((1, true)));
    let empty = state_with(0, vec![]);
    assert_eq!(empty.pick(1, 0, 99, now), None);
}

#[test]
fn batches_are_bounded_by_items_bytes_and_requests_in_flight() {
    let mut st = state_with(2, vec![2]);
    let key = (2, Lane::Propose, false);
    let c = call(CallKind::PutMany, BATCH_ITEMS_MAX + 10);
    for slot in 0..BATCH_ITEMS_MAX + 10 {
        st.enqueue(key, item(&c, slot, 1));
    }
    let mut out = Vec::new();
    st.take_batches(key, &mut out);
    let sizes: Vec<usize> = out.iter().map(|(_, b)| b.len()).collect();
    assert_eq!(sizes, vec![BATCH_ITEMS_MAX, 10], "by item count");
    assert_eq!(st.pending_items, 0);

    let mut st = state_with(2, vec![2]);
    let big = BATCH_BYTES_MAX / 2 + 1;
    let c = call(CallKind::PutMany, REMOTE_IN_FLIGHT_MAX + 2);
    for slot in 0..REMOTE_IN_FLIGHT_MAX + 2 {
        st.enqueue(key, item(&c, slot, big));
    }
    let mut out = Vec::new();
    st.take_batches(key, &mut out);
    assert_eq!(
        out.len(),
        REMOTE_IN_FLIGHT_MAX,
        "one big item per request, 4 in flight"
    );
    assert!(out.iter().all(|(_, b)| b.len() == 1));
    assert_eq!(st.pending_items, 2, "the rest waits for a free slot");
    st.lanes.get_mut(&key).unwrap().in_flight -= 1;
    let mut more = Vec::new();
    st.take_batches(key, &mut more);
    assert_eq!(more.len(), 1, "one slot freed: one more request");
}

#[test]
fn items_of_a_finished_call_are_not_sent_and_a_failure_ends_the_call() {
    let mut st = state_with(2, vec![2]);
    let key = (2, Lane::Propose, false);
    let c = call(CallKind::PutMany, 2);
    let mut finished = Vec::new();
    st.complete(item(&c, 0, 1), Err(KvError::OutcomeUnknown), &mut finished);
    assert_eq!(finished.len(), 1);
    assert!(matches!(&finished[0].outcome, Err(f) if f.group == 1));
    st.complete(item(&c, 1, 1), Ok(None), &mut finished);
    assert_eq!(finished.len(), 1, "told once");
    st.enqueue(key, item(&c, 1, 1));
    let mut out = Vec::new();
    st.take_batches(key, &mut out);
    assert!(out.is_empty(), "its call already failed: not sent");
    assert!(st.lanes.is_empty() && st.pending_items == 0);
}

#[test]
fn a_client_inside_a_node_targets_its_node_only_when_its_server_answers_in_process() {
    let now = Instant::now();
    let mut st = state_with(2, vec![1, 2, 3]);
    assert_eq!(
        st.pick(1, 0, 2, now),
        Some((1, true)),
        "not local: ask another"
    );
    st.local = Some(std::sync::Weak::new());
    assert_eq!(st.pick(1, 0, 2, now), Some((2, false)), "its own leader");
    st.leaders.insert(1, 0);
    assert_eq!(
        st.pick(1, 1, 2, now),
        Some((2, true)),
        "no leader known: this node is one of the members to ask"
    );
}

#[test]
fn a_leaderless_group_makes_the_table_stale_once_per_pause_and_tells_the_watcher() {
    let mut st = state_with(0, vec![1, 2, 3]);
    assert_eq!(st.members(1), 3);
    assert_eq!(st.members(9), 0, "a group the table does not know");
    let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = |told: &Arc<std::sync::atomic::AtomicUsize>| -> super::super::RoutingWatch {
        let told = Arc::clone(told);
        Box::new(move || {
            told.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    };
    st.routing_watch = Some(watch(&told));
    let t0 = Instant::now();
    let first = st.leaderless(t0).expect("the waiting watcher");
    first();
    assert!(st.routing_stale);
    assert_eq!(told.load(std::sync::atomic::Ordering::SeqCst), 1);
    // While stale (a fresh table on its way), no other ask, however late.
    st.routing_watch = Some(watch(&told));
    assert!(st.leaderless(t0 + LEADERLESS_REFRESH_PAUSE * 4).is_none());
    assert!(st.routing_watch.is_some(), "kept for the next stale table");
    // A fresh table came (set_routing clears the flag): paced from the last ask.
    st.routing_stale = false;
    assert!(st.leaderless(t0 + LEADERLESS_REFRESH_PAUSE / 2).is_none());
    assert!(!st.routing_stale, "a paced ask leaves the table as it is");
    let second = st
        .leaderless(t0 + LEADERLESS_REFRESH_PAUSE)
        .expect("due again after the pause");
    second();
    assert_eq!(told.load(std::sync::atomic::Ordering::SeqCst), 2);
}
