//! One certificate must not deny the others (attack probe s30, findings 8 and 10, and the reply
//! write deadline): over real QUIC sockets on 127.0.0.1, with client and admin certificates.
//! Every wait is bounded; the latency bounds are generous against the seconds the attacks cost
//! before.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_transport::transport::{STREAM_CODE_INBOUND_TIMEOUT, STREAM_CODE_REPLY_TIMEOUT};
use nodedb_transport::{
    handler_fn, MessageKind, NodeId, OutboundFrame, Transport, TransportConfig, TransportError,
};
use nodedb_wire::FrameHeader;

use common::*;

const MIB: usize = 1 << 20;

/// A client or admin transport with a patient `rpc_timeout` (the server's deadlines are what is
/// tested).
fn peer(id: u64, creds: &nodedb_transport::Credentials) -> Transport {
    let cfg = TransportConfig {
        rpc_timeout: Duration::from_secs(10),
        ..config()
    };
    Transport::bind(NodeId(id), ANY.parse().unwrap(), creds.clone(), cfg).unwrap()
}

/// How long a request with a payload of `bytes` takes to be echoed.
async fn echo(t: &Transport, addr: SocketAddr, bytes: usize) -> Duration {
    let started = Instant::now();
    let reply = t
        .send_rpc_to_addr(addr, MessageKind::PING, Bytes::from(vec![7u8; bytes]))
        .await
        .expect("served");
    assert_eq!(reply.payload.len(), bytes);
    started.elapsed()
}

/// The header of a PING announcing `bytes`, and the first `sent` of them.
fn announced(bytes: usize, sent: usize) -> Bytes {
    let payload = vec![0u8; bytes];
    let mut raw = FrameHeader::encode(MessageKind::PING, &payload)
        .unwrap()
        .to_vec();
    raw.extend_from_slice(&payload[..sent]);
    Bytes::from(raw)
}

fn streams_sent(t: &Transport, addr: SocketAddr) -> u64 {
    t.connection_stats(addr).map_or(0, |s| s.frame_tx.stream)
}

/// Finding 8 as the probe ran it: one client certificate opens streams that each send only a
/// header announcing a 64 MiB frame (more of them than the shared budget holds) and never the
/// payload. Before, the node reserved the announced size on the header and the FIFO budget made
/// every later request of every client AND admin wait for those streams' read deadline (p50
/// 3.3 s). Now a header holds nothing: another client and an admin are served at once, and the
/// attacker's streams are reset at the deadline as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_frames_hold_nothing_and_clients_and_admins_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let c = leaf_creds(
        dir.path(),
        "a",
        &[
            Leaf::Node(1),
            Leaf::Client("mallory"),
            Leaf::Client("alice"),
            Leaf::Admin("ops"),
        ],
    );
    let server = echo_server_with(
        c[0].clone(),
        TransportConfig {
            rpc_timeout: Duration::from_secs(3),
            ..config()
        },
    );
    let addr = server.local_addr();
    let (mallory, alice, ops) = (peer(1000, &c[1]), peer(1001, &c[2]), peer(3000, &c[3]));
    for t in [&mallory, &alice, &ops] {
        echo(t, addr, 1).await; // connected
    }

    let before = streams_sent(&mallory, addr);
    let mut headers = Vec::new();
    for _ in 0..5 {
        let stream = mallory
            .open_raw_to_addr(addr, announced(64 * MIB, 0), false)
            .await
            .unwrap();
        headers.push(stream);
    }
    wait_until("the headers were sent", Duration::from_secs(5), || {
        streams_sent(&mallory, addr) >= before + 5
    })
    .await;

    // For a second while the headers are held: every request of alice and ops is served at
    // once (before: the first ones already waited for the 3 s deadline).
    let window = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while window.elapsed() < Duration::from_secs(1) {
        slowest = slowest.max(echo(&alice, addr, 100).await);
        slowest = slowest.max(echo(&ops, addr, 100).await);
        served += 2;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest of {served} requests: {slowest:?}"
    );
    assert_eq!(
        server.metrics()["inbound_shared_bytes_held"],
        0,
        "a header holds no room"
    );

    for stream in headers {
        let answer = stream.answer().await.unwrap();
        assert_eq!(answer, Err(u64::from(STREAM_CODE_INBOUND_TIMEOUT)));
    }
    assert_eq!(server.metrics()["inbound_stream_timeouts"], 5);
}

