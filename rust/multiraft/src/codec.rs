//! Byte layouts owned by this crate, all little-endian and versioned:
//! - the data of a proposed entry (a batch of commands),
//! - the raft frames between nodes (RaftBatch, SnapshotChunk, SnapshotAck payloads).
//!
//! Decoders check every length before trusting it and return `DecodeError`, never panic.

use raft::prelude::Message;

use crate::error::DecodeError;
use crate::ids::{GroupId, NodeId};

/// Version byte leading every structure below.
pub const FORMAT_VERSION: u8 = 1;
/// Commands in one proposed entry.
pub const COMMANDS_PER_ENTRY_MAX: usize = 1 << 16;
/// Raft messages in one RaftBatch frame.
pub const MESSAGES_PER_BATCH_MAX: usize = 1 << 16;
/// A single encoded item (command, raft message, chunk) may not exceed the 64 MiB frame limit.
pub const ITEM_BYTES_MAX: usize = 64 << 20;
/// A proposed entry's data ([`encode_commands`]), at most: with a raft message's header it
/// still fits one frame to a follower, and with its log record's header one log record (a
/// record over the log's limit stops the engine).
pub const ENTRY_BYTES_MAX: usize = ITEM_BYTES_MAX - (1 << 20);

/// Appends little-endian fields to a buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(bytes: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(bytes),
        }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// u32 length prefix + bytes. Callers bound `b` by `ITEM_BYTES_MAX` first.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
}

/// Reads little-endian fields, checking lengths.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let have = self.buf.len() - self.pos;
        if n > have {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                need_bytes: n,
                have_bytes: have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > ITEM_BYTES_MAX {
            return Err(DecodeError::TooLong {
                what,
                len: len as u64,
                limit: ITEM_BYTES_MAX as u64,
            });
        }
        self.take(len)
    }
    pub fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            FORMAT_VERSION => Ok(()),
            v => Err(DecodeError::Version(v)),
        }
    }
    /// A count prefix, refused above `limit` before anything is allocated for it.
    pub fn count(&mut self, what: &'static str, limit: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(DecodeError::TooLong {
                what,
                len: n as u64,
                limit: limit as u64,
            });
        }
        Ok(n)
    }
    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }
    /// Nothing left to read (an optional trailing section is absent).
    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Entry data: `version u8, count u32, (len u32, bytes)*`. One proposal (single or batch) is one
/// raft entry, so a batch costs one log record and one apply call.
pub fn encode_commands<B: AsRef<[u8]>>(commands: &[B]) -> Vec<u8> {
    let mut w = Writer::with_capacity(encoded_commands_len(commands));
    w.u8(FORMAT_VERSION);
    w.u32(commands.len() as u32);
    for c in commands {
        w.bytes(c.as_ref());
    }
    w.buf
}

/// The length of [`encode_commands`]'s output for `commands`.
pub fn encoded_commands_len<B: AsRef<[u8]>>(commands: &[B]) -> usize {
    5 + commands.iter().map(|c| c.as_ref().len() + 4).sum::<usize>()
}

/// Why `commands` cannot be one entry, if they cannot: an entry this node writes must decode
/// ([`decode_commands`]), fit a log record and reach its followers in one frame. Checked
/// before a proposal goes to raft; one that got in anyway was committed by every replica and
/// then applied as nothing.
pub fn entry_refusal<B: AsRef<[u8]>>(commands: &[B]) -> Option<String> {
    if commands.is_empty() {
        return Some("empty proposal batch".into());
    }
    if commands.len() > COMMANDS_PER_ENTRY_MAX {
        return Some(format!(
            "{} commands in one proposal; an entry holds at most {COMMANDS_PER_ENTRY_MAX}: \
             propose them in several",
            commands.len()
        ));
    }
    let bytes = encoded_commands_len(commands);
    if bytes > ENTRY_BYTES_MAX {
        return Some(format!(
            "a proposal of {bytes} bytes; an entry holds at most {ENTRY_BYTES_MAX} (one frame \
             to a follower): propose it in several"
        ));
    }
    None
}

