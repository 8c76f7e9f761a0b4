//! HOST_PROPOSE served on the leader, inside Rust: the commands another node forwarded for
//! groups that run the embedding host's state machine (`nodedb_wire::host`). Each group's share
//! is one `propose_each_for` (one index per command, one raft message for all of them); the
//! answer is written in the request's version. No Python runs here: the host's own
//! `apply_batch` is the only Python a forwarded command meets, on the driver thread, as a
//! command proposed on this node does.
//!
//! Who may send it is checked on the frame header before this handler runs (the kind table:
//! nodes only). The receiver never forwards again; a group it does not lead is answered
//! `not_leader` with its hint, and the sender retries there within its deadline.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use nodedb_transport::{
    FrameHandler, HandlerError, HandlerFuture, HandlerResult, InboundFrame, OutboundFrame,
};
use nodedb_wire::control::ControlMessage;
use nodedb_wire::{HostOutcomes, HostProposeResponse, HostRequest, MessageKind};

use crate::core::ProposeOutcome;
use crate::driver::MultiRaft;
use crate::error::RaftError;
use crate::ids::GroupId;
use crate::state_machine::StateMachineKind;

/// A forwarded command's timeout is capped here: a peer cannot hold a leader's slot longer.
pub const SERVE_TIMEOUT_MS_MAX: u64 = 60_000;

/// The HOST_PROPOSE handler of a node whose data groups run `kind` (the host's state machine).
/// Holds the engine weakly (the node owns it).
pub struct HostProposeServer {
    engine: Weak<MultiRaft>,
    kind: StateMachineKind,
}

impl HostProposeServer {
    pub fn new(engine: Weak<MultiRaft>, kind: StateMachineKind) -> HostProposeServer {
        HostProposeServer { engine, kind }
    }

    /// The answer to one HOST_PROPOSE payload: a malformed one, or one of a version this build
    /// does not read, is an Error frame naming why.
    pub fn serve(&self, payload: &[u8]) -> HandlerFuture {
        let request = match HostRequest::decode(payload) {
            Ok(request) => request,
            Err(err) => {
                let err = HandlerError::from(RaftError::Invalid {
                    reason: err.to_string(),
                });
                return Box::pin(async move { Err(err) });
            }
        };
        let Some(engine) = self.engine.upgrade() else {
            let err = HandlerError::from(RaftError::Stopped {
                reason: "the engine is closed".into(),
            });
            return Box::pin(async move { Err(err) });
        };
        Box::pin(answer(engine, self.kind, request))
    }
}

impl FrameHandler for HostProposeServer {
    fn handle(&self, frame: InboundFrame) -> HandlerFuture {
        self.serve(&frame.payload)
    }

    /// A command is served for its sender's deadline, at most `SERVE_TIMEOUT_MS_MAX`: the RPC
    /// bound alone answered a slow apply `handler_timeout`, an outcome the sender cannot know.
    fn answer_within(&self) -> Option<Duration> {
        Some(Duration::from_millis(SERVE_TIMEOUT_MS_MAX))
    }
}

