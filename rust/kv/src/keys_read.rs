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

/// The vShard maps (or refusals) a read of many keys took under the lock, indexed by vShard.
type Held = Vec<Option<Result<Arc<Shard>, Refusal>>>;

/// The values of `keys`, in order, as of one moment of `reader`'s state. `take(bytes)` is asked
/// in order before each value is copied (0 for an absent or refused key); its first error stops
/// the read and comes back with the values of the keys before it.
pub fn read_keys<E>(
    reader: &KvReader,
    keys: &[&[u8]],
    take: impl FnMut(usize) -> Result<(), E>,
) -> (Vec<Found>, Option<E>) {
    if keys.len() <= LOCKED_KEYS_MAX {
        read_few(reader, keys, take)
    } else {
        read_many(reader, keys, take)
    }
}

/// Few keys: each looked up under the lock (its room taken there too), its value copied there
/// while the copies stay within [`LOCKED_VALUE_BYTES_MAX`]; a larger one's map is held to copy
/// it afterwards.
fn read_few<E>(
    reader: &KvReader,
    keys: &[&[u8]],
    mut take: impl FnMut(usize) -> Result<(), E>,
) -> (Vec<Found>, Option<E>) {
    let mut values = Vec::with_capacity(keys.len());
    let mut later: Vec<(usize, Arc<Shard>)> = Vec::new();
    let mut stop = None;
    {
        let state = reader.read();
        let mut copied = 0usize;
        for key in keys {
            let vshard = vshard_of(key);
            let found = match state.refusal(vshard) {
                Some(refusal) => Err(refusal),
                None => Ok(state.map.shard(vshard).get(key)),
            };
            if let Err(why) = take(found.map_or(0, |v| v.map_or(0, Vec::len))) {
                stop = Some(why);
                break;
            }
            values.push(match found {
                Ok(Some(v)) if copied + v.len() > LOCKED_VALUE_BYTES_MAX => {
                    later.push((values.len(), Arc::clone(&state.map.shards()[vshard])));
                    Ok(None) // copied below
                }
                Ok(Some(v)) => {
                    copied += v.len();
                    Ok(Some(v.clone()))
                }
                Ok(None) => Ok(None),
                Err(refusal) => Err(refusal),
            });
        }
    }
    for (i, shard) in later {
        values[i] = Ok(shard.get(keys[i]).cloned());
    }
    (values, stop)
}

/// Many keys: under the lock, only each distinct vShard's map or refusal; every lookup and
/// copy after.
fn read_many<E>(
    reader: &KvReader,
    keys: &[&[u8]],
    mut take: impl FnMut(usize) -> Result<(), E>,
) -> (Vec<Found>, Option<E>) {
    let vshards: Vec<usize> = keys.iter().map(|k| vshard_of(k)).collect();
    let mut wanted = vec![false; VSHARDS];
    for &vshard in &vshards {
        wanted[vshard] = true;
    }
    let held: Held = {
        let state = reader.read();
        wanted
            .into_iter()
            .enumerate()
            .map(|(vshard, wanted)| {
                wanted.then(|| match state.refusal(vshard) {
                    Some(refusal) => Err(refusal),
                    None => Ok(Arc::clone(&state.map.shards()[vshard])),
                })
            })
            .collect()
    };
    let mut values = Vec::with_capacity(keys.len());
    for (key, vshard) in keys.iter().zip(vshards) {
        let found = match held.get(vshard).and_then(Option::as_ref) {
            Some(Err(refusal)) => Err(*refusal),
            Some(Ok(shard)) => Ok(shard.get(key)),
            None => unreachable!("every key's vShard was taken under the lock"),
        };
        if let Err(why) = take(found.map_or(0, |v| v.map_or(0, Vec::len))) {
            return (values, Some(why));
        }
        values.push(found.map(|v| v.cloned()));
    }
    (values, None)
}

#[cfg(test)]
mod tests;
