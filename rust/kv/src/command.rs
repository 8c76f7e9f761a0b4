//! The KV command and result codec: the bytes a KV group's log entries and results carry.
//!
//! On disk and on the wire: these encodings are recorded in every node's log and snapshots,
//! so they never change (a node from before a change restarts on its old data); the tests
//! below pin them byte for byte.

use nodedb_multiraft::codec::{Reader, Writer};
use nodedb_multiraft::error::DecodeError;

/// Keys above 64 KiB are refused (as an error result) so one entry cannot bloat every snapshot.
pub const KEY_BYTES_MAX: usize = 64 << 10;

/// Refuses a key no KV group can hold ([`KEY_BYTES_MAX`]): the client checks it before a call
/// leaves (a committed entry with it would only be answered with an error result).
pub fn check_key(key: &[u8]) -> Result<(), String> {
    if key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "a key of {} bytes exceeds the limit of {KEY_BYTES_MAX} bytes",
            key.len()
        ));
    }
    Ok(())
}
/// Op tag of `KvCommand::Session`.
const SESSION_OP: u8 = 16;
/// Op tag of `KvCommand::VShard`.
const VSHARD_OP: u8 = 32;
/// Op tag of `KvCommand::Import`.
const IMPORT_OP: u8 = 33;

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
    /// op 32: a step of move `move_id` (group 0's id) of a vShard between groups
    /// (`crate::vshard`): `group` is the source for `Incoming`, the target for `Track`,
    /// `Freeze` and `Release`, else 0. Encoding: `32, step u8, vshard u32, group u64,
    /// move_id u64`.
    VShard {
        step: VShardStep,
        vshard: u32,
        group: u64,
        move_id: u64,
    },
    /// op 33: keys (and, in the last copy, the source's sessions) of a vShard copied from its
    /// source group into this, its target (`crate::migration`).
    Import(Import),
}

/// The steps of a vShard move (see `crate::vshard` for what each does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VShardStep {
    Incoming = 1,
    Track = 2,
    Freeze = 3,
    Unfreeze = 4,
    Activate = 5,
    Release = 6,
    Drop = 7,
}

impl VShardStep {
    pub const ALL: [VShardStep; 7] = [
        VShardStep::Incoming,
        VShardStep::Track,
        VShardStep::Freeze,
        VShardStep::Unfreeze,
        VShardStep::Activate,
        VShardStep::Release,
        VShardStep::Drop,
    ];

    /// The name the control plane uses (`kv_vshard_command`'s `op`).
    pub fn name(self) -> &'static str {
        match self {
            VShardStep::Incoming => "incoming",
            VShardStep::Track => "track",
            VShardStep::Freeze => "freeze",
            VShardStep::Unfreeze => "unfreeze",
            VShardStep::Activate => "activate",
            VShardStep::Release => "release",
            VShardStep::Drop => "drop",
        }
    }

    pub fn parse(name: &str) -> Option<VShardStep> {
        VShardStep::ALL.into_iter().find(|s| s.name() == name)
    }

    fn from_tag(tag: u8) -> Option<VShardStep> {
        VShardStep::ALL.into_iter().find(|s| *s as u8 == tag)
    }
}

/// One client's session as the source group holds it, carried to the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedSession {
    pub client: u64,
    pub floor: u64,
    /// (seq, encoded result), ascending.
    pub results: Vec<(u64, Vec<u8>)>,
}

/// A chunk of a vShard's copy for move `move_id`. Encoding: `33, vshard u32, move_id u64,
/// entries u32, (key, opt value)*, sessions u32, (client u64, floor u64, results u32,
/// (seq u64, result)*)*`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Import {
    pub vshard: u32,
    pub move_id: u64,
    /// (key, value); `None`: the key was deleted at the source since the bulk copy.
    pub entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub sessions: Vec<ImportedSession>,
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
    /// status 4: the key's vShard is being moved and its writes are paused here: nothing was
    /// applied (nor recorded in the session); retry shortly.
    Paused,
    /// status 5: the key's vShard now lives in group `group`: nothing was applied; send it
    /// there.
    Moved { group: u64 },
    /// status 255: the command did not decode; every node answers the same.
    Invalid { reason: String },
}

/// A result that may carry a value: a get's `Ok`, a lost compare-and-set's `CasMismatch`.
/// Encoded from the borrowed value, so the value is copied once, into the result, and its
/// length is known before that copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueAnswer {
    Got,
    CasLost,
}

impl ValueAnswer {
    /// The encoded result's length.
    pub fn encoded_len(value: Option<&[u8]>) -> usize {
        2 + value.map_or(0, |v| 4 + v.len())
    }

    pub fn encode(self, value: Option<&[u8]>) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::encoded_len(value));
        w.u8(match self {
            ValueAnswer::Got => 0,
            ValueAnswer::CasLost => 2,
        });
        opt(&mut w, value);
        w.buf
    }
}

