//! Paced requests (`Transport::send_rpc_paced`) over real UDP sockets on 127.0.0.1: the peer's
//! part is bounded by the answer deadline, a large reply by its length. Every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_transport::{
    handler_fn, MessageKind, NodeId, OutboundFrame, RpcPace, Transport, TransportError,
};

use common::*;

/// A reply far larger than anything the answer bound could carry.
const REPLY_BYTES: usize = 48 << 20;

/// Server n1 answering every request with `REPLY_BYTES` (after `delay`), client n2 with n1
/// registered and connected.
async fn pair(dir: &std::path::Path, delay: Duration) -> (Transport, Transport) {
    let c = creds(dir, "a", &["n1", "n2"]);
    let server = bind(1, ANY, c[0].clone());
    let reply = Bytes::from(vec![7u8; REPLY_BYTES]);
    server.set_fallback_handler(Some(handler_fn(move |frame| {
        let reply = reply.clone();
        async move {
            // A slow handler (the test's subject), not synchronisation.
            tokio::time::sleep(delay).await;
            let payload = if frame.payload.is_empty() {
                Bytes::from_static(b"warm")
            } else {
                reply
            };
            Ok(Some(OutboundFrame {
                kind: MessageKind::PONG,
                payload,
            }))
        }
    })));
    let client = bind(2, ANY, c[1].clone());
    client.register_peer(NodeId(1), server.local_addr(), None);
    client
        .send_rpc(NodeId(1), MessageKind::PING, Bytes::new())
        .await
        .unwrap();
    (server, client)
}

fn pace(answer_within: Duration) -> RpcPace {
    RpcPace {
        answer_by: Instant::now() + answer_within,
        reply_bytes_per_s: 16.0 * 1024.0 * 1024.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_longer_to_move_than_the_answer_bound_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = pair(dir.path(), Duration::ZERO).await;
    let answer_within = Duration::from_millis(30);
    let started = Instant::now();
    let reply = client
        .send_rpc_paced(
            NodeId(1),
            MessageKind::PING,
            Bytes::from_static(b"big"),
            pace(answer_within),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(reply.payload.len(), REPLY_BYTES);
    // Not vacuous: the whole reply took longer than the answer bound alone allowed (48 MiB in
    // 30 ms would be 1.6 GB/s, far above what QUIC moves here).
    assert!(took > answer_within, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_answer_by_the_answer_bound_times_out_then() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = pair(dir.path(), Duration::from_millis(800)).await;
    let started = Instant::now();
    let err = client
        .send_rpc_paced(
            NodeId(1),
            MessageKind::PING,
            Bytes::from_static(b"big"),
            pace(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout { op: "rpc", .. }),
        "{err}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(600),
        "{took:?}"
    );
    assert_eq!(client.metrics()["errors.timeout"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_bound_already_past_times_out_at_once_without_sending() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pair(dir.path(), Duration::ZERO).await;
    let before = server.metrics()["rpcs_received"];
    let err = client
        .send_rpc_paced(
            NodeId(1),
            MessageKind::PING,
            Bytes::from_static(b"big"),
            pace(Duration::ZERO),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert_eq!(server.metrics()["rpcs_received"], before);
}
