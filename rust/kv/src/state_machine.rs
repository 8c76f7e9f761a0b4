//! The built-in KV state machine: put / delete / compare-and-set / get, applied in batches with
//! one result per command, a digest for convergence checks, snapshot and restore.
//!
//! Exactly-once writes: a client wraps each write in a session (`KvCommand::Session`: client id,
//! sequence number, and the lowest sequence it still waits for). A retry after an unknown outcome
//! (lost leader, lost reply) resends the same bytes; whichever copy applies first takes effect,
//! every later copy gets the cached result and changes nothing. Sessions are part of the
//! replicated state (snapshot, digest), so every replica makes the same decision.
//!
//! The map sits behind a shared lock so reads (after a ReadIndex) are served from any thread
//! through `KvReader` without a round trip to the driver.
//!
//! The map is partitioned by vShard ([`crate::partition`]: one hash map per vShard, copy-on-write
//! behind `Arc`), so one vShard can be moved or dropped in O(its keys) and a snapshot view
//! ([`crate::snapshot`]) is taken without copying the data. Hash maps, not ordered ones: nothing
//! reads keys in order, and an ordered map's insert (a dozen key comparisons, each chasing a
//! heap pointer) was a quarter of the driver thread's time under load (BENCHMARKS.md). Their
//! seed is random per process, so iteration order differs between replicas: the digest combines
//! entries order-independently, and snapshots need no order.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use nodedb_multiraft::error::SmError;
use nodedb_multiraft::state_machine::{
    Command, DecodedState, SnapshotDecoder, SnapshotView, StateMachine,
};

use crate::command::{session_key, session_of, KvCommand, KvResult, VShardStep, ValueAnswer};
use crate::partition::ShardedMap;
use crate::routing::vshard_of;
use crate::session_table::{Admission, SessionTable, RESULT_KEPT_BYTES_MAX};
use crate::snapshot::{KvSnapshotDecoder, KvSnapshotView};
use crate::vshard::{self, Refusal, VShardMark, VShardState};

/// Bytes of large results (over [`RESULT_KEPT_BYTES_MAX`]) one apply batch returns, at most.
/// Why: one 1 KiB request of 40 compare-and-sets losing against a 16 MiB value made every
/// replica hold 40 copies at once (+620 MiB each; a thousand of them in one entry would have
/// ended every replica, again at each restart's replay).
pub const RESULT_BATCH_BYTES_MAX: usize = 32 << 20;

/// What one batch has left of [`RESULT_BATCH_BYTES_MAX`].
struct ResultRoom(usize);

impl ResultRoom {
    /// `kind`'s result with `value`; a large one (over [`RESULT_KEPT_BYTES_MAX`]) takes its
    /// length from the room, and past the room it is answered Duplicate instead, without a
    /// copy. Why before the copy: this runs under the group's lock on every replica, and a
    /// 40 KiB request of 400 compare-and-sets losing against a 16 MiB value copied 6 GiB
    /// there (twice over in a session), stalling the group's driver and every group sharing
    /// it for seconds (a leader lost its lease in CI).
    fn answer(&mut self, kind: ValueAnswer, value: Option<&[u8]>) -> Vec<u8> {
        let len = ValueAnswer::encoded_len(value);
        if len > RESULT_KEPT_BYTES_MAX {
            if len > self.0 {
                self.0 = 0;
                return KvResult::Duplicate.encode();
            }
            self.0 -= len;
        }
        kind.encode(value)
    }
}

/// The KV map, the client sessions, the vShards in a move, and the index of the last command
/// applied to them.
#[derive(Default, Debug)]
pub struct KvState {
    pub map: ShardedMap,
    pub sessions: SessionTable,
    /// vShards not in the plain state (moving in or out, or moved away: [`crate::vshard`]).
    pub vshards: BTreeMap<u32, VShardMark>,
    /// Per vShard a step ever applied to here: the highest move id of those steps (the fence,
    /// [`crate::vshard::step`]; a step of an older move is refused as stale).
    pub fences: BTreeMap<u32, u64>,
    pub applied_index: u64,
    pub applied_commands: u64,
}