/// Whether `encoded` is a command a KV_REQUEST may carry: put, delete, compare-and-set or get,
/// bare or in a session. Placement commands (vShard steps, imports) are proposed only by a
/// node's mover (VSHARD_STEP, nodes only): from a client one could freeze, empty or overwrite a
/// vShard. Looks at the op bytes only (the state machine decodes the rest).
pub fn is_client_command(encoded: &[u8]) -> bool {
    matches!(client_op(encoded), Some(1..=4))
}

/// Whether `encoded` is a delete, bare or in a session: the one write a group at its quota
/// still takes, since it frees space ([`crate::serve`]).
pub fn is_delete(encoded: &[u8]) -> bool {
    client_op(encoded) == Some(2)
}

/// The client and seq of a session command, read from its header alone: what makes two copies
/// of one write the same write (a retry carries the same pair).
pub fn session_of(encoded: &[u8]) -> Option<(u64, u64)> {
    if encoded.first() != Some(&SESSION_OP) || encoded.len() <= SESSION_HEADER_BYTES {
        return None;
    }
    let mut r = Reader::new(&encoded[1..]);
    Some((r.u64().ok()?, r.u64().ok()?))
}

/// The key of a session's key command, read without decoding the rest (a large value is not
/// copied to find its vShard).
pub fn session_key(encoded: &[u8]) -> Option<&[u8]> {
    session_of(encoded)?;
    if !is_client_command(encoded) {
        return None;
    }
    Reader::new(&encoded[SESSION_HEADER_BYTES + 1..])
        .bytes("key")
        .ok()
}

/// The op byte of a key command, looking inside a session.
fn client_op(encoded: &[u8]) -> Option<u8> {
    match encoded.first() {
        Some(&SESSION_OP) => encoded.get(SESSION_HEADER_BYTES).copied(),
        first => first.copied(),
    }
}

/// `16, client u64, seq u64, acked_below u64`: the bytes before a session's inner command.
const SESSION_HEADER_BYTES: usize = 1 + 8 + 8 + 8;

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
            KvCommand::VShard {
                step,
                vshard,
                group,
                move_id,
            } => {
                w.u8(VSHARD_OP);
                w.u8(*step as u8);
                w.u32(*vshard);
                w.u64(*group);
                w.u64(*move_id);
            }
            KvCommand::Import(import) => {
                w.u8(IMPORT_OP);
                w.u32(import.vshard);
                w.u64(import.move_id);
                w.u32(import.entries.len() as u32);
                for (k, v) in &import.entries {
                    w.bytes(k);
                    opt(&mut w, v.as_deref());
                }
                w.u32(import.sessions.len() as u32);
                for s in &import.sessions {
                    w.u64(s.client);
                    w.u64(s.floor);
                    w.u32(s.results.len() as u32);
                    for (seq, r) in &s.results {
                        w.u64(*seq);
                        w.bytes(r);
                    }
                }
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
            let inner = b.get(SESSION_HEADER_BYTES..).unwrap_or(&[]);
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
            VSHARD_OP => {
                let tag = r.u8()?;
                let step = VShardStep::from_tag(tag).ok_or(DecodeError::UnknownTag {
                    what: "vshard step",
                    tag,
                })?;
                KvCommand::VShard {
                    step,
                    vshard: vshard(&mut r)?,
                    group: r.u64()?,
                    move_id: r.u64()?,
                }
            }
            IMPORT_OP => KvCommand::Import(import(&mut r, b.len())?),
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
            KvResult::Ok { value } => return ValueAnswer::Got.encode(value.as_deref()),
            KvResult::NotFound => w.u8(1),
            KvResult::Duplicate => w.u8(3),
            KvResult::CasMismatch { current } => {
                return ValueAnswer::CasLost.encode(current.as_deref())
            }
            KvResult::Paused => w.u8(4),
            KvResult::Moved { group } => {
                w.u8(5);
                w.u64(*group);
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
            4 => KvResult::Paused,
            5 => KvResult::Moved { group: r.u64()? },
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

/// A vShard number, refused past the last vShard.
fn vshard(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let vshard = r.u32()?;
    if vshard as usize >= crate::routing::VSHARDS {
        return Err(DecodeError::TooLong {
            what: "vshard",
            len: u64::from(vshard),
            limit: crate::routing::VSHARDS as u64 - 1,
        });
    }
    Ok(vshard)
}

/// An import's body; every count is bounded by the bytes that could hold it (`total`).
fn import(r: &mut Reader<'_>, total: usize) -> Result<Import, DecodeError> {
    let vshard = vshard(r)?;
    let move_id = r.u64()?;
    let n = r.count("import entries", total / 5)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push((key(r)?, read_opt(r)?));
    }
    let n = r.count("import sessions", total / 20)?;
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let client = r.u64()?;
        let floor = r.u64()?;
        let count = r.count("import session results", total / 12)?;
        let mut results = Vec::with_capacity(count);
        for _ in 0..count {
            let seq = r.u64()?;
            results.push((seq, r.bytes("session result")?.to_vec()));
        }
        sessions.push(ImportedSession {
            client,
            floor,
            results,
        });
    }
    Ok(Import {
        vshard,
        move_id,
        entries,
        sessions,
    })
}

