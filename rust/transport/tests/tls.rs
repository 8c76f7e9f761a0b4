//! Certificates over real UDP sockets on 127.0.0.1: mTLS round trips, another CA, pins, issued
//! leaves, revocation (CRL reload) and the kind table's roles.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use nodedb_transport::issue::{issue_node_credentials, LeafSpec};
use nodedb_transport::{
    generate_cluster_credentials, handler_fn, Credentials, MessageKind, NodeId, OutboundFrame,
    Transport, TransportError,
};

use common::*;

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
        err.to_string()
            .contains("the peer's certificate is not issued by the CA we trust"),
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
        err.to_string()
            .contains("the peer's certificate is not issued by the CA we trust"),
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
    // A node certificate the server does not know as a member may not (members only), nor
    // one whose key is not the one registered for it.
    let stranger = node2
        .send_rpc(NodeId(1), MessageKind::METADATA_PROPOSE, Bytes::new())
        .await
        .unwrap_err();
    match &stranger {
        TransportError::PermissionDenied { message } => {
            assert!(message.contains("node 2 is not a member"), "{message}")
        }
        other => panic!("expected PermissionDenied, got {other}"),
    }
    server.register_peer(NodeId(2), node2.local_addr(), server.spki_pin());
    let rekeyed = node2
        .send_rpc(NodeId(1), MessageKind::METADATA_PROPOSE, Bytes::new())
        .await
        .unwrap_err();
    assert!(rekeyed.to_string().contains("another key"), "{rekeyed}");
    assert!(seen.lock().unwrap().is_empty(), "no handler ran");
    // A member with its pinned key may; its handler sees the certificate's node id.
    server.register_peer(NodeId(2), node2.local_addr(), node2.spki_pin());
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
        counts.contains(&(MessageKind::METADATA_PROPOSE, "unknown_sender", 2)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&(MessageKind::PONG, "role", 1)),
        "{counts:?}"
    );
    assert_eq!(server.metrics()["requests_refused"], 4);
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
