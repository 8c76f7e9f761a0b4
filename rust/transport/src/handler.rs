//! Inbound dispatch: a registry of handlers keyed by message kind, plus one fallback (the Python
//! handler in the binding). A handler gets the frame and who sent it and returns, asynchronously,
//! an optional reply frame (`None` is right for one-way frames; a request on a bidirectional
//! stream that gets `None` is answered with an Error "no_reply").

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use nodedb_wire::MessageKind;

use crate::credentials::SpkiPin;
use crate::identity::PeerIdentity;

/// Who sent an inbound frame (fixed per connection at the handshake).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// SHA-256 of the peer's SubjectPublicKeyInfo (mTLS only), for checking against topology.
    pub spki_pin: Option<SpkiPin>,
    /// The identity in the peer's verified certificate: what it may send.
    pub identity: Arc<PeerIdentity>,
    /// The IP addresses and DNS names that certificate names (empty without one): where the
    /// CA says the peer may listen.
    pub cert_addresses: Arc<[String]>,
}

#[derive(Debug, Clone)]
pub struct InboundFrame {
    pub peer: PeerInfo,
    pub kind: MessageKind,
    pub payload: Bytes,
    /// True when the frame came on a one-way (unidirectional) stream: any reply is dropped.
    pub oneway: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundFrame {
    pub kind: MessageKind,
    pub payload: Bytes,
}

/// A handler failure, sent to the requester as an Error message `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    pub code: String,
    pub message: String,
}

impl HandlerError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError {
            code: code.into(),
            message: message.into(),
        }
    }
}

pub type HandlerResult = Result<Option<OutboundFrame>, HandlerError>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// Something that answers inbound frames. Must not block: return a future.
pub trait FrameHandler: Send + Sync + 'static {
    fn handle(&self, frame: InboundFrame) -> HandlerFuture;

    /// The longest this handler's answer may take when it bounds its own wait by more than
    /// `rpc_timeout` allows (a forwarded host command waits for its apply, up to its sender's
    /// deadline): the transport then answers `handler_timeout` only after this plus
    /// `rpc_timeout`. None: `rpc_timeout` alone.
    fn answer_within(&self) -> Option<Duration> {
        None
    }
}

struct FnHandler<F>(F);

impl<F, Fut> FrameHandler for FnHandler<F>
where
    F: Fn(InboundFrame) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(&self, frame: InboundFrame) -> HandlerFuture {
        Box::pin((self.0)(frame))
    }
}

/// Wrap an async closure as a handler.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn FrameHandler>
where
    F: Fn(InboundFrame) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// Kind → handler, plus the fallback. Lookups clone an `Arc` out under a short read lock.
#[derive(Default)]
pub struct HandlerRegistry {
    by_kind: RwLock<HashMap<MessageKind, Arc<dyn FrameHandler>>>,
    fallback: RwLock<Option<Arc<dyn FrameHandler>>>,
}

impl HandlerRegistry {
    /// Register (or replace) the handler of `kind`; returns the previous one.
    pub fn register(
        &self,
        kind: MessageKind,
        handler: Arc<dyn FrameHandler>,
    ) -> Option<Arc<dyn FrameHandler>> {
        self.by_kind
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind, handler)
    }

    pub fn unregister(&self, kind: MessageKind) -> Option<Arc<dyn FrameHandler>> {
        self.by_kind
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&kind)
    }

    /// The handler of every kind without its own (the Python handler).
    pub fn set_fallback(&self, handler: Option<Arc<dyn FrameHandler>>) {
        *self.fallback.write().unwrap_or_else(|p| p.into_inner()) = handler;
    }

    /// The fallback alone: a kind's handler that serves only part of its requests hands the
    /// rest to it.
    pub fn fallback(&self) -> Option<Arc<dyn FrameHandler>> {
        self.fallback
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, kind: MessageKind) -> Option<Arc<dyn FrameHandler>> {
        if let Some(handler) = self
            .by_kind
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&kind)
        {
            return Some(handler.clone());
        }
        self.fallback
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