/// Inverse of [`encode_commands`], borrowing from `data`.
pub fn decode_commands(data: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut r = Reader::new(data);
    r.version()?;
    let n = r.count("commands", COMMANDS_PER_ENTRY_MAX)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.bytes("command")?);
    }
    r.finish()?;
    Ok(out)
}

/// Protobuf encoding of a raft message (raft-rs's own encoding, docs/WIRE.md).
pub fn encode_pb<M: protobuf::Message>(m: &M) -> Vec<u8> {
    // Writing a well-formed in-memory protobuf message into a Vec cannot fail.
    m.write_to_bytes().unwrap_or_default()
}

/// Parses a protobuf message from untrusted bytes.
pub fn decode_pb<M: protobuf::Message>(b: &[u8]) -> Result<M, DecodeError> {
    M::parse_from_bytes(b).map_err(|e| DecodeError::Protobuf(e.to_string()))
}

/// A RaftBatch frame payload: every message one node sends another in one round, across groups.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftBatch {
    pub from: NodeId,
    pub messages: Vec<(GroupId, Message)>,
}

impl RaftBatch {
    /// `version u8, from u64, count u32, (group u64, len u32, protobuf)*`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + self.messages.len() * 64);
        w.u8(FORMAT_VERSION);
        w.u64(self.from.0);
        w.u32(self.messages.len() as u32);
        for (g, m) in &self.messages {
            w.u64(g.0);
            w.bytes(&encode_pb(m));
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        r.version()?;
        let from = NodeId(r.u64()?);
        let n = r.count("raft messages", MESSAGES_PER_BATCH_MAX)?;
        let mut messages = Vec::with_capacity(n);
        for _ in 0..n {
            let g = GroupId(r.u64()?);
            let m: Message = decode_pb(r.bytes("raft message")?)?;
            messages.push((g, m));
        }
        r.finish()?;
        Ok(RaftBatch { from, messages })
    }
}

/// Identity of one snapshot of one group: what a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotKey {
    pub group: GroupId,
    pub index: u64,
    pub term: u64,
}

/// A SnapshotChunk frame payload. The last chunk carries the raft MsgSnapshot, which the
/// receiver steps into raft only after the whole file is on disk and its checksum matches.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotChunk {
    pub from: NodeId,
    pub key: SnapshotKey,
    pub offset_bytes: u64,
    pub total_bytes: u64,
    /// xxh3-64 of the whole snapshot file.
    pub checksum: u64,
    pub data: Vec<u8>,
    /// Present on the last chunk only.
    pub message: Option<Message>,
}

impl SnapshotChunk {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.data.len());
        w.u8(FORMAT_VERSION);
        w.u64(self.from.0);
        w.u64(self.key.group.0);
        w.u64(self.key.index);
        w.u64(self.key.term);
        w.u64(self.offset_bytes);
        w.u64(self.total_bytes);
        w.u64(self.checksum);
        w.bytes(&self.data);
        match &self.message {
            Some(m) => {
                w.u8(1);
                w.bytes(&encode_pb(m));
            }
            None => w.u8(0),
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        r.version()?;
        let from = NodeId(r.u64()?);
        let key = SnapshotKey {
            group: GroupId(r.u64()?),
            index: r.u64()?,
            term: r.u64()?,
        };
        let offset_bytes = r.u64()?;
        let total_bytes = r.u64()?;
        let checksum = r.u64()?;
        let data = r.bytes("snapshot chunk")?.to_vec();
        let message = match r.u8()? {
            0 => None,
            1 => Some(decode_pb(r.bytes("snapshot message")?)?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "snapshot chunk message flag",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(SnapshotChunk {
            from,
            key,
            offset_bytes,
            total_bytes,
            checksum,
            data,
            message,
        })
    }
}

/// A SnapshotAck frame payload: the receiver's verdict on a whole transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotAck {
    pub from: NodeId,
    pub key: SnapshotKey,
    pub ok: bool,
}

impl SnapshotAck {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(34);
        w.u8(FORMAT_VERSION);
        w.u64(self.from.0);
        w.u64(self.key.group.0);
        w.u64(self.key.index);
        w.u64(self.key.term);
        w.u8(u8::from(self.ok));
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        r.version()?;
        let from = NodeId(r.u64()?);
        let key = SnapshotKey {
            group: GroupId(r.u64()?),
            index: r.u64()?,
            term: r.u64()?,
        };
        let ok = match r.u8()? {
            0 => false,
            1 => true,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "snapshot ack verdict",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(SnapshotAck { from, key, ok })
    }
}

