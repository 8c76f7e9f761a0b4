//! Frames over real UDP sockets on 127.0.0.1: garbage on a live stream, bytes after a frame,
//! one-way frames, typed timeouts and a stalled inbound frame. Every wait is bounded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::{
    handler_fn, MessageKind, NodeId, Transport, TransportConfig, TransportError,
};
use nodedb_wire::FrameHeader;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_live_stream_is_counted_and_the_connection_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client, addr, conn_id) = connected_echo_pair(dir.path()).await;
    let mut bad_crc = nodedb_wire::encode_frame(MessageKind::PING, b"payload").unwrap();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xFF;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "wrong_version"),
        (vec![1, 2], "too_short"),
        (vec![1, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0], "unknown_kind"),
        (
            vec![1, 1, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0],
            "oversize",
        ),
        (vec![1, 1, 0, 10, 0, 0, 0, 0, 0, 0, 0, 1, 2], "truncated"),
        (bad_crc, "checksum_mismatch"),
    ];
    for (bytes, code) in &cases {
        assert_eq!(reset_with(&client, addr, bytes.clone()).await, Some(*code));
        assert_eq!(
            server.metrics()[&format!("decode_errors.{code}")],
            1,
            "{code}"
        );
    }
    assert_eq!(server.metrics()["decode_errors"], cases.len() as u64);
    assert_eq!(server.metrics()["streams_reset"], cases.len() as u64);
    assert_the_connection_still_serves(&server, &client, addr, conn_id).await;
}