/// One identity holds at most its share (`inbound_identity_bytes_max`) plus the one frame
/// promoted into the headroom, however many of its frames send real bytes and stall; its frames
/// beyond that wait their turn, and a frame waiting for room does not hold up others behind it
/// (before: the budget was first-in first-out, and a 20 MiB reservation waiting for room made a
/// small request behind it wait for the attacker's read deadlines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_holds_at_most_its_share_and_others_do_not_wait_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = leaf_creds(
        dir.path(),
        "a",
        &[
            Leaf::Node(1),
            Leaf::Client("mallory"),
            Leaf::Client("alice"),
        ],
    );
    let server = echo_server_with(
        c[0].clone(),
        TransportConfig {
            rpc_timeout: Duration::from_secs(3),
            inbound_buffer_bytes_max: 128 * MIB,
            inbound_identity_bytes_max: 16 * MIB,
            ..config()
        },
    );
    let addr = server.local_addr();
    let (mallory, alice) = (Arc::new(peer(1000, &c[1])), peer(1001, &c[2]));
    echo(&mallory, addr, 1).await;
    echo(&alice, addr, 1).await;

    // Eight frames of 20 MiB: the headers first, then 16 MiB of each, then nothing (160 MiB
    // announced, 128 sent).
    let before = streams_sent(&mallory, addr);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let stream = mallory
            .open_raw_to_addr(addr, announced(20 * MIB, 0), false)
            .await
            .unwrap();
        streams.push(stream);
    }
    wait_until("the headers were sent", Duration::from_secs(5), || {
        streams_sent(&mallory, addr) >= before + 8
    })
    .await;
    let attack: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let _ = stream
                    .send_more(Bytes::from(vec![0u8; 16 * MIB]), false)
                    .await;
                let _ = stream.answer().await;
            })
        })
        .collect();
    wait_until("mallory's share was taken", Duration::from_secs(10), || {
        server.metrics()["inbound_shared_bytes_held"] >= (15 * MIB) as u64
    })
    .await;

    let small = echo(&alice, addr, 100).await;
    let big = echo(&alice, addr, 8 * MIB).await;
    assert!(
        small < Duration::from_millis(1000) && big < Duration::from_millis(1500),
        "alice waited behind mallory: {small:?}, {big:?}"
    );
    let held = server.metrics()["inbound_shared_bytes_held"];
    assert!(
        held <= (16 * MIB + 20 * MIB) as u64,
        "mallory holds at most her share and one promoted frame: {held}"
    );

    // Every stalled frame is reset at its read deadline and all it held is released. (Awaited
    // on the node: the attacker's own blocked writes may notice the stop late.)
    wait_until(
        "mallory's frames were reset",
        Duration::from_secs(10),
        || server.metrics()["inbound_stream_timeouts"] == 8,
    )
    .await;
    wait_until("everything released", Duration::from_secs(5), || {
        server.metrics()["inbound_shared_bytes_held"] == 0
    })
    .await;
    for task in attack {
        task.abort();
    }
}

