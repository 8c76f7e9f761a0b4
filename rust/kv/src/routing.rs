//! Key routing: key → vShard → group → leader and voters. ONE implementation of the hash for
//! Rust; the Cython kernel (`nodedb_cluster.routing.vshard_for_key`) computes the same value,
//! and `tests/fixtures/vshard_vectors.json` (written by that kernel) holds both to it.
//!
//! Why a fixed vShard layer: the number of vShards is fixed for the life of a cluster, so a key
//! never changes vShard; only the vShard → group table moves when groups split or rebalance.

use std::collections::HashMap;

/// vShards of the key space (`nodedb_cluster.routing.vshard.NUM_VSHARDS`); changing it would
/// move almost every key.
pub const VSHARDS: usize = 1024;

/// The vShard of `key`: XXH3-64 (seed 0) modulo [`VSHARDS`].
pub fn vshard_of(key: &[u8]) -> usize {
    // The remainder is below 1024: the cast cannot truncate.
    (xxhash_rust::xxh3::xxh3_64(key) % VSHARDS as u64) as usize
}

/// Where one group's requests go: its leader as routing last knew it (0 = unknown) and its
/// voters, the members to ask in turn when no leader is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub leader: u64,
    pub voters: Vec<u64>,
}

/// A routing table as a client or a node sees it: the group of each vShard and each group's
/// route.
#[derive(Debug, Clone)]
pub struct Routing {
    vshard_to_group: Vec<u64>,
    routes: HashMap<u64, Route>,
}

/// A routing table that cannot route every key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routing needs {VSHARDS} vShards, got {got}")]
pub struct RoutingError {
    pub got: usize,
}

impl Routing {
    pub fn new(
        vshard_to_group: Vec<u64>,
        routes: impl IntoIterator<Item = (u64, Route)>,
    ) -> Result<Routing, RoutingError> {
        if vshard_to_group.len() != VSHARDS {
            return Err(RoutingError {
                got: vshard_to_group.len(),
            });
        }
        Ok(Routing {
            vshard_to_group,
            routes: routes.into_iter().collect(),
        })
    }

    /// The group that owns `key`.
    pub fn group_of(&self, key: &[u8]) -> u64 {
        self.vshard_to_group[vshard_of(key)]
    }

    /// `key`'s vShard and the group that owns it.
    pub fn locate(&self, key: &[u8]) -> (u32, u64) {
        let vshard = vshard_of(key);
        // Below VSHARDS (1024): the cast cannot truncate.
        (vshard as u32, self.vshard_to_group[vshard])
    }

    /// vShard `vshard` now lives in `group` (a Moved answer), until the next table.
    pub fn moved(&mut self, vshard: u32, group: u64) {
        if let Some(slot) = self.vshard_to_group.get_mut(vshard as usize) {
            *slot = group;
        }
    }

    pub fn route(&self, group: u64) -> Option<&Route> {
        self.routes.get(&group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_must_cover_every_vshard() {
        assert_eq!(
            Routing::new(vec![1; 3], []).unwrap_err(),
            RoutingError { got: 3 }
        );
        let mut table = vec![1; VSHARDS];
        table[vshard_of(b"abc")] = 7;
        let routing = Routing::new(
            table,
            [(
                7,
                Route {
                    leader: 2,
                    voters: vec![1, 2, 3],
                },
            )],
        )
        .unwrap();
        assert_eq!(routing.group_of(b"abc"), 7);
        let mut routing = routing;
        let v = vshard_of(b"abc") as u32;
        assert_eq!(routing.locate(b"abc"), (v, 7));
        routing.moved(v, 9);
        assert_eq!(routing.group_of(b"abc"), 9);
        routing.moved(VSHARDS as u32, 9); // out of range: ignored
        assert_eq!(routing.route(7).map(|r| r.leader), Some(2));
        assert!(routing.route(1).is_none());
    }
}
