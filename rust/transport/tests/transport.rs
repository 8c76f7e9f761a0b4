//! Integration tests over real UDP sockets on 127.0.0.1: mTLS round trips, refusals, garbage on a
//! live stream, one-way frames, timeouts, port release and peer restart. Every wait is bounded by
//! the transport's own timeouts or an explicit `tokio::time::timeout`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::issue::{issue_node_credentials, LeafSpec, NodeCredentialFiles};
use nodedb_transport::{
    generate_cluster_credentials, handler_fn, Credentials, MessageKind, NodeId, OutboundFrame,
    Transport, TransportConfig, TransportError,
};
use nodedb_wire::FrameHeader;

const ANY: &str = "127.0.0.1:0";

/// A cluster CA and one leaf per name (gen-certs' rule: `n<id>` is a node), all on 127.0.0.1.
fn credential_files(dir: &Path, cluster: &str, names: &[&str]) -> Vec<NodeCredentialFiles> {
    let nodes: Vec<(String, Vec<String>)> = names
        .iter()
        .map(|n| (n.to_string(), vec!["127.0.0.1".to_string()]))
        .collect();
    generate_cluster_credentials(dir, cluster, &nodes).unwrap()
}

fn creds(dir: &Path, cluster: &str, names: &[&str]) -> Vec<Credentials> {
    credential_files(dir, cluster, names)
        .iter()
        .map(|f| Credentials::mtls_from_files(&f.ca_cert, &f.cert, &f.key).unwrap())
        .collect()
}

fn config() -> TransportConfig {
    TransportConfig {
        rpc_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..TransportConfig::default()
    }
}

fn bind(id: u64, addr: &str, creds: Credentials) -> Transport {
    Transport::bind(NodeId(id), addr.parse().unwrap(), creds, config()).unwrap()
}