/// Admin certificates have a budget of their own: with the clients' taken by a stalled frame
/// (a budget of one maximal frame is all headroom: one frame at a time), an admin's large
/// request is served at once (before: it waited for the client's read deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_have_a_budget_apart_from_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    let c = leaf_creds(
        dir.path(),
        "a",
        &[Leaf::Node(1), Leaf::Client("mallory"), Leaf::Admin("ops")],
    );
    let server = echo_server_with(
        c[0].clone(),
        TransportConfig {
            rpc_timeout: Duration::from_secs(3),
            inbound_buffer_bytes_max: 64 * MIB,
            ..config()
        },
    );
    let addr = server.local_addr();
    let (mallory, ops) = (peer(1000, &c[1]), peer(3000, &c[2]));
    echo(&ops, addr, 1).await;
    let stalled = mallory
        .open_raw_to_addr(addr, announced(48 * MIB, 48 * MIB - 10), false)
        .await
        .unwrap();
    wait_until(
        "the stalled frame's bytes are held",
        Duration::from_secs(10),
        || server.metrics()["inbound_shared_bytes_held"] >= (48 * MIB - 10) as u64,
    )
    .await;
    let took = echo(&ops, addr, 32 * MIB).await;
    assert!(
        took < Duration::from_millis(1500),
        "the admin waited: {took:?}"
    );
    assert_eq!(
        stalled.answer().await.unwrap(),
        Err(u64::from(STREAM_CODE_INBOUND_TIMEOUT))
    );
}

/// Frames that together announce (and send) more than the budget holds all finish: charged as
/// their bytes arrive, they are promoted into the headroom one at a time instead of each
/// holding a part and waiting for the others' (which only their deadlines would free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sending_more_than_the_budget_all_finish_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let c = leaf_creds(
        dir.path(),
        "a",
        &[
            Leaf::Node(1),
            Leaf::Client("c1"),
            Leaf::Client("c2"),
            Leaf::Client("c3"),
        ],
    );
    let server = echo_server_with(
        c[0].clone(),
        TransportConfig {
            rpc_timeout: Duration::from_secs(8),
            inbound_buffer_bytes_max: 80 * MIB,
            inbound_identity_bytes_max: 8 * MIB,
            ..config()
        },
    );
    let addr = server.local_addr();
    let clients: Vec<Arc<Transport>> = (0..3)
        .map(|i| Arc::new(peer(1000 + i as u64, &c[1 + i])))
        .collect();
    // Two frames of 16 MiB from each of three identities: 96 MiB in a budget of 80.
    let sends: Vec<_> = clients
        .iter()
        .flat_map(|t| [Arc::clone(t), Arc::clone(t)])
        .map(|t| tokio::spawn(async move { echo(&t, addr, 16 * MIB).await }))
        .collect();
    for send in sends {
        send.await.expect("every frame finished");
    }
    assert_eq!(server.metrics()["inbound_stream_timeouts"], 0);
    assert_eq!(server.metrics()["inbound_shared_bytes_held"], 0);
}

