//! The transport: one quinn endpoint, a connection pool keyed by peer address, and the inbound
//! accept loop that dispatches frames through the [`HandlerRegistry`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nodedb_wire::control::ControlMessage;
use nodedb_wire::{ErrorMsg, FrameError, MessageKind, NodeId};
use quinn::VarInt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::budget::{FrameCharge, InboundBudget};
use crate::config::TransportConfig;
use crate::credentials::{spki_pin_of_cert, Credentials, SpkiPin};
use crate::crl::{issuer_and_serial, revoked_serials};
use crate::error::TransportError;
use crate::handler::{
    FrameHandler, HandlerError, HandlerRegistry, InboundFrame, OutboundFrame, PeerInfo,
};
use crate::identity::{authorize, authorize_member, own_identity, Identity, PeerIdentity, Refusal};
use crate::metrics::{Metrics, MetricsSnapshot, INSECURE_TRANSPORTS_TOTAL};
use crate::pace::RpcPace;
use crate::refusals::RefusalLog;
use crate::stream::{
    read_frame, read_header, read_payload, read_payload_charged, write_frame, ReadFrameError,
    WriteFrameError,
};
use crate::tls;

mod inbound;
mod outbound;
mod quic_config;
mod raw;
pub use raw::RawStream;

use inbound::accept_loop;
use outbound::{peer_cert, read_error, unless_moved, write_error};
use quic_config::{endpoint_config, quic_transport_config};

/// Stream reset / stop code for a malformed frame: `FRAME_ERROR_CODE_BASE + FrameError::number()`.
pub const FRAME_ERROR_CODE_BASE: u32 = 0x100;
/// `Transport::send_rpc_within`'s bound when the one asked for cannot be represented.
const ANSWER_WITHIN_UNREPRESENTABLE: Duration = Duration::from_secs(86_400);
/// Stream reset / stop code when an inbound frame did not arrive within `rpc_timeout`.
pub const STREAM_CODE_INBOUND_TIMEOUT: u32 = 0x300;
/// Stop code of a request refused on its header (the sender's role may not send its kind):
/// the payload is not read; a request's refusal reply follows on the stream.
pub const STREAM_CODE_REFUSED: u32 = 0x301;
/// Stream reset code of a reply the peer did not read within `rpc_timeout` plus its size at
/// `frame_bytes_per_s_min` (`reply_write_timeouts`).
pub const STREAM_CODE_REPLY_TIMEOUT: u32 = 0x302;
/// Error code of a request the sender's certificate role may not make (the caller gets
/// [`TransportError::PermissionDenied`]).
pub const PERMISSION_DENIED: &str = "permission_denied";
/// Connection close code used by `close()`.
const CLOSE_CODE_SHUTDOWN: u32 = 0;
/// Connection close code when a peer's SPKI pin does not match the expected one.
const CLOSE_CODE_PIN_MISMATCH: u32 = 0x200;
/// Connection close code of a one-shot connection whose single RPC is done (`send_rpc_fresh`).
const CLOSE_CODE_ONE_SHOT_DONE: u32 = 0x201;
/// Connection close code when a reloaded CRL revokes the peer's certificate.
const CLOSE_CODE_REVOKED: u32 = 0x202;
/// Connection close code of an outbound connection dropped because its peer dialled this node
/// again (it restarted, or lost its own connection): see `Inner::peer_dialled_again`.
const CLOSE_CODE_PEER_REDIALLED: u32 = 0x203;
/// Connection close code of a connection beyond `client_connections_max`,
/// `client_connections_per_identity_max` or `admin_connections_max`.
const CLOSE_CODE_CONNECTIONS_FULL: u32 = 0x204;
/// At most one warning per this interval for each connection cap that closed connections.
const CONNECTIONS_FULL_WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Nodes remembered as having dialled this one, at most (then forgotten all at once).
const DIALLED_US_MAX: usize = 4096;

