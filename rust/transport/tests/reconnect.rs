//! Connections over real UDP sockets on 127.0.0.1 as peers come and go: port release, restarted
//! and silent peers, fresh (unpooled) RPCs, and a peer that dials again after a crash.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::{handler_fn, MessageKind, NodeId, Transport, TransportError};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_releases_the_port_and_a_restarted_peer_is_reached_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let server = bind(1, ANY, c[0].clone());
    let addr: SocketAddr = server.local_addr();
    let client = bind(2, ANY, c[1].clone());
    serve_echo(&server);
    client.register_peer(NodeId(1), addr, server.spki_pin());
    client
        .send_rpc(NodeId(1), MessageKind::PING, Bytes::new())
        .await
        .unwrap();
    server.close().await;
    let err = server
        .send_rpc_to_addr(addr, MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed));
    // The port is free at once.
    let restarted = bind(1, &addr.to_string(), c[0].clone());
    serve_echo(&restarted);
    // The client's pooled connection is stale; the restarted peer (same key → same stateless
    // reset key) resets it and the client redials within the same call.
    let reply = client
        .send_rpc(NodeId(1), MessageKind::PING, Bytes::from_static(b"again"))
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from_static(b"again"));
    assert_eq!(client.metrics()["connections_opened"], 2);
}

/// A peer that vanishes without a CONNECTION_CLOSE (its runtime is torn down, as when a process is
/// killed) and comes back on the same port with the same key: the client's stale connection is
/// reset statelessly and the very next call redials and succeeds.
#[test]
fn silently_vanished_peer_restarted_is_reached_in_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let main_rt = runtime(2);
    let doomed_rt = runtime(1);
    let server = {
        let _guard = doomed_rt.enter();
        let server = bind(1, ANY, c[0].clone());
        serve_echo(&server);
        server
    };
    let addr = server.local_addr();
    let client = {
        let _guard = main_rt.enter();
        bind(2, ANY, c[1].clone())
    };
    client.register_peer(NodeId(1), addr, server.spki_pin());
    main_rt
        .block_on(client.send_rpc(NodeId(1), MessageKind::PING, Bytes::new()))
        .unwrap();
    // Kill: no task of the server runs again, so no CONNECTION_CLOSE leaves. Waiting for the
    // runtime's threads to exit drops its tasks (and their handles on the socket) before we
    // drop the transport, which closes the socket as a dying process would.
    doomed_rt.shutdown_timeout(Duration::from_secs(5));
    drop(server);
    main_rt.block_on(async {
        let restarted = bind(1, &addr.to_string(), c[0].clone());
        serve_echo(&restarted);
        let reply = client
            .send_rpc(NodeId(1), MessageKind::PING, Bytes::from_static(b"back"))
            .await;
        assert_eq!(reply.unwrap().payload, Bytes::from_static(b"back"));
        assert_eq!(client.metrics()["connections_opened"], 2);
        restarted.close().await;
        client.close().await;
    });
}

/// A peer that goes silent (no close, no reset: its runtime is gone and nobody took its port) is
/// noticed by the idle timeout, and its connection leaves the pool without any request.
#[test]
fn a_silent_peer_is_noticed_by_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let main_rt = runtime(2);
    let doomed_rt = runtime(1);
    let server = {
        let _guard = doomed_rt.enter();
        let server = bind(1, ANY, c[0].clone());
        serve_echo(&server);
        server
    };
    let addr = server.local_addr();
    let mut cfg = config();
    cfg.keep_alive_interval = Duration::from_millis(100);
    cfg.idle_timeout = Duration::from_millis(400);
    let client = {
        let _guard = main_rt.enter();
        Transport::bind(NodeId(2), ANY.parse().unwrap(), c[1].clone(), cfg).unwrap()
    };
    main_rt
        .block_on(client.send_rpc_to_addr(addr, MessageKind::PING, Bytes::new()))
        .unwrap();
    assert!(client.pooled_connection_id(addr).is_some());
    doomed_rt.shutdown_background();
    // Keep the dead server's socket bound so no stateless reset can help: only the idle timer.
    let _silent_port_holder = std::mem::ManuallyDrop::new(server);
    main_rt.block_on(async {
        // No event is exposed for "connection closed"; poll the pool with a hard deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while client.pooled_connection_id(addr).is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "idle timeout never fired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let err = client
            .send_rpc_to_addr(addr, MessageKind::PING, Bytes::new())
            .await
            .unwrap_err();
        // A new dial to the silent peer fails typed: quinn's handshake idle timer (400 ms here)
        // or our connect timeout, whichever fires first.
        assert!(
            matches!(
                err,
                TransportError::Timeout { op: "connect", .. } | TransportError::Unreachable { .. }
            ),
            "{err}"
        );
        client.close().await;
    });
}

