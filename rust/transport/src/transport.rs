//! The transport: one quinn endpoint, a connection pool keyed by peer address, and the inbound
//! accept loop that dispatches frames through the [`HandlerRegistry`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use nodedb_wire::control::ControlMessage;
use nodedb_wire::{ErrorMsg, FrameError, MessageKind, NodeId};
use quinn::VarInt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::config::TransportConfig;
use crate::credentials::{spki_pin_of_cert, Credentials, SpkiPin};
use crate::crl::{issuer_and_serial, revoked_serials};
use crate::error::TransportError;
use crate::handler::{
    FrameHandler, HandlerError, HandlerRegistry, InboundFrame, OutboundFrame, PeerInfo,
};
use crate::identity::{authorize, own_identity, Identity, PeerIdentity, Refusal};
use crate::metrics::{Metrics, MetricsSnapshot, INSECURE_TRANSPORTS_TOTAL};
use crate::refusals::RefusalLog;
use crate::stream::{
    read_frame, read_header, read_payload, write_frame, ReadFrameError, WriteFrameError,
};
use crate::tls;

/// Stream reset / stop code for a malformed frame: `FRAME_ERROR_CODE_BASE + FrameError::number()`.
pub const FRAME_ERROR_CODE_BASE: u32 = 0x100;
/// Stream reset / stop code when an inbound frame did not arrive within `rpc_timeout`.
pub const STREAM_CODE_INBOUND_TIMEOUT: u32 = 0x300;
/// Unit of the per-connection inbound buffer budget (a semaphore permit).
const BUDGET_UNIT_BYTES: usize = 1024;
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
    addr: SocketAddr,
    expected_pin: Option<SpkiPin>,
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
    /// Addresses of nodes that have dialled this node (at most `DIALLED_US_MAX`): a second dial
    /// from one means its process restarted or lost its connection (`peer_dialled`).
    dialled_us: Mutex<HashMap<SocketAddr, DialledUs>>,
    /// The runtime the endpoint lives on: `close`/`drop` may run outside it (e.g. Python's GC),
    /// and re-binding the socket needs its reactor.
    runtime: tokio::runtime::Handle,
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
        let quic = Arc::new(quic_transport_config(&config)?);
        let (mut server, client) = tls::build(&credentials, quic.clone())?;
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
            let (mut server, client) = tls::build(&credentials, state.quic.clone())?;
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
    /// connection to it is refused unless the peer's certificate has that SPKI pin.
    pub fn register_peer(&self, node_id: NodeId, addr: SocketAddr, expected_pin: Option<SpkiPin>) {
        let previous = self
            .inner
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id, PeerEntry { addr, expected_pin });
        if let Some(previous) = previous {
            if previous.addr != addr || previous.expected_pin != expected_pin {
                self.inner.forget_connection(previous.addr, None);
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
            if self.inner.pooled(peer.addr).is_some() {
                continue;
            }
            let inner = Arc::clone(&self.inner);
            self.inner.runtime.spawn(async move {
                if let Err(err) = inner.connection(peer.addr, peer.expected_pin).await {
                    tracing::debug!(addr = %peer.addr, %err, "dial_peers: not reached");
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

    pub fn peer_addr(&self, node_id: NodeId) -> Option<SocketAddr> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node_id)
            .map(|p| p.addr)
    }

    /// Whether `node_id` is a registered peer, and the SPKI pin registered for it (`None`
    /// outside: not a peer this node knows; `Some(None)`: known, no pin expected).
    pub fn registered_pin(&self, node_id: NodeId) -> Option<Option<SpkiPin>> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node_id)
            .map(|p| p.expected_pin)
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
        let peer = self.inner.peer(node_id)?;
        self.inner
            .rpc(peer.addr, peer.expected_pin, kind, payload)
            .await
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
    /// pooled, closed once the reply is read (or dropped with the call). JOIN.md asks a joiner to
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
        let peer = self.inner.peer(node_id)?;
        let inner = &self.inner;
        let timeout = inner.config.rpc_timeout;
        let result = match tokio::time::timeout(timeout, inner.oneway(peer, kind, payload)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout {
                op: "send_oneway",
                timeout,
            }),
        };
        match &result {
            Ok(()) => Metrics::inc(&inner.metrics.oneway_sent),
            Err(err) => inner.metrics.error(err),
        }
        result
    }

    /// TEST/DIAGNOSTIC: write raw `bytes` (not necessarily a frame) on a fresh bidirectional
    /// stream of the pooled connection to `addr` (finishing the stream if `finish`) and read the
    /// answer: `Ok(Ok(frame))`, `Ok(Err(code))` when the peer reset the stream, or an error.
    /// Lets tests prove that garbage or a stalled frame on a live stream is refused without
    /// harming the connection.
    pub async fn send_raw_to_addr(
        &self,
        addr: SocketAddr,
        bytes: Bytes,
        finish: bool,
    ) -> Result<Result<OutboundFrame, u64>, TransportError> {
        let inner = &self.inner;
        let timeout = inner.config.rpc_timeout;
        let attempt = async {
            let (conn, _) = inner.connection(addr, None).await?;
            let lost = |e: quinn::ConnectionError| inner.connection_error(addr, e);
            let (mut send, mut recv) = conn.open_bi().await.map_err(lost)?;
            send.write_all(&bytes)
                .await
                .map_err(|e| write_error(addr, inner, e))?;
            if finish {
                let _ = send.finish();
            }
            match read_frame(&mut recv).await {
                Ok((kind, payload)) => Ok(Ok(OutboundFrame { kind, payload })),
                Err(ReadFrameError::Read(quinn::ReadError::Reset(code))) => {
                    Ok(Err(code.into_inner()))
                }
                Err(ReadFrameError::Read(e)) => Err(read_error(addr, inner, e)),
                Err(ReadFrameError::Frame(e)) => Err(TransportError::Frame(e)),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(TransportError::Timeout {
                op: "send_raw",
                timeout,
            }))
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
        snapshot
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

/// With a seed (mTLS: derived from the node key), the stateless-reset key and the connection-id
/// validation key survive a restart, so the restarted node answers its peers' stale packets with
/// a stateless reset they accept: they drop the dead connection at once and redial.
fn endpoint_config(seed: Option<[u8; 32]>) -> quinn::EndpointConfig {
    let Some(seed) = seed else {
        return quinn::EndpointConfig::default();
    };
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&seed[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    config
}

fn quic_transport_config(
    config: &TransportConfig,
) -> Result<quinn::TransportConfig, TransportError> {
    let mut tc = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|e| TransportError::Config {
            reason: format!("idle_timeout: {e}"),
        })?;
    tc.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .initial_rtt(config.initial_rtt)
        .max_concurrent_bidi_streams(VarInt::from_u32(config.streams_per_connection_max))
        .max_concurrent_uni_streams(VarInt::from_u32(config.streams_per_connection_max))
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window_bytes))
        .receive_window(VarInt::from_u32(config.connection_receive_window_bytes))
        .send_window(config.send_window_bytes)
        .mtu_discovery_config(Some({
            let mut mtud = quinn::MtuDiscoveryConfig::default();
            mtud.upper_bound(config.udp_payload_bytes_max);
            mtud
        }));
    Ok(tc)
}

