//! What a caller asks for and what it gets back: requests become items (routing key and
//! payload), per-item results become one answer by the kind of call.

use nodedb_wire::ReadLevel;

use super::error::{Failure, KvError, SubmitError};
use super::state::{Call, CallKind, Lane};
use crate::command::{check_key, KvCommand, KvResult};

/// What a finished call gives its caller (by the kind of call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A put (or every put of a batch) applied; `refused` names the first the state machine
    /// refused (an undecodable command: every replica answers the same).
    Written { refused: Option<String> },
    /// A delete applied; whether the key existed.
    Deleted { existed: bool },
    /// A compare-and-set applied; whether the value matched (and was replaced).
    Swapped { applied: bool },
    /// One read's value.
    Value(Option<Vec<u8>>),
    /// A batch read's values, in order.
    Values(Vec<Option<Vec<u8>>>),
}

/// One call of a caller.
#[derive(Debug, Clone)]
pub enum Request {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    PutMany(Vec<(Vec<u8>, Vec<u8>)>),
    Get {
        key: Vec<u8>,
        read: ReadAt,
    },
    GetMany {
        keys: Vec<Vec<u8>>,
        read: ReadAt,
    },
}

/// How a read is served: its level and the staleness a lease or follower read accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadAt {
    pub level: ReadLevel,
    pub max_staleness_s: f64,
}

impl ReadAt {
    pub const LINEARIZABLE: ReadAt = ReadAt {
        level: ReadLevel::Linearizable,
        max_staleness_s: 0.0,
    };
}

/// Per-item results, or the failure of the item that ended the call.
pub type Outcome = Result<Vec<Option<Vec<u8>>>, Failure>;

pub(super) fn item_error(group: u64, error: KvError) -> SubmitError {
    SubmitError::Item(Failure { group, error })
}

/// (routing key, payload) of each item of a call: a read's payload is its key, a write's its
/// encoded command.
pub(super) type Items = Vec<(Vec<u8>, Vec<u8>)>;

/// The kind, lane and items of a request; a key no group can hold refuses the whole call
/// before anything leaves.
pub(super) fn items_of(request: Request) -> Result<(CallKind, Lane, Items), SubmitError> {
    let (kind, lane, items) = items_of_unchecked(request)?;
    for (key, _) in &items {
        check_key(key).map_err(|text| item_error(0, KvError::Invalid(text)))?;
    }
    Ok((kind, lane, items))
}

fn items_of_unchecked(request: Request) -> Result<(CallKind, Lane, Items), SubmitError> {
    let put = |key: Vec<u8>, value: Vec<u8>| {
        let cmd = KvCommand::Put {
            key: key.clone(),
            value,
        }
        .encode();
        (key, cmd)
    };
    let read_lane = |read: ReadAt| {
        let stale_s = read.max_staleness_s;
        if !stale_s.is_finite() || stale_s < 0.0 {
            let text = format!("max_staleness_s must be >= 0, got {stale_s}");
            return Err(item_error(0, KvError::Invalid(text)));
        }
        Ok(Lane::read(read.level, stale_s))
    };
    Ok(match request {
        Request::Put { key, value } => (CallKind::Put, Lane::Propose, vec![put(key, value)]),
        Request::PutMany(pairs) => (
            CallKind::PutMany,
            Lane::Propose,
            pairs.into_iter().map(|(k, v)| put(k, v)).collect(),
        ),
        Request::Delete { key } => {
            let cmd = KvCommand::Delete { key: key.clone() }.encode();
            (CallKind::Delete, Lane::Propose, vec![(key, cmd)])
        }
        Request::Cas {
            key,
            expected,
            value,
        } => {
            let cmd = KvCommand::Cas {
                key: key.clone(),
                expected,
                value,
            }
            .encode();
            (CallKind::Cas, Lane::Propose, vec![(key, cmd)])
        }
        Request::Get { key, read } => (CallKind::Get, read_lane(read)?, vec![(key.clone(), key)]),
        Request::GetMany { keys, read } => (
            CallKind::GetMany,
            read_lane(read)?,
            keys.into_iter().map(|k| (k.clone(), k)).collect(),
        ),
    })
}

/// A write's result; a session copy refused as already answered is an unknown outcome.
pub(super) fn written(result: Option<&Vec<u8>>) -> Result<KvResult, KvError> {
    let bytes = result.ok_or_else(|| KvError::Malformed("a write without a result".into()))?;
    match KvResult::decode(bytes) {
        Ok(KvResult::Duplicate) => Err(KvError::OutcomeUnknown),
        Ok(result) => Ok(result),
        Err(e) => Err(KvError::Malformed(format!("kv result: {e}"))),
    }
}

/// The answer a finished call gives, by its kind.
pub(super) fn answer(call: &Call, outcome: Outcome) -> Result<Answer, Failure> {
    let mut results = outcome?;
    let fail = |i: usize, error: KvError| Failure {
        group: call.groups.get(i).copied().unwrap_or(0),
        error,
    };
    match call.kind {
        CallKind::Get => Ok(Answer::Value(results.pop().flatten())),
        CallKind::GetMany => Ok(Answer::Values(results)),
        CallKind::Put | CallKind::PutMany => {
            let mut refused = None;
            for (i, r) in results.iter().enumerate() {
                if let KvResult::Invalid { reason } = written(r.as_ref()).map_err(|e| fail(i, e))? {
                    refused.get_or_insert(reason);
                }
            }
            Ok(Answer::Written { refused })
        }
        CallKind::Delete => {
            let status =
                written(results.first().and_then(Option::as_ref)).map_err(|e| fail(0, e))?;
            Ok(Answer::Deleted {
                existed: matches!(status, KvResult::Ok { .. }),
            })
        }
        CallKind::Cas => {
            match written(results.first().and_then(Option::as_ref)).map_err(|e| fail(0, e))? {
                KvResult::Invalid { reason } => Err(fail(
                    0,
                    KvError::Invalid(format!("cas refused: {reason:?}")),
                )),
                status => Ok(Answer::Swapped {
                    applied: matches!(status, KvResult::Ok { .. }),
                }),
            }
        }
    }
}