/// A peer whose port is not bound yet when we dial (nodes starting at once) is reached within
/// the same call once it comes up: the handshake is retried, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_starts_during_the_connect_is_reached_in_the_same_call() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let addr = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    }; // a free port, released
    let mut cfg = config();
    cfg.connect_timeout = Duration::from_secs(4);
    cfg.rpc_timeout = Duration::from_secs(4);
    let client = Transport::bind(NodeId(2), ANY.parse().unwrap(), c[1].clone(), cfg).unwrap();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    let server_creds = c[0].clone();
    let starter = tokio::spawn(async move {
        // The peer "process" starts a moment after the first Initial was sent.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let server = bind(1, &addr.to_string(), server_creds);
        serve_echo(&server);
        up_tx.send(()).ok();
        server
    });
    let started = std::time::Instant::now();
    let reply = client
        .send_rpc_to_addr(addr, MessageKind::PING, Bytes::from_static(b"hi"))
        .await;
    assert_eq!(reply.unwrap().payload, Bytes::from_static(b"hi"));
    up_rx.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    starter.await.unwrap().close().await;
}

/// docs/JOIN.md: a joiner sends each JoinRequest on a connection of its own. `send_rpc_fresh` dials for
/// every call, leaves nothing in the pool and never uses (or disturbs) a pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_rpcs_dial_each_time_and_leave_the_pool_alone() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let server = bind(1, ANY, c[0].clone());
    let client = bind(2, ANY, c[1].clone());
    serve_echo(&server);
    let addr = server.local_addr();
    for i in 0..2u8 {
        let reply = client
            .send_rpc_fresh(addr, MessageKind::PING, Bytes::from(vec![i]))
            .await
            .unwrap();
        assert_eq!(reply.payload, Bytes::from(vec![i]));
    }
    assert_eq!(client.metrics()["connections_opened"], 2);
    assert_eq!(client.metrics()["connections_pooled"], 0);
    assert_eq!(client.pooled_connection_id(addr), None);
    assert_eq!(server.metrics()["connections_accepted"], 2);
    // A pooled connection, then a fresh RPC: the pooled one is neither used nor replaced.
    client
        .send_rpc_to_addr(addr, MessageKind::PING, Bytes::new())
        .await
        .unwrap();
    let pooled = client.pooled_connection_id(addr).unwrap();
    client
        .send_rpc_fresh(addr, MessageKind::PING, Bytes::new())
        .await
        .unwrap();
    assert_eq!(client.pooled_connection_id(addr), Some(pooled));
    assert_eq!(client.metrics()["connections_opened"], 4);
    assert_eq!(server.metrics()["connections_accepted"], 4);
    assert_eq!(client.metrics()["rpcs_sent"], 4);
}

/// A fresh RPC to nobody is a typed error within the RPC bound; an error reply is `Remote`, as on
/// the pooled path; after close, `Closed`. None of them leaves a connection in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_rpc_failures_are_typed_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let mut cfg = config();
    cfg.rpc_timeout = Duration::from_millis(300);
    cfg.connect_timeout = Duration::from_millis(300);
    let client = Transport::bind(NodeId(2), ANY.parse().unwrap(), c[1].clone(), cfg).unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    let err = client
        .send_rpc_fresh(
            silent.local_addr().unwrap(),
            MessageKind::PING,
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let server = bind(1, ANY, c[0].clone());
    server.set_fallback_handler(Some(handler_fn(|_| async {
        Err(nodedb_transport::HandlerError::new("refused", "no"))
    })));
    let err = client
        .send_rpc_fresh(server.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Remote { .. }), "{err}");
    assert_eq!(client.metrics()["connections_pooled"], 0);
    client.close().await;
    let err = client
        .send_rpc_fresh(server.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err}");
}

/// Issue 13 (failover tail): a peer that crashed while we kept sending to it (so QUIC backed its
/// probes off) and came back on the same port dials us again on start (`dial_peers`): we drop
/// our connection to its previous process at once, and the next frame reaches the new process
/// without waiting for a probe to draw its stateless reset.
#[test]
fn a_peer_that_dials_again_after_a_crash_is_reached_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let main_rt = runtime(2);
    let doomed_rt = runtime(1);
    let client = {
        let _guard = main_rt.enter();
        bind(2, ANY, c[1].clone())
    };
    let server = {
        let _guard = doomed_rt.enter();
        let server = bind(1, ANY, c[0].clone());
        server.register_peer(NodeId(2), client.local_addr(), client.spki_pin());
        server
    };
    let addr = server.local_addr();
    client.register_peer(NodeId(1), addr, server.spki_pin());
    serve_echo(&client);
    // Both directions are up: the server has dialled the client once, and the reverse.
    doomed_rt
        .block_on(server.send_rpc(NodeId(2), MessageKind::PING, Bytes::new()))
        .unwrap();
    main_rt
        .block_on(client.send_oneway(NodeId(1), MessageKind::RAFT_BATCH, Bytes::from_static(b"x")))
        .unwrap();
    // Crash (no CONNECTION_CLOSE), then the client keeps sending for a while, as a Raft leader
    // does, into the dead connection: the unacknowledged bytes fill the congestion window, so
    // only probes leave, and they back off.
    doomed_rt.shutdown_timeout(Duration::from_secs(5));
    drop(server);
    main_rt.block_on(async {
        let sends = async {
            loop {
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    client.send_oneway(
                        NodeId(1),
                        MessageKind::RAFT_BATCH,
                        Bytes::from(vec![0u8; 4096]),
                    ),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        // The time the peer stays down is the scenario, not a synchronisation.
        let _ = tokio::time::timeout(Duration::from_secs(2), sends).await;
        let restarted = bind(1, &addr.to_string(), c[0].clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        restarted.register_handler(
            MessageKind::RAFT_BATCH,
            handler_fn(move |frame| {
                let tx = tx.clone();
                async move {
                    tx.send(frame.payload).await.ok();
                    Ok(None)
                }
            }),
        );
        restarted.register_peer(NodeId(2), client.local_addr(), client.spki_pin());
        restarted.dial_peers();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while client.metrics()["connections_replaced_on_redial"] == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the redial was never noticed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = tokio::time::Instant::now();
        client
            .send_oneway(
                NodeId(1),
                MessageKind::RAFT_BATCH,
                Bytes::from_static(b"back"),
            )
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match rx.recv().await {
                    Some(payload) if payload == Bytes::from_static(b"back") => return,
                    Some(_) => {}
                    None => panic!("handler gone"),
                }
            }
        })
        .await;
        assert!(got.is_ok(), "the restarted peer never got the frame");
        let took = sent.elapsed();
        assert!(took < Duration::from_millis(300), "took {took:?}");
        assert_eq!(client.metrics()["connections_replaced_on_redial"], 1);
        restarted.close().await;
        client.close().await;
    });
}