impl KvState {
    /// Bytes of the keys and values and of the sessions' cached results: what a group's quota
    /// (`ServeOptions::quota_bytes`) is checked against, O(1). Memory use is higher by the
    /// containers' overhead.
    pub fn usage_bytes(&self) -> usize {
        self.map.total_bytes() + self.sessions.bytes()
    }

    /// xxh3 over (applied index, the map's entry count and the wrapping sum of its entries'
    /// hashes, every session in order (its results as a count and a hash sum), then every
    /// vShard state in order when there are any, then every vShard's fence in order when there
    /// are any): equal digests on two nodes mean equal state at the same index. The sums make
    /// the map's and results' parts independent of iteration order, and both are kept as they
    /// are written, so a digest costs O(sessions), not O(keys) or O(cached results).
    pub fn digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.applied_index.to_le_bytes());
        h.update(&(self.map.len() as u64).to_le_bytes());
        h.update(&self.map.entry_hash_sum().to_le_bytes());
        for (client, s) in self.sessions.iter() {
            s.digest_into(*client, &mut h);
        }
        for (vshard, mark) in &self.vshards {
            h.update(&vshard.to_le_bytes());
            h.update(mark.state.name().as_bytes());
            h.update(&mark.state.group().to_le_bytes());
            h.update(&mark.move_id.to_le_bytes());
            if let Some(dirty) = mark.state.dirty() {
                dirty.digest_into(&mut h);
            }
        }
        if !self.fences.is_empty() {
            h.update(b"fences");
            for (vshard, fence) in &self.fences {
                h.update(&vshard.to_le_bytes());
                h.update(&fence.to_le_bytes());
            }
        }
        h.digest()
    }

    /// Why a command or read on a key of `vshard` is not served here, if it is not.
    pub fn refusal(&self, vshard: usize) -> Option<Refusal> {
        if self.vshards.is_empty() {
            return None; // no move in this group: the common case costs one branch
        }
        self.vshards.get(&(vshard as u32))?.state.refusal()
    }

    /// What a copy of an applied session command (a client's retry) gets here without a new
    /// entry: the result this group cached for it, when applying the copy now would give just
    /// that (its vShard served here; [`KvStateMachine`]'s `apply_in_session`). Applied means
    /// committed, so the answer is final whichever node gives it. None: propose the copy.
    pub fn copy_answer(&self, encoded: &[u8]) -> Option<Vec<u8>> {
        let (client, seq) = session_of(encoded)?;
        let cached = self.sessions.get(&client)?.results().get(&seq)?;
        let key = session_key(encoded)?;
        self.refusal(vshard_of(key))
            .is_none()
            .then(|| cached.clone())
    }

    /// `key`'s value, or why its vShard is not served here.
    pub fn lookup(&self, key: &[u8]) -> Result<Option<&Vec<u8>>, Refusal> {
        let vshard = vshard_of(key);
        match self.refusal(vshard) {
            Some(refusal) => Err(refusal),
            None => Ok(self.map.shard(vshard).get(key)),
        }
    }

    fn apply(&mut self, c: &Command<'_>, room: &mut ResultRoom) -> Vec<u8> {
        self.applied_index = c.index;
        self.applied_commands += 1;
        match KvCommand::decode(c.data) {
            Ok(KvCommand::Session {
                client,
                seq,
                acked_below,
                inner,
            }) => self.apply_in_session(c.index, client, seq, acked_below, *inner, room),
            Ok(KvCommand::VShard {
                step,
                vshard,
                group,
                move_id,
            }) => self
                .apply_vshard_step(step, vshard, group, move_id)
                .encode(),
            Ok(KvCommand::Import(import)) => self.apply_import(c.index, import).encode(),
            Ok(cmd) => match self.admit(&cmd) {
                Ok(vshard) => self.apply_command(vshard, cmd, room),
                Err(refused) => refused.encode(),
            },
            Err(e) => KvResult::Invalid {
                reason: e.to_string(),
            }
            .encode(),
        }
    }

    /// The vShard of a key command that may apply here (a write's key recorded if its vShard
    /// is tracked), or the result that answers it instead: Paused / Moved (nothing applied),
    /// Invalid for a command that is not a key command.
    fn admit(&mut self, cmd: &KvCommand) -> Result<usize, KvResult> {
        let (key, write) = match cmd {
            KvCommand::Put { key, .. } | KvCommand::Delete { key } | KvCommand::Cas { key, .. } => {
                (key, true)
            }
            KvCommand::Get { key } => (key, false),
            KvCommand::Session { .. } => {
                return Err(KvResult::Invalid {
                    reason: "a session inside a session".into(),
                })
            }
            KvCommand::VShard { .. } | KvCommand::Import(_) => {
                return Err(KvResult::Invalid {
                    reason: "a vshard command inside a session".into(),
                })
            }
        };
        let vshard = vshard_of(key);
        if self.vshards.is_empty() {
            return Ok(vshard);
        }
        let Some(mark) = self.vshards.get_mut(&(vshard as u32)) else {
            return Ok(vshard);
        };
        if let Some(refusal) = mark.state.refusal() {
            return Err(refusal.into());
        }
        if let (VShardState::Tracking { dirty, .. }, true) = (&mut mark.state, write) {
            dirty.insert(key);
        }
        Ok(vshard)
    }

    /// The dedup rule: a cached seq answers from the cache, a seq below the floor is refused,
    /// anything else applies once and is cached until the client acknowledges it. A command
    /// its vShard's state refuses (Paused, Moved) touches no session: a retry, here or in the
    /// vShard's new group, must still be able to apply it.
    fn apply_in_session(
        &mut self,
        index: u64,
        client: u64,
        seq: u64,
        acked_below: u64,
        inner: KvCommand,
        room: &mut ResultRoom,
    ) -> Vec<u8> {
        let vshard = match self.admit(&inner) {
            Ok(vshard) => vshard,
            Err(refused) => return refused.encode(),
        };
        match self.sessions.admit(index, client, seq, acked_below) {
            Admission::Cached(result) => result,
            Admission::BelowFloor => KvResult::Duplicate.encode(),
            Admission::New => {
                let result = self.apply_command(vshard, inner, room);
                self.sessions.cache(index, client, seq, &result);
                result
            }
        }
    }

    /// A key command admitted in vShard `vshard` (its key's), its result encoded.
    fn apply_command(&mut self, vshard: usize, cmd: KvCommand, room: &mut ResultRoom) -> Vec<u8> {
        let result = match cmd {
            KvCommand::Put { key, value } => {
                self.map.insert_in(vshard, key, value);
                KvResult::Ok { value: None }
            }
            KvCommand::Delete { key } => match self.map.remove_in(vshard, &key) {
                Some(_) => KvResult::Ok { value: None },
                None => KvResult::NotFound,
            },
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                let current = self.map.shard(vshard).get(&key).map(Vec::as_slice);
                if current != expected.as_deref() {
                    return room.answer(ValueAnswer::CasLost, current);
                }
                self.map.insert_in(vshard, key, value);
                KvResult::Ok { value: None }
            }
            KvCommand::Get { key } => match self.map.shard(vshard).get(&key) {
                Some(v) => return room.answer(ValueAnswer::Got, Some(v)),
                None => KvResult::NotFound,
            },
            KvCommand::Session { .. } | KvCommand::VShard { .. } | KvCommand::Import(_) => {
                KvResult::Invalid {
                    reason: "not a key command".into(),
                }
            }
        };
        result.encode()
    }

    /// One step of a vShard's move ([`crate::vshard::step`]); O(the vShard's keys) when it
    /// deletes them, else O(log vShards in a move). A step that applies raises the vShard's
    /// fence to its move id; a refused one (stale included) changes nothing.
    fn apply_vshard_step(
        &mut self,
        step: VShardStep,
        vshard: u32,
        group: u64,
        move_id: u64,
    ) -> KvResult {
        let fence = self.fences.get(&vshard).copied().unwrap_or(0);
        match vshard::step(self.vshards.get(&vshard), fence, step, group, move_id) {
            Err(reason) => KvResult::Invalid { reason },
            Ok(t) => {
                if move_id > fence {
                    self.fences.insert(vshard, move_id);
                }
                if t.clear_keys {
                    drop(self.map.take_shard(vshard as usize));
                }
                match t.mark {
                    Some(mark) => self.vshards.insert(vshard, mark),
                    None => self.vshards.remove(&vshard),
                };
                KvResult::Ok { value: None }
            }
        }
    }
}