/// Why one attempt failed, and whether a fresh connection may retry it safely.
enum AttemptError {
    /// The request cannot have been processed (stream never opened, or the peer answered with a
    /// stateless reset: it has no state for the connection, e.g. it restarted).
    Stale(TransportError),
    Fatal(TransportError),
}

impl Inner {
    fn peer(&self, node_id: NodeId) -> Result<PeerEntry, TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node_id)
            .cloned()
            .ok_or(TransportError::UnknownPeer { node_id })
    }

    fn release_port(&self) {
        // Moving the endpoint onto a throwaway socket drops the listening one now; quinn would
        // otherwise hold it until every connection finished draining. quinn keeps the previous
        // socket for stragglers until traffic arrives on the new one, so move twice.
        let _context = self.runtime.enter();
        for _ in 0..2 {
            let throwaway = std::net::UdpSocket::bind(SocketAddr::new(self.local_addr.ip(), 0));
            let result = throwaway.and_then(|socket| self.endpoint.rebind(socket));
            if let Err(err) = result {
                tracing::warn!(%err, "could not release the transport socket early");
            }
        }
    }

    fn connection_error(&self, addr: SocketAddr, err: quinn::ConnectionError) -> TransportError {
        if let Some(reason) = tls::describe_tls_failure(&err) {
            return TransportError::Handshake { addr, reason };
        }
        match err {
            quinn::ConnectionError::LocallyClosed if self.closed.load(Ordering::Acquire) => {
                TransportError::Closed
            }
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(CLOSE_CODE_PIN_MISMATCH) =>
            {
                TransportError::Handshake {
                    addr,
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                }
            }
            quinn::ConnectionError::TimedOut => TransportError::Unreachable {
                addr,
                reason: "no packet from the peer within the idle timeout".into(),
            },
            quinn::ConnectionError::Reset => TransportError::Unreachable {
                addr,
                reason: "the peer reset the connection (it restarted or lost its state)".into(),
            },
            other => TransportError::Unreachable {
                addr,
                reason: other.to_string(),
            },
        }
    }

    /// The pooled connection to `addr`, dialling (once, even under concurrent callers) if there is
    /// none. The bool says whether it was reused.
    async fn connection(
        self: &Inner,
        addr: SocketAddr,
        expected_pin: Option<SpkiPin>,
    ) -> Result<(quinn::Connection, bool), TransportError> {
        if let Some(pooled) = self.pooled(addr) {
            return check_pin(addr, expected_pin, pooled.peer_pin).map(|()| (pooled.conn, true));
        }
        let dial_lock = lock(&self.dial_locks).entry(addr).or_default().clone();
        let dialled = {
            let _dialing = dial_lock.lock().await;
            match self.pooled(addr) {
                Some(pooled) => Ok((pooled, true)),
                None => self.dial(addr).await.map(|pooled| (pooled, false)),
            }
        };
        // The map's entry and ours: nobody else is waiting, so the lock can go.
        if Arc::strong_count(&dial_lock) <= 2 {
            lock(&self.dial_locks).remove(&addr);
        }
        let (pooled, reused) = dialled?;
        if let Err(err) = check_pin(addr, expected_pin, pooled.peer_pin) {
            if !reused {
                pooled.conn.close(
                    VarInt::from_u32(CLOSE_CODE_PIN_MISMATCH),
                    err.to_string().as_bytes(),
                );
                self.forget_connection(addr, Some(pooled.conn.stable_id()));
            }
            return Err(err);
        }
        Ok((pooled.conn, reused))
    }

    /// Open a new connection to `addr` and put it in the pool.
    async fn dial(&self, addr: SocketAddr) -> Result<Pooled, TransportError> {
        let pooled = self.connect(addr).await?;
        lock(&self.conns).insert(addr, pooled.clone());
        Ok(pooled)
    }

    /// Open a new connection to `addr` (bounded by `connect_timeout`), outside the pool.
    async fn connect(&self, addr: SocketAddr) -> Result<Pooled, TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let server_name = addr.ip().to_string();
        let client_config = lock(&self.tls_state).client.clone();
        let connecting = self
            .endpoint
            .connect_with(client_config, addr, &server_name)
            .map_err(|e| match e {
                quinn::ConnectError::EndpointStopping => TransportError::Closed,
                other => TransportError::Unreachable {
                    addr,
                    reason: other.to_string(),
                },
            })?;
        let timeout = self.config.connect_timeout;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => return Err(self.connection_error(addr, err)),
            Err(_) => {
                return Err(TransportError::Timeout {
                    op: "connect",
                    timeout,
                })
            }
        };
        Metrics::inc(&self.metrics.connections_opened);
        Ok(Pooled {
            peer_pin: peer_pin(&conn),
            conn,
            opened_at: Instant::now(),
        })
    }

    /// One request on a connection dialled for it alone, closed when the reply is in (dropping
    /// the future, e.g. at the caller's timeout, drops the last handle, which closes it too).
    async fn rpc_fresh(
        &self,
        addr: SocketAddr,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, TransportError> {
        let fresh = self.connect(addr).await?;
        let result = self.rpc_once(addr, &fresh.conn, kind, payload).await;
        fresh.conn.close(
            VarInt::from_u32(CLOSE_CODE_ONE_SHOT_DONE),
            b"one-shot rpc done",
        );
        match result {
            Ok(frame) => reply_or_remote(frame),
            Err(AttemptError::Stale(err) | AttemptError::Fatal(err)) => Err(err),
        }
    }

    fn pooled(&self, addr: SocketAddr) -> Option<Pooled> {
        let mut conns = lock(&self.conns);
        match conns.get(&addr) {
            Some(pooled) if pooled.conn.close_reason().is_none() => Some(pooled.clone()),
            Some(_) => {
                // Dead: replaced on this use.
                conns.remove(&addr);
                None
            }
            None => None,
        }
    }

    /// A node (a node certificate, or anyone on an insecure transport) at `peer.addr` completed a
    /// handshake that began at `dial_started`. Nodes dial from their listening socket and keep
    /// one pooled connection per peer, so a second dial from the same address means its process
    /// restarted, or its connection to us died. Either way our pooled connection to it is most
    /// likely dead too, and after a crash it may stay so for seconds: packets to a dead process
    /// are lost, QUIC backs its probes off exponentially, and only the next probe draws the
    /// restarted process's stateless reset. Meanwhile everything sent there is lost: a
    /// restarted Raft follower hears no leader and no candidate, and an election that needs its
    /// vote waits (issue 13, failover tail). So that connection is closed now (which also fails
    /// a send blocked on it) and the next send dials the new process. Kept: a connection we
    /// opened after the peer began this dial (it is to the new process), and any connection when
    /// this dial answers our own such close (`CLOSE_CODE_PEER_REDIALLED` reached the peer: the
    /// connection was alive, and the peer only dialled again because we closed it; acting on
    /// it would start a ping-pong of closes).
    fn peer_dialled(&self, peer: &PeerInfo, dial_started: Instant) {
        let node_peer = matches!(*peer.identity, PeerIdentity::Unauthenticated)
            || peer.identity.node_id().is_some();
        if !node_peer {
            return;
        }
        let again = {
            let mut dialled = lock(&self.dialled_us);
            if dialled.len() >= DIALLED_US_MAX && !dialled.contains_key(&peer.addr) {
                dialled.clear(); // a bound, not a policy: a forgotten dialler is seen anew
            }
            match dialled.get_mut(&peer.addr) {
                None => {
                    dialled.insert(peer.addr, DialledUs::default());
                    false
                }
                Some(known) => {
                    let answers_ours = std::mem::take(&mut known.closed_ours)
                        || known.we_closed_at.is_some_and(|at| {
                            dial_started.saturating_duration_since(at) < REDIAL_QUIET
                        });
                    if !answers_ours {
                        known.we_closed_at = Some(Instant::now());
                    }
                    !answers_ours
                }
            }
        };
        if again {
            self.peer_dialled_again(peer.addr, dial_started);
        }
    }

    /// The peer at `addr` closed its connection to us because we dialled it again: the
    /// connection was alive, so its next dial is no sign of a restart.
    fn peer_closed_on_our_redial(&self, addr: SocketAddr) {
        if let Some(known) = lock(&self.dialled_us).get_mut(&addr) {
            known.closed_ours = true;
        }
    }

    fn peer_dialled_again(&self, addr: SocketAddr, dial_started: Instant) {
        let stale = {
            let mut conns = lock(&self.conns);
            match conns.get(&addr) {
                Some(pooled) if pooled.opened_at < dial_started => conns.remove(&addr),
                _ => None,
            }
        };
        if let Some(stale) = stale {
            Metrics::inc(&self.metrics.connections_replaced_on_redial);
            tracing::debug!(%addr, "peer dialled again: dropping our connection to it");
            stale.conn.close(
                VarInt::from_u32(CLOSE_CODE_PEER_REDIALLED),
                b"peer dialled again",
            );
        }
    }

    /// Drop the pooled connection to `addr` (only if it is still `stable_id`, when given).
    fn forget_connection(&self, addr: SocketAddr, stable_id: Option<usize>) {
        let mut conns = lock(&self.conns);
        if let Some(pooled) = conns.get(&addr) {
            if stable_id.is_none_or(|id| pooled.conn.stable_id() == id) {
                conns.remove(&addr);
            }
        }
    }

    async fn rpc(
        &self,
        addr: SocketAddr,
        expected_pin: Option<SpkiPin>,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, TransportError> {
        self.bounded_rpc(self.rpc_attempts(addr, expected_pin, kind, payload))
            .await
    }

    /// One request, refused once closed, bounded by `rpc_timeout` as a whole, counted.
    async fn bounded_rpc(
        &self,
        request: impl std::future::Future<Output = Result<OutboundFrame, TransportError>>,
    ) -> Result<OutboundFrame, TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let timeout = self.config.rpc_timeout;
        let result = match tokio::time::timeout(timeout, request).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { op: "rpc", timeout }),
        };
        match &result {
            Ok(_) => Metrics::inc(&self.metrics.rpcs_sent),
            Err(err) => self.metrics.error(err),
        }
        result
    }

    async fn rpc_attempts(
        &self,
        addr: SocketAddr,
        expected_pin: Option<SpkiPin>,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, TransportError> {
        // At most two attempts: a stale pooled connection is replaced once.
        let (mut conn, mut reused) = self.connection(addr, expected_pin).await?;
        for attempt in 0..2 {
            match self.rpc_once(addr, &conn, kind, payload.clone()).await {
                Ok(frame) => return reply_or_remote(frame),
                Err(AttemptError::Stale(err)) if reused && attempt == 0 => {
                    tracing::debug!(%addr, %err, "stale connection, redialling once");
                    self.forget_connection(addr, Some(conn.stable_id()));
                    (conn, reused) = self.connection(addr, expected_pin).await?;
                }
                Err(AttemptError::Stale(err) | AttemptError::Fatal(err)) => {
                    if conn.close_reason().is_some() {
                        self.forget_connection(addr, Some(conn.stable_id()));
                    }
                    return Err(err);
                }
            }
        }
        Err(TransportError::Unreachable {
            addr,
            reason: "connection lost twice".into(),
        })
    }

    async fn rpc_once(
        &self,
        addr: SocketAddr,
        conn: &quinn::Connection,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, AttemptError> {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| AttemptError::Stale(self.connection_error(addr, e)))?;
        if let Err(err) = write_frame(&mut send, kind, payload).await {
            return Err(match err {
                WriteFrameError::Frame(e) => AttemptError::Fatal(TransportError::Frame(e)),
                WriteFrameError::Write(quinn::WriteError::ConnectionLost(
                    quinn::ConnectionError::Reset,
                )) => {
                    AttemptError::Stale(self.connection_error(addr, quinn::ConnectionError::Reset))
                }
                WriteFrameError::Write(e) => AttemptError::Fatal(write_error(addr, self, e)),
            });
        }
        match read_frame(&mut recv).await {
            Ok((kind, payload)) => Ok(OutboundFrame { kind, payload }),
            Err(ReadFrameError::Frame(e)) => Err(AttemptError::Fatal(TransportError::Frame(e))),
            Err(ReadFrameError::Read(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::Reset,
            ))) => Err(AttemptError::Stale(
                self.connection_error(addr, quinn::ConnectionError::Reset),
            )),
            Err(ReadFrameError::Read(e)) => Err(AttemptError::Fatal(read_error(addr, self, e))),
        }
    }

    async fn oneway(
        &self,
        peer: PeerEntry,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        let addr = peer.addr;
        let (mut conn, reused) = self.connection(addr, peer.expected_pin).await?;
        let mut send = match conn.open_uni().await {
            Ok(send) => send,
            Err(err) if reused => {
                tracing::debug!(%addr, %err, "stale connection, redialling once");
                self.forget_connection(addr, Some(conn.stable_id()));
                conn = self.connection(addr, peer.expected_pin).await?.0;
                conn.open_uni()
                    .await
                    .map_err(|e| self.connection_error(addr, e))?
            }
            Err(err) => return Err(self.connection_error(addr, err)),
        };
        write_frame(&mut send, kind, payload)
            .await
            .map_err(|err| match err {
                WriteFrameError::Frame(e) => TransportError::Frame(e),
                WriteFrameError::Write(e) => write_error(addr, self, e),
            })
    }

    /// Read one frame from an inbound stream within `rpc_timeout`, reserving its payload size in
    /// the connection's buffer `budget` (held by the returned permit until the caller is done).
    /// A malformed frame is counted and the stream reset; so is one that does not arrive in time.
    async fn read_inbound(
        &self,
        peer: &PeerInfo,
        budget: &Arc<Semaphore>,
        recv: &mut quinn::RecvStream,
        send: Option<&mut quinn::SendStream>,
    ) -> Option<(MessageKind, Bytes, OwnedSemaphorePermit)> {
        let read = async {
            let header = read_header(recv).await?;
            let units = header.payload_bytes.div_ceil(BUDGET_UNIT_BYTES);
            // Cannot fail: the semaphore is never closed and units ≤ the budget (validated).
            let permit = budget
                .clone()
                .acquire_many_owned(u32::try_from(units).unwrap_or(u32::MAX))
                .await;
            let payload = read_payload(recv, &header).await?;
            Ok::<_, ReadFrameError>((header.kind, payload, permit))
        };
        let outcome = tokio::time::timeout(self.config.rpc_timeout, read).await;
        let reset =
            |code: VarInt, recv: &mut quinn::RecvStream, send: Option<&mut quinn::SendStream>| {
                Metrics::inc(&self.metrics.streams_reset);
                let _ = recv.stop(code);
                if let Some(send) = send {
                    let _ = send.reset(code);
                }
            };
        match outcome {
            Ok(Ok((kind, payload, Ok(permit)))) => Some((kind, payload, permit)),
            Ok(Ok((_, _, Err(closed)))) => {
                tracing::error!(peer = %peer.addr, %closed, "inbound budget closed");
                None
            }
            Ok(Err(ReadFrameError::Frame(err))) => {
                self.metrics.decode_error(&err);
                tracing::warn!(peer = %peer.addr, code = err.code(), %err, "malformed frame; stream reset");
                reset(frame_error_code(&err), recv, send);
                None
            }
            Ok(Err(ReadFrameError::Read(err))) => {
                tracing::debug!(peer = %peer.addr, %err, "inbound stream lost before a full frame");
                None
            }
            Err(_) => {
                Metrics::inc(&self.metrics.inbound_stream_timeouts);
                tracing::warn!(peer = %peer.addr, "inbound frame not received within the rpc timeout; stream reset");
                reset(VarInt::from_u32(STREAM_CODE_INBOUND_TIMEOUT), recv, send);
                None
            }
        }
    }

    async fn dispatch(
        &self,
        peer: PeerInfo,
        kind: MessageKind,
        payload: Bytes,
        oneway: bool,
    ) -> Result<Option<OutboundFrame>, HandlerError> {
        if let Err(refusal) = authorize(&peer.identity, kind) {
            let error = HandlerError::new(PERMISSION_DENIED, refusal.message.clone());
            self.record_refusal(&peer, kind, refusal);
            return Err(error);
        }
        let Some(handler) = self.handlers.get(kind) else {
            return Err(HandlerError::new(
                "no_handler",
                format!("no handler for {kind}"),
            ));
        };
        let timeout = self.config.rpc_timeout;
        let frame = InboundFrame {
            peer,
            kind,
            payload,
            oneway,
        };
        match tokio::time::timeout(timeout, handler.handle(frame)).await {
            Ok(result) => result,
            Err(_) => Err(HandlerError::new(
                "handler_timeout",
                format!(
                    "handler for {kind} did not answer within {} ms",
                    timeout.as_millis()
                ),
            )),
        }
    }

    fn record_refusal(&self, peer: &PeerInfo, kind: MessageKind, refusal: Refusal) {
        Metrics::inc(&self.metrics.requests_refused);
        self.refusals.record(
            peer.identity.to_string(),
            peer.addr,
            kind,
            refusal.reason,
            refusal.message,
        );
    }

    async fn serve_bi(
        &self,
        peer: PeerInfo,
        budget: Arc<Semaphore>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let Some((kind, payload, _reserved)) = self
            .read_inbound(&peer, &budget, &mut recv, Some(&mut send))
            .await
        else {
            return;
        };
        Metrics::inc(&self.metrics.rpcs_received);
        let reply = match self.dispatch(peer.clone(), kind, payload, false).await {
            Ok(Some(reply)) => reply,
            Ok(None) => error_frame(&HandlerError::new(
                "no_reply",
                format!("handler for {kind} gave no reply"),
            )),
            Err(err) => {
                Metrics::inc(&self.metrics.handler_errors);
                error_frame(&err)
            }
        };
        if let Err(err) = write_frame(&mut send, reply.kind, reply.payload).await {
            tracing::debug!(peer = %peer.addr, ?err, "could not send the reply");
        }
    }

    async fn serve_uni(&self, peer: PeerInfo, budget: Arc<Semaphore>, mut recv: quinn::RecvStream) {
        let Some((kind, payload, _reserved)) =
            self.read_inbound(&peer, &budget, &mut recv, None).await
        else {
            return;
        };
        Metrics::inc(&self.metrics.oneway_received);
        match self.dispatch(peer.clone(), kind, payload, true).await {
            Ok(_) => {}
            Err(err) => {
                Metrics::inc(&self.metrics.handler_errors);
                tracing::warn!(peer = %peer.addr, %kind, %err, "one-way handler failed");
            }
        }
    }
}

