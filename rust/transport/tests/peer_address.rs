//! A node restarted at another address tells its peers where it listens now (`PEER_ADDRESS`),
//! before the cluster's topology records it: real QUIC on 127.0.0.1, the move being a new port.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_transport::{MessageKind, NodeId, Transport, TransportError};

use common::*;

/// Until `node_id`'s address as `t` sends to it is `want`, bounded.
async fn wait_peer_addr(t: &Transport, node_id: u64, want: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if t.peer_addr(NodeId(node_id)) == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a bounded state
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_node_is_reached_where_it_says_it_listens_until_it_is_registered_there() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let one = bind(1, ANY, c[0].clone());
    let old = bind(2, ANY, c[1].clone());
    let (recorded, pin) = (old.local_addr(), old.spki_pin());
    old.close().await;
    let moved = bind(2, ANY, c[1].clone());
    serve_echo(&moved);
    one.register_peer(NodeId(2), recorded, pin);
    moved.register_peer(NodeId(1), one.local_addr(), one.spki_pin());
    let gone = one
        .send_rpc(NodeId(2), MessageKind::PING, Bytes::new())
        .await;
    assert!(gone.is_err(), "nothing listens at the recorded address");
    // A send dialling the recorded address (up to the 2 s connect timeout) when node 2 says
    // where it is gives up at once: Raft frames to a peer go one at a time behind it. Polled
    // once here, so it has read the recorded address before the announcement.
    let mut dialling = std::pin::pin!(one.send_oneway(NodeId(2), MessageKind::PING, Bytes::new()));
    tokio::select! {
        biased;
        sent = &mut dialling => panic!("nothing listens there, yet: {sent:?}"),
        () = std::future::ready(()) => {}
    }

    moved.announce_address();
    assert!(wait_peer_addr(&one, 2, moved.local_addr()).await);
    let given_up = tokio::time::timeout(Duration::from_secs(1), dialling)
        .await
        .expect("ended well before the connect timeout");
    match given_up {
        Err(TransportError::Unreachable { reason, .. }) => assert!(reason.contains("moved")),
        other => panic!("{other:?}"),
    }
    let reply = one
        .send_rpc(NodeId(2), MessageKind::PING, Bytes::from_static(b"here"))
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from_static(b"here"));
    // The same registration again (another topology change) keeps it; the topology recording
    // the new address takes over; the old one registered again (a newer record) wins.
    one.register_peer(NodeId(2), recorded, pin);
    assert_eq!(one.peer_addr(NodeId(2)), Some(moved.local_addr()));
    one.register_peer(NodeId(2), moved.local_addr(), pin);
    assert_eq!(one.peer_addr(NodeId(2)), Some(moved.local_addr()));
    one.register_peer(NodeId(2), recorded, pin);
    assert_eq!(one.peer_addr(NodeId(2)), Some(recorded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_is_not_the_connections_or_another_key_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2", "n3"]);
    let one = bind(1, ANY, c[0].clone());
    let two = bind(2, ANY, c[1].clone());
    let recorded: SocketAddr = "127.0.0.1:9".parse().unwrap();
    one.register_peer(NodeId(2), recorded, two.spki_pin());
    for claim in ["127.0.0.1:1", "not an address", &"9".repeat(100)] {
        let err = two
            .send_rpc_to_addr(
                one.local_addr(),
                MessageKind::PEER_ADDRESS,
                Bytes::from(claim.to_string()),
            )
            .await
            .unwrap_err();
        match err {
            TransportError::Remote { code, .. } => assert_eq!(code, "invalid_request"),
            other => panic!("{claim:?}: {other}"),
        }
    }
    assert_eq!(one.peer_addr(NodeId(2)), Some(recorded));
    // Node 2 registered with node 3's key: its true address is not taken either.
    let three = bind(3, ANY, c[2].clone());
    one.register_peer(NodeId(2), recorded, three.spki_pin());
    two.register_peer(NodeId(1), one.local_addr(), one.spki_pin());
    let here = Bytes::from(two.local_addr().to_string());
    two.send_rpc(NodeId(1), MessageKind::PEER_ADDRESS, here)
        .await
        .unwrap_err(); // a one-way kind asked as a request gets "no_reply"
    assert_eq!(one.peer_addr(NodeId(2)), Some(recorded));
}

/// Both nodes moved: each knows only the other's old address. Told at a seed address (no node
/// id known there), node 1 learns where node 2 listens; its own registered address is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_peers_all_moved_is_found_through_a_seed_address() {
    let dir = tempfile::tempdir().unwrap();
    let c = creds(dir.path(), "a", &["n1", "n2"]);
    let one = bind(1, ANY, c[0].clone());
    let two = bind(2, ANY, c[1].clone());
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    one.register_peer(NodeId(2), nowhere, two.spki_pin());
    two.register_peer(NodeId(1), nowhere, one.spki_pin());
    // A plain announcement goes to the registered (old) address: nothing learns anything.
    two.announce_address();
    two.announce_address_to(&[nowhere, two.local_addr(), one.local_addr()]);
    assert!(wait_peer_addr(&one, 2, two.local_addr()).await);
    serve_echo(&two);
    let reply = one
        .send_rpc(NodeId(2), MessageKind::PING, Bytes::from_static(b"found"))
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from_static(b"found"));
    assert_eq!(two.peer_addr(NodeId(1)), Some(nowhere), "not told yet");
}