fn key(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let k = r.bytes("key")?;
    if check_key(k).is_err() {
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
                KvCommand::VShard {
                    step: VShardStep::Freeze,
                    vshard: 5,
                    group: 2,
                    move_id: 9,
                },
                "20030500000002000000000000000900000000000000",
            ),
            (
                KvCommand::Import(Import {
                    vshard: 1,
                    move_id: 9,
                    entries: vec![(k.clone(), Some(b"v".to_vec())), (k.clone(), None)],
                    sessions: vec![ImportedSession {
                        client: 7,
                        floor: 2,
                        results: vec![(3, b"r".to_vec())],
                    }],
                }),
                "21010000000900000000000000\
                 0200000001000000\
                 6b01010000007601000000\
                 6b0001000000070000000000000002000000000000000100000003000000000000000100000072",
            ),
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
            (KvResult::Paused, "04"),
            (KvResult::Moved { group: 2 }, "050200000000000000"),
            (KvResult::Invalid { reason: "x".into() }, "ff0100000078"),
        ];
        for (result, bytes) in results {
            assert_eq!(result.encode(), hex(bytes), "{result:?}");
            assert_eq!(KvResult::decode(&hex(bytes)), Ok(result));
        }
    }

    #[test]
    fn vshard_commands_refuse_bad_input() {
        for step in VShardStep::ALL {
            assert_eq!(VShardStep::parse(step.name()), Some(step));
        }
        assert_eq!(VShardStep::parse("nope"), None);
        let bad_step = hex("20090500000002000000000000000900000000000000");
        assert!(KvCommand::decode(&bad_step).is_err());
        let bad_vshard = hex("20030004000002000000000000000900000000000000");
        assert!(KvCommand::decode(&bad_vshard).is_err(), "vshard 1024");
        // An import announcing more entries than its bytes could hold.
        let huge = hex("21010000000900000000000000ffffffff");
        assert!(KvCommand::decode(&huge).is_err());
        let import = KvCommand::Import(Import {
            vshard: 3,
            move_id: 1,
            entries: vec![(b"a".to_vec(), Some(vec![0; 10]))],
            sessions: vec![],
        })
        .encode();
        for cut in 0..import.len() {
            assert!(KvCommand::decode(&import[..cut]).is_err(), "cut at {cut}");
        }
        let in_session = KvCommand::encode_session(1, 1, 0, &import);
        assert!(matches!(
            KvCommand::decode(&in_session),
            Ok(KvCommand::Session { .. })
        ));
    }

    #[test]
    fn random_vshard_and_import_bytes_decode_or_fail_but_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = KvCommand::Import(Import {
            vshard: 2,
            move_id: 3,
            entries: vec![(b"k".to_vec(), Some(b"v".to_vec())), (b"d".to_vec(), None)],
            sessions: vec![ImportedSession {
                client: 1,
                floor: 1,
                results: vec![(1, b"r".to_vec())],
            }],
        })
        .encode();
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                valid.clone()
            } else {
                let len = (next() % 64) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                b.insert(
                    0,
                    if next() % 2 == 0 {
                        VSHARD_OP
                    } else {
                        IMPORT_OP
                    },
                );
                b
            };
            // Flip a few bytes of the valid import, or keep the random ones.
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            if let Ok(cmd) = KvCommand::decode(&bytes) {
                assert_eq!(KvCommand::decode(&cmd.encode()), Ok(cmd), "re-encodes");
            }
        }
    }

    #[test]
    fn a_session_command_is_known_by_its_client_and_seq_from_its_header() {
        let enc = session(7, 9, 3, put(b"k", b"v")).encode();
        assert_eq!(session_of(&enc), Some((7, 9)));
        assert_eq!(session_of(&put(b"k", b"v").encode()), None, "bare");
        assert_eq!(session_of(&enc[..25]), None, "a header with no command");
        assert_eq!(session_of(&[]), None);
    }

    #[test]
    fn a_session_command_s_key_is_read_without_decoding_the_rest() {
        let k = b"key".to_vec();
        for inner in [
            put(b"key", b"value"),
            KvCommand::Delete { key: k.clone() },
            KvCommand::Cas {
                key: k.clone(),
                expected: Some(b"old".to_vec()),
                value: b"new".to_vec(),
            },
            KvCommand::Get { key: k.clone() },
        ] {
            let enc = session(1, 2, 0, inner.clone()).encode();
            assert_eq!(session_key(&enc), Some(&b"key"[..]), "{inner:?}");
            assert_eq!(session_key(&inner.encode()), None, "bare: no session");
        }
        let step = KvCommand::VShard {
            step: VShardStep::Freeze,
            vshard: 3,
            group: 2,
            move_id: 1,
        };
        let enc = KvCommand::encode_session(1, 2, 0, &step.encode());
        assert_eq!(session_key(&enc), None, "not a key command");
        let cut = session(1, 2, 0, put(b"key", b"v")).encode();
        assert_eq!(session_key(&cut[..28]), None, "truncated key");
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
