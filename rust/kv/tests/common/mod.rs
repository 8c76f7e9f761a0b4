//! Helpers shared by the integration tests (`mod common;` in each test file). The simulated
//! cluster itself is the engine's own test harness (`rust/multiraft/tests/common`), included
//! here rather than written twice.
#![allow(dead_code)]

#[path = "../../../multiraft/tests/common/sim_cluster.rs"]
mod sim_cluster;
#[allow(unused_imports)] // used by the sim tests, not by every test file
pub use sim_cluster::{SimCluster, SimNode};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nodedb_kv::{KvCommand, KvReader, KvStateMachine};
use nodedb_multiraft::error::SmError;
use nodedb_multiraft::state_machine::{StateMachine, StateMachineKind};
use nodedb_multiraft::GroupId;
use nodedb_transport::{Credentials, Transport, TransportConfig};

/// The KV readers of one node, by group, filled in as its groups are created.
pub type Readers = Arc<Mutex<HashMap<GroupId, KvReader>>>;

/// A KV state machine for every group, its reader recorded in `readers`.
pub fn factory(readers: Readers) -> Box<dyn nodedb_multiraft::StateMachineFactory> {
    Box::new(
        move |g: GroupId, _k: StateMachineKind| -> Result<Box<dyn StateMachine>, SmError> {
            let kv = KvStateMachine::new();
            readers.lock().expect("lock").insert(g, kv.reader());
            Ok(Box::new(kv))
        },
    )
}

/// An encoded KV put.
pub fn put(key: &str, value: &[u8]) -> Vec<u8> {
    KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
    }
    .encode()
}

/// An insecure QUIC transport of node `node_id` bound on `ip`, on a port the OS picks.
pub fn insecure_transport(node_id: u64, ip: &str) -> Arc<Transport> {
    Arc::new(
        Transport::bind(
            nodedb_wire::NodeId(node_id),
            format!("{ip}:0").parse().expect("addr"),
            Credentials::Insecure,
            TransportConfig::default(),
        )
        .expect("bind"),
    )
}