/// Every group's share proposed at once; the outcomes in the request's order. Version 1 (one
/// command) answers a failure that is not about leadership as an Error frame, as it always did.
async fn answer(
    engine: Arc<MultiRaft>,
    kind: StateMachineKind,
    request: HostRequest,
) -> HandlerResult {
    let version = request.version();
    let timeout = Duration::from_millis(request.timeout_ms().min(SERVE_TIMEOUT_MS_MAX));
    let items = request.into_items();
    let total = items.len();
    let mut shares: Vec<(u64, Vec<usize>, Vec<Vec<u8>>)> = Vec::new();
    for (at, (group, command)) in items.into_iter().enumerate() {
        match shares.iter_mut().find(|(g, _, _)| *g == group) {
            Some((_, positions, commands)) => {
                positions.push(at);
                commands.push(command);
            }
            None => shares.push((group, vec![at], vec![command])),
        }
    }
    let mut outcomes: Vec<Option<HostProposeResponse>> = vec![None; total];
    if shares.len() == 1 {
        // The usual batch (one group): no task for it.
        let (group, positions, commands) = shares.pop().unwrap_or_default();
        let outs = propose_share(&engine, kind, group, commands, timeout).await;
        place(&mut outcomes, positions, outs);
    } else {
        let tasks: Vec<_> = shares
            .into_iter()
            .map(|(group, positions, commands)| {
                let engine = Arc::clone(&engine);
                let task = tokio::spawn(async move {
                    propose_share(&engine, kind, group, commands, timeout).await
                });
                (positions, task)
            })
            .collect();
        for (positions, task) in tasks {
            let outs = match task.await {
                Ok(outs) => outs,
                Err(err) => {
                    let lost = outcome_of(Err(RaftError::Stopped {
                        reason: format!("a group's proposal task ended: {err}"),
                    }));
                    vec![lost; positions.len()]
                }
            };
            place(&mut outcomes, positions, outs);
        }
    }
    // Every slot is filled (one outcome per command); one that were not still answers in its
    // place, so no outcome is ever read as another command's.
    let outcomes: Vec<HostProposeResponse> = outcomes
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| {
                outcome_of(Err(RaftError::Stopped {
                    reason: "the engine gave no outcome for this command".into(),
                }))
            })
        })
        .collect();
    if version == 1 {
        return match outcomes.into_iter().next() {
            Some(HostProposeResponse::Failed { code, message }) => {
                Err(HandlerError::new(code, message))
            }
            Some(one) => encoded(&one),
            None => Err(HandlerError::from(RaftError::Invalid {
                reason: "a request with no command".into(),
            })),
        };
    }
    encoded(&HostOutcomes { outcomes })
}

/// One group's commands: an outcome each, in order.
async fn propose_share(
    engine: &MultiRaft,
    kind: StateMachineKind,
    group: u64,
    commands: Vec<Vec<u8>>,
    timeout: Duration,
) -> Vec<HostProposeResponse> {
    let count = commands.len();
    if GroupId(group) == GroupId::METADATA {
        let refusal = outcome_of(Err(RaftError::Invalid {
            reason: "group 0 is the cluster's metadata group, not a data group".into(),
        }));
        return vec![refusal; count];
    }
    match engine
        .propose_each_for(Some(kind), GroupId(group), commands, timeout)
        .await
    {
        Ok(outs) => outs.into_iter().map(outcome_of).collect(),
        Err(err) => vec![outcome_of(Err(err)); count],
    }
}

fn place(
    outcomes: &mut [Option<HostProposeResponse>],
    positions: Vec<usize>,
    outs: Vec<HostProposeResponse>,
) {
    for (at, out) in positions.into_iter().zip(outs) {
        outcomes[at] = Some(out);
    }
}

/// What the sender makes of a command's fate: applied; not led here (retry at the hint); maybe
/// in the log (not retried: a host command carries no session); or refused, by the engine's
/// code for why ([`RaftError::code`]).
pub fn outcome_of(result: Result<ProposeOutcome, RaftError>) -> HostProposeResponse {
    match result {
        Ok(ProposeOutcome { index, results }) => HostProposeResponse::Applied {
            index,
            result: results.into_iter().next().unwrap_or_default(),
        },
        Err(RaftError::NotLeader { leader_hint, .. }) => HostProposeResponse::NotLeader {
            leader: leader_hint.map(|n| n.0),
        },
        Err(RaftError::GroupNotFound { .. }) => HostProposeResponse::NotLeader { leader: None },
        Err(err @ (RaftError::LeadershipLost { .. } | RaftError::Timeout { .. })) => {
            HostProposeResponse::Unknown {
                reason: err.to_string(),
            }
        }
        Err(err) => HostProposeResponse::Failed {
            code: err.code().into(),
            message: err.wire_message(),
        },
    }
}

fn encoded<M: ControlMessage>(message: &M) -> HandlerResult {
    let payload = message
        .to_msgpack()
        .map_err(|e| HandlerError::new("encode", e.to_string()))?;
    Ok(Some(OutboundFrame {
        kind: MessageKind::HOST_PROPOSE_RESPONSE,
        payload: Bytes::from(payload),
    }))
}
