//! The KV map partitioned by vShard: one map per vShard ([`Shard`]), each behind an `Arc`.
//!
//! Why: a vShard is the unit that moves between groups, so exporting or dropping one must cost
//! O(that vShard), not O(the group); and a snapshot must be takeable without stopping the
//! driver: cloning [`ShardedMap`] clones 1024 `Arc`s, and a write to a shard still shared with
//! such a clone copies that one shard first (`Arc::make_mut`, copy-on-write): a small shard
//! whole, a large (persistent) one only along the write's path. With no clone alive a write
//! costs one reference-count check more than a plain map.

use std::sync::Arc;

use crate::routing::{vshard_of, VSHARDS};
pub use crate::shard::Shard;

/// Every vShard's map, indexed by vShard, the total key count and each vShard's bytes of
/// keys and values (kept as writes go, so a load report costs O(vShards), not O(keys), and the
/// quota check O(1)).
#[derive(Debug, Clone)]
pub struct ShardedMap {
    shards: Vec<Arc<Shard>>,
    bytes: Vec<usize>,
    total: usize,
    len: usize,
    /// Per vShard and in all, the wrapping sum of the entries' [`entry_hash`]es, kept as
    /// writes go: the digest's part for the map in O(1). Computed whole at each `status`, it
    /// cost O(keys) under the group's lock (6M keys: ~400 ms, holding up every apply).
    hashes: Vec<u64>,
    hash: u64,
}

/// An entry's hash, from its key's (`key_seed`): what the digest sums, in any order.
fn entry_hash(seed: u64, value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(value, seed)
}

/// A key's hash: the seed of its entry's, and a dirty key's term in the digest.
pub(crate) fn key_seed(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, key.len() as u64)
}

impl Default for ShardedMap {
    fn default() -> Self {
        ShardedMap {
            // An empty HashMap does not allocate: 1024 of them cost one Arc each.
            shards: (0..VSHARDS).map(|_| Arc::new(Shard::new())).collect(),
            bytes: vec![0; VSHARDS],
            total: 0,
            len: 0,
            hashes: vec![0; VSHARDS],
            hash: 0,
        }
    }
}

