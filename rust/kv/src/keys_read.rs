//! Reading many keys of a group with its state's lock held for O(vShards), not O(keys or bytes).
//!
//! Why: the driver applies under the same lock (write side), so every read holding it holds up
//! every write of the group. Looking keys up and copying their values under it let one request
//! decide how long: a `get_many` of 1M absent keys held it ~0.4 s (a concurrent write waited
//! 437 ms), a 48 MiB value was copied under it. A read of many keys, or of large values, now
//! takes under the lock only what it needs to read later: each vShard's map (an `Arc`, shared
//! copy-on-write, [`crate::partition`]) or why that vShard is not served here. The lookups and
//! copies follow once the lock is let go, all from the state as it was under the lock.
//!
//! A small read (few keys, small values) is still looked up and copied under the lock: a shard
//! held meanwhile makes the driver's next write to it copy it first, which costs more than the
//! few lookups.

use std::sync::Arc;

use crate::partition::Shard;
use crate::routing::{vshard_of, VSHARDS};
use crate::state_machine::KvReader;
use crate::vshard::Refusal;

/// Keys a read may look up under the lock; a read of more holds its vShards' maps instead.
pub const LOCKED_KEYS_MAX: usize = 64;
/// Bytes of values a read may copy under the lock; a value past them is copied afterwards.
pub const LOCKED_VALUE_BYTES_MAX: usize = 64 << 10;

/// A key's value (None: absent), or why its vShard is not served here.
pub type Found = Result<Option<Vec<u8>>, Refusal>;

/// The vShard maps (or refusals) a read took under the lock, indexed by vShard (empty when it
/// took none).
type Held = Vec<Option<Result<Arc<Shard>, Refusal>>>;

/// What the lock's holder left for after it: a result, or the key's value to copy from its
/// vShard's map.
enum Early {
    Done(Found),
    Later,
}

/// The values of `keys`, in order, as of one moment of `reader`'s state. `take(bytes)` is asked
/// in order before each value is copied (0 for an absent or refused key); its first error stops
/// the read and comes back with the values of the keys before it.
pub fn read_keys<E>(
    reader: &KvReader,
    keys: &[&[u8]],
    mut take: impl FnMut(usize) -> Result<(), E>,
) -> (Vec<Found>, Option<E>) {
    let vshards: Vec<usize> = keys.iter().map(|k| vshard_of(k)).collect();
    let (early, held) = if keys.len() <= LOCKED_KEYS_MAX {
        look_up_under_lock(reader, keys, &vshards)
    } else {
        hold_shards(reader, &vshards)
    };
    let mut values = Vec::with_capacity(keys.len());
    for ((key, early), vshard) in keys.iter().zip(early).zip(vshards) {
        let found = match early {
            Early::Done(found) => found,
            Early::Later => match held.get(vshard).and_then(Option::as_ref) {
                Some(Err(refusal)) => Err(*refusal),
                Some(Ok(shard)) => Ok(shard.get(key).cloned()),
                None => unreachable!("a key left for later has its vShard's map held"),
            },
        };
        let bytes = found.as_ref().map_or(0, |v| v.as_ref().map_or(0, Vec::len));
        if let Err(stop) = take(bytes) {
            return (values, Some(stop));
        }
        values.push(found);
    }
    (values, None)
}

/// Few keys: each looked up under the lock, its value copied there while the copies stay
/// within [`LOCKED_VALUE_BYTES_MAX`]; a larger one's map is held to copy it afterwards.
fn look_up_under_lock(reader: &KvReader, keys: &[&[u8]], vshards: &[usize]) -> (Vec<Early>, Held) {
    let mut held: Held = Vec::new();
    let mut copied = 0usize;
    let state = reader.read();
    let early = keys
        .iter()
        .zip(vshards)
        .map(|(key, &vshard)| {
            if let Some(refusal) = state.refusal(vshard) {
                return Early::Done(Err(refusal));
            }
            match state.map.shard(vshard).get(key) {
                None => Early::Done(Ok(None)),
                Some(v) if copied + v.len() <= LOCKED_VALUE_BYTES_MAX => {
                    copied += v.len();
                    Early::Done(Ok(Some(v.clone())))
                }
                Some(_) => {
                    if held.is_empty() {
                        held.resize(VSHARDS, None);
                    }
                    held[vshard] = Some(Ok(Arc::clone(&state.map.shards()[vshard])));
                    Early::Later
                }
            }
        })
        .collect();
    (early, held)
}

/// Many keys: under the lock, only each distinct vShard's map or refusal.
fn hold_shards(reader: &KvReader, vshards: &[usize]) -> (Vec<Early>, Held) {
    let mut wanted = vec![false; VSHARDS];
    for &vshard in vshards {
        wanted[vshard] = true;
    }
    let state = reader.read();
    let held = wanted
        .into_iter()
        .enumerate()
        .map(|(vshard, wanted)| {
            wanted.then(|| match state.refusal(vshard) {
                Some(refusal) => Err(refusal),
                None => Ok(Arc::clone(&state.map.shards()[vshard])),
            })
        })
        .collect();
    drop(state);
    (vshards.iter().map(|_| Early::Later).collect(), held)
}

#[cfg(test)]
mod tests;