fn frame_error_code(err: &FrameError) -> VarInt {
    VarInt::from_u32(FRAME_ERROR_CODE_BASE + err.number())
}

fn reply_or_remote(frame: OutboundFrame) -> Result<OutboundFrame, TransportError> {
    if frame.kind != MessageKind::ERROR {
        return Ok(frame);
    }
    match ErrorMsg::from_msgpack(&frame.payload) {
        Ok(msg) if msg.code == PERMISSION_DENIED => Err(TransportError::PermissionDenied {
            message: msg.message,
        }),
        Ok(msg) => Err(TransportError::Remote {
            code: msg.code,
            message: msg.message,
        }),
        Err(err) => Err(TransportError::Remote {
            code: "undecodable_error".into(),
            message: err.to_string(),
        }),
    }
}

fn error_frame(err: &HandlerError) -> OutboundFrame {
    let msg = ErrorMsg {
        code: err.code.clone(),
        message: err.message.clone(),
    };
    // Two strings always encode; fall back to an empty payload rather than panic.
    let payload = msg.to_msgpack().unwrap_or_default();
    OutboundFrame {
        kind: MessageKind::ERROR,
        payload: Bytes::from(payload),
    }
}

fn write_error(addr: SocketAddr, inner: &Inner, err: quinn::WriteError) -> TransportError {
    match err {
        quinn::WriteError::ConnectionLost(e) => inner.connection_error(addr, e),
        quinn::WriteError::Stopped(code) => stream_code_error(addr, code),
        other => TransportError::Unreachable {
            addr,
            reason: other.to_string(),
        },
    }
}

