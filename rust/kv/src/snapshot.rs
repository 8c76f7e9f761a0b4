//! The KV state's snapshot: a cheap consistent view of it ([`KvSnapshotView`]) and the bytes
//! it serializes to, and back.
//!
//! Why a view: serializing a large map takes seconds, and the driver thread must keep applying
//! meanwhile. The view shares the per-vShard maps (`Arc` clones, copy-on-write, see
//! [`crate::partition`]) and copies the sessions, so taking it costs O(vShards + sessions) under
//! the read lock and it can be serialized on any thread.
//!
//! Layout (little-endian, `nodedb_multiraft::codec`'s `bytes` = u32 length + bytes):
//! `version u8, applied_index u64, applied_commands u64, count u64, (key, value)*`, then
//! `sessions u64, (client u64, floor u64, last_index u64, results u64, (seq u64, result)*)*`.
//! A snapshot written before sessions existed ends after the map and restores none.
//! Version 2 (written only while some vShard is not plain, so a snapshot of a group that takes
//! no part in a move stays readable by a node from before moves) adds, after the sessions,
//! `vshards u64, (vshard u32, state u8, group u64, move_id u64, dirty u64, key*)*` (state:
//! 1 incoming, 2 tracking, 3 frozen, 4 moved; `group` as [`VShardState::group`]).
//! Version 3 (written while some vShard has a fence: a group a move step ever applied to)
//! is version 2's layout (its vShard section possibly empty) followed by
//! `fences u64, (vshard u32, move_id u64)*` ([`KvState::fences`]). Versions 1 and 2 read as
//! no fence (0) for every vShard. A build from before fences refuses a version-3 snapshot
//! (`DecodeError::Version`): every node is upgraded before vShards move.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;

use nodedb_multiraft::codec::{Reader, Writer, FORMAT_VERSION};
use nodedb_multiraft::error::DecodeError;

use crate::partition::{Shard, ShardedMap};
use crate::routing::{vshard_of, VSHARDS};
use crate::session_table::{ClientSession, SessionTable};
use crate::state_machine::KvState;
use crate::vshard::{DirtyKeys, VShardMark, VShardState};

/// The snapshot version that adds the vShard states.
const VERSION_VSHARDS: u8 = 2;
/// The snapshot version that adds the vShards' fences (after the states).
const VERSION_FENCES: u8 = 3;

/// A point-in-time copy of a group's KV state that shares its maps with the live state.
/// `Send + Sync`: serialize it on another thread while the driver keeps applying.
#[derive(Debug, Clone)]
pub struct KvSnapshotView {
    map: ShardedMap,
    sessions: SessionTable,
    vshards: BTreeMap<u32, VShardMark>,
    fences: BTreeMap<u32, u64>,
    applied_index: u64,
    applied_commands: u64,
}

impl KvState {
    /// The view of this state as it is now (see [`KvSnapshotView`]).
    pub fn snapshot_view(&self) -> KvSnapshotView {
        KvSnapshotView {
            map: self.map.clone(),
            sessions: self.sessions.clone(),
            vshards: self.vshards.clone(),
            fences: self.fences.clone(),
            applied_index: self.applied_index,
            applied_commands: self.applied_commands,
        }
    }

    /// The state a snapshot's bytes describe; any corruption is an error, never a panic.
    pub fn from_snapshot(data: &[u8]) -> Result<KvState, DecodeError> {
        let mut decoder = KvSnapshotDecoder::new();
        decoder.feed(data)?;
        decoder.finish()
    }
}

/// Decodes a snapshot's bytes fed in pieces of any size, in order (a received snapshot is
/// decoded while the rest of it is still arriving). The map's entries are decoded as they
/// come; an entry cut by a piece's end is carried (only its bytes, completed from the next
/// piece); the sections after the map, small, are decoded at the end.
#[derive(Default)]
pub struct KvSnapshotDecoder {
    /// (version, applied_index, applied_commands) once the header is read.
    header: Option<(u8, u64, u64)>,
    entries_left: u64,
    shards: Vec<Shard>,
    /// Bytes not decoded yet: part of one entry, or (once the map is read) what follows it.
    carried: Vec<u8>,
}

impl KvSnapshotDecoder {
    pub fn new() -> Self {
        KvSnapshotDecoder {
            shards: (0..VSHARDS).map(|_| Shard::new()).collect(),
            ..Default::default()
        }
    }