/// The built-in KV state machine of a group.
#[derive(Default, Clone)]
pub struct KvStateMachine {
    state: Arc<RwLock<KvState>>,
}

/// A replica's state in numbers ([`KvReader::summary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvSummary {
    pub applied_index: u64,
    pub keys: usize,
    /// [`KvState::digest`]: equal on two replicas iff their states are.
    pub digest: u64,
    /// [`KvState::usage_bytes`].
    pub usage_bytes: usize,
    /// Client sessions kept, and evicted since this replica started or restored.
    pub sessions: usize,
    pub sessions_evicted: u64,
}

/// A read handle on a group's KV state, usable from any thread.
#[derive(Clone)]
pub struct KvReader {
    state: Arc<RwLock<KvState>>,
}

impl KvStateMachine {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn reader(&self) -> KvReader {
        KvReader {
            state: Arc::clone(&self.state),
        }
    }
    fn write(&self) -> RwLockWriteGuard<'_, KvState> {
        // Apply never panics while holding the lock; a poisoned lock still holds valid data.
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
    /// The state as it is now, to serialize on any thread (see [`KvSnapshotView`]).
    pub fn snapshot_view(&self) -> KvSnapshotView {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot_view()
    }
    /// Swap in a state decoded elsewhere (`KvState::from_snapshot` on another thread).
    pub fn install(&mut self, state: KvState) {
        *self.write() = state;
    }
}