/// One frame per stream (WIRE: trailing bytes are a typed error): a valid frame followed by more
/// bytes is not answered; the stream is reset with the trailing_bytes code, counted, and the
/// connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_valid_frame_reset_the_stream_and_the_connection_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client, addr, conn_id) = connected_echo_pair(dir.path()).await;
    // Trailing data in the same write, and a second whole frame on the same stream.
    let frame = nodedb_wire::encode_frame(MessageKind::PING, b"payload").unwrap();
    let mut trailing = frame.clone();
    trailing.extend_from_slice(b"extra");
    let mut two_frames = frame.clone();
    two_frames.extend_from_slice(&frame);
    for (i, bytes) in [trailing, two_frames].into_iter().enumerate() {
        assert_eq!(
            reset_with(&client, addr, bytes).await,
            Some("trailing_bytes")
        );
        let metrics = server.metrics();
        assert_eq!(metrics["decode_errors.trailing_bytes"], i as u64 + 1);
        assert_eq!(metrics["decode_errors"], i as u64 + 1);
        assert_eq!(metrics["streams_reset"], i as u64 + 1);
        assert_eq!(
            metrics.get("rpcs_received").copied().unwrap_or(0),
            1,
            "not dispatched"
        );
    }
    // The frame alone, finished, is answered; so is the next request on the same connection.
    let answer = client
        .send_raw_to_addr(addr, Bytes::from(frame), true)
        .await
        .unwrap();
    assert_eq!(
        answer.expect("answered").payload,
        Bytes::from_static(b"payload")
    );
    assert_the_connection_still_serves(&server, &client, addr, conn_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneway_frames_reach_the_kind_handler() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let server = bind(1, ANY, c[0].clone());
    let client = bind(2, ANY, c[1].clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(bool, Bytes)>(16);
    server.register_handler(
        MessageKind::RAFT_BATCH,
        handler_fn(move |frame| {
            let tx = tx.clone();
            async move {
                tx.send((frame.oneway, frame.payload)).await.ok();
                Ok(None)
            }
        }),
    );
    client.register_peer(NodeId(1), server.local_addr(), None);
    // Raft frames are members only: the server knows the client as a member.
    server.register_peer(NodeId(2), client.local_addr(), None);
    for i in 0..10u8 {
        client
            .send_oneway(NodeId(1), MessageKind::RAFT_BATCH, Bytes::from(vec![i]))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (oneway, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(oneway);
        seen.push(payload[0]);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    // A request for a kind with no handler and no fallback gets a typed remote error.
    let err = client
        .send_rpc(NodeId(1), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Remote { code, .. } if code == "no_handler"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_typed_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let mut cfg = config();
    cfg.rpc_timeout = Duration::from_millis(300);
    cfg.connect_timeout = Duration::from_millis(300);
    let server = Transport::bind(NodeId(1), ANY.parse().unwrap(), c[0].clone(), config()).unwrap();
    let client = Transport::bind(NodeId(2), ANY.parse().unwrap(), c[1].clone(), cfg).unwrap();
    server.set_fallback_handler(Some(handler_fn(|_| async {
        tokio::time::sleep(Duration::from_secs(1)).await; // a slow handler, not synchronisation
        Ok(None)
    })));
    let started = std::time::Instant::now();
    let err = client
        .send_rpc_to_addr(server.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout { op: "rpc", .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Nobody listening: a connect timeout (QUIC gets no ICMP-driven refusal from quinn).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    let err = client
        .send_rpc_to_addr(
            silent.local_addr().unwrap(),
            MessageKind::PING,
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let err = client
        .send_rpc(NodeId(9), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        TransportError::UnknownPeer { node_id: NodeId(9) }
    ));
    assert_eq!(client.metrics()["errors.timeout"], 2);
}

/// A peer that announces a frame and never sends it (slow loris) holds nothing for long: the
/// stream is reset after `rpc_timeout`, counted, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_inbound_frame_is_reset_after_the_rpc_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let server = echo_server(c[0].clone(), Duration::from_millis(300));
    let client = bind(2, ANY, c[1].clone());
    let addr = server.local_addr();
    let mut partial = FrameHeader::encode(MessageKind::PING, &[0u8; 1000])
        .unwrap()
        .to_vec();
    partial.extend_from_slice(&[0u8; 10]); // 10 of the 1000 announced bytes, stream left open
    let started = std::time::Instant::now();
    let answer = client
        .send_raw_to_addr(addr, Bytes::from(partial), false)
        .await
        .unwrap();
    assert_eq!(
        answer,
        Err(u64::from(
            nodedb_transport::transport::STREAM_CODE_INBOUND_TIMEOUT
        ))
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(server.metrics()["inbound_stream_timeouts"], 1);
    assert_the_one_connection_still_serves(&client, &server).await;
}

/// A node's frame is given its announced size at `frame_bytes_per_s_min` on top of the rpc
/// timeout (a large frame over a slow link is not a stalled one), and is reset after that. (A
/// client's is not: `client_connections_share_one_inbound_budget_and_a_node_keeps_its_own`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_is_given_its_size_before_it_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2", "n3"]);
    let server = echo_server_with(
        c[0].clone(),
        TransportConfig {
            rpc_timeout: Duration::from_millis(300),
            frame_bytes_per_s_min: 1000,
            ..config()
        },
    );
    let client = bind(2, ANY, c[1].clone());
    server.register_peer(NodeId(2), client.local_addr(), None); // a member's frame
    let mut partial = FrameHeader::encode(MessageKind::PING, &[0u8; 1000])
        .unwrap()
        .to_vec();
    partial.extend_from_slice(&[0u8; 10]); // 10 of the 1000 announced bytes, stream left open
    let partial = Bytes::from(partial);
    // How long until the server resets the stalled frame (it must).
    let reset_after = |sender: Transport| {
        let (partial, to) = (partial.clone(), server.local_addr());
        async move {
            let started = std::time::Instant::now();
            let answer = sender.send_raw_to_addr(to, partial, false).await.unwrap();
            let code = u64::from(nodedb_transport::transport::STREAM_CODE_INBOUND_TIMEOUT);
            assert_eq!(answer, Err(code));
            started.elapsed()
        }
    };
    let took = reset_after(client).await;
    // 300 ms + 1000 bytes at 1000 bytes/s.
    assert!(
        took >= Duration::from_millis(1250) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    assert_eq!(server.metrics()["inbound_stream_timeouts"], 1);

    // A node certificate of no member has a client's: the rpc timeout alone (attack probe,
    // session 31: stalled 64 MiB uploads of a stray node certificate held ~37 s each).
    let took = reset_after(bind(3, ANY, c[2].clone())).await;
    assert!(took < Duration::from_millis(1200), "{took:?}");
}

/// A kind the sender's role may not send is refused on its header: a client certificate
/// announcing a RaftBatch gets the refusal at once, before sending (and without the node
/// reserving or reading) its payload; one that sends a large payload anyway gets the typed
/// `PermissionDenied` although the node stopped reading mid-payload. The connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_the_role_may_not_send_is_refused_on_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "client"]);
    let server = echo_server(c[0].clone(), Duration::from_secs(5));
    let client = bind(1000, ANY, c[1].clone());
    let addr = server.local_addr();
    let header = FrameHeader::encode(MessageKind::RAFT_BATCH, &[0u8; 1 << 20]).unwrap();
    let started = std::time::Instant::now();
    let answer = client
        .send_raw_to_addr(addr, Bytes::copy_from_slice(&header), false)
        .await
        .unwrap()
        .expect("a refusal reply, not a reset");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused on the header, not after the 5 s read deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(answer.kind, MessageKind::ERROR);
    let text = String::from_utf8_lossy(&answer.payload);
    assert!(text.contains("permission_denied"), "{text}");
    assert!(text.contains("RaftBatch(16) refused"), "{text}");
    let big = Bytes::from(vec![0u8; 16 << 20]);
    match client
        .send_rpc_to_addr(addr, MessageKind::RAFT_BATCH, big)
        .await
    {
        Err(TransportError::PermissionDenied { message }) => {
            assert!(message.contains("only the node role"), "{message}");
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let m = server.metrics();
    assert_eq!(m["requests_refused"], 2);
    assert_eq!(m["inbound_stream_timeouts"], 0);
    assert_the_one_connection_still_serves(&client, &server).await;
}

/// However many connections client certificates open, they share ONE inbound buffer budget: a
/// second client connection's frame waits for the bytes a stalled one holds (until that one is
/// reset at the read deadline; a budget of one maximal frame is all headroom, which one frame at
/// a time may use), while a node's connection has a budget of its own and is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_share_one_inbound_budget_and_a_node_keeps_its_own() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2", "client"]);
    let server_cfg = TransportConfig {
        rpc_timeout: Duration::from_secs(2),
        inbound_buffer_bytes_max: 64 * MIB,
        ..config()
    };
    let server = echo_server_with(c[0].clone(), server_cfg);
    let addr = server.local_addr();
    let patient = || TransportConfig {
        rpc_timeout: Duration::from_secs(8),
        ..config()
    };
    let client = |id| Transport::bind(NodeId(id), ANY.parse().unwrap(), c[2].clone(), patient());
    let (holder, second) = (client(1000).unwrap(), client(1001).unwrap());
    let node = Transport::bind(NodeId(2), ANY.parse().unwrap(), c[1].clone(), patient()).unwrap();
    server.register_peer(NodeId(2), node.local_addr(), None); // a member: a budget of its own

    let mut stalled = FrameHeader::encode(MessageKind::PING, &vec![0u8; 48 * MIB])
        .unwrap()
        .to_vec();
    stalled.extend_from_slice(&vec![0u8; 48 * MIB - 10]); // all but 10 bytes, stream left open
    let stall = tokio::spawn(async move {
        let answer = holder
            .send_raw_to_addr(addr, Bytes::from(stalled), false)
            .await;
        (answer, std::time::Instant::now())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Charged as its bytes arrive: all but the 10 never sent.
    while server.metrics()["inbound_shared_bytes_held"] < (48 * MIB - 10) as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled frame was never reserved"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let big = |n: usize| Bytes::from(vec![7u8; n * MIB]);
    let reply = node
        .send_rpc_to_addr(addr, MessageKind::PING, big(32))
        .await;
    assert_eq!(
        reply.unwrap().payload.len(),
        32 * MIB,
        "a node's connection has its own budget"
    );
    assert!(
        !stall.is_finished(),
        "the node was served while the client's bytes were held"
    );
    let reply = second
        .send_rpc_to_addr(addr, MessageKind::PING, big(20))
        .await;
    let replied_at = std::time::Instant::now();
    assert_eq!(reply.unwrap().payload.len(), 20 * MIB);
    let (answer, reset_at) = stall.await.unwrap();
    assert_eq!(
        answer.unwrap(),
        Err(u64::from(
            nodedb_transport::transport::STREAM_CODE_INBOUND_TIMEOUT
        ))
    );
    assert!(
        reset_at <= replied_at,
        "the second client connection waited for the first one's bytes"
    );
    assert_eq!(server.metrics()["inbound_shared_bytes_held"], 0);
}

/// Client certificates may hold `client_connections_max` connections to a node at once: a
/// further one is closed with the reason, a node and an admin still connect, and a slot freed
/// by a closing client is taken by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_beyond_the_cap_are_closed_and_nodes_and_admins_still_connect() {
    let dir = tempfile::tempdir().unwrap();
    use nodedb_transport::issue::{generate_cluster_credentials_with, LeafSpec};
    use nodedb_transport::{Credentials, Role};
    let here = || vec!["127.0.0.1".to_string()];
    let leaves = [
        LeafSpec::node(1, here()).unwrap(),
        LeafSpec::node(2, here()).unwrap(),
        LeafSpec::named(Role::Client, "client", here()).unwrap(),
        LeafSpec::named(Role::Admin, "ops", here()).unwrap(),
    ];
    let c: Vec<Credentials> = generate_cluster_credentials_with(dir.path(), "a", &leaves, 30)
        .unwrap()
        .iter()
        .map(|f| Credentials::mtls_from_files(&f.ca_cert, &f.cert, &f.key).unwrap())
        .collect();
    let server_cfg = TransportConfig {
        client_connections_max: 2,
        ..config()
    };
    let server = echo_server_with(c[0].clone(), server_cfg);
    let addr = server.local_addr();
    async fn ping(t: &Transport, addr: std::net::SocketAddr) -> Result<usize, TransportError> {
        let reply = t.send_rpc_to_addr(addr, MessageKind::PING, Bytes::from("p"));
        reply.await.map(|r| r.payload.len())
    }
    let clients: Vec<Transport> = (0..3).map(|i| bind(1000 + i, ANY, c[2].clone())).collect();
    ping(&clients[0], addr).await.unwrap();
    ping(&clients[1], addr).await.unwrap();
    match ping(&clients[2], addr).await {
        Err(TransportError::Unreachable { reason, .. }) => {
            assert!(reason.contains("client_connections_max"), "{reason}")
        }
        other => panic!("a third client connection was served: {other:?}"),
    }
    let metrics = server.metrics();
    assert_eq!(metrics["inbound_connections_refused_full"], 1);
    assert_eq!(metrics["client_connections"], 2);

    // Attack probe, session 31: a node certificate of a node never admitted held 1,500
    // connections past every cap; it is a client here.
    let stray = bind(2, ANY, c[1].clone());
    match ping(&stray, addr).await {
        Err(TransportError::Unreachable { reason, .. }) => {
            assert!(reason.contains("client_connections_max"), "{reason}")
        }
        other => panic!("a node certificate of no member was let past the cap: {other:?}"),
    }
    stray.close().await;
    let node = bind(2, ANY, c[1].clone());
    server.register_peer(NodeId(2), node.local_addr(), None);
    ping(&node, addr)
        .await
        .expect("a member connects whatever clients hold");
    let admin = bind(3000, ANY, c[3].clone());
    ping(&admin, addr)
        .await
        .expect("an admin connects whatever clients hold");
    let metrics = server.metrics();
    assert_eq!(metrics["client_connections"], 2);
    assert_eq!(metrics["admin_connections"], 1);

    clients[0].close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.metrics()["client_connections"] > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "a closed client's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ping(&clients[2], addr)
        .await
        .expect("the freed slot serves the next client");
    assert_eq!(server.metrics()["client_connections"], 2);
}

/// A client certificate's connection may hold `client_streams_per_connection_max` streams at
/// once: with them all stalled, its next request waits until the node resets them at the read
/// deadline. A node's connection is raised to `streams_per_connection_max` after its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_gets_fewer_streams_than_a_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2", "client"]);
    let server_cfg = TransportConfig {
        rpc_timeout: Duration::from_secs(2),
        streams_per_connection_max: 64,
        client_streams_per_connection_max: 4,
        ..config()
    };
    let server = echo_server_with(c[0].clone(), server_cfg);
    let addr = server.local_addr();
    let patient = TransportConfig {
        rpc_timeout: Duration::from_secs(8),
        ..config()
    };
    let client = std::sync::Arc::new(
        Transport::bind(
            NodeId(1000),
            ANY.parse().unwrap(),
            c[2].clone(),
            patient.clone(),
        )
        .unwrap(),
    );
    let node = std::sync::Arc::new(
        Transport::bind(NodeId(2), ANY.parse().unwrap(), c[1].clone(), patient).unwrap(),
    );
    server.register_peer(NodeId(2), node.local_addr(), None); // a member: every stream
    async fn ping(t: &Transport, addr: std::net::SocketAddr) -> Duration {
        let started = std::time::Instant::now();
        let reply = t.send_rpc_to_addr(addr, MessageKind::PING, Bytes::from("p"));
        reply.await.expect("served");
        started.elapsed()
    }
    /// Until `t`'s connection to `addr` has sent data on `n` streams (bounded): the stalled
    /// streams are open before the next request asks for one.
    fn streams_sent(t: &Transport, addr: std::net::SocketAddr) -> u64 {
        t.connection_stats(addr).map_or(0, |s| s.frame_tx.stream)
    }
    async fn wait_for_streams_sent(t: &Transport, addr: std::net::SocketAddr, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while streams_sent(t, addr) < n {
            assert!(std::time::Instant::now() < deadline, "streams never sent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let stall = |t: &std::sync::Arc<Transport>, n: usize| {
        (0..n)
            .map(|_| {
                let t = std::sync::Arc::clone(t);
                tokio::spawn(async move {
                    // Half a header, the stream left open: the node waits for the rest.
                    t.send_raw_to_addr(addr, Bytes::from_static(&[1, 1, 0]), false)
                        .await
                })
            })
            .collect::<Vec<_>>()
    };
    ping(&node, addr).await; // connected, its allowance raised
    let before = streams_sent(&node, addr);
    let held = stall(&node, 8);
    wait_for_streams_sent(&node, addr, before + 8).await;
    let waited = ping(&node, addr).await;
    assert!(
        waited < Duration::from_secs(1),
        "a node's 9th stream: {waited:?}"
    );

    ping(&client, addr).await;
    let before = streams_sent(&client, addr);
    let held_by_client = stall(&client, 4);
    wait_for_streams_sent(&client, addr, before + 4).await;
    let waited = ping(&client, addr).await;
    assert!(
        waited >= Duration::from_millis(1500),
        "the client's 5th stream waited for the stalled ones to be reset: {waited:?}"
    );
    for t in held.into_iter().chain(held_by_client) {
        let reset = t.await.unwrap().expect("answered");
        assert_eq!(
            reset,
            Err(u64::from(
                nodedb_transport::transport::STREAM_CODE_INBOUND_TIMEOUT
            ))
        );
    }
}

/// A handler that bounds its own wait by more than `rpc_timeout` (`answer_within`: a forwarded
/// host command, a KV request with its caller's `t`) is given that long, and its sender waits
/// for it with `send_rpc_within`; one that does not still gets `handler_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_bounds_its_own_wait_is_given_it() {
    use nodedb_transport::{FrameHandler, HandlerFuture, InboundFrame, OutboundFrame};
    struct Slow(Option<Duration>);
    impl FrameHandler for Slow {
        fn handle(&self, _frame: InboundFrame) -> HandlerFuture {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(700)).await; // a slow apply
                Ok(Some(OutboundFrame {
                    kind: MessageKind::PONG,
                    payload: Bytes::from_static(b"applied"),
                }))
            })
        }
        fn answer_within(&self) -> Option<Duration> {
            self.0
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let quick = TransportConfig {
        rpc_timeout: Duration::from_millis(300),
        ..config()
    };
    let server = Transport::bind(NodeId(1), ANY.parse().unwrap(), c[0].clone(), quick.clone());
    let server = server.unwrap();
    let client = Transport::bind(NodeId(2), ANY.parse().unwrap(), c[1].clone(), quick).unwrap();
    client.register_peer(NodeId(1), server.local_addr(), None);
    server.register_peer(NodeId(2), client.local_addr(), None);
    let within = Duration::from_secs(2);
    server.register_handler(
        MessageKind::PING,
        std::sync::Arc::new(Slow(Some(Duration::from_secs(2)))),
    );
    let answered = client
        .send_rpc_within(NodeId(1), MessageKind::PING, Bytes::new(), within)
        .await;
    assert_eq!(answered.unwrap().payload, Bytes::from_static(b"applied"));
    server.register_handler(MessageKind::PING, std::sync::Arc::new(Slow(None)));
    let err = client
        .send_rpc_within(NodeId(1), MessageKind::PING, Bytes::new(), within)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("handler_timeout"), "{err}");
}