    fn map_read(&self) -> bool {
        self.header.is_some() && self.entries_left == 0
    }

    /// The next bytes of the snapshot.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), DecodeError> {
        // Complete the item carried from the last piece with exactly the bytes it lacks.
        while !self.carried.is_empty() && !self.map_read() {
            let carried = std::mem::take(&mut self.carried);
            let (used, lacking) = self.decode_map(&carried)?;
            self.carried = carried;
            self.carried.drain(..used);
            if self.carried.is_empty() || bytes.is_empty() {
                break;
            }
            let n = lacking.min(bytes.len()).max(1);
            self.carried.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if !self.carried.is_empty() {
            self.carried.extend_from_slice(bytes); // what follows the map, or a partial item
            return Ok(());
        }
        let (used, _) = self.decode_map(bytes)?;
        self.carried.extend_from_slice(&bytes[used..]);
        Ok(())
    }

    /// Decodes the header and entries `buf` holds whole; returns the bytes used and, when it
    /// stopped at an entry cut short, how many more bytes its next field needs.
    fn decode_map(&mut self, buf: &[u8]) -> Result<(usize, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let mut used = 0;
        let cut = |e: DecodeError, used: usize| match e {
            DecodeError::Truncated {
                need_bytes,
                have_bytes,
                ..
            } => Ok((used, need_bytes - have_bytes)),
            e => Err(e),
        };
        if self.header.is_none() {
            let header = (|| {
                let version = r.u8()?;
                if ![FORMAT_VERSION, VERSION_VSHARDS, VERSION_FENCES].contains(&version) {
                    return Err(DecodeError::Version(version));
                }
                Ok((version, r.u64()?, r.u64()?, r.u64()?))
            })();
            match header {
                Ok((version, applied_index, applied_commands, count)) => {
                    self.header = Some((version, applied_index, applied_commands));
                    self.entries_left = count;
                    used = r.position();
                }
                Err(e) => return cut(e, used),
            }
        }
        while self.entries_left > 0 {
            let entry = (|| Ok::<_, DecodeError>((r.bytes("key")?, r.bytes("value")?)))();
            match entry {
                Ok((k, v)) => {
                    self.shards[vshard_of(k)].insert(k.to_vec(), v.to_vec());
                    self.entries_left -= 1;
                    used = r.position();
                }
                Err(e) => return cut(e, used),
            }
        }
        Ok((used, 0))
    }

    /// Every byte was fed: the state.
    pub fn finish(self) -> Result<KvState, DecodeError> {
        let Some((version, applied_index, applied_commands)) =
            self.header.filter(|_| self.map_read())
        else {
            return Err(DecodeError::Truncated {
                offset: 0,
                need_bytes: 1,
                have_bytes: 0,
            });
        };
        let mut r = Reader::new(&self.carried);
        let mut sessions = Vec::new();
        if !r.at_end() {
            let n = r.u64()?;
            for _ in 0..n {
                let client = r.u64()?;
                let floor = r.u64()?;
                let last_index = r.u64()?;
                let count = r.u64()?;
                let mut results = Vec::new();
                for _ in 0..count {
                    let seq = r.u64()?;
                    results.push((seq, r.bytes("session result")?.to_vec()));
                }
                sessions.push((client, ClientSession::new(floor, last_index, results)));
            }
        }
        let mut vshards = BTreeMap::new();
        if version >= VERSION_VSHARDS {
            let n = r.u64()?;
            for _ in 0..n {
                let vshard = vshard_in_range(r.u32()?)?;
                let tag = r.u8()?;
                let group = r.u64()?;
                let move_id = r.u64()?;
                let count = r.u64()?;
                let mut dirty = DirtyKeys::default();
                for _ in 0..count {
                    dirty.insert(r.bytes("dirty key")?);
                }
                let state = match tag {
                    1 => VShardState::Incoming { from: group },
                    2 => VShardState::Tracking { to: group, dirty },
                    3 => VShardState::Frozen { to: group, dirty },
                    4 => VShardState::Moved { to: group },
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "vshard state",
                            tag,
                        })
                    }
                };
                vshards.insert(vshard, VShardMark { state, move_id });
            }
        }
        let mut fences = BTreeMap::new();
        if version >= VERSION_FENCES {
            let n = r.u64()?;
            for _ in 0..n {
                let vshard = vshard_in_range(r.u32()?)?;
                fences.insert(vshard, r.u64()?);
            }
        }
        r.finish()?;
        let state = KvState {
            map: ShardedMap::from_shards(self.shards.into_iter().map(Arc::new).collect()),
            sessions: SessionTable::from_sessions(sessions),
            vshards,
            fences,
            applied_index,
            applied_commands,
        };
        Ok(state)
    }
}