/// One frame between engines; the transport carries kinds 16/17/18 (RaftBatch, SnapshotChunk,
/// SnapshotAck) of the wire table.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Batch(RaftBatch),
    /// Boxed: a chunk header is much larger than the other variants.
    Chunk(Box<SnapshotChunk>),
    Ack(SnapshotAck),
}

/// Wire message kinds of the raft frames (nodedb-wire's table, kinds 16–31 are raft traffic).
pub const KIND_RAFT_BATCH: u16 = 16;
pub const KIND_SNAPSHOT_CHUNK: u16 = 17;
pub const KIND_SNAPSHOT_ACK: u16 = 18;

impl Frame {
    /// About how many bytes the frame encodes to, without encoding it: the entries' and
    /// snapshot data plus a fixed allowance per message (what a byte-bounded queue counts).
    pub fn approx_bytes(&self) -> usize {
        const PER_MESSAGE: usize = 64;
        const PER_ENTRY: usize = 24;
        match self {
            Frame::Batch(b) => b
                .messages
                .iter()
                .map(|(_, m)| {
                    PER_MESSAGE
                        + m.context.len()
                        + m.get_snapshot().data.len()
                        + m.entries
                            .iter()
                            .map(|e| PER_ENTRY + e.data.len() + e.context.len())
                            .sum::<usize>()
                })
                .sum(),
            Frame::Chunk(c) => PER_MESSAGE + c.data.len(),
            Frame::Ack(_) => PER_MESSAGE,
        }
    }

    /// (wire kind, payload).
    pub fn encode(&self) -> (u16, Vec<u8>) {
        match self {
            Frame::Batch(b) => (KIND_RAFT_BATCH, b.encode()),
            Frame::Chunk(c) => (KIND_SNAPSHOT_CHUNK, c.encode()),
            Frame::Ack(a) => (KIND_SNAPSHOT_ACK, a.encode()),
        }
    }

    pub fn decode(kind: u16, payload: &[u8]) -> Result<Frame, DecodeError> {
        match kind {
            KIND_RAFT_BATCH => Ok(Frame::Batch(RaftBatch::decode(payload)?)),
            KIND_SNAPSHOT_CHUNK => Ok(Frame::Chunk(Box::new(SnapshotChunk::decode(payload)?))),
            KIND_SNAPSHOT_ACK => Ok(Frame::Ack(SnapshotAck::decode(payload)?)),
            other => Err(DecodeError::UnknownTag {
                what: "raft frame kind",
                tag: u8::try_from(other).unwrap_or(u8::MAX),
            }),
        }
    }

    /// The sending node.
    pub fn from(&self) -> NodeId {
        match self {
            Frame::Batch(b) => b.from,
            Frame::Chunk(c) => c.from,
            Frame::Ack(a) => a.from,
        }
    }