fn read_error(addr: SocketAddr, inner: &Inner, err: quinn::ReadError) -> TransportError {
    match err {
        quinn::ReadError::ConnectionLost(e) => inner.connection_error(addr, e),
        quinn::ReadError::Reset(code) => stream_code_error(addr, code),
        other => TransportError::Unreachable {
            addr,
            reason: other.to_string(),
        },
    }
}

fn stream_code_error(addr: SocketAddr, code: VarInt) -> TransportError {
    let code = code.into_inner();
    let frame_code = code
        .checked_sub(u64::from(FRAME_ERROR_CODE_BASE))
        .and_then(|n| u32::try_from(n).ok())
        .and_then(FrameError::code_for_number);
    if code == u64::from(STREAM_CODE_INBOUND_TIMEOUT) {
        return TransportError::Unreachable {
            addr,
            reason: "the peer gave up waiting for our frame within its rpc timeout".into(),
        };
    }
    match frame_code {
        Some(code) => TransportError::PeerRejectedFrame { addr, code },
        None => TransportError::Unreachable {
            addr,
            reason: format!("peer reset the stream (code {code})"),
        },
    }
}

/// Refuse a peer whose SPKI pin is not the expected one (no expectation: anything goes).
fn check_pin(
    addr: SocketAddr,
    expected: Option<SpkiPin>,
    found: Option<SpkiPin>,
) -> Result<(), TransportError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if found == Some(expected) {
        return Ok(());
    }
    let reason = match found {
        Some(found) => format!("peer SPKI pin {found} does not match the expected {expected}"),
        None => format!("peer presented no certificate; expected SPKI pin {expected}"),
    };
    Err(TransportError::Handshake { addr, reason })
}