/// Finding 10: one client certificate may hold `client_connections_per_identity_max` of the
/// `client_connections_max` slots; its next connection is closed with the reason (code
/// `0x204`, counted like the other caps), while another client and an admin still connect, and
/// a connection it closes frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_identity_is_capped_below_the_nodes_client_connections() {
    let dir = tempfile::tempdir().unwrap();
    let c = leaf_creds(
        dir.path(),
        "a",
        &[
            Leaf::Node(1),
            Leaf::Client("mallory"),
            Leaf::Client("alice"),
            Leaf::Admin("ops"),
        ],
    );
    let server = echo_server_with(
        c[0].clone(),
        TransportConfig {
            client_connections_max: 4,
            client_connections_per_identity_max: 2,
            ..config()
        },
    );
    let addr = server.local_addr();
    async fn ping(t: &Transport, addr: SocketAddr) -> Result<OutboundFrame, TransportError> {
        t.send_rpc_to_addr(addr, MessageKind::PING, Bytes::from("p"))
            .await
    }
    let mallory: Vec<Transport> = (0..3).map(|i| bind(1000 + i, ANY, c[1].clone())).collect();
    ping(&mallory[0], addr).await.unwrap();
    ping(&mallory[1], addr).await.unwrap();
    match ping(&mallory[2], addr).await {
        Err(TransportError::Unreachable { reason, .. }) => {
            assert!(
                reason.contains("client_connections_per_identity_max")
                    && reason.contains("at most 2 connections of one certificate"),
                "{reason}"
            )
        }
        other => panic!("a third connection of one identity was served: {other:?}"),
    }
    let metrics = server.metrics();
    assert_eq!(metrics["inbound_connections_refused_full"], 1);
    assert_eq!(metrics["client_connections"], 2);

    let alice = bind(1010, ANY, c[2].clone());
    ping(&alice, addr)
        .await
        .expect("another identity connects while one is at its share");
    let ops = bind(3000, ANY, c[3].clone());
    ping(&ops, addr).await.expect("an admin connects");
    assert_eq!(server.metrics()["client_connections"], 3);

    mallory[0].close().await;
    wait_until(
        "mallory's closed connection freed",
        Duration::from_secs(5),
        || server.metrics()["client_connections"] == 2,
    )
    .await;
    ping(&mallory[2], addr)
        .await
        .expect("the freed place serves the identity again");
    assert_eq!(server.metrics()["client_connections"], 3);
}

/// A reply the peer never reads is written within `rpc_timeout` plus its size at
/// `frame_bytes_per_s_min`, then its stream is reset with `0x302` and counted (before: it was
/// held for as long as the peer kept the connection). The request's bytes are not held while
/// the reply is written, and the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_peer_does_not_read_is_reset_after_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let c = leaf_creds(dir.path(), "a", &[Leaf::Node(1), Leaf::Client("mallory")]);
    let server = Transport::bind(
        NodeId(1),
        ANY.parse().unwrap(),
        c[0].clone(),
        TransportConfig {
            rpc_timeout: Duration::from_millis(500),
            frame_bytes_per_s_min: 16 * MIB as u64,
            ..config()
        },
    )
    .unwrap();
    let reply_bytes = 8 * MIB;
    server.set_fallback_handler(Some(handler_fn(move |frame| async move {
        let bytes = if frame.payload.as_ref() == b"big" {
            reply_bytes
        } else {
            1
        };
        Ok(Some(OutboundFrame {
            kind: MessageKind::PONG,
            payload: Bytes::from(vec![1u8; bytes]),
        }))
    })));
    let addr = server.local_addr();
    // Reads at most 64 KiB of a stream it does not read.
    let mallory = Transport::bind(
        NodeId(1000),
        ANY.parse().unwrap(),
        c[1].clone(),
        TransportConfig {
            stream_receive_window_bytes: 64 * 1024,
            rpc_timeout: Duration::from_secs(10),
            ..config()
        },
    )
    .unwrap();
    let request = nodedb_wire::encode_frame(MessageKind::PING, b"big").unwrap();
    let started = Instant::now();
    let unread = mallory
        .open_raw_to_addr(addr, Bytes::from(request), true)
        .await
        .unwrap();
    wait_until("the unread reply was reset", Duration::from_secs(5), || {
        server.metrics()["reply_write_timeouts"] == 1
    })
    .await;
    let took = started.elapsed();
    // 500 ms + 8 MiB at 16 MiB/s.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let metrics = server.metrics();
    assert_eq!(metrics["inbound_shared_bytes_held"], 0);
    assert_eq!(metrics["streams_reset"], 1);
    assert_eq!(
        unread.answer().await.unwrap(),
        Err(u64::from(STREAM_CODE_REPLY_TIMEOUT))
    );
    let reply = mallory
        .send_rpc_to_addr(addr, MessageKind::PING, Bytes::from_static(b"small"))
        .await
        .expect("the connection still serves");
    assert_eq!(reply.payload.len(), 1);
    assert_eq!(server.metrics()["connections_accepted"], 1);
}