impl KvReader {
    pub fn read(&self) -> RwLockReadGuard<'_, KvState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    /// The state, unless the driver is applying to it right now (None: not waited for).
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, KvState>> {
        match self.state.try_read() {
            Ok(state) => Some(state),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
    /// Whether a reader or the driver holds the state's lock now (tests of who holds it when).
    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.state.try_write().is_err()
    }
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read().map.get(key).cloned()
    }
    pub fn applied_index(&self) -> u64 {
        self.read().applied_index
    }
    pub fn digest(&self) -> u64 {
        self.read().digest()
    }
    /// [`KvState::usage_bytes`].
    pub fn usage_bytes(&self) -> usize {
        self.read().usage_bytes()
    }
    /// `key`'s value, or why its vShard is not served here (what a served read answers).
    pub fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Refusal> {
        self.read().lookup(key).map(|v| v.cloned())
    }
    /// vShard `vshard`'s copy for the target of move `move_id` as import commands of at most
    /// `chunk_bytes` each ([`crate::migration::VShardExport::chunks`]), the read lock held only
    /// to copy what it reads (O(sessions) at most).
    pub fn export_vshard(
        &self,
        vshard: u32,
        move_id: u64,
        delta: bool,
        chunk_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, String> {
        let export = self.read().vshard_export(vshard, delta);
        export.chunks(move_id, chunk_bytes)
    }
    /// What `status` shows of this replica, read under one lock: its parts are of one moment.
    pub fn summary(&self) -> KvSummary {
        let st = self.read();
        KvSummary {
            applied_index: st.applied_index,
            keys: st.map.len(),
            digest: st.digest(),
            usage_bytes: st.usage_bytes(),
            sessions: st.sessions.len(),
            sessions_evicted: st.sessions.evicted(),
        }
    }
    /// (vshard, keys, bytes) of every vShard holding keys here.
    pub fn vshard_stats(&self) -> Vec<(u32, u64, u64)> {
        self.read().vshard_stats()
    }
    /// (vshard, fence) of every vShard a move step ever applied to here: the highest move id
    /// of those steps (a step of an older move is refused as stale).
    pub fn vshard_fences(&self) -> Vec<(u32, u64)> {
        self.read().fences.iter().map(|(v, f)| (*v, *f)).collect()
    }
    /// (vshard, state name, the other group of its move, move id) of every vShard not plain
    /// here.
    pub fn vshard_states(&self) -> Vec<(u32, &'static str, u64, u64)> {
        self.read()
            .vshards
            .iter()
            .map(|(v, m)| (*v, m.state.name(), m.state.group(), m.move_id))
            .collect()
    }
    pub fn len(&self) -> usize {
        self.read().map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.read().map.is_empty()
    }
}

impl StateMachine for KvStateMachine {
    /// Never `Err`: a command that does not decode or is refused gets an error result.
    /// Results over [`RESULT_KEPT_BYTES_MAX`] (a lost CAS's or a logged get's value) count
    /// toward [`RESULT_BATCH_BYTES_MAX`]; past it they are answered as
    /// [`KvResult::Duplicate`] (the client raises OutcomeUnknown; such a command changed
    /// nothing). Only answers differ with batch boundaries: the state, sessions included, keeps
    /// at most a marker of such a result on every replica alike.
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Result<Vec<Vec<u8>>, SmError> {
        let mut st = self.write();
        let mut room = ResultRoom(RESULT_BATCH_BYTES_MAX);
        Ok(commands.iter().map(|c| st.apply(c, &mut room)).collect())
    }