fn peer_pin(conn: &quinn::Connection) -> Option<SpkiPin> {
    spki_pin_of_cert(&peer_cert(conn)?).ok()
}

/// The leaf the peer presented (verified against the CA by the handshake); `None` when insecure.
fn peer_cert(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(certs.first()?.to_vec())
}

/// What a CRL reload rebuilds the TLS configs from, and the client config dials use.
struct TlsState {
    credentials: Credentials,
    quic: Arc<quinn::TransportConfig>,
    client: quinn::ClientConfig,
}

/// An inbound connection's entry in `Inner::inbound`, removed when its serving task ends.
struct InboundTracked {
    inner: std::sync::Weak<Inner>,
    id: usize,
}

impl InboundTracked {
    fn new(inner: &Arc<Inner>, conn: &quinn::Connection) -> InboundTracked {
        let id = conn.stable_id();
        lock(&inner.inbound).insert(id, conn.clone());
        InboundTracked {
            inner: Arc::downgrade(inner),
            id,
        }
    }
}

impl Drop for InboundTracked {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            lock(&inner.inbound).remove(&self.id);
        }
    }
}

async fn accept_loop(inner: std::sync::Weak<Inner>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(inner) = inner.upgrade() else { break };
        tokio::spawn(async move { serve_connection(inner, incoming).await });
    }
}

