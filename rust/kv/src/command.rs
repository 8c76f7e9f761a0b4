//! The KV command and result codec: the bytes a KV group's log entries and results carry.
//!
//! On disk and on the wire: these encodings are recorded in every node's log and snapshots,
//! so they never change (a node from before a change restarts on its old data); the tests
//! below pin them byte for byte.

use nodedb_multiraft::codec::{Reader, Writer};
use nodedb_multiraft::error::DecodeError;

/// Keys above 64 KiB are refused (as an error result) so one entry cannot bloat every snapshot.
pub const KEY_BYTES_MAX: usize = 64 << 10;
/// Op tag of `KvCommand::Session`.
const SESSION_OP: u8 = 16;

/// A KV operation. Encoding: `op u8` then length-prefixed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// op 1: set `key` to `value`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// op 2: remove `key`.
    Delete { key: Vec<u8> },
    /// op 3: set `key` to `value` iff its current value is `expected` (`None` = absent).
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    /// op 4: read through the log (linearizable without ReadIndex, at the cost of an entry).
    Get { key: Vec<u8> },
    /// op 16: `inner` (never itself a session) on behalf of client `client` as its write `seq`;
    /// the client has the answers of all its seqs below `acked_below` (their results may go).
    /// Encoding: `16, client u64, seq u64, acked_below u64`, then `inner` encoded.
    Session {
        client: u64,
        seq: u64,
        acked_below: u64,
        inner: Box<KvCommand>,
    },
}

/// A KV result. Encoding: `status u8` then an optional length-prefixed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvResult {
    /// status 0: done; `value` for Get.
    Ok { value: Option<Vec<u8>> },
    /// status 1: Delete/Get of an absent key.
    NotFound,
    /// status 2: Cas lost; `current` is the value it found.
    CasMismatch { current: Option<Vec<u8>> },
    /// status 3: a session write whose result the client already had (or that fell out of the
    /// session's result window): not applied again; its first outcome stands.
    Duplicate,
    /// status 255: the command did not decode; every node answers the same.
    Invalid { reason: String },
}

impl KvCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            KvCommand::Put { key, value } => {
                w.u8(1);
                w.bytes(key);
                w.bytes(value);
            }
            KvCommand::Delete { key } => {
                w.u8(2);
                w.bytes(key);
            }
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                w.u8(3);
                w.bytes(key);
                opt(&mut w, expected.as_deref());
                w.bytes(value);
            }
            KvCommand::Get { key } => {
                w.u8(4);
                w.bytes(key);
            }
            KvCommand::Session {
                client,
                seq,
                acked_below,
                inner,
            } => {
                w.u8(SESSION_OP);
                w.u64(*client);
                w.u64(*seq);
                w.u64(*acked_below);
                w.buf.extend_from_slice(&inner.encode());
            }
        }
        w.buf
    }

    /// Wrap already-encoded `inner` in a session without decoding it (the client's hot path);
    /// the state machine checks it when applying.
    pub fn encode_session(client: u64, seq: u64, acked_below: u64, inner: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(25 + inner.len());
        w.u8(SESSION_OP);
        w.u64(client);
        w.u64(seq);
        w.u64(acked_below);
        w.buf.extend_from_slice(inner);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        if b.first() == Some(&SESSION_OP) {
            r.u8()?;
            let (client, seq, acked_below) = (r.u64()?, r.u64()?, r.u64()?);
            let inner = b.get(25..).unwrap_or(&[]);
            if inner.first() == Some(&SESSION_OP) {
                return Err(DecodeError::UnknownTag {
                    what: "kv op inside a session",
                    tag: SESSION_OP,
                });
            }
            return Ok(KvCommand::Session {
                client,
                seq,
                acked_below,
                inner: Box::new(KvCommand::decode(inner)?),
            });
        }
        let cmd = match r.u8()? {
            1 => KvCommand::Put {
                key: key(&mut r)?,
                value: r.bytes("value")?.to_vec(),
            },
            2 => KvCommand::Delete { key: key(&mut r)? },
            3 => KvCommand::Cas {
                key: key(&mut r)?,
                expected: read_opt(&mut r)?,
                value: r.bytes("value")?.to_vec(),
            },
            4 => KvCommand::Get { key: key(&mut r)? },
            tag => return Err(DecodeError::UnknownTag { what: "kv op", tag }),
        };
        r.finish()?;
        Ok(cmd)
    }
}