/// `vshard` if it names one, else the decode error.
fn vshard_in_range(vshard: u32) -> Result<u32, DecodeError> {
    if vshard as usize >= VSHARDS {
        return Err(DecodeError::TooLong {
            what: "vshard",
            len: u64::from(vshard),
            limit: VSHARDS as u64 - 1,
        });
    }
    Ok(vshard)
}

impl KvSnapshotView {
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The exact size [`Self::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        let entries: usize = self.map.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let sessions: usize = self
            .sessions
            .iter()
            .map(|(_, s)| 32 + s.results().values().map(|r| 12 + r.len()).sum::<usize>())
            .sum();
        let fences = if self.fences.is_empty() {
            0
        } else {
            8 + 12 * self.fences.len()
        };
        let vshards: usize = if self.version() == FORMAT_VERSION {
            0
        } else {
            8 + self
                .vshards
                .values()
                .map(|m| {
                    let dirty = m.state.dirty().into_iter().flat_map(DirtyKeys::iter);
                    29 + dirty.map(|k| 4 + k.len()).sum::<usize>()
                })
                .sum::<usize>()
        };
        25 + entries + 8 + sessions + vshards + fences
    }

    /// The version written: the lowest whose layout holds this state.
    fn version(&self) -> u8 {
        if !self.fences.is_empty() {
            VERSION_FENCES
        } else if !self.vshards.is_empty() {
            VERSION_VSHARDS
        } else {
            FORMAT_VERSION
        }
    }

    /// The snapshot's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out)
            .unwrap_or_else(|_| unreachable!("writing to a Vec cannot fail"));
        out
    }

    /// The snapshot's bytes written to `out` as they are produced (one vShard's worth buffered
    /// at a time), for a caller that streams them to a file.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        const FLUSH_AT: usize = 64 << 10;
        let mut w = Writer::with_capacity(2 * FLUSH_AT);
        let version = self.version();
        w.u8(version);
        w.u64(self.applied_index);
        w.u64(self.applied_commands);
        w.u64(self.map.len() as u64);
        for shard in self.map.shards() {
            for (k, v) in shard.iter() {
                w.bytes(k);
                w.bytes(v);
            }
            if w.buf.len() >= FLUSH_AT {
                out.write_all(&w.buf)?;
                w.buf.clear();
            }
        }
        w.u64(self.sessions.len() as u64);
        for (client, s) in self.sessions.iter() {
            w.u64(*client);
            w.u64(s.floor());
            w.u64(s.last_index());
            w.u64(s.results().len() as u64);
            for (seq, r) in s.results() {
                w.u64(*seq);
                w.bytes(r);
            }
            if w.buf.len() >= FLUSH_AT {
                out.write_all(&w.buf)?;
                w.buf.clear();
            }
        }
        if version >= VERSION_VSHARDS {
            w.u64(self.vshards.len() as u64);
            for (vshard, mark) in &self.vshards {
                let state = &mark.state;
                w.u32(*vshard);
                w.u8(match state {
                    VShardState::Incoming { .. } => 1,
                    VShardState::Tracking { .. } => 2,
                    VShardState::Frozen { .. } => 3,
                    VShardState::Moved { .. } => 4,
                });
                w.u64(state.group());
                w.u64(mark.move_id);
                let dirty = state.dirty();
                w.u64(dirty.map_or(0, |d| d.len() as u64));
                for k in dirty.into_iter().flat_map(DirtyKeys::iter) {
                    w.bytes(k);
                }
                if w.buf.len() >= FLUSH_AT {
                    out.write_all(&w.buf)?;
                    w.buf.clear();
                }
            }
        }
        if version >= VERSION_FENCES {
            w.u64(self.fences.len() as u64);
            for (vshard, fence) in &self.fences {
                w.u32(*vshard);
                w.u64(*fence);
            }
        }
        out.write_all(&w.buf)
    }
}