/// After closing our connection to a peer because it dialled again, its next dial within this
/// long answers that close (ours reached it as a dial of our own), not a restart: ignored. So
/// two live nodes that raced each other's closes stop after two connections at most.
const REDIAL_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// What is known of a node that dialled this one.
#[derive(Clone, Copy, Debug, Default)]
struct DialledUs {
    /// It closed its connection to us because we dialled it again (`CLOSE_CODE_PEER_REDIALLED`):
    /// its next dial only replaces that connection.
    closed_ours: bool,
    /// When we last closed our connection to it because it dialled again.
    we_closed_at: Option<Instant>,
}

/// A pooled outbound connection and the SPKI pin its peer presented at the handshake (checked
/// again on every reuse, so a connection dialled without a pin never serves a pinned peer).
#[derive(Clone)]
struct Pooled {
    conn: quinn::Connection,
    peer_pin: Option<SpkiPin>,
    /// When the handshake completed.
    opened_at: Instant,
}

#[derive(Debug, Clone)]
struct PeerEntry {
    /// The address registered for the peer (the cluster's topology).
    addr: SocketAddr,
    expected_pin: Option<SpkiPin>,
    /// Where the peer said it listens (`PEER_ADDRESS`, from that very address), when not
    /// `addr`: a member restarted at another address, before the topology records it. Until
    /// then the only way to reach it, and it may need this node's vote to elect the group 0
    /// leader that records it.
    announced: Option<SocketAddr>,
    /// Notified when the peer's target or pin changes: a send under way to the address it
    /// left gives up at once instead of waiting out the connect timeout there (a peer's frames
    /// go one at a time: one such wait holds up every Raft message behind it).
    moved: Arc<tokio::sync::Notify>,
}

impl PeerEntry {
    /// Where frames to the peer go.
    fn target(&self) -> SocketAddr {
        self.announced.unwrap_or(self.addr)
    }
}

/// A QUIC transport bound to one UDP socket. Cheap to share behind an `Arc`; dropping the last
/// handle closes the endpoint.
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    config: TransportConfig,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    spki_pin: Option<SpkiPin>,
    /// This node's certificate identity; peers of another trust domain are unidentified.
    identity: Option<Identity>,
    refusals: RefusalLog,
    peers: RwLock<HashMap<NodeId, PeerEntry>>,
    conns: Mutex<HashMap<SocketAddr, Pooled>>,
    dial_locks: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    handlers: HandlerRegistry,
    metrics: Metrics,
    closed: AtomicBool,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    /// The credentials in force (CRLs included), the QUIC limits, and the client config dials
    /// use: a CRL reload rebuilds the TLS configs from them (`set_crls`). The client config is
    /// kept here because quinn keeps an endpoint's default client config per handle.
    tls_state: Mutex<TlsState>,
    /// Live inbound connections by `stable_id`, so a CRL reload can close a revoked peer's.
    inbound: Mutex<HashMap<usize, quinn::Connection>>,
    /// The inbound buffer budget every connection of a client or unidentified certificate (or
    /// any peer of an insecure transport) shares (`TransportConfig::inbound_buffer_bytes_max`,
    /// shares per identity); a node's connection has its own.
    client_inbound_budget: Arc<InboundBudget>,
    /// The same, apart, for admin certificates: clients cannot lock the operators out.
    admin_inbound_budget: Arc<InboundBudget>,
    /// One permit per open connection of a client (or unidentified) certificate
    /// (`TransportConfig::client_connections_max`).
    client_connection_slots: Arc<Semaphore>,
    /// Open connections of each client identity (or unidentified key) holding a slot
    /// (`TransportConfig::client_connections_per_identity_max`); no entry at zero.
    identity_connections: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    /// The same for admin certificates (`TransportConfig::admin_connections_max`).
    admin_connection_slots: Arc<Semaphore>,
    /// Warnings about connections closed at a cap, by the cap's name.
    connections_full_warnings: Mutex<nodedb_hostlog::RateLimiter<&'static str>>,
    /// Addresses of nodes that have dialled this node (at most `DIALLED_US_MAX`): a second dial
    /// from one means its process restarted or lost its connection (`peer_dialled`).
    dialled_us: Mutex<HashMap<SocketAddr, DialledUs>>,
    /// The runtime the endpoint lives on: `close`/`drop` may run outside it (e.g. Python's GC),
    /// and re-binding the socket needs its reactor.
    runtime: tokio::runtime::Handle,
}

