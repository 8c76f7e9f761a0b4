//! Rust-only floor for the Python benchmark: serial 64 B echo RPCs and 4 MiB bulk over loopback
//! mTLS, both transports in this process. `cargo run --release -p nodedb-transport --example echo_latency`

use std::time::Instant;

use bytes::Bytes;
use nodedb_transport::{
    generate_cluster_credentials, handler_fn, Credentials, MessageKind, NodeId, OutboundFrame,
    Transport, TransportConfig,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = [
        ("n1".to_string(), vec!["127.0.0.1".to_string()]),
        ("n2".to_string(), vec!["127.0.0.1".to_string()]),
    ];
    let files = generate_cluster_credentials(dir.path(), "bench", &nodes).expect("credentials");
    let creds: Vec<Credentials> = files
        .iter()
        .map(|f| Credentials::mtls_from_files(&f.ca_cert, &f.cert, &f.key).expect("load"))
        .collect();
    let any = "127.0.0.1:0".parse().expect("addr");
    let server = Transport::bind(NodeId(1), any, creds[0].clone(), TransportConfig::default())
        .expect("bind");
    let client = Transport::bind(NodeId(2), any, creds[1].clone(), TransportConfig::default())
        .expect("bind");
    server.set_fallback_handler(Some(handler_fn(|frame| async move {
        let payload = if frame.payload.len() > 64 {
            Bytes::from_static(b"ok")
        } else {
            frame.payload
        };
        Ok(Some(OutboundFrame {
            kind: MessageKind::PONG,
            payload,
        }))
    })));
    client.register_peer(NodeId(1), server.local_addr(), None);
    let payload = Bytes::from(vec![7u8; 64]);
    let rounds = 5000;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        client
            .send_rpc(NodeId(1), MessageKind::PING, payload.clone())
            .await
            .expect("rpc");
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "serial 64B: p50 {:?} p99 {:?}",
        samples[rounds / 2],
        samples[rounds * 99 / 100]
    );
    let chunk = Bytes::from(vec![1u8; 4 << 20]);
    let t = Instant::now();
    let total_chunks = 64;
    let client = std::sync::Arc::new(client);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let client = client.clone();
        let chunk = chunk.clone();
        tasks.spawn(async move {
            for _ in 0..total_chunks / 4 {
                client
                    .send_rpc(NodeId(1), MessageKind::PING, chunk.clone())
                    .await
                    .expect("bulk");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = t.elapsed().as_secs_f64();
    if let Some(stats) = client.connection_stats(server.local_addr()) {
        println!("path: {:?}", stats.path);
    }
    println!(
        "bulk 256 MiB in 4 MiB messages (4 streams): {:.0} MB/s",
        (total_chunks as f64 * 4.0 * 1048576.0) / secs / 1e6
    );
}