/// The other side of `a_peer_that_dials_again_after_a_crash_is_reached_at_once`: a peer that
/// dials again while alive (it dropped its connection) costs at most one closed connection, and
/// the close it answers does not start a ping-pong of closes and redials: once both sides send
/// again, their connections stay and every frame arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peer_that_dials_again_costs_one_connection_and_no_ping_pong() {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let a = bind(1, ANY, c[0].clone());
    let b = bind(2, ANY, c[1].clone());
    // Frames received by A and by B, apart: one arriving over a connection proves its receiver
    // accepted that connection, and so ran its redial rule on it (before any stream).
    let got = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    for (t, got) in [(&a, &got[0]), (&b, &got[1])] {
        let got = Arc::clone(got);
        t.register_handler(
            MessageKind::RAFT_BATCH,
            handler_fn(move |_frame| {
                got.fetch_add(1, Relaxed);
                async { Ok(None) }
            }),
        );
    }
    a.register_peer(NodeId(2), b.local_addr(), None);
    b.register_peer(NodeId(1), a.local_addr(), None);
    let exchange = |n: usize| {
        let (a, b) = (&a, &b);
        async move {
            for _ in 0..n {
                for (from, to) in [(a, 2), (b, 1)] {
                    // A frame written into a connection that is being closed is lost (as Raft's
                    // are): sending fails or succeeds, both fine here.
                    let _ = from
                        .send_oneway(
                            NodeId(to),
                            MessageKind::RAFT_BATCH,
                            Bytes::from_static(b"f"),
                        )
                        .await;
                }
            }
        }
    };
    exchange(3).await;
    // B forgets its connection to A (a changed pin does that) and dials A again.
    b.register_peer(NodeId(1), a.local_addr(), a.spki_pin());
    let ids = || {
        (
            a.pooled_connection_id(b.local_addr()),
            b.pooled_connection_id(a.local_addr()),
        )
    };
    let replaced = || {
        a.metrics()["connections_replaced_on_redial"]
            + b.metrics()["connections_replaced_on_redial"]
    };
    let received = || (got[0].load(Relaxed), got[1].load(Relaxed));
    // Settled: A has acted on B's dial, and then each side received a frame while neither
    // connection changed - so each accepted the other's current connection (a reaction to a
    // dial happens before its first frame is handled) and no dial is left unanswered. Counting
    // quiet exchanges instead is no proof: a loaded node may accept a dial after 20 of them.
    // Bounded: 500 exchanges.
    let mut settled = false;
    for _ in 0..500 {
        let (before_ids, before_replaced, before_got) = (ids(), replaced(), received());
        exchange(1).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while received().0 == before_got.0 || received().1 == before_got.1 {
            if tokio::time::Instant::now() >= deadline || ids() != before_ids {
                break; // lost in a closing connection, or a change: another round
            }
            tokio::time::sleep(Duration::from_millis(2)).await; // handlers count; nothing to await
        }
        let now_got = received();
        if before_replaced >= 1
            && ids() == before_ids
            && replaced() == before_replaced
            && now_got.0 > before_got.0
            && now_got.1 > before_got.1
        {
            settled = true;
            break;
        }
    }
    assert!(settled, "connections keep being replaced");
    let last = ids();
    let replaced = replaced();
    assert!(replaced <= 2, "{replaced} connections replaced");
    let before = received();
    exchange(20).await;
    assert_eq!(ids(), last, "a connection was replaced after settling");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while received().0 < before.0 + 20 || received().1 < before.1 + 20 {
        let now = received();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now:?} of 20 frames each way arrived (from {before:?})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // handlers count; nothing to await
    }
    a.close().await;
    b.close().await;
}