impl ShardedMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.shards[vshard_of(key)].get(key)
    }

    /// `key` set to `value` in vShard `vshard` (the caller computed `vshard_of(&key)`).
    pub fn insert_in(&mut self, vshard: usize, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        let added = key.len() + value.len();
        let key_len = key.len();
        let seed = key_seed(&key);
        let mut hash = entry_hash(seed, &value);
        let shard = Arc::make_mut(&mut self.shards[vshard]);
        let old = shard.insert(key, value);
        match &old {
            None => self.len += 1,
            Some(old) => {
                self.bytes[vshard] -= key_len + old.len();
                self.total -= key_len + old.len();
                hash = hash.wrapping_sub(entry_hash(seed, old));
            }
        }
        self.hashes[vshard] = self.hashes[vshard].wrapping_add(hash);
        self.hash = self.hash.wrapping_add(hash);
        self.bytes[vshard] += added;
        self.total += added;
        shard.fit(self.bytes[vshard]);
        old
    }

    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        self.insert_in(vshard_of(&key), key, value)
    }

    /// `key` removed from vShard `vshard` (the caller computed `vshard_of(key)`).
    pub fn remove_in(&mut self, vshard: usize, key: &[u8]) -> Option<Vec<u8>> {
        // No copy of a shared shard for a key it does not hold.
        if !self.shards[vshard].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[vshard]).remove(key);
        if let Some(old) = &old {
            self.len -= 1;
            self.bytes[vshard] -= key.len() + old.len();
            self.total -= key.len() + old.len();
            let hash = entry_hash(key_seed(key), old);
            self.hashes[vshard] = self.hashes[vshard].wrapping_sub(hash);
            self.hash = self.hash.wrapping_sub(hash);
        }
        old
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.remove_in(vshard_of(key), key)
    }

    /// vShard `vshard`'s map (read only).
    pub fn shard(&self, vshard: usize) -> &Shard {
        &self.shards[vshard]
    }

    /// Bytes of vShard `vshard`'s keys and values.
    pub fn shard_bytes(&self, vshard: usize) -> usize {
        self.bytes[vshard]
    }

    /// Bytes of every key and value.
    pub fn total_bytes(&self) -> usize {
        self.total
    }

    /// The wrapping sum of every entry's hash (`xxh3(value, seed = xxh3(key, key length))`).
    pub fn entry_hash_sum(&self) -> u64 {
        self.hash
    }

    /// Every shard, indexed by vShard.
    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.shards
    }

    /// vShard `vshard` emptied in O(1) (its map handed back, to drop or read).
    pub fn take_shard(&mut self, vshard: usize) -> Arc<Shard> {
        let taken = std::mem::take(&mut self.shards[vshard]);
        self.len -= taken.len();
        self.total -= self.bytes[vshard];
        self.bytes[vshard] = 0;
        self.hash = self.hash.wrapping_sub(self.hashes[vshard]);
        self.hashes[vshard] = 0;
        taken
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// A map from whole shards (a restore): `shards` must hold one per vShard.
    pub(crate) fn from_shards(mut shards: Vec<Arc<Shard>>) -> ShardedMap {
        debug_assert_eq!(shards.len(), VSHARDS);
        let len = shards.iter().map(|s| s.len()).sum();
        let bytes: Vec<usize> = shards
            .iter()
            .map(|s| s.iter().map(|(k, v)| k.len() + v.len()).sum())
            .collect();
        for (shard, &b) in shards.iter_mut().zip(&bytes) {
            Arc::make_mut(shard).fit(b);
        }
        let hashes: Vec<u64> = shards
            .iter()
            .map(|s| {
                s.iter().fold(0u64, |sum, (k, v)| {
                    sum.wrapping_add(entry_hash(key_seed(k), v))
                })
            })
            .collect();
        let hash = hashes.iter().fold(0u64, |sum, h| sum.wrapping_add(*h));
        let total = bytes.iter().sum();
        ShardedMap {
            shards,
            bytes,
            total,
            len,
            hashes,
            hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_in_their_vshard_and_the_count_follows() {
        let mut m = ShardedMap::new();
        for i in 0..2000u32 {
            assert_eq!(m.insert(i.to_le_bytes().to_vec(), vec![1]), None);
        }
        assert_eq!(
            m.insert(7u32.to_le_bytes().to_vec(), vec![2]),
            Some(vec![1])
        );
        assert_eq!(m.len(), 2000);
        for (v, shard) in m.shards().iter().enumerate() {
            assert!(shard.iter().all(|(k, _)| vshard_of(k) == v));
        }
        assert_eq!(m.remove(&7u32.to_le_bytes()), Some(vec![2]));
        assert_eq!(m.remove(&7u32.to_le_bytes()), None);
        assert_eq!(m.len(), 1999);
        let v = vshard_of(&8u32.to_le_bytes());
        let n = m.shard(v).len();
        let taken = m.take_shard(v);
        assert_eq!(taken.len(), n);
        assert!(m.shard(v).is_empty());
        assert_eq!(m.len(), 1999 - n);
        assert_eq!(m.iter().count(), m.len());
        let bytes: usize = (0..VSHARDS).map(|v| m.shard_bytes(v)).sum();
        assert_eq!(
            bytes,
            m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        );
        assert_eq!(m.total_bytes(), bytes);
        let hashes = m.iter().fold(0u64, |sum, (k, v)| {
            sum.wrapping_add(entry_hash(key_seed(k), v))
        });
        assert_eq!(
            m.entry_hash_sum(),
            hashes,
            "kept as written: inserts, overwrites, removes, a take"
        );
        assert_eq!(
            ShardedMap::from_shards(m.shards().to_vec()).total_bytes(),
            bytes
        );
        assert_eq!(m.shard_bytes(v), 0);
    }

    #[test]
    fn a_shard_past_its_size_is_persistent_and_stays_so_through_a_restore() {
        let mut m = ShardedMap::new();
        let key = |i: u32| i.to_le_bytes().to_vec();
        let v = vshard_of(&key(0));
        let mine: Vec<u32> = (0..2_000_000)
            .filter(|&i| vshard_of(&key(i)) == v)
            .take(12)
            .collect();
        for &i in &mine {
            m.insert(key(i), vec![1; 2048]);
        }
        assert!(m.shard_bytes(v) >= crate::shard::PERSISTENT_BYTES);
        assert!(m.shard(v).is_persistent());
        assert!(!m.shard((v + 1) % VSHARDS).is_persistent());
        // A restore decodes into small shards; the large one turns persistent again.
        let decoded = m.shards().iter().map(|s| {
            let mut fresh = Shard::new();
            for (k, val) in s.iter() {
                fresh.insert(k.clone(), val.clone());
            }
            Arc::new(fresh)
        });
        let restored = ShardedMap::from_shards(decoded.collect());
        assert!(restored.shard(v).is_persistent());
        assert_eq!(restored.shard(v).len(), mine.len());
        assert_eq!(restored.total_bytes(), m.total_bytes());
        assert_eq!(restored.entry_hash_sum(), m.entry_hash_sum());
    }

    #[test]
    fn a_clone_keeps_its_view_while_the_original_is_written() {
        let mut m = ShardedMap::new();
        m.insert(b"a".to_vec(), b"1".to_vec());
        let view = m.clone();
        m.insert(b"a".to_vec(), b"2".to_vec());
        m.insert(b"b".to_vec(), b"3".to_vec());
        m.remove(b"a");
        assert_eq!(view.get(b"a"), Some(&b"1".to_vec()));
        assert_eq!(view.get(b"b"), None);
        assert_eq!(view.len(), 1);
        assert_eq!(m.get(b"b"), Some(&b"3".to_vec()));
        assert_eq!(m.len(), 1);
        // Shards nobody wrote are still shared, not copied.
        let untouched = (0..VSHARDS)
            .find(|&v| v != vshard_of(b"a") && v != vshard_of(b"b"))
            .unwrap_or(0);
        assert!(Arc::ptr_eq(
            &m.shards()[untouched],
            &view.shards()[untouched]
        ));
    }
}