/// Echo server: replies Pong with the request payload.
fn serve_echo(t: &Transport) {
    t.set_fallback_handler(Some(handler_fn(|frame| async move {
        Ok(Some(OutboundFrame {
            kind: MessageKind::PONG,
            payload: frame.payload,
        }))
    })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_round_trip_many_in_flight_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let server = bind(1, ANY, c[0].clone());
    let client = bind(2, ANY, c[1].clone());
    serve_echo(&server);
    client.register_peer(NodeId(1), server.local_addr(), server.spki_pin());
    let mut tasks = Vec::new();
    let client = Arc::new(client);
    for i in 0..256u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from(i.to_le_bytes().to_vec());
            let reply = client
                .send_rpc(NodeId(1), MessageKind::PING, payload.clone())
                .await
                .unwrap();
            assert_eq!(
                reply,
                OutboundFrame {
                    kind: MessageKind::PONG,
                    payload
                }
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let m = client.metrics();
    assert_eq!(m["rpcs_sent"], 256);
    assert_eq!(
        m["connections_opened"], 1,
        "one connection reused for every request"
    );
    assert_eq!(server.metrics()["rpcs_received"], 256);
    assert_eq!(server.metrics()["insecure"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ca_is_refused_and_says_so() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let server = bind(1, ANY, creds(dir_a.path(), "a", &["n1"]).remove(0));
    let client = bind(2, ANY, creds(dir_b.path(), "b", &["n2"]).remove(0));
    serve_echo(&server);
    let err = client
        .send_rpc_to_addr(server.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    assert!(
        err.to_string().contains("not issued by this cluster's CA"),
        "{err}"
    );
    assert_eq!(client.metrics()["errors.handshake"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_and_mtls_do_not_mix() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let secure = bind(1, ANY, c[0].clone());
    let insecure = bind(2, ANY, Credentials::Insecure);
    serve_echo(&secure);
    serve_echo(&insecure);
    assert_eq!(insecure.metrics()["insecure"], 1);
    // insecure client → mTLS server: the server demands a client certificate.
    let err = insecure
        .send_rpc_to_addr(secure.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("certificate required"), "{err}");
    // mTLS client → insecure server: its throwaway certificate is not from the cluster CA.
    let err = secure
        .send_rpc_to_addr(insecure.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not issued by this cluster's CA"),
        "{err}"
    );
    // Two insecure transports do talk (asked for by name).
    let other = bind(3, ANY, Credentials::Insecure);
    let reply = other
        .send_rpc_to_addr(
            insecure.local_addr(),
            MessageKind::PING,
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(reply.unwrap().payload, Bytes::from_static(b"x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2", "n3"]);
    let server = bind(1, ANY, c[0].clone());
    let client = bind(2, ANY, c[1].clone());
    serve_echo(&server);
    let wrong_pin = c[2].spki_pin().unwrap();
    client.register_peer(NodeId(1), server.local_addr(), wrong_pin);
    let err = client
        .send_rpc(NodeId(1), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Handshake { .. }) && err.to_string().contains("SPKI pin"),
        "{err}"
    );
    client.register_peer(NodeId(1), server.local_addr(), server.spki_pin());
    client
        .send_rpc(NodeId(1), MessageKind::PING, Bytes::new())
        .await
        .unwrap();
    // A connection pooled without a pin (join-style, by address) never serves a pinned peer
    // whose pin it does not match.
    let other = bind(3, ANY, c[2].clone());
    serve_echo(&other);
    let probe = client.send_rpc_to_addr(other.local_addr(), MessageKind::PING, Bytes::new());
    probe.await.unwrap();
    client.register_peer(NodeId(3), other.local_addr(), server.spki_pin());
    let err = client
        .send_rpc(NodeId(3), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    client.register_peer(NodeId(3), other.local_addr(), other.spki_pin());
    client
        .send_rpc(NodeId(3), MessageKind::PING, Bytes::new())
        .await
        .unwrap();
}

/// An echo server (n1) and a client (n2) of one cluster, the client holding one pooled
/// connection to the server, opened by a first request: (server, client, the server's address,
/// that connection's id).
async fn connected_echo_pair(dir: &Path) -> (Transport, Transport, SocketAddr, usize) {
    let c = creds(dir, "a", &["n1", "n2"]);
    let server = bind(1, ANY, c[0].clone());
    let client = bind(2, ANY, c[1].clone());
    serve_echo(&server);
    let addr = server.local_addr();
    client
        .send_rpc_to_addr(addr, MessageKind::PING, Bytes::new())
        .await
        .unwrap();
    let conn_id = client.pooled_connection_id(addr).unwrap();
    (server, client, addr, conn_id)
}

/// Sends `bytes` raw on a new stream of the pooled connection, which the peer must reset rather
/// than answer: the frame error the reset code names.
async fn reset_with(client: &Transport, addr: SocketAddr, bytes: Vec<u8>) -> Option<&'static str> {
    let answer = client
        .send_raw_to_addr(addr, Bytes::from(bytes), true)
        .await
        .unwrap();
    let reset_code = answer.expect_err("the stream must be reset, not answered");
    nodedb_wire::FrameError::code_for_number((reset_code - 0x100) as u32)
}

/// The next request is answered on the same pooled connection, and the server accepted no other.
async fn assert_the_connection_still_serves(
    server: &Transport,
    client: &Transport,
    addr: SocketAddr,
    conn_id: usize,
) {
    let reply = client
        .send_rpc_to_addr(addr, MessageKind::PING, Bytes::from_static(b"ok"))
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from_static(b"ok"));
    assert_eq!(
        client.pooled_connection_id(addr),
        Some(conn_id),
        "same connection"
    );
    assert_eq!(server.metrics()["connections_accepted"], 1);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_leaf_from_existing_ca_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let files =
        generate_cluster_credentials(dir.path(), "a", &[("n1".into(), vec!["127.0.0.1".into()])])
            .unwrap();
    let later = issue_node_credentials(
        &files[0].ca_cert,
        &dir.path().join("ca-key/ca.key"),
        &LeafSpec::node(9, vec!["127.0.0.1".into()]).unwrap(),
        365,
        dir.path(),
    )
    .unwrap();
    let server = bind(
        1,
        ANY,
        Credentials::mtls_from_files(&files[0].ca_cert, &files[0].cert, &files[0].key).unwrap(),
    );
    let client = bind(
        9,
        ANY,
        Credentials::mtls_from_files(&later.ca_cert, &later.cert, &later.key).unwrap(),
    );
    serve_echo(&server);
    client
        .send_rpc_to_addr(server.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap();
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

/// A peer that announces a frame and never sends it (slow loris) holds nothing for long: the
/// stream is reset after `rpc_timeout`, counted, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_inbound_frame_is_reset_after_the_rpc_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let mut server_cfg = config();
    server_cfg.rpc_timeout = Duration::from_millis(300);
    let server =
        Transport::bind(NodeId(1), ANY.parse().unwrap(), c[0].clone(), server_cfg).unwrap();
    let client = bind(2, ANY, c[1].clone());
    serve_echo(&server);
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
    let reply = client
        .send_rpc_to_addr(addr, MessageKind::PING, Bytes::from_static(b"ok"))
        .await;
    assert_eq!(reply.unwrap().payload, Bytes::from_static(b"ok"));
    assert_eq!(server.metrics()["connections_accepted"], 1);
}

/// A leaf revoked by the cluster CRL is refused in both directions, with an error that says so;
/// other leaves of the same CA still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_leaf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = credential_files(dir.path(), "a", &["n1", "n2", "n3"]);
    let crl = dir.path().join("revoked.crl.pem");
    nodedb_transport::revoke_node_credentials(
        &files[0].ca_cert,
        &dir.path().join("ca-key/ca.key"),
        std::slice::from_ref(&files[1].cert),
        &crl,
    )
    .unwrap();
    let load = |i: usize| {
        Credentials::mtls_from_files_with_crls(
            &files[i].ca_cert,
            &files[i].cert,
            &files[i].key,
            std::slice::from_ref(&crl),
        )
        .unwrap()
    };
    let server = bind(1, ANY, load(0));
    serve_echo(&server);
    let revoked = bind(2, ANY, load(1));
    let fine = bind(3, ANY, load(2));
    let err = revoked
        .send_rpc_to_addr(server.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    fine.send_rpc_to_addr(server.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap();
    // And the other way: a node holding the CRL refuses to talk to the revoked node's server.
    serve_echo(&revoked);
    let err = fine
        .send_rpc_to_addr(revoked.local_addr(), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
}

/// A CRL reloaded into a running transport refuses the revoked peer's new handshakes and closes
/// its live connections, inbound and pooled outbound; other peers keep theirs. A broken CRL is
/// refused and the one in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_crl_closes_the_revoked_peers_connections() {
    let dir = tempfile::tempdir().unwrap();
    let files = credential_files(dir.path(), "a", &["n1", "n2", "n3"]);
    let load =
        |i: usize| Credentials::mtls_from_files(&files[i].ca_cert, &files[i].cert, &files[i].key);
    let server = bind(1, ANY, load(0).unwrap());
    let revoked = bind(2, ANY, load(1).unwrap());
    let fine = bind(3, ANY, load(2).unwrap());
    for t in [&server, &revoked, &fine] {
        serve_echo(t);
    }
    async fn ping(from: &Transport, to: SocketAddr) -> Result<OutboundFrame, TransportError> {
        from.send_rpc_to_addr(to, MessageKind::PING, Bytes::new())
            .await
    }
    ping(&revoked, server.local_addr()).await.unwrap();
    ping(&fine, server.local_addr()).await.unwrap();
    ping(&server, revoked.local_addr()).await.unwrap(); // a pooled outbound connection too
    let fine_conn = fine.pooled_connection_id(server.local_addr());
    let crl = dir.path().join("crl.pem");
    nodedb_transport::revoke_node_credentials(
        &files[0].ca_cert,
        &dir.path().join("ca-key/ca.key"),
        std::slice::from_ref(&files[1].cert),
        &crl,
    )
    .unwrap();
    let pem = std::fs::read_to_string(&crl).unwrap();
    assert_eq!(
        server.set_crls(vec![pem.clone()]).unwrap(),
        2,
        "inbound + pooled outbound"
    );
    assert_eq!(server.pooled_connection_id(revoked.local_addr()), None);
    // The revoked peer's next requests fail; once its closed connection is noticed, the
    // redial is refused as revoked (bounded: a handful of attempts, each bounded by rpc_timeout).
    let mut last = String::new();
    for _ in 0..5 {
        match ping(&revoked, server.local_addr()).await {
            Ok(_) => panic!("a revoked peer was served after the reload"),
            Err(err) => last = err.to_string(),
        }
        if last.contains("revoked") {
            break;
        }
    }
    assert!(last.contains("revoked"), "{last}");
    let err = ping(&server, revoked.local_addr()).await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    ping(&fine, server.local_addr()).await.unwrap();
    assert_eq!(
        fine.pooled_connection_id(server.local_addr()),
        fine_conn,
        "left alone"
    );
    // A broken CRL changes nothing; an empty list lifts the revocation.
    assert!(server.set_crls(vec!["not a crl".into()]).is_err());
    assert_eq!(server.crl_count(), 1);
    assert_eq!(server.set_crls(Vec::new()).unwrap(), 0);
    ping(&server, revoked.local_addr()).await.unwrap();
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

/// JOIN.md: a joiner sends each JoinRequest on a connection of its own. `send_rpc_fresh` dials for
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_may_send_only_what_the_kind_table_allows_and_handlers_see_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    // n1, n2: nodes 1 and 2; "app": an application (client role).
    let c = creds(dir.path(), "prod", &["n1", "n2", "app"]);
    let server = bind(1, ANY, c[0].clone());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    server.register_handler(
        MessageKind::METADATA_PROPOSE,
        handler_fn(move |frame| {
            record.lock().unwrap().push(frame.peer.identity.node_id());
            async move {
                Ok(Some(OutboundFrame {
                    kind: MessageKind::METADATA_PROPOSE_RESPONSE,
                    payload: Bytes::new(),
                }))
            }
        }),
    );
    serve_echo(&server);
    let node2 = bind(2, ANY, c[1].clone());
    let app = bind(u64::MAX, ANY, c[2].clone());
    assert_eq!(
        server.identity().map(|id| id.uri()).as_deref(),
        Some("spiffe://prod/node/1")
    );
    for t in [&node2, &app] {
        t.register_peer(NodeId(1), server.local_addr(), server.spki_pin());
    }
    // The client may ping; it may not propose metadata, and its handler never runs.
    app.send_rpc(NodeId(1), MessageKind::PING, Bytes::new())
        .await
        .unwrap();
    let err = app
        .send_rpc(NodeId(1), MessageKind::METADATA_PROPOSE, Bytes::new())
        .await
        .unwrap_err();
    match &err {
        TransportError::PermissionDenied { message } => {
            assert!(message.contains("spiffe://prod/client/app"), "{message}");
            assert!(message.contains("node role"), "{message}");
        }
        other => panic!("expected PermissionDenied, got {other}"),
    }
    // An answer kind is nobody's to send.
    let answer = node2
        .send_rpc(NodeId(1), MessageKind::PONG, Bytes::new())
        .await
        .unwrap_err();
    assert!(
        matches!(answer, TransportError::PermissionDenied { .. }),
        "{answer}"
    );
    // A node may; its handler sees the certificate's node id.
    node2
        .send_rpc(NodeId(1), MessageKind::METADATA_PROPOSE, Bytes::new())
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Some(2)]);
    let counts = server.refusals().counts();
    assert!(
        counts.contains(&(MessageKind::METADATA_PROPOSE, "role", 1)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&(MessageKind::PONG, "role", 1)),
        "{counts:?}"
    );
    let lines = server.refusals().take_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(server.metrics()["requests_refused"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_of_the_ca_without_an_identity_may_send_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "prod", &["n1"]);
    // A leaf the cluster CA signed before identities existed: IP SAN only.
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.path().join("ca-key/ca.key")).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::from_pem(&ca_key).unwrap())
            .unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let old = Credentials::Mtls {
        ca_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        crl_pems: vec![],
    };
    let server = bind(1, ANY, c[0].clone());
    serve_echo(&server);
    let legacy = bind(9, ANY, old);
    legacy.register_peer(NodeId(1), server.local_addr(), server.spki_pin());
    let err = legacy
        .send_rpc(NodeId(1), MessageKind::PING, Bytes::new())
        .await
        .unwrap_err();
    match &err {
        TransportError::PermissionDenied { message } => {
            assert!(message.contains("gen-certs"), "{message}");
        }
        other => panic!("expected PermissionDenied, got {other}"),
    }
    assert!(server
        .refusals()
        .counts()
        .contains(&(MessageKind::PING, "no_identity", 1)));
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
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let a = bind(1, ANY, c[0].clone());
    let b = bind(2, ANY, c[1].clone());
    let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for t in [&a, &b] {
        let got = Arc::clone(&got);
        t.register_handler(
            MessageKind::RAFT_BATCH,
            handler_fn(move |_frame| {
                got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    // Bounded: the connections settle (20 exchanges in a row without a change) within 500.
    let ids = || {
        (
            a.pooled_connection_id(b.local_addr()),
            b.pooled_connection_id(a.local_addr()),
        )
    };
    let (mut last, mut steady) = (ids(), 0);
    for _ in 0..500 {
        exchange(1).await;
        let now = ids();
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
        if steady >= 20 {
            break;
        }
    }
    assert!(steady >= 20, "connections keep being replaced");
    let replaced = a.metrics()["connections_replaced_on_redial"]
        + b.metrics()["connections_replaced_on_redial"];
    assert!(replaced <= 2, "{replaced} connections replaced");
    let before = got.load(std::sync::atomic::Ordering::Relaxed);
    exchange(20).await;
    assert_eq!(ids(), last, "a connection was replaced after settling");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.load(std::sync::atomic::Ordering::Relaxed) < before + 40 {
        let now = got.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} of 40 frames arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // handlers count; nothing to await
    }
    a.close().await;
    b.close().await;
}

/// A multi-threaded runtime of `workers` threads (each simulated process gets its own, so it can
/// be torn down as a kill would).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}