async fn serve_connection(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let dial_started = Instant::now();
    let timeout = inner.config.connect_timeout;
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            Metrics::inc(&inner.metrics.inbound_handshake_failures);
            let reason = tls::describe_tls_failure(&err).unwrap_or_else(|| err.to_string());
            tracing::warn!(peer = %remote, %reason, "inbound handshake failed");
            return;
        }
        Err(_) => {
            Metrics::inc(&inner.metrics.inbound_handshake_failures);
            tracing::warn!(peer = %remote, "inbound handshake timed out");
            return;
        }
    };
    Metrics::inc(&inner.metrics.connections_accepted);
    let _tracked = InboundTracked::new(&inner, &conn);
    let cert = peer_cert(&conn);
    let trust_domain = inner.identity.as_ref().map(|id| id.trust_domain.as_str());
    let peer = PeerInfo {
        addr: conn.remote_address(),
        spki_pin: cert.as_ref().and_then(|der| spki_pin_of_cert(der).ok()),
        identity: Arc::new(PeerIdentity::of_peer_cert(cert.as_deref(), trust_domain)),
    };
    inner.peer_dialled(&peer, dial_started);
    let budget_units = inner.config.inbound_buffer_bytes_max / BUDGET_UNIT_BYTES;
    let budget = Arc::new(Semaphore::new(budget_units.min(Semaphore::MAX_PERMITS)));
    // Holding only a weak reference between streams lets a dropped transport shut down.
    let weak = Arc::downgrade(&inner);
    drop(inner);
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let Some(inner) = weak.upgrade() else { break };
                    let (peer, budget) = (peer.clone(), budget.clone());
                    tokio::spawn(async move { inner.serve_bi(peer, budget, send, recv).await });
                }
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let Some(inner) = weak.upgrade() else { break };
                    let (peer, budget) = (peer.clone(), budget.clone());
                    tokio::spawn(async move { inner.serve_uni(peer, budget, recv).await });
                }
                Err(_) => break,
            },
        }
    }
    if let Some(quinn::ConnectionError::ApplicationClosed(close)) = conn.close_reason() {
        if close.error_code == VarInt::from_u32(CLOSE_CODE_PEER_REDIALLED) {
            if let Some(inner) = weak.upgrade() {
                inner.peer_closed_on_our_redial(peer.addr);
            }
        }
    }
}