    /// No: nothing on the KV path waits on a follower's apply without asking (a ReadIndex
    /// round's heartbeats carry the commit), and the broadcast cost 11 % of the CPU per write
    /// at 64 clients (BENCHMARKS.md).
    fn commit_broadcast_wanted(&self) -> bool {
        false
    }

    /// The bytes of [`KvSnapshotView::encode`] (layout in [`crate::snapshot`]).
    fn snapshot(&self) -> Result<Vec<u8>, SmError> {
        Ok(self.snapshot_view().encode())
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), SmError> {
        let fresh = KvState::from_snapshot(data).map_err(|e| SmError::Decode(e.to_string()))?;
        self.install(fresh);
        Ok(())
    }

    /// The copy-on-write view ([`KvSnapshotView`]): O(vShards + sessions) here, serialized on
    /// the engine's snapshot thread.
    fn snapshot_view(&self) -> Result<Box<dyn SnapshotView>, SmError> {
        Ok(Box::new(KvStateMachine::snapshot_view(self)))
    }

    /// [`KvSnapshotDecoder`], fed on the engine's snapshot thread as the bytes arrive.
    fn snapshot_decoder(&self) -> Box<dyn SnapshotDecoder> {
        Box::new(KvSnapshotDecoder::new())
    }

    fn install_decoded(&mut self, state: DecodedState) -> Result<(), SmError> {
        let fresh = state
            .downcast::<KvState>()
            .map_err(|_| SmError::Other("a decoded snapshot of another state machine".into()))?;
        let old = std::mem::replace(&mut *self.write(), *fresh);
        drop_elsewhere(old);
        Ok(())
    }
}

impl SnapshotDecoder for KvSnapshotDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), SmError> {
        KvSnapshotDecoder::feed(self, bytes).map_err(|e| SmError::Decode(e.to_string()))
    }
    fn finish(self: Box<Self>) -> Result<DecodedState, SmError> {
        KvSnapshotDecoder::finish(*self)
            .map(|st| Box::new(st) as DecodedState)
            .map_err(|e| SmError::Decode(e.to_string()))
    }
}

impl SnapshotView for KvSnapshotView {
    fn write_to(self: Box<Self>, mut out: &mut dyn std::io::Write) -> Result<(), SmError> {
        KvSnapshotView::write_to(&self, &mut out)
            .map_err(|e| SmError::Other(format!("writing a snapshot: {e}")))
    }
}

/// A state being replaced is freed on a thread of its own: freeing a large map entry by entry
/// would hold the driver thread.
fn drop_elsewhere(old: KvState) {
    if old.map.len() < 4096 {
        return; // small: freed here
    }
    // If no thread starts, the closure (and the state) is dropped here.
    let _ = std::thread::Builder::new()
        .name("kv-drop".into())
        .spawn(move || drop(old));
}

#[cfg(test)]
mod tests;
