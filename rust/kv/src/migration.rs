//! Copying a vShard between groups: the source's export (ready-to-propose import commands) and
//! the target's apply of an import, sessions merged so exactly-once survives the move.
//!
//! Export reads one vShard (O(its keys), under the state's read lock held by the caller):
//! - bulk (`delta = false`, source Tracking or Frozen): every key and value;
//! - delta (`delta = true`, source Frozen: nothing changes any more): the current value (or
//!   deletion) of every key written since tracking began, and every session record of the
//!   source (any of them may hold the result of a write to this vShard).
//!
//! Import (target Incoming only: a late chunk of an aborted or superseded move is refused):
//! values set, deletions applied; per client, floor = max of both, results = union (the
//! target's own result wins on an equal seq), last index = the import's index.

use std::sync::Arc;

use crate::command::{Import, ImportedSession, KvCommand, KvResult};
use crate::routing::vshard_of;
use crate::session_table::{SessionTable, SESSIONS_MAX};
use crate::shard::Shard;
use crate::state_machine::KvState;
use crate::vshard::{VShardMark, VShardState};

/// Encoded bytes of an empty import (op, vshard, two counts).
const IMPORT_HEADER_BYTES: usize = 1 + 4 + 8 + 4 + 4;
/// Encoded bytes of a session record without results (client, floor, count).
const SESSION_HEADER_BYTES: usize = 8 + 8 + 4;

/// Fills import commands up to a byte budget each.
struct Chunker {
    vshard: u32,
    move_id: u64,
    limit: usize,
    current: Import,
    bytes: usize,
    out: Vec<Vec<u8>>,
}

impl Chunker {
    fn new(vshard: u32, move_id: u64, limit: usize) -> Self {
        Chunker {
            vshard,
            move_id,
            limit,
            current: Import {
                vshard,
                move_id,
                ..Import::default()
            },
            bytes: IMPORT_HEADER_BYTES,
            out: Vec::new(),
        }
    }

    /// Room for `n` more bytes, starting a new chunk if the current one is not empty and
    /// would grow past the limit (an item larger than the limit gets a chunk of its own).
    fn make_room(&mut self, n: usize) {
        let empty = self.current.entries.is_empty() && self.current.sessions.is_empty();
        if !empty && self.bytes + n > self.limit {
            self.flush();
        }
        self.bytes += n;
    }

    fn entry(&mut self, key: &[u8], value: Option<&Vec<u8>>) {
        self.make_room(4 + key.len() + 1 + value.map_or(0, |v| 4 + v.len()));
        self.current.entries.push((key.to_vec(), value.cloned()));
    }

    fn result(&mut self, client: u64, floor: u64, seq: u64, result: &[u8]) {
        let n = 8 + 4 + result.len();
        let same_client = self.current.sessions.last().map(|s| s.client) == Some(client);
        let fits = self.bytes + n <= self.limit;
        if !(same_client && fits) {
            self.make_room(SESSION_HEADER_BYTES + n);
            self.current.sessions.push(ImportedSession {
                client,
                floor,
                results: Vec::new(),
            });
        } else {
            self.make_room(n);
        }
        if let Some(s) = self.current.sessions.last_mut() {
            s.results.push((seq, result.to_vec()));
        }
    }

    /// A session with no results still carries its floor.
    fn session_without_results(&mut self, client: u64, floor: u64) {
        self.make_room(SESSION_HEADER_BYTES);
        self.current.sessions.push(ImportedSession {
            client,
            floor,
            results: Vec::new(),
        });
    }

    fn flush(&mut self) {
        let done = std::mem::replace(
            &mut self.current,
            Import {
                vshard: self.vshard,
                move_id: self.move_id,
                ..Import::default()
            },
        );
        self.bytes = IMPORT_HEADER_BYTES;
        if !done.entries.is_empty() || !done.sessions.is_empty() {
            self.out.push(KvCommand::Import(done).encode());
        }
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        self.flush();
        self.out
    }
}

/// What an export of one vShard reads, copied from the state in O(sessions) at most (the
/// shard and a dirty set are shared, not copied), so the chunks are built after the state's
/// lock is let go: built under it, a large vShard held up every apply of its group (and so the
/// driver thread of every group) for as long as its keys and values took to copy.
pub struct VShardExport {
    vshard: u32,
    mark: Option<VShardMark>,
    shard: Arc<Shard>,
    /// The group's sessions, for a delta (it carries them all); None for a bulk copy.
    sessions: Option<SessionTable>,
}

