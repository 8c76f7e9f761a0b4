//! QUIC transport of nodedb-cluster (docs/WIRE.md "Transport").
//!
//! One quinn endpoint per node (server and client on one UDP socket, ALPN `nodedb-cluster/1`), one
//! connection per peer reused, one bidirectional stream per request/response, many in flight.
//! Inbound frames are dispatched by message kind through a [`HandlerRegistry`]: Rust handlers
//! (Raft kinds 16–31) are registered with [`Transport::register_handler`]; everything else goes to
//! the fallback handler (the Python handler in the binding). See docs/ARCHITECTURE.md.

mod budget;
pub mod config;
pub mod credentials;
pub mod crl;
pub mod error;
pub mod handler;
pub mod identity;
pub mod issue;
pub mod metrics;
pub mod pace;
pub mod refusals;
pub mod renew;
pub mod stream;
mod tls;
pub mod transport;
pub mod workers;

pub use config::TransportConfig;
pub use credentials::{spki_pin_of_cert, Credentials, SpkiPin};
pub use crl::revoke_node_credentials;
pub use error::TransportError;
pub use handler::{
    handler_fn, FrameHandler, HandlerError, HandlerFuture, HandlerRegistry, HandlerResult,
    InboundFrame, OutboundFrame, PeerInfo,
};
pub use identity::{authorize, authorize_member, Identity, PeerIdentity, Refusal};
pub use issue::generate_cluster_credentials;
pub use metrics::{Metrics, MetricsSnapshot};
pub use nodedb_wire::{MessageKind, NodeId, Role, Roles};
pub use pace::RpcPace;
pub use refusals::{refusal_reason, RefusalLine, RefusalLog, REASONS};
pub use renew::{certificate_addresses, renew_node_credentials};
pub use transport::Transport;
pub use workers::{runtime_workers, RUNTIME_WORKERS_ENV};

/// ALPN protocol id: names the protocol and its major version.
pub const ALPN: &[u8] = b"nodedb-cluster/1";
