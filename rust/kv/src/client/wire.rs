//! One attempt on the wire: the request of a batch of items ([`nodedb_wire::kv`]), the reply
//! decoded into per-item results and per-group failures, and this node's own server standing
//! in for a peer.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

use bytes::Bytes;
use nodedb_transport::{MessageKind, OutboundFrame, TransportError};
use nodedb_wire::{
    KvRequest, KvResponse, ProposeMany, ReadMany, KV_CAP_READ_OVER, KV_CAP_VSHARD_REDIRECTS,
};

use super::error::KvError;
use super::state::{Item, Lane};
use crate::serve::KvServer;
use crate::vshard::Refusal;

/// One attempt's answer, from a peer or from this node's own server.
pub(super) type Rpc<'a> =
    Pin<Box<dyn Future<Output = Result<OutboundFrame, TransportError>> + Send + 'a>>;

/// Serve a request on this node's own server, as a peer would answer it (a handler error comes
/// back as the Error message a peer would send).
pub(super) async fn serve_here(
    server: Weak<KvServer>,
    payload: Bytes,
) -> Result<OutboundFrame, TransportError> {
    let server = server.upgrade().ok_or(TransportError::Closed)?;
    let remote = |code: &str, message: &str| TransportError::Remote {
        code: code.into(),
        message: message.into(),
    };
    match server.serve(&payload).await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(remote("no_reply", "this node's server gave no reply")),
        Err(err) => Err(TransportError::Remote {
            code: err.code,
            message: err.message,
        }),
    }
}

pub(super) fn encode_request(
    lane: Lane,
    items: &[Item],
    timeout_ms: u64,
    avoid: Option<Vec<u64>>,
) -> Result<Bytes, KvError> {
    let groups = items.iter().map(|i| i.group).collect();
    let list = items
        .iter()
        .map(|i| Cow::Borrowed(i.payload.as_slice()))
        .collect();
    let request = match lane {
        Lane::Propose => KvRequest::ProposeMany(ProposeMany {
            groups,
            commands: list,
            timeout_ms,
            avoid,
            caps: KV_CAP_VSHARD_REDIRECTS,
        }),
        Lane::Read { level, .. } => KvRequest::ReadMany(ReadMany {
            groups,
            keys: list,
            level,
            stale_s: lane.stale_s(),
            timeout_ms,
            caps: KV_CAP_VSHARD_REDIRECTS | KV_CAP_READ_OVER,
        }),
    };
    request
        .encode()
        .map(Bytes::from)
        .map_err(|e| KvError::Invalid(format!("cannot encode a kv request: {e}")))
}

/// One attempt's answer, item by item.
#[derive(Debug)]
pub(super) struct Decoded {
    /// One result per item (meaningless for an item failed, refused or over).
    pub results: Vec<Option<Vec<u8>>>,
    /// The groups that failed.
    pub failed: HashMap<u64, KvError>,
    /// Items refused by their vShard's state (index, why): paused for a move, or moved.
    pub refused: Vec<(usize, Refusal)>,
    /// Reads the reply had no room for (indexes): to send again at once.
    pub over: Vec<usize>,
}

/// One result per item, the groups that failed and the refused items, or the error of the
/// whole request.
pub(super) fn decode_reply(
    frame: &OutboundFrame,
    lane: Lane,
    count: usize,
) -> Result<Decoded, KvError> {
    if frame.kind != MessageKind::KV_RESPONSE {
        return Err(KvError::Malformed(format!(
            "answered kv with kind {}",
            frame.kind.number()
        )));
    }
    let reply =
        KvResponse::decode(&frame.payload).map_err(|e| KvError::Malformed(e.to_string()))?;
    let stale = |age_s| KvError::Stale {
        age_s,
        max_s: lane.stale_s(),
    };
    match reply {
        KvResponse::Results(r) => {
            if r.results.len() != count {
                return Err(KvError::Malformed(format!(
                    "{} results for {count} items",
                    r.results.len()
                )));
            }
            let mut failed = HashMap::new();
            for (group, hint) in r.not_leader {
                failed.insert(group, KvError::NotLeader { hint });
            }
            for group in r.unknown {
                failed.insert(group, KvError::LeadershipLost);
            }
            for (group, age_s) in r.stale {
                failed.insert(group, stale(age_s));
            }
            let results: Vec<Option<Vec<u8>>> = r
                .results
                .into_iter()
                .map(|v| v.map(Cow::into_owned))
                .collect();
            let mut refused: Vec<(usize, Refusal)> = Vec::new();
            if lane == Lane::Propose {
                for (i, result) in results.iter().enumerate() {
                    if let Some(refusal) = result.as_deref().and_then(Refusal::of_result) {
                        refused.push((i, refusal));
                    }
                }
            }
            let item = |i: u64| {
                usize::try_from(i)
                    .ok()
                    .filter(|&i| i < count)
                    .ok_or_else(|| KvError::Malformed(format!("answer of item {i} of {count}")))
            };
            let marked = r.paused.iter().map(|&i| (i, Refusal::Paused));
            let moved = r.moved.iter().map(|&(i, g)| (i, Refusal::Moved(g)));
            for (i, refusal) in marked.chain(moved) {
                refused.push((item(i)?, refusal));
            }
            let over = r
                .over
                .iter()
                .map(|&i| item(i))
                .collect::<Result<Vec<_>, _>>()?;
            // A reply with room for no item would have the same items sent again for ever.
            if !over.is_empty() && (lane == Lane::Propose || over.len() >= count) {
                return Err(KvError::Malformed(format!(
                    "{} of {count} items answered as over the reply's room",
                    over.len()
                )));
            }
            Ok(Decoded {
                results,
                failed,
                refused,
                over,
            })
        }
        KvResponse::NotLeader { leader } => Err(KvError::NotLeader { hint: leader }),
        KvResponse::Stale { age_s } => Err(stale(age_s)),
        KvResponse::Routing { .. } => {
            Err(KvError::Malformed("kv response without a result".into()))
        }
    }
}