    /// Refuse a frame that claims to come from anyone but `sender`, the node id its transport
    /// connection proved: the frame's own field and, inside, every raft message's `from` (raft
    /// steps on `msg.from`, so one forged message is enough to fake a vote or an append).
    pub fn check_sender(&self, sender: NodeId) -> Result<(), String> {
        if self.from() != sender {
            return Err(format!(
                "frame claims to come from node {} but the connection is node {}'s",
                self.from().0,
                sender.0
            ));
        }
        let messages: Box<dyn Iterator<Item = &Message>> = match self {
            Frame::Batch(b) => Box::new(b.messages.iter().map(|(_, m)| m)),
            Frame::Chunk(c) => Box::new(c.message.iter()),
            Frame::Ack(_) => Box::new(std::iter::empty()),
        };
        for m in messages {
            if m.from != sender.0 {
                return Err(format!(
                    "raft message claims to come from node {} but the connection is node {}'s",
                    m.from, sender.0
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod sender_tests {
    use super::*;

    fn msg(from: u64) -> Message {
        Message {
            from,
            to: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_frame_from_its_connection_passes() {
        let batch = Frame::Batch(RaftBatch {
            from: NodeId(2),
            messages: vec![(GroupId(1), msg(2)), (GroupId(3), msg(2))],
        });
        assert!(batch.check_sender(NodeId(2)).is_ok());
    }

    #[test]
    fn a_forged_sender_is_refused_in_the_frame_or_in_any_message() {
        let claims_3 = Frame::Batch(RaftBatch {
            from: NodeId(3),
            messages: vec![(GroupId(1), msg(3))],
        });
        assert!(claims_3.check_sender(NodeId(2)).is_err());
        let one_message_forged = Frame::Batch(RaftBatch {
            from: NodeId(2),
            messages: vec![(GroupId(1), msg(2)), (GroupId(1), msg(99))],
        });
        let err = one_message_forged.check_sender(NodeId(2)).unwrap_err();
        assert!(err.contains("99"), "{err}");
        let chunk = |from: u64, message_from: u64| {
            Frame::Chunk(Box::new(SnapshotChunk {
                from: NodeId(from),
                key: SnapshotKey {
                    group: GroupId(1),
                    index: 5,
                    term: 2,
                },
                offset_bytes: 0,
                total_bytes: 0,
                checksum: 0,
                data: vec![],
                message: Some(msg(message_from)),
            }))
        };
        assert!(chunk(2, 2).check_sender(NodeId(2)).is_ok());
        assert!(chunk(3, 3).check_sender(NodeId(2)).is_err());
        assert!(chunk(2, 3).check_sender(NodeId(2)).is_err());
        let ack = Frame::Ack(SnapshotAck {
            from: NodeId(4),
            key: SnapshotKey {
                group: GroupId(1),
                index: 5,
                term: 2,
            },
            ok: true,
        });
        assert!(ack.check_sender(NodeId(2)).is_err());
        assert!(ack.check_sender(NodeId(4)).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::{Entry, MessageType};

    #[test]
    fn commands_roundtrip_and_reject_truncation_at_every_length() {
        let cmds: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![], vec![7u8; 300]];
        let enc = encode_commands(&cmds);
        let dec = decode_commands(&enc).expect("roundtrip");
        assert_eq!(dec, cmds.iter().map(|c| c.as_slice()).collect::<Vec<_>>());
        for cut in 0..enc.len() {
            assert!(
                decode_commands(&enc[..cut]).is_err(),
                "cut at {cut} decoded"
            );
        }
    }

    #[test]
    fn command_count_is_checked_before_allocation() {
        let mut w = Writer::default();
        w.u8(FORMAT_VERSION);
        w.u32(u32::MAX);
        assert!(matches!(
            decode_commands(&w.buf),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn frames_roundtrip_and_reject_garbage() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 5;
        let e = Entry {
            index: 9,
            data: b"x".to_vec().into(),
            ..Default::default()
        };
        m.entries = vec![e].into();
        let frames = vec![
            Frame::Batch(RaftBatch {
                from: NodeId(1),
                messages: vec![(GroupId(3), m.clone()), (GroupId(0), m.clone())],
            }),
            Frame::Chunk(Box::new(SnapshotChunk {
                from: NodeId(1),
                key: SnapshotKey {
                    group: GroupId(2),
                    index: 10,
                    term: 3,
                },
                offset_bytes: 4,
                total_bytes: 8,
                checksum: 77,
                data: vec![1, 2, 3, 4],
                message: Some(m),
            })),
            Frame::Ack(SnapshotAck {
                from: NodeId(2),
                key: SnapshotKey {
                    group: GroupId(2),
                    index: 10,
                    term: 3,
                },
                ok: true,
            }),
        ];
        for f in frames {
            let (kind, bytes) = f.encode();
            assert_eq!(Frame::decode(kind, &bytes).expect("decode"), f);
            for cut in 0..bytes.len() {
                assert!(Frame::decode(kind, &bytes[..cut]).is_err());
            }
            let mut bad = bytes.clone();
            bad[0] = 99;
            assert_eq!(Frame::decode(kind, &bad), Err(DecodeError::Version(99)));
        }
        assert!(Frame::decode(5, &[1]).is_err());
    }
}
