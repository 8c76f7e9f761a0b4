//! Dialling, the connection pool and the requesting side of RPCs and one-way frames.

use super::*;
use nodedb_wire::FrameHeader;
use std::pin::Pin;

use tokio::sync::futures::OwnedNotified;

/// Why one attempt failed, and whether a fresh connection may retry it safely.
pub(super) enum AttemptError {
    /// The request cannot have been processed (stream never opened, or the peer answered with a
    /// stateless reset: it has no state for the connection, e.g. it restarted).
    Stale(TransportError),
    Fatal(TransportError),
}

impl Inner {
    /// `node_id`'s entry and a wake-up for when its target changes, armed under the same lock
    /// (a change after the read cannot be missed).
    pub(super) fn watched_peer(
        &self,
        node_id: NodeId,
    ) -> Result<(PeerEntry, Pin<Box<OwnedNotified>>), TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let peer = peers
            .get(&node_id)
            .cloned()
            .ok_or(TransportError::UnknownPeer { node_id })?;
        let mut moved = Box::pin(Arc::clone(&peer.moved).notified_owned());
        moved.as_mut().enable();
        Ok((peer, moved))
    }

    pub(super) fn release_port(&self) {
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

    pub(super) fn connection_error(
        &self,
        addr: SocketAddr,
        err: quinn::ConnectionError,
    ) -> TransportError {
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
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(CLOSE_CODE_CONNECTIONS_FULL) =>
            {
                TransportError::Unreachable {
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
    pub(super) async fn connection(
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
    pub(super) async fn dial(&self, addr: SocketAddr) -> Result<Pooled, TransportError> {
        let pooled = self.connect(addr).await?;
        lock(&self.conns).insert(addr, pooled.clone());
        Ok(pooled)
    }

    /// Open a new connection to `addr` (bounded by `connect_timeout`), outside the pool.
    pub(super) async fn connect(&self, addr: SocketAddr) -> Result<Pooled, TransportError> {
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
            Ok(Err(err)) => {
                let err = self.connection_error(addr, err);
                if let TransportError::Handshake { reason, .. } = &err {
                    tracing::warn!(peer = %addr, %reason, "outbound handshake failed");
                }
                return Err(err);
            }
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
    pub(super) async fn rpc_fresh(
        &self,
        addr: SocketAddr,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, TransportError> {
        let fresh = self.connect(addr).await?;
        let result = self.exchange(addr, &fresh.conn, kind, payload).await;
        fresh.conn.close(
            VarInt::from_u32(CLOSE_CODE_ONE_SHOT_DONE),
            b"one-shot rpc done",
        );
        match result {
            Ok(frame) => reply_or_remote(frame),
            Err(AttemptError::Stale(err) | AttemptError::Fatal(err)) => Err(err),
        }
    }

    pub(super) fn pooled(&self, addr: SocketAddr) -> Option<Pooled> {
        let mut conns = lock(&self.conns);
        match conns.get(&addr) {
            Some(pooled) if pooled.conn.close_reason().is_none() => Some(pooled.clone()),
            Some(dead) => {
                // Dead: replaced on this use.
                if let Some(reason) = dead.conn.close_reason() {
                    tracing::info!(peer = %addr, %reason, "connection to the peer lost");
                }
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
    pub(super) fn peer_dialled(&self, peer: &PeerInfo, dial_started: Instant) {
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

    /// Registered node `node_id`, identified by its certificate and its pinned key, said it
    /// listens at `peer.addr`, where its connection comes from (`PEER_ADDRESS`): frames to it
    /// go there from now on if that is not its registered address
    /// (`PeerEntry::announced`), and to the registered one if it is. Nothing for an unknown
    /// node or another key than the pinned one.
    pub(super) fn note_announced(&self, node_id: NodeId, peer: &PeerInfo) {
        let moved = {
            let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = peers.get_mut(&node_id) else {
                return;
            };
            if entry
                .expected_pin
                .is_some_and(|pin| peer.spki_pin != Some(pin))
            {
                return;
            }
            let announced = (peer.addr != entry.addr).then_some(peer.addr);
            if entry.announced == announced {
                return;
            }
            let before = entry.target();
            entry.announced = announced;
            entry.moved.notify_waiters();
            (before, entry.addr)
        };
        let (before, registered) = moved;
        tracing::info!(
            node = node_id.0,
            at = %peer.addr,
            %registered,
            "a node says it listens at another address than the one registered: sending there"
        );
        self.forget_connection(before, None);
    }

    /// The peer at `addr` closed its connection to us because we dialled it again: the
    /// connection was alive, so its next dial is no sign of a restart.
    pub(super) fn peer_closed_on_our_redial(&self, addr: SocketAddr) {
        if let Some(known) = lock(&self.dialled_us).get_mut(&addr) {
            known.closed_ours = true;
        }
    }

    pub(super) fn peer_dialled_again(&self, addr: SocketAddr, dial_started: Instant) {
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
    pub(super) fn forget_connection(&self, addr: SocketAddr, stable_id: Option<usize>) {
        let mut conns = lock(&self.conns);
        if let Some(pooled) = conns.get(&addr) {
            if stable_id.is_none_or(|id| pooled.conn.stable_id() == id) {
                conns.remove(&addr);
            }
        }
    }

    pub(super) async fn rpc(
        &self,
        addr: SocketAddr,
        expected_pin: Option<SpkiPin>,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, TransportError> {
        self.bounded_rpc(self.rpc_attempts(addr, expected_pin, kind, payload, None))
            .await
    }

    /// A request bounded by `pace` instead of `rpc_timeout` (`Transport::send_rpc_paced`).
    pub(super) async fn paced_rpc(
        &self,
        addr: SocketAddr,
        expected_pin: Option<SpkiPin>,
        kind: MessageKind,
        payload: Bytes,
        pace: RpcPace,
    ) -> Result<OutboundFrame, TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let result = if Instant::now() >= pace.answer_by {
            Err(paced_timeout(Instant::now()))
        } else {
            self.rpc_attempts(addr, expected_pin, kind, payload, Some(pace))
                .await
        };
        self.count_rpc(&result);
        result
    }

    /// One request, refused once closed, bounded by `rpc_timeout` as a whole, counted.
    pub(super) async fn bounded_rpc(
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
        self.count_rpc(&result);
        result
    }

    fn count_rpc(&self, result: &Result<OutboundFrame, TransportError>) {
        match result {
            Ok(_) => Metrics::inc(&self.metrics.rpcs_sent),
            Err(err) => self.metrics.error(err),
        }
    }

    pub(super) async fn rpc_attempts(
        &self,
        addr: SocketAddr,
        expected_pin: Option<SpkiPin>,
        kind: MessageKind,
        payload: Bytes,
        pace: Option<RpcPace>,
    ) -> Result<OutboundFrame, TransportError> {
        let start = Instant::now();
        let connect = || async {
            match pace {
                Some(pace) => tokio::time::timeout_at(
                    pace.answer_by.into(),
                    self.connection(addr, expected_pin),
                )
                .await
                .unwrap_or_else(|_| Err(paced_timeout(start))),
                None => self.connection(addr, expected_pin).await,
            }
        };
        // At most two attempts: a stale pooled connection is replaced once.
        let (mut conn, mut reused) = connect().await?;
        for attempt in 0..2 {
            match self
                .rpc_once(addr, &conn, kind, payload.clone(), pace, start)
                .await
            {
                Ok(frame) => return reply_or_remote(frame),
                Err(AttemptError::Stale(err)) if reused && attempt == 0 => {
                    tracing::debug!(%addr, %err, "stale connection, redialling once");
                    self.forget_connection(addr, Some(conn.stable_id()));
                    (conn, reused) = connect().await?;
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

    pub(super) async fn rpc_once(
        &self,
        addr: SocketAddr,
        conn: &quinn::Connection,
        kind: MessageKind,
        payload: Bytes,
        pace: Option<RpcPace>,
        start: Instant,
    ) -> Result<OutboundFrame, AttemptError> {
        let Some(pace) = pace else {
            return self.exchange(addr, conn, kind, payload).await;
        };
        let timed_out = || AttemptError::Fatal(paced_timeout(start));
        let (mut recv, header) = tokio::time::timeout_at(
            pace.answer_by.into(),
            self.exchange_to_header(addr, conn, kind, payload),
        )
        .await
        .map_err(|_| timed_out())??;
        // Never less than the answer bound left: a reply that came early keeps that too.
        let reply_by = pace
            .answer_by
            .max(Instant::now() + pace.reply_allowance(header.payload_bytes));
        let payload = tokio::time::timeout_at(reply_by.into(), read_payload(&mut recv, &header))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| self.read_failure(addr, e))?;
        Ok(OutboundFrame {
            kind: header.kind,
            payload,
        })
    }

    /// Send one request and read its reply, the whole frame.
    async fn exchange(
        &self,
        addr: SocketAddr,
        conn: &quinn::Connection,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<OutboundFrame, AttemptError> {
        let (mut recv, header) = self.exchange_to_header(addr, conn, kind, payload).await?;
        let payload = read_payload(&mut recv, &header)
            .await
            .map_err(|e| self.read_failure(addr, e))?;
        Ok(OutboundFrame {
            kind: header.kind,
            payload,
        })
    }

    /// Send one request and read its reply's header: the stream left to read the payload from.
    async fn exchange_to_header(
        &self,
        addr: SocketAddr,
        conn: &quinn::Connection,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<(quinn::RecvStream, FrameHeader), AttemptError> {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| AttemptError::Stale(self.connection_error(addr, e)))?;
        match write_frame(&mut send, kind, payload).await {
            Ok(()) => {}
            // Refused on its header while the payload was still being written: the refusal
            // reply follows on the stream.
            Err(WriteFrameError::Write(quinn::WriteError::Stopped(code)))
                if code == VarInt::from_u32(STREAM_CODE_REFUSED) => {}
            Err(err) => {
                return Err(match err {
                    WriteFrameError::Frame(e) => AttemptError::Fatal(TransportError::Frame(e)),
                    WriteFrameError::Write(quinn::WriteError::ConnectionLost(
                        quinn::ConnectionError::Reset,
                    )) => AttemptError::Stale(
                        self.connection_error(addr, quinn::ConnectionError::Reset),
                    ),
                    WriteFrameError::Write(e) => AttemptError::Fatal(write_error(addr, self, e)),
                })
            }
        }
        let header = read_header(&mut recv)
            .await
            .map_err(|e| self.read_failure(addr, e))?;
        Ok((recv, header))
    }

    fn read_failure(&self, addr: SocketAddr, err: ReadFrameError) -> AttemptError {
        match err {
            ReadFrameError::Frame(e) => AttemptError::Fatal(TransportError::Frame(e)),
            ReadFrameError::Read(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::Reset,
            )) => AttemptError::Stale(self.connection_error(addr, quinn::ConnectionError::Reset)),
            ReadFrameError::Read(e) => AttemptError::Fatal(read_error(addr, self, e)),
        }
    }

    pub(super) async fn oneway(
        &self,
        addr: SocketAddr,
        expected_pin: Option<SpkiPin>,
        kind: MessageKind,
        payload: Bytes,
        priority: i32,
    ) -> Result<(), TransportError> {
        let (mut conn, reused) = self.connection(addr, expected_pin).await?;
        let mut send = match conn.open_uni().await {
            Ok(send) => send,
            Err(err) if reused => {
                tracing::debug!(%addr, %err, "stale connection, redialling once");
                self.forget_connection(addr, Some(conn.stable_id()));
                conn = self.connection(addr, expected_pin).await?.0;
                conn.open_uni()
                    .await
                    .map_err(|e| self.connection_error(addr, e))?
            }
            Err(err) => return Err(self.connection_error(addr, err)),
        };
        if priority != 0 {
            // Cannot fail on a stream just opened.
            let _ = send.set_priority(priority);
        }
        write_frame(&mut send, kind, payload)
            .await
            .map_err(|err| match err {
                WriteFrameError::Frame(e) => TransportError::Frame(e),
                WriteFrameError::Write(e) => write_error(addr, self, e),
            })
    }
}

pub(super) fn reply_or_remote(frame: OutboundFrame) -> Result<OutboundFrame, TransportError> {
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

pub(super) fn write_error(
    addr: SocketAddr,
    inner: &Inner,
    err: quinn::WriteError,
) -> TransportError {
    match err {
        quinn::WriteError::ConnectionLost(e) => inner.connection_error(addr, e),
        quinn::WriteError::Stopped(code) => stream_code_error(addr, code),
        other => TransportError::Unreachable {
            addr,
            reason: other.to_string(),
        },
    }
}

pub(super) fn read_error(addr: SocketAddr, inner: &Inner, err: quinn::ReadError) -> TransportError {
    match err {
        quinn::ReadError::ConnectionLost(e) => inner.connection_error(addr, e),
        quinn::ReadError::Reset(code) => stream_code_error(addr, code),
        other => TransportError::Unreachable {
            addr,
            reason: other.to_string(),
        },
    }
}

pub(super) fn stream_code_error(addr: SocketAddr, code: VarInt) -> TransportError {
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
    if code == u64::from(STREAM_CODE_REPLY_TIMEOUT) {
        return TransportError::Unreachable {
            addr,
            reason: "the peer gave up writing its reply: it was not read within the peer's bound"
                .into(),
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
pub(super) fn check_pin(
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

pub(super) fn peer_pin(conn: &quinn::Connection) -> Option<SpkiPin> {
    spki_pin_of_cert(&peer_cert(conn)?).ok()
}

/// The leaf the peer presented (verified against the CA by the handshake); `None` when insecure.
pub(super) fn peer_cert(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(certs.first()?.to_vec())
}

impl Inner {
    /// [`Transport::send_oneway`].
    pub(super) async fn send_oneway(
        &self,
        node_id: NodeId,
        kind: MessageKind,
        payload: Bytes,
        priority: i32,
    ) -> Result<(), TransportError> {
        let (peer, moved) = self.watched_peer(node_id)?;
        let timeout = self.config.frame_timeout(payload.len());
        let send = tokio::time::timeout(
            timeout,
            self.oneway(peer.target(), peer.expected_pin, kind, payload, priority),
        );
        let send = async move {
            send.await.unwrap_or(Err(TransportError::Timeout {
                op: "send_oneway",
                timeout,
            }))
        };
        let result = unless_moved(&peer, moved, send).await;
        match &result {
            Ok(()) => Metrics::inc(&self.metrics.oneway_sent),
            Err(err) => self.metrics.error(err),
        }
        result
    }
}

/// `send`, or `Unreachable` as soon as the peer's target changes (`PeerEntry::moved`).
pub(super) async fn unless_moved<T>(
    peer: &PeerEntry,
    moved: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    send: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    tokio::select! {
        biased;
        result = send => result,
        () = moved => Err(TransportError::Unreachable {
            addr: peer.target(),
            reason: "the peer moved to another address meanwhile".into(),
        }),
    }
}

/// A paced request that ran out of time (`RpcPace`), after `start`.
fn paced_timeout(start: Instant) -> TransportError {
    TransportError::Timeout {
        op: "rpc",
        timeout: start.elapsed(),
    }
}