impl VShardExport {
    /// The copy for the target of move `move_id` as import commands of at most `chunk_bytes`
    /// each (see the module docs), or why this group cannot export it now.
    pub fn chunks(&self, move_id: u64, chunk_bytes: usize) -> Result<Vec<Vec<u8>>, String> {
        let vshard = self.vshard;
        let state = self
            .mark
            .as_ref()
            .filter(|m| m.move_id == move_id)
            .map(|m| &m.state);
        let shard = &self.shard;
        let mut chunks = Chunker::new(vshard, move_id, chunk_bytes.max(1));
        match (state, &self.sessions) {
            (Some(VShardState::Tracking { .. } | VShardState::Frozen { .. }), None) => {
                for (k, v) in shard.iter() {
                    chunks.entry(k, Some(v));
                }
            }
            (Some(VShardState::Frozen { dirty, .. }), Some(sessions)) => {
                for k in dirty.iter() {
                    chunks.entry(k, shard.get(k));
                }
                for (client, s) in sessions.iter() {
                    if s.results().is_empty() {
                        chunks.session_without_results(*client, s.floor());
                    }
                    for (seq, r) in s.results() {
                        chunks.result(*client, s.floor(), *seq, r);
                    }
                }
            }
            _ => {
                let name = VShardMark::describe(self.mark.as_ref());
                let needs = if self.sessions.is_some() {
                    "frozen"
                } else {
                    "tracking or frozen"
                };
                return Err(format!(
                    "cannot export vshard {vshard} for move {move_id} here: it is {name}, \
                     an export needs it {needs} for that move"
                ));
            }
        }
        Ok(chunks.finish())
    }
}

impl KvState {
    /// What an export of vShard `vshard` reads ([`VShardExport`]), cheaply copied: a delta's
    /// (`delta`) or a bulk copy's.
    pub fn vshard_export(&self, vshard: u32, delta: bool) -> VShardExport {
        VShardExport {
            vshard,
            mark: self.vshards.get(&vshard).cloned(),
            // Past the last vShard: no shard and no mark, so `chunks` refuses it as plain.
            shard: self
                .map
                .shards()
                .get(vshard as usize)
                .cloned()
                .unwrap_or_default(),
            sessions: delta.then(|| self.sessions.clone()),
        }
    }

    /// An import chunk into this group, the target (see the module docs); all or nothing.
    pub(crate) fn apply_import(&mut self, index: u64, import: Import) -> KvResult {
        let v = import.vshard;
        match self.vshards.get(&v) {
            Some(VShardMark {
                state: VShardState::Incoming { .. },
                move_id,
            }) if *move_id == import.move_id => {}
            other => {
                let name = VShardMark::describe(other);
                return KvResult::Invalid {
                    reason: format!(
                        "import of move {} refused: vshard {v} is {name} here, not incoming \
                         for that move",
                        import.move_id
                    ),
                };
            }
        }
        if let Some((k, _)) = import
            .entries
            .iter()
            .find(|(k, _)| vshard_of(k) != v as usize)
        {
            return KvResult::Invalid {
                reason: format!(
                    "import refused: a key of vshard {} in an import of vshard {v}",
                    vshard_of(k)
                ),
            };
        }
        for (key, value) in import.entries {
            match value {
                Some(value) => {
                    self.map.insert_in(v as usize, key, value);
                }
                None => {
                    self.map.remove_in(v as usize, &key);
                }
            }
        }
        for s in import.sessions {
            // A source of an older build may send results this one would not keep: `merge`
            // keeps them as `kept` says.
            self.sessions.merge(index, s.client, s.floor, s.results);
        }
        self.sessions.evict_down_to(SESSIONS_MAX);
        KvResult::Ok { value: None }
    }

    /// (vshard, keys, bytes of keys and values) of every vShard holding keys here.
    pub fn vshard_stats(&self) -> Vec<(u32, u64, u64)> {
        (0..crate::routing::VSHARDS)
            .filter_map(|v| {
                let keys = self.map.shard(v).len();
                (keys > 0).then(|| (v as u32, keys as u64, self.map.shard_bytes(v) as u64))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
