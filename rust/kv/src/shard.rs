//! One vShard's keys and values, in one of two maps chosen by its size.
//!
//! A snapshot view shares every shard ([`crate::partition`]: copy-on-write behind `Arc`), and
//! the first write to a shared shard copies it. With std's `HashMap` alone that copy is the
//! whole shard: right after each snapshot view the next write wave copied nearly the whole map
//! on the driver thread (3M keys: 170-600 ms for 2,000 inserts; a 6M-key group re-elected its
//! leader ten times while loading). A persistent map (`imbl`, a hash array mapped trie) copies
//! only the nodes on a write's path, but reads and writes it about twice as slowly (W64 -9 %
//! with every shard persistent). So a shard is std's map while small, where a copy costs
//! little, and becomes persistent once it holds [`PERSISTENT_BYTES`]; it never goes back (a
//! shard that grew once is likely to grow again, and a switch costs a copy).

use std::collections::hash_map;
use std::collections::HashMap;

/// A shard's bytes of keys and values past which it is a persistent map: a copy of a small
/// shard costs about as much as a few writes, and 1024 of them at most this size are 16 MiB.
pub const PERSISTENT_BYTES: usize = 16 << 10;

/// One vShard's keys and values.
#[derive(Debug, Clone)]
pub enum Shard {
    Small(HashMap<Vec<u8>, Vec<u8>>),
    Persistent(imbl::HashMap<Vec<u8>, Vec<u8>>),
}

impl Default for Shard {
    fn default() -> Self {
        Shard::Small(HashMap::new()) // does not allocate
    }
}

impl Shard {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        match self {
            Shard::Small(m) => m.get(key),
            Shard::Persistent(m) => m.get(key),
        }
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        match self {
            Shard::Small(m) => m.len(),
            Shard::Persistent(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> Iter<'_> {
        match self {
            Shard::Small(m) => Iter::Small(m.iter()),
            Shard::Persistent(m) => Iter::Persistent(m.iter()),
        }
    }

    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        match self {
            Shard::Small(m) => m.insert(key, value),
            Shard::Persistent(m) => m.insert(key, value),
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        match self {
            Shard::Small(m) => m.remove(key),
            Shard::Persistent(m) => m.remove(key),
        }
    }

    /// Whether this shard is the persistent map.
    pub fn is_persistent(&self) -> bool {
        matches!(self, Shard::Persistent(_))
    }

    /// Becomes the persistent map if it holds `bytes` of keys and values, at least
    /// [`PERSISTENT_BYTES`] (its entries moved, not copied).
    pub fn fit(&mut self, bytes: usize) {
        if bytes < PERSISTENT_BYTES {
            return;
        }
        if let Shard::Small(m) = self {
            let entries = std::mem::take(m);
            *self = Shard::Persistent(entries.into_iter().collect());
        }
    }
}

/// The entries of a [`Shard`], in no particular order.
pub enum Iter<'a> {
    Small(hash_map::Iter<'a, Vec<u8>, Vec<u8>>),
    Persistent(imbl::hashmap::Iter<'a, Vec<u8>, Vec<u8>, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a Vec<u8>, &'a Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Small(it) => it.next(),
            Iter::Persistent(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_turns_persistent_at_its_size_and_keeps_every_entry() {
        let mut s = Shard::new();
        let mut bytes = 0;
        let mut i = 0u32;
        while bytes < PERSISTENT_BYTES {
            assert!(!s.is_persistent());
            let (k, v) = (i.to_le_bytes().to_vec(), vec![7u8; 100]);
            bytes += k.len() + v.len();
            s.insert(k, v);
            s.fit(bytes);
            i += 1;
        }
        assert!(s.is_persistent());
        assert_eq!(s.len(), i as usize);
        assert_eq!(s.iter().count(), i as usize);
        assert_eq!(s.get(&3u32.to_le_bytes()), Some(&vec![7u8; 100]));
        assert_eq!(s.remove(&3u32.to_le_bytes()), Some(vec![7u8; 100]));
        assert!(!s.contains_key(&3u32.to_le_bytes()));
        // A clone shares the trie: the original's write leaves the clone as it was.
        let view = s.clone();
        s.insert(b"new".to_vec(), b"v".to_vec());
        assert!(view.get(b"new").is_none());
        assert_eq!(view.len() + 1, s.len());
    }
}