/// A budget of `inbound_buffer_bytes_max` (with headroom for one maximal frame), with shares of
/// `inbound_identity_bytes_max` per identity if `shared`.
fn inbound_budget(config: &TransportConfig, shared: bool) -> Arc<InboundBudget> {
    Arc::new(InboundBudget::new(
        config.inbound_buffer_bytes_max,
        nodedb_wire::PAYLOAD_BYTES_MAX,
        shared.then_some(config.inbound_identity_bytes_max),
    ))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Transport {
    /// Bind `listen_addr` (port 0 → ephemeral) and start accepting. Must be called inside a tokio
    /// runtime.
    pub fn bind(
        node_id: NodeId,
        listen_addr: SocketAddr,
        credentials: Credentials,
        config: TransportConfig,
    ) -> Result<Transport, TransportError> {
        config
            .validate()
            .map_err(|reason| TransportError::Config { reason })?;
        let metrics = Metrics::default();
        if matches!(credentials, Credentials::Insecure) {
            tracing::warn!(%node_id, %listen_addr, "INSECURE transport: peers are not authenticated");
            INSECURE_TRANSPORTS_TOTAL.fetch_add(1, Ordering::Relaxed);
            Metrics::inc(&metrics.insecure);
        }
        let spki_pin = credentials.spki_pin()?;
        let identity = own_identity(&credentials);
        let quic = Arc::new(tls::QuicConfigs {
            server: Arc::new(quic_transport_config(
                &config,
                config.client_streams_per_connection_max,
            )?),
            client: Arc::new(quic_transport_config(
                &config,
                config.streams_per_connection_max,
            )?),
        });
        let (mut server, client) = tls::build(&credentials, &quic)?;
        server.max_incoming(config.incoming_handshakes_max);
        let mut endpoint_config = endpoint_config(credentials.reset_key_seed());
        endpoint_config
            .max_udp_payload_size(config.udp_payload_bytes_max)
            .map_err(|e| TransportError::Config {
                reason: format!("udp_payload_bytes_max: {e}"),
            })?;
        let bind_err = |e: std::io::Error| TransportError::Bind {
            addr: listen_addr,
            reason: e.to_string(),
        };
        let socket = std::net::UdpSocket::bind(listen_addr).map_err(bind_err)?;
        let sock = socket2::SockRef::from(&socket);
        // Best effort: the kernel caps the size; a smaller buffer costs throughput, not function.
        if let Err(err) = sock
            .set_recv_buffer_size(config.socket_buffer_bytes)
            .and_then(|()| sock.set_send_buffer_size(config.socket_buffer_bytes))
        {
            tracing::warn!(%err, "could not size the UDP socket buffers");
        }
        let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Config {
            reason: "Transport::bind must run inside a tokio runtime".into(),
        })?;
        let mut endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(bind_err)?;
        endpoint.set_default_client_config(client.clone());
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        let inner = Arc::new(Inner {
            node_id,
            client_inbound_budget: inbound_budget(&config, true),
            admin_inbound_budget: inbound_budget(&config, true),
            identity_connections: Arc::default(),
            client_connection_slots: Arc::new(Semaphore::new(
                config.client_connections_max.min(Semaphore::MAX_PERMITS),
            )),
            admin_connection_slots: Arc::new(Semaphore::new(
                config.admin_connections_max.min(Semaphore::MAX_PERMITS),
            )),
            connections_full_warnings: Mutex::new(nodedb_hostlog::RateLimiter::new(
                CONNECTIONS_FULL_WARN_INTERVAL,
                3,
            )),
            config,
            endpoint: endpoint.clone(),
            local_addr,
            spki_pin,
            identity,
            refusals: RefusalLog::default(),
            peers: RwLock::default(),
            conns: Mutex::default(),
            dial_locks: Mutex::default(),
            handlers: HandlerRegistry::default(),
            metrics,
            closed: AtomicBool::new(false),
            accept_task: Mutex::new(None),
            tls_state: Mutex::new(TlsState {
                credentials,
                quic,
                client,
            }),
            inbound: Mutex::default(),
            dialled_us: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        });
        inner.handlers.register(
            MessageKind::PEER_ADDRESS,
            Arc::new(inbound::PeerAddressHandler(Arc::downgrade(&inner))),
        );
        let task = tokio::spawn(accept_loop(Arc::downgrade(&inner), endpoint));
        *lock(&inner.accept_task) = Some(task);
        Ok(Transport { inner })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's SPKI pin (`None` when insecure).
    pub fn spki_pin(&self) -> Option<SpkiPin> {
        self.inner.spki_pin
    }

    /// This node's certificate identity (`None` when insecure).
    pub fn identity(&self) -> Option<&Identity> {
        self.inner.identity.as_ref()
    }

    /// Refused requests: counts by (kind, reason) and the rate-limited lines for the host's log.
    pub fn refusals(&self) -> &RefusalLog {
        &self.inner.refusals
    }

    /// Count and log a refusal decided past the kind table (a handler's own rule, e.g. a Raft
    /// frame whose sender field is not the certificate's node id).
    pub fn record_refusal(&self, peer: &PeerInfo, kind: MessageKind, refusal: Refusal) {
        self.inner.record_refusal(peer, kind, refusal);
    }

    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Put the CRLs `crl_pems` (PEM texts; empty = none) in force, for new handshakes in both
    /// directions and for connections already open: the TLS configs are rebuilt and swapped
    /// into the endpoint, then every live connection (inbound and pooled) whose peer
    /// certificate the new CRLs revoke is closed. Only revoked peers are cut, not all: closing
    /// every connection would fail the Raft and client requests in flight with every other peer
    /// for nothing. Returns how many connections were closed. Invalid CRLs are refused
    /// before anything changes (the CRLs in force stay).
    pub fn set_crls(&self, crl_pems: Vec<String>) -> Result<usize, TransportError> {
        let inner = &self.inner;
        let revoked = revoked_serials(&crl_pems)?;
        {
            let mut state = lock(&inner.tls_state);
            let credentials = state.credentials.with_crl_pems(crl_pems)?;
            let (mut server, client) = tls::build(&credentials, &state.quic)?;
            server.max_incoming(inner.config.incoming_handshakes_max);
            inner.endpoint.set_server_config(Some(server));
            *state = TlsState {
                credentials,
                quic: state.quic.clone(),
                client,
            };
        }
        let is_revoked = |conn: &quinn::Connection| {
            peer_cert(conn)
                .and_then(|der| issuer_and_serial(&der))
                .is_some_and(|key| revoked.contains(&key))
        };
        let mut victims: Vec<quinn::Connection> = lock(&inner.inbound)
            .values()
            .filter(|conn| is_revoked(conn))
            .cloned()
            .collect();
        lock(&inner.conns).retain(|_, pooled| {
            let revoked = is_revoked(&pooled.conn);
            if revoked {
                victims.push(pooled.conn.clone());
            }
            !revoked
        });
        for conn in &victims {
            tracing::warn!(peer = %conn.remote_address(), "closing a connection: the reloaded CRL revokes the peer's certificate");
            conn.close(
                VarInt::from_u32(CLOSE_CODE_REVOKED),
                b"certificate revoked by the cluster CRL",
            );
        }
        Ok(victims.len())
    }

    /// How many CRLs (PEM texts) are in force.
    pub fn crl_count(&self) -> usize {
        lock(&self.inner.tls_state).credentials.crl_pems().len()
    }

    /// Map `node_id` to `addr` (replacing any previous address); with `expected_pin`, a
    /// connection to it is refused unless the peer's certificate has that SPKI pin. The same
    /// registration again keeps the address the peer announced (`PeerEntry::announced`); a
    /// new one drops it.
    pub fn register_peer(&self, node_id: NodeId, addr: SocketAddr, expected_pin: Option<SpkiPin>) {
        let mut peers = self.inner.peers.write().unwrap_or_else(|p| p.into_inner());
        let previous = peers.get(&node_id).cloned();
        let same = previous
            .as_ref()
            .is_some_and(|p| p.addr == addr && p.expected_pin == expected_pin);
        let entry = PeerEntry {
            addr,
            expected_pin,
            announced: previous.as_ref().filter(|_| same).and_then(|p| p.announced),
            moved: previous
                .as_ref()
                .map_or_else(Arc::default, |p| Arc::clone(&p.moved)),
        };
        let target = entry.target();
        peers.insert(node_id, entry);
        drop(peers);
        if let Some(previous) = previous {
            if previous.target() != target || previous.expected_pin != expected_pin {
                previous.moved.notify_waiters();
                self.inner.forget_connection(previous.target(), None);
            }
        }
    }

    /// Dials every registered peer that has no pooled connection, in the background (errors
    /// are ignored: the next send dials again). A restarting node calls it once its peers are
    /// registered: the peers see this node dial them again and drop their connections to its
    /// previous process at once (`Inner::peer_dialled`), instead of sending into them until a
    /// QUIC probe draws a stateless reset, which takes seconds after a crash.
    pub fn dial_peers(&self) {
        let peers: Vec<PeerEntry> = self
            .inner
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for peer in peers {
            let addr = peer.target();
            if self.inner.pooled(addr).is_some() {
                continue;
            }
            let inner = Arc::clone(&self.inner);
            self.inner.runtime.spawn(async move {
                if let Err(err) = inner.connection(addr, peer.expected_pin).await {
                    tracing::debug!(%addr, %err, "dial_peers: not reached");
                }
            });
        }
    }

    pub fn unregister_peer(&self, node_id: NodeId) -> bool {
        self.inner
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node_id)
            .is_some()
    }

    /// Tells every registered peer, in the background, that this node listens at its local
    /// address (`PEER_ADDRESS`): a node restarted at another address, which its peers reach
    /// there before the cluster's topology records it. Errors are ignored (the caller repeats
    /// it until the address is recorded).
    pub fn announce_address(&self) {
        let peers: Vec<NodeId> = self
            .inner
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let here = Bytes::from(self.inner.local_addr.to_string());
        for node_id in peers {
            let (inner, here) = (Arc::clone(&self.inner), here.clone());
            self.inner.runtime.spawn(async move {
                let sent = inner
                    .send_oneway(node_id, MessageKind::PEER_ADDRESS, here, 0)
                    .await;
                if let Err(err) = sent {
                    tracing::debug!(node = node_id.0, %err, "address announcement not sent");
                }
            });
        }
    }

    /// [`Transport::announce_address`] to addresses no registered peer is known at: the seeds of
    /// a node whose peers may all have moved, as when a whole cluster is re-addressed at once
    /// (each node only knows the others' old addresses, and each may now listen at a seed).
    /// Whoever listens there learns where this node listens if it is a member that pinned
    /// this node's key (its `PEER_ADDRESS` handler checks the connection, not the payload).
    pub fn announce_address_to(&self, addrs: &[SocketAddr]) {
        let known: Vec<SocketAddr> = self
            .inner
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(PeerEntry::target)
            .collect();
        let here = Bytes::from(self.inner.local_addr.to_string());
        let timeout = self.inner.config.rpc_timeout;
        for &addr in addrs {
            if addr == self.inner.local_addr || known.contains(&addr) {
                continue;
            }
            let (inner, here) = (Arc::clone(&self.inner), here.clone());
            self.inner.runtime.spawn(async move {
                let send = inner.oneway(addr, None, MessageKind::PEER_ADDRESS, here, 0);
                match tokio::time::timeout(timeout, send).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::debug!(%addr, %err, "address announcement not sent"),
                    Err(_) => tracing::debug!(%addr, "address announcement timed out"),
                }
            });
        }
    }

    /// Where frames to `node_id` go: its registered address, or the one it said it listens at.
    pub fn peer_addr(&self, node_id: NodeId) -> Option<SocketAddr> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node_id)
            .map(PeerEntry::target)
    }

    /// Whether `node_id` is a registered peer, and the SPKI pin registered for it (`None`
    /// outside: not a peer this node knows; `Some(None)`: known, no pin expected).
    pub fn registered_pin(&self, node_id: NodeId) -> Option<Option<SpkiPin>> {
        self.inner.registered_pin(node_id)
    }

    /// Handlers for specific kinds (Rust-side, e.g. Raft 16–31).
    pub fn register_handler(&self, kind: MessageKind, handler: Arc<dyn FrameHandler>) {
        self.inner.handlers.register(kind, handler);
    }

    pub fn unregister_handler(&self, kind: MessageKind) {
        self.inner.handlers.unregister(kind);
    }

    /// The handler of every kind without its own.
    pub fn set_fallback_handler(&self, handler: Option<Arc<dyn FrameHandler>>) {
        self.inner.handlers.set_fallback(handler);
    }

    /// The current fallback handler (for a kind's handler that delegates part of its requests).
    pub fn fallback_handler(&self) -> Option<Arc<dyn FrameHandler>> {
        self.inner.handlers.fallback()
    }

    /// Request/response to a registered peer. An Error reply becomes `TransportError::Remote`.
    pub async fn send_rpc(
        &self,
        node_id: NodeId,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, TransportError> {
        let (peer, moved) = self.inner.watched_peer(node_id)?;
        let rpc = self
            .inner
            .rpc(peer.target(), peer.expected_pin, kind, payload);
        unless_moved(&peer, moved, rpc).await
    }

    /// Request/response to a registered peer bounded by `pace` instead of `rpc_timeout`: the
    /// reply's header by `pace.answer_by`, its payload by its length at the pace's rate (a
    /// large reply is not a slow peer). The caller bounds the whole if it needs to.
    pub async fn send_rpc_paced(
        &self,
        node_id: NodeId,
        kind: MessageKind,
        payload: Bytes,
        pace: RpcPace,
    ) -> Result<OutboundFrame, TransportError> {
        let (peer, moved) = self.inner.watched_peer(node_id)?;
        let rpc = self
            .inner
            .paced_rpc(peer.target(), peer.expected_pin, kind, payload, pace);
        unless_moved(&peer, moved, rpc).await
    }

    /// Request/response to a registered peer whose handler may take `answer_within`, more than
    /// `rpc_timeout` allows (a forwarded host command waits for its apply, up to its caller's
    /// deadline): the reply's header by `answer_within` plus `rpc_timeout` for the network, its
    /// payload at `frame_bytes_per_s_min` after that (`send_rpc_paced`).
    pub async fn send_rpc_within(
        &self,
        node_id: NodeId,
        kind: MessageKind,
        payload: Bytes,
        answer_within: Duration,
    ) -> Result<OutboundFrame, TransportError> {
        let config = &self.inner.config;
        let now = Instant::now();
        let pace = RpcPace {
            // A bound past what an Instant holds (any u64 of ms from a caller) is a day.
            answer_by: now
                .checked_add(answer_within.saturating_add(config.rpc_timeout))
                .unwrap_or(now + ANSWER_WITHIN_UNREPRESENTABLE),
            reply_bytes_per_s: config.frame_bytes_per_s_min as f64,
        };
        self.send_rpc_paced(node_id, kind, payload, pace).await
    }

    /// Request/response to an address (join: the peer has no node id yet).
    pub async fn send_rpc_to_addr(
        &self,
        addr: SocketAddr,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, TransportError> {
        self.inner.rpc(addr, None, kind, payload).await
    }

    /// Request/response to `addr` on a connection of its own: dialled for this request, never
    /// pooled, closed once the reply is read (or dropped with the call). docs/JOIN.md asks a joiner to
    /// send each JoinRequest this way, so no pooled connection (perhaps to a seed that since
    /// restarted) is ever in the path of a join attempt. Connect plus the request are bounded by
    /// `rpc_timeout`; there is no redial (a fresh connection cannot be stale).
    pub async fn send_rpc_fresh(
        &self,
        addr: SocketAddr,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, TransportError> {
        let inner = &self.inner;
        inner
            .bounded_rpc(inner.rpc_fresh(addr, kind, payload))
            .await
    }

    /// One frame on a unidirectional stream, no reply (Raft message batches). Returns once the
    /// frame is handed to QUIC; delivery is QUIC-reliable unless the connection dies.
    pub async fn send_oneway(
        &self,
        node_id: NodeId,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        self.inner.send_oneway(node_id, kind, payload, 0).await
    }

    /// [`Transport::send_oneway`] on a stream of QUIC priority `priority` (default 0): its bytes
    /// go out before those of lower-priority streams already queued on the connection, so a
    /// small frame is not held behind a large one.
    pub async fn send_oneway_prioritized(
        &self,
        node_id: NodeId,
        kind: MessageKind,
        payload: Bytes,
        priority: i32,
    ) -> Result<(), TransportError> {
        self.inner
            .send_oneway(node_id, kind, payload, priority)
            .await
    }

    /// Stable id of the pooled connection to `addr`, if one is open (tests: reuse checks).
    pub fn pooled_connection_id(&self, addr: SocketAddr) -> Option<usize> {
        lock(&self.inner.conns)
            .get(&addr)
            .filter(|p| p.conn.close_reason().is_none())
            .map(|p| p.conn.stable_id())
    }

    /// quinn's statistics of the pooled connection to `addr` (path MTU, RTT, congestion window,
    /// lost packets): diagnostics and benchmarks.
    pub fn connection_stats(&self, addr: SocketAddr) -> Option<quinn::ConnectionStats> {
        lock(&self.inner.conns).get(&addr).map(|p| p.conn.stats())
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let mut snapshot = self.inner.metrics.snapshot();
        snapshot.insert(
            "connections_pooled".into(),
            lock(&self.inner.conns).len() as u64,
        );
        let held = self.inner.client_inbound_budget.held() + self.inner.admin_inbound_budget.held();
        snapshot.insert("inbound_shared_bytes_held".into(), held as u64);
        let held = |slots: &Semaphore, max: usize| {
            max.min(Semaphore::MAX_PERMITS)
                .saturating_sub(slots.available_permits()) as u64
        };
        let (inner, config) = (&self.inner, &self.inner.config);
        snapshot.insert(
            "client_connections".into(),
            held(
                &inner.client_connection_slots,
                config.client_connections_max,
            ),
        );
        snapshot.insert(
            "admin_connections".into(),
            held(&inner.admin_connection_slots, config.admin_connections_max),
        );
        snapshot
    }

    /// Served-latency histograms by kind name (`Metrics::served_histograms`).
    pub fn served_histograms(&self) -> Vec<(&'static str, nodedb_obs::HistogramSnapshot)> {
        self.inner.metrics.served_histograms()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Close every connection and release the UDP port at once (a new transport can bind it as
    /// soon as this returns). Idempotent.
    pub async fn close(&self) {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_CODE_SHUTDOWN), b"transport closed");
        if let Some(task) = lock(&inner.accept_task).take() {
            task.abort();
        }
        lock(&inner.conns).clear();
        // Let the CONNECTION_CLOSE packets leave, but do not wait out the draining period.
        let _ = tokio::time::timeout(inner.config.close_linger, inner.endpoint.wait_idle()).await;
        inner.release_port();
        // Draining connections hold the socket too until they process the rebind event.
        let _ = tokio::time::timeout(inner.config.close_linger, inner.endpoint.wait_idle()).await;
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        let inner = &self.inner;
        if !inner.closed.swap(true, Ordering::AcqRel) {
            inner
                .endpoint
                .close(VarInt::from_u32(CLOSE_CODE_SHUTDOWN), b"transport dropped");
            if let Some(task) = lock(&inner.accept_task).take() {
                task.abort();
            }
            lock(&inner.conns).clear();
            inner.release_port();
        }
    }
}

/// What a CRL reload rebuilds the TLS configs from, and the client config dials use.
struct TlsState {
    credentials: Credentials,
    quic: Arc<tls::QuicConfigs>,
    client: quinn::ClientConfig,
}
