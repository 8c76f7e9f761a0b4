//! Accepting connections and serving their streams: read, authorize, dispatch, answer.

use super::*;
use nodedb_wire::Role;

/// What reading an inbound stream gave.
enum Inbound {
    /// A whole frame, its payload held in the connection's budget by the charge.
    Frame(MessageKind, Bytes, FrameCharge),
    /// A kind the peer's role may not send, refused on its header: nothing of the payload was
    /// read or reserved.
    Refused(MessageKind, Refusal),
}

impl Inner {
    /// See [`Transport::registered_pin`].
    pub(super) fn registered_pin(&self, node_id: NodeId) -> Option<Option<SpkiPin>> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node_id)
            .map(|p| p.expected_pin)
    }

    /// Whether `peer` is a member: a node certificate of a node this node registered,
    /// presenting the key the topology pinned for it. Only a member's connection is a node's
    /// (no slot, every stream, a budget of its own, a frame's time for its size); any other
    /// node certificate (never admitted, retired, another key) is held to a client's bounds
    /// (attack probe, session 31: a stray node certificate held 1,500 connections, and its
    /// stalled uploads 550 MiB, none of them counted or reset). A connection keeps the class it
    /// was accepted with: a member's first connection made before it was registered here is a
    /// client's until replaced.
    pub(super) fn is_member(&self, peer: &PeerInfo) -> bool {
        let Some(node) = peer.identity.node_id() else {
            return false;
        };
        match self.registered_pin(NodeId(node)) {
            None => false,
            Some(None) => true,
            Some(Some(pin)) => peer.spki_pin == Some(pin),
        }
    }

    /// A slot for a connection of a client or unidentified certificate (among
    /// `client_connections_max`, and among `client_connections_per_identity_max` of its
    /// identity) or of an admin one (among `admin_connections_max`); `Ok(None)` for a member or
    /// an insecure peer (not counted); `Err` with the cap's name and size when all of that
    /// kind are taken.
    fn connection_slot(
        &self,
        peer: &PeerInfo,
        member: bool,
    ) -> Result<Option<ConnectionSlot>, (&'static str, usize)> {
        let admin = match &*peer.identity {
            PeerIdentity::Unauthenticated => return Ok(None),
            _ if member => return Ok(None),
            PeerIdentity::Verified(id) => id.role == Role::Admin,
            PeerIdentity::Unidentified(_) => false,
        };
        let config = &self.config;
        let (slots, cap) = if admin {
            (
                &self.admin_connection_slots,
                ("admin_connections_max", config.admin_connections_max),
            )
        } else {
            (
                &self.client_connection_slots,
                ("client_connections_max", config.client_connections_max),
            )
        };
        let permit = Arc::clone(slots).try_acquire_owned().map_err(|_| cap)?;
        let identity = match fair_share_key(peer) {
            Some(key) if !admin => {
                let max = config.client_connections_per_identity();
                let slot = IdentitySlot::take(&self.identity_connections, key, max)
                    .ok_or(("client_connections_per_identity_max", max))?;
                Some(slot)
            }
            _ => None,
        };
        Ok(Some(ConnectionSlot {
            _permit: permit,
            _identity: identity,
        }))
    }

    /// Closes a connection beyond its cap (its peer reads the reason); warns at most once per
    /// `CONNECTIONS_FULL_WARN_INTERVAL`, with the count since.
    fn refuse_connection_full(
        &self,
        conn: &quinn::Connection,
        peer: &PeerInfo,
        (cap, max): (&'static str, usize),
    ) {
        Metrics::inc(&self.metrics.inbound_connections_refused_full);
        let whose = if cap == "client_connections_per_identity_max" {
            "one certificate"
        } else {
            "this certificate role"
        };
        let reason = format!(
            "this node serves at most {max} connections of {whose} at once ({cap}); try again \
             later or another node"
        );
        conn.close(
            VarInt::from_u32(CLOSE_CODE_CONNECTIONS_FULL),
            reason.as_bytes(),
        );
        let admitted = lock(&self.connections_full_warnings).admit(cap, Instant::now());
        if let Some(left_out) = admitted {
            tracing::warn!(
                peer = %peer.identity, addr = %peer.addr, left_out, max,
                "connection refused: {max} are open ({cap})"
            );
        }
    }

    /// Read one frame from an inbound stream within `rpc_timeout`, charging its payload in the
    /// connection's buffer `budget` as its bytes arrive (held by the returned charge until the
    /// caller drops it). A malformed frame is counted and the stream reset; so is one that
    /// does not arrive in time. A kind the peer's role may not send is refused on its header
    /// (`authorize`, the kind table's senders): the payload is neither charged nor read, the
    /// refusal is recorded, and a request gets its `PERMISSION_DENIED` reply.
    pub(super) async fn read_inbound(
        &self,
        peer: &PeerInfo,
        budget: &BudgetShare,
        recv: &mut quinn::RecvStream,
        send: Option<&mut quinn::SendStream>,
    ) -> Option<(MessageKind, Bytes, FrameCharge)> {
        // The header within `rpc_timeout`; the payload (its bytes, and room for them in the
        // budget as they arrive) within that too, or, from a member, within the frame's timeout
        // for the size the header announced: a member's connection has a budget of its own, while
        // every other certificate shares one that a slow stream must not hold for long.
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(self.config.rpc_timeout, read_header(recv)).await {
            Err(late) => Err(late),
            Ok(Err(err)) => Ok(Err(err)),
            Ok(Ok(header)) => match authorize(&peer.identity, header.kind).and_then(|()| {
                authorize_member(&peer.identity, peer.spki_pin, header.kind, |node| {
                    self.registered_pin(NodeId(node))
                })
            }) {
                Err(refusal) => Ok(Ok(Inbound::Refused(header.kind, refusal))),
                Ok(()) => {
                    let by = started
                        + if budget.member {
                            self.config.frame_timeout(header.payload_bytes)
                        } else {
                            self.config.rpc_timeout
                        };
                    let rest = async {
                        let mut charge = budget
                            .budget
                            .frame(budget.identity.clone(), header.payload_bytes);
                        let payload = read_payload_charged(recv, &header, &mut charge).await?;
                        Ok::<_, ReadFrameError>(Inbound::Frame(header.kind, payload, charge))
                    };
                    tokio::time::timeout_at(by, rest).await
                }
            },
        };
        let reset =
            |code: VarInt, recv: &mut quinn::RecvStream, send: Option<&mut quinn::SendStream>| {
                Metrics::inc(&self.metrics.streams_reset);
                let _ = recv.stop(code);
                if let Some(send) = send {
                    let _ = send.reset(code);
                }
            };
        match outcome {
            Ok(Ok(Inbound::Frame(kind, payload, charge))) => Some((kind, payload, charge)),
            Ok(Ok(Inbound::Refused(kind, refusal))) => {
                let error = HandlerError::new(PERMISSION_DENIED, refusal.message.clone());
                self.record_refusal(peer, kind, refusal);
                let _ = recv.stop(VarInt::from_u32(STREAM_CODE_REFUSED));
                if let Some(send) = send {
                    self.write_reply(peer, send, error_frame(&error)).await;
                }
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

    /// Write a reply within `rpc_timeout` plus its size at `frame_bytes_per_s_min`
    /// (`TransportConfig::frame_timeout`); a peer that does not read it by then has the stream
    /// reset with `STREAM_CODE_REPLY_TIMEOUT` (counted), and the reply is dropped.
    async fn write_reply(
        &self,
        peer: &PeerInfo,
        send: &mut quinn::SendStream,
        reply: OutboundFrame,
    ) {
        let limit = self.config.frame_timeout(reply.payload.len());
        match tokio::time::timeout(limit, write_frame(send, reply.kind, reply.payload)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(peer = %peer.addr, ?err, "could not send the reply"),
            Err(_) => {
                Metrics::inc(&self.metrics.reply_write_timeouts);
                Metrics::inc(&self.metrics.streams_reset);
                let _ = send.reset(VarInt::from_u32(STREAM_CODE_REPLY_TIMEOUT));
                tracing::debug!(peer = %peer.addr, ?limit, "reply not read within its bound; stream reset");
            }
        }
    }

    pub(super) async fn dispatch(
        &self,
        peer: PeerInfo,
        kind: MessageKind,
        payload: Bytes,
        oneway: bool,
    ) -> Result<Option<OutboundFrame>, HandlerError> {
        let Some(handler) = self.handlers.get(kind) else {
            return Err(HandlerError::new(
                "no_handler",
                format!("no handler for {kind}"),
            ));
        };
        let timeout = handler
            .answer_within()
            .map_or(self.config.rpc_timeout, |own| {
                own.saturating_add(self.config.rpc_timeout)
            });
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

    pub(super) fn record_refusal(&self, peer: &PeerInfo, kind: MessageKind, refusal: Refusal) {
        Metrics::inc(&self.metrics.requests_refused);
        self.refusals.record(
            peer.identity.to_string(),
            peer.addr,
            kind,
            refusal.reason,
            refusal.message,
        );
    }

    pub(super) async fn serve_bi(
        &self,
        peer: PeerInfo,
        budget: BudgetShare,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let Some((kind, payload, charge)) = self
            .read_inbound(&peer, &budget, &mut recv, Some(&mut send))
            .await
        else {
            return;
        };
        Metrics::inc(&self.metrics.rpcs_received);
        let started = std::time::Instant::now();
        let answer = self.dispatch(peer.clone(), kind, payload, false).await;
        drop(charge); // the request's bytes are handled: not held while the reply is written
        let reply = match answer {
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
        self.write_reply(&peer, &mut send, reply).await;
        self.metrics.served(kind, started);
    }

    pub(super) async fn serve_uni(
        &self,
        peer: PeerInfo,
        budget: BudgetShare,
        mut recv: quinn::RecvStream,
    ) {
        let Some((kind, payload, charge)) =
            self.read_inbound(&peer, &budget, &mut recv, None).await
        else {
            return;
        };
        Metrics::inc(&self.metrics.oneway_received);
        let started = std::time::Instant::now();
        let result = self.dispatch(peer.clone(), kind, payload, true).await;
        drop(charge);
        self.metrics.served(kind, started);
        if let Err(err) = result {
            Metrics::inc(&self.metrics.handler_errors);
            tracing::warn!(peer = %peer.addr, %kind, %err, "one-way handler failed");
        }
    }
}

/// The inbound budget a connection's frames are charged to, and the share they count in.
#[derive(Clone)]
pub(super) struct BudgetShare {
    budget: Arc<InboundBudget>,
    identity: Option<Arc<str>>,
    /// A member's connection (`Inner::is_member`, decided once as it was accepted): a budget
    /// of its own, and a frame's time for its size.
    member: bool,
}

/// Whose share a peer's frames and connections count in: its certificate identity (its URI),
/// or for a certificate without one its key; `None` on an insecure transport (nobody is
/// identified).
fn fair_share_key(peer: &PeerInfo) -> Option<Arc<str>> {
    match &*peer.identity {
        PeerIdentity::Unauthenticated => None,
        PeerIdentity::Verified(id) => Some(Arc::from(id.uri())),
        PeerIdentity::Unidentified(_) => Some(Arc::from(match peer.spki_pin {
            Some(pin) => format!("unidentified:{pin}"),
            None => "unidentified".to_string(),
        })),
    }
}

/// A connection's place among the capped ones, released when the connection ends.
pub(super) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    _identity: Option<IdentitySlot>,
}

/// One of an identity's connections (`client_connections_per_identity_max`).
struct IdentitySlot {
    counts: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    key: Arc<str>,
}

impl IdentitySlot {
    /// A slot for `key` if it holds fewer than `max`.
    fn take(
        counts: &Arc<Mutex<HashMap<Arc<str>, usize>>>,
        key: Arc<str>,
        max: usize,
    ) -> Option<IdentitySlot> {
        let mut map = lock(counts);
        let count = map.entry(Arc::clone(&key)).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        drop(map);
        Some(IdentitySlot {
            counts: Arc::clone(counts),
            key,
        })
    }
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut map = lock(&self.counts);
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

pub(super) fn frame_error_code(err: &FrameError) -> VarInt {
    VarInt::from_u32(FRAME_ERROR_CODE_BASE + err.number())
}

pub(super) fn error_frame(err: &HandlerError) -> OutboundFrame {
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

/// An inbound connection's entry in `Inner::inbound`, removed when its serving task ends.
pub(super) struct InboundTracked {
    inner: std::sync::Weak<Inner>,
    id: usize,
}

impl InboundTracked {
    pub(super) fn new(inner: &Arc<Inner>, conn: &quinn::Connection) -> InboundTracked {
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

pub(super) async fn accept_loop(inner: std::sync::Weak<Inner>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(inner) = inner.upgrade() else { break };
        tokio::spawn(async move { serve_connection(inner, incoming).await });
    }
}

pub(super) async fn serve_connection(inner: Arc<Inner>, incoming: quinn::Incoming) {
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
    let cert = peer_cert(&conn);
    let trust_domain = inner.identity.as_ref().map(|id| id.trust_domain.as_str());
    let peer = PeerInfo {
        addr: conn.remote_address(),
        spki_pin: cert.as_ref().and_then(|der| spki_pin_of_cert(der).ok()),
        identity: Arc::new(PeerIdentity::of_peer_cert(cert.as_deref(), trust_domain)),
        cert_addresses: cert
            .as_deref()
            .map(crate::renew::certificate_der_addresses)
            .unwrap_or_default()
            .into(),
    };
    let member = inner.is_member(&peer); // the connection's class, for its life
    let slot = match inner.connection_slot(&peer, member) {
        Ok(slot) => slot,
        Err(cap) => return inner.refuse_connection_full(&conn, &peer, cap),
    };
    if slot.is_none() {
        // A node (or anyone on an insecure transport): its full stream allowance.
        let streams = VarInt::from_u32(inner.config.streams_per_connection_max);
        conn.set_max_concurrent_bi_streams(streams);
        conn.set_max_concurrent_uni_streams(streams);
    }
    let _tracked = InboundTracked::new(&inner, &conn);
    inner.peer_dialled(&peer, dial_started);
    let budget = BudgetShare {
        budget: match &*peer.identity {
            _ if member => inbound_budget(&inner.config, false),
            PeerIdentity::Verified(id) if id.role == Role::Admin => {
                Arc::clone(&inner.admin_inbound_budget)
            }
            // Clients cannot multiply it by connecting.
            _ => Arc::clone(&inner.client_inbound_budget),
        },
        identity: fair_share_key(&peer),
        member,
    };
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

/// Longest `PEER_ADDRESS` payload: an IPv6 address with brackets and a port is at most 47.
const PEER_ADDRESS_BYTES_MAX: usize = 64;

/// Answers `PEER_ADDRESS` (nodes only, by the kind table): the address must parse and be the
/// one the peer's connection comes from (nodes dial from their listening socket), so a node
/// can name only where it is.
pub(super) struct PeerAddressHandler(pub(super) std::sync::Weak<Inner>);

impl FrameHandler for PeerAddressHandler {
    fn handle(&self, frame: InboundFrame) -> crate::handler::HandlerFuture {
        let inner = self.0.upgrade();
        Box::pin(async move {
            let claimed = (frame.payload.len() <= PEER_ADDRESS_BYTES_MAX)
                .then(|| std::str::from_utf8(&frame.payload).ok())
                .flatten()
                .and_then(|text| text.parse::<SocketAddr>().ok());
            if claimed != Some(frame.peer.addr) {
                return Err(HandlerError::new(
                    "invalid_request",
                    format!(
                        "PeerAddress must name the address the connection comes from ({})",
                        frame.peer.addr
                    ),
                ));
            }
            if let (Some(inner), Some(node_id)) = (inner, frame.peer.identity.node_id()) {
                inner.note_announced(NodeId(node_id), &frame.peer);
            }
            Ok(None)
        })
    }
}
