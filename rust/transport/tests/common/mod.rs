//! Shared by the transport integration tests: credentials, transports on 127.0.0.1, an echo
//! handler, a connected pair and a runtime per simulated process.

// Each test binary uses a subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::issue::NodeCredentialFiles;
use nodedb_transport::{
    generate_cluster_credentials, handler_fn, Credentials, MessageKind, NodeId, OutboundFrame,
    Transport, TransportConfig,
};

pub const ANY: &str = "127.0.0.1:0";

/// A cluster CA and one leaf per name (gen-certs' rule: `n<id>` is a node), all on 127.0.0.1.
pub fn credential_files(dir: &Path, cluster: &str, names: &[&str]) -> Vec<NodeCredentialFiles> {
    let nodes: Vec<(String, Vec<String>)> = names
        .iter()
        .map(|n| (n.to_string(), vec!["127.0.0.1".to_string()]))
        .collect();
    generate_cluster_credentials(dir, cluster, &nodes).unwrap()
}

pub fn creds(dir: &Path, cluster: &str, names: &[&str]) -> Vec<Credentials> {
    credential_files(dir, cluster, names)
        .iter()
        .map(|f| Credentials::mtls_from_files(&f.ca_cert, &f.cert, &f.key).unwrap())
        .collect()
}

pub fn config() -> TransportConfig {
    TransportConfig {
        rpc_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..TransportConfig::default()
    }
}

pub fn bind(id: u64, addr: &str, creds: Credentials) -> Transport {
    Transport::bind(NodeId(id), addr.parse().unwrap(), creds, config()).unwrap()
}

/// Node 1 on 127.0.0.1 with its own `rpc_timeout` (the read deadline of its inbound frames),
/// serving echo.
pub fn echo_server(creds: Credentials, rpc_timeout: Duration) -> Transport {
    echo_server_with(
        creds,
        TransportConfig {
            rpc_timeout,
            ..config()
        },
    )
}

/// Node 1 on 127.0.0.1 with config `cfg`, serving echo.
pub fn echo_server_with(creds: Credentials, cfg: TransportConfig) -> Transport {
    let server = Transport::bind(NodeId(1), ANY.parse().unwrap(), creds, cfg).unwrap();
    serve_echo(&server);
    server
}

/// After a stream was refused or reset: the client's one connection to `server` (an echo
/// server) is still the only one and still serves a request.
pub async fn assert_the_one_connection_still_serves(client: &Transport, server: &Transport) {
    let reply = client
        .send_rpc_to_addr(
            server.local_addr(),
            MessageKind::PING,
            Bytes::from_static(b"ok"),
        )
        .await;
    assert_eq!(reply.unwrap().payload, Bytes::from_static(b"ok"));
    assert_eq!(server.metrics()["connections_accepted"], 1);
}

/// Echo server: replies Pong with the request payload.
pub fn serve_echo(t: &Transport) {
    t.set_fallback_handler(Some(handler_fn(|frame| async move {
        Ok(Some(OutboundFrame {
            kind: MessageKind::PONG,
            payload: frame.payload,
        }))
    })));
}

/// An echo server (n1) and a client (n2) of one cluster, the client holding one pooled
/// connection to the server, opened by a first request: (server, client, the server's address,
/// that connection's id).
pub async fn connected_echo_pair(dir: &Path) -> (Transport, Transport, SocketAddr, usize) {
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
pub async fn reset_with(
    client: &Transport,
    addr: SocketAddr,
    bytes: Vec<u8>,
) -> Option<&'static str> {
    let answer = client
        .send_raw_to_addr(addr, Bytes::from(bytes), true)
        .await
        .unwrap();
    let reset_code = answer.expect_err("the stream must be reset, not answered");
    nodedb_wire::FrameError::code_for_number((reset_code - 0x100) as u32)
}

/// The next request is answered on the same pooled connection, and the server accepted no other.
pub async fn assert_the_connection_still_serves(
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

/// A multi-threaded runtime of `workers` threads (each simulated process gets its own, so it can
/// be torn down as a kill would).
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// A leaf of [`leaf_creds`]: a node by id, or a client or admin certificate by name.
pub enum Leaf {
    Node(u64),
    Client(&'static str),
    Admin(&'static str),
}

/// A cluster CA and one leaf per entry of `leaves` (in order), all on 127.0.0.1.
pub fn leaf_creds(dir: &Path, cluster: &str, leaves: &[Leaf]) -> Vec<Credentials> {
    use nodedb_transport::issue::{generate_cluster_credentials_with, LeafSpec};
    use nodedb_transport::Role;
    let here = || vec!["127.0.0.1".to_string()];
    let specs: Vec<LeafSpec> = leaves
        .iter()
        .map(|leaf| match leaf {
            Leaf::Node(id) => LeafSpec::node(*id, here()).unwrap(),
            Leaf::Client(name) => LeafSpec::named(Role::Client, name, here()).unwrap(),
            Leaf::Admin(name) => LeafSpec::named(Role::Admin, name, here()).unwrap(),
        })
        .collect();
    generate_cluster_credentials_with(dir, cluster, &specs, 30)
        .unwrap()
        .iter()
        .map(|f| Credentials::mtls_from_files(&f.ca_cert, &f.cert, &f.key).unwrap())
        .collect()
}

/// Until `check()` holds, polling every 5 ms; panics with `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