impl KvResult {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            KvResult::Ok { value } => {
                w.u8(0);
                opt(&mut w, value.as_deref());
            }
            KvResult::NotFound => w.u8(1),
            KvResult::Duplicate => w.u8(3),
            KvResult::CasMismatch { current } => {
                w.u8(2);
                opt(&mut w, current.as_deref());
            }
            KvResult::Invalid { reason } => {
                w.u8(255);
                w.bytes(reason.as_bytes());
            }
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let res = match r.u8()? {
            0 => KvResult::Ok {
                value: read_opt(&mut r)?,
            },
            1 => KvResult::NotFound,
            2 => KvResult::CasMismatch {
                current: read_opt(&mut r)?,
            },
            3 => KvResult::Duplicate,
            255 => KvResult::Invalid {
                reason: String::from_utf8_lossy(r.bytes("reason")?).into_owned(),
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kv result",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(res)
    }
}

fn opt(w: &mut Writer, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            w.u8(1);
            w.bytes(v);
        }
        None => w.u8(0),
    }
}

fn read_opt(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.bytes("value")?.to_vec())),
        tag => Err(DecodeError::UnknownTag {
            what: "kv option flag",
            tag,
        }),
    }
}

fn key(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let k = r.bytes("key")?;
    if k.len() > KEY_BYTES_MAX {
        return Err(DecodeError::TooLong {
            what: "key",
            len: k.len() as u64,
            limit: KEY_BYTES_MAX as u64,
        });
    }
    Ok(k.to_vec())
}

/// Commands for tests, written once for every test module of the crate.
#[cfg(test)]
pub(crate) mod test_commands {
    use super::KvCommand;

    pub(crate) fn put(k: &[u8], v: &[u8]) -> KvCommand {
        KvCommand::Put {
            key: k.to_vec(),
            value: v.to_vec(),
        }
    }

    pub(crate) fn session(client: u64, seq: u64, acked_below: u64, inner: KvCommand) -> KvCommand {
        KvCommand::Session {
            client,
            seq,
            acked_below,
            inner: Box::new(inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_commands::{put, session};
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The bytes every existing log holds: a change here would make old logs unreadable.
    #[test]
    fn command_and_result_bytes_are_pinned() {
        let k = b"k".to_vec();
        let commands = [
            (put(b"k", b"v"), "01010000006b0100000076"),
            (KvCommand::Delete { key: k.clone() }, "02010000006b"),
            (
                KvCommand::Cas {
                    key: k.clone(),
                    expected: None,
                    value: b"v".to_vec(),
                },
                "03010000006b000100000076",
            ),
            (
                KvCommand::Cas {
                    key: k.clone(),
                    expected: Some(b"e".to_vec()),
                    value: b"v".to_vec(),
                },
                "03010000006b0101000000650100000076",
            ),
            (KvCommand::Get { key: k.clone() }, "04010000006b"),
            (
                session(7, 9, 3, KvCommand::Delete { key: k }),
                "10070000000000000009000000000000000300000000000000\
                 02010000006b",
            ),
        ];
        for (cmd, bytes) in commands {
            assert_eq!(cmd.encode(), hex(bytes), "{cmd:?}");
            assert_eq!(KvCommand::decode(&hex(bytes)), Ok(cmd));
        }
        let results = [
            (KvResult::Ok { value: None }, "0000"),
            (
                KvResult::Ok {
                    value: Some(b"v".to_vec()),
                },
                "00010100000076",
            ),
            (KvResult::NotFound, "01"),
            (KvResult::CasMismatch { current: None }, "0200"),
            (KvResult::Duplicate, "03"),
            (KvResult::Invalid { reason: "x".into() }, "ff0100000078"),
        ];
        for (result, bytes) in results {
            assert_eq!(result.encode(), hex(bytes), "{result:?}");
            assert_eq!(KvResult::decode(&hex(bytes)), Ok(result));
        }
    }

    #[test]
    fn session_encoding_round_trips_and_matches_the_fast_wrapper() {
        let c = session(7, 9, 3, put(b"k", b"v"));
        let enc = c.encode();
        assert_eq!(KvCommand::decode(&enc), Ok(c));
        assert_eq!(
            KvCommand::encode_session(7, 9, 3, &put(b"k", b"v").encode()),
            enc
        );
        let nested = KvCommand::encode_session(1, 1, 0, &enc);
        assert!(
            KvCommand::decode(&nested).is_err(),
            "a session inside a session"
        );
        assert!(KvCommand::decode(&enc[..20]).is_err(), "truncated header");
        assert!(
            KvCommand::decode(&enc[..25]).is_err(),
            "header without a command"
        );
    }
}
