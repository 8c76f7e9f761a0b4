//! The client half of exactly-once writes: sequence numbers for one client's writes and the
//! floor of those still in flight. ONE implementation, used by the Rust client core
//! ([`crate::client`]) and, through the binding's `WriteSession` class, by Python's `KvRouter`.
//!
//! Why: a write whose outcome is unknown (lost leader, lost reply, attempt timeout) can only be
//! retried safely if the state machine can tell the retry from a new write. Every write carries
//! (client id, seq) and `acked_below`, the lowest seq this client still waits for; the KV state
//! machine ([`crate::state_machine`], `KvCommand::Session`) applies one copy of each (client, seq)
//! and drops cached results below the floor. A retry resends the same bytes.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::command::KvCommand;

/// A random client id (never 0): 64 bits, so two live clients collide as rarely as a 64-bit
/// hash. Drawn from std's `RandomState` (SipHash keys seeded from the OS's randomness once per
/// thread, then stepped per instance), mixed with the time and the process id.
pub fn random_client_id() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Seqs handed out in order; `open` holds those not finished, ascending.
#[derive(Debug)]
pub struct SessionState {
    client_id: u64,
    next_seq: u64,
    open: VecDeque<u64>,
    /// Finished seqs still behind an unfinished one in `open`.
    done: HashSet<u64>,
}

impl SessionState {
    pub fn new(client_id: u64) -> Self {
        SessionState {
            client_id,
            next_seq: 1,
            open: VecDeque::new(),
            done: HashSet::new(),
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Every seq below this is finished: the state machine may drop their results.
    pub fn acked_below(&self) -> u64 {
        self.open.front().copied().unwrap_or(self.next_seq)
    }

    /// `count` new seqs `first..first + count` and the floor to send with them; the caller
    /// must `finish` every one.
    pub fn open_seqs(&mut self, count: usize) -> (u64, u64) {
        let floor = self.acked_below();
        let first = self.next_seq;
        self.next_seq += count as u64;
        self.open.extend(first..self.next_seq);
        (first, floor)
    }

    /// `inner` wrapped as write `seq` of this session with floor `acked_below`.
    pub fn wrap_one(&self, seq: u64, acked_below: u64, inner: &[u8]) -> Vec<u8> {
        KvCommand::encode_session(self.client_id, seq, acked_below, inner)
    }

    /// The caller has these seqs' outcomes (or gave up on them): never retried again.
    pub fn finish(&mut self, seqs: impl IntoIterator<Item = u64>) {
        self.done.extend(seqs);
        while let Some(&front) = self.open.front() {
            if !self.done.remove(&front) {
                break;
            }
            self.open.pop_front();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.open.len().saturating_sub(self.done.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_the_lowest_unfinished_seq() {
        let mut s = SessionState::new(7);
        assert_eq!(s.acked_below(), 1);
        let (first, floor) = s.open_seqs(3); // 1, 2, 3
        assert_eq!((first, floor), (1, 1));
        s.finish([2]);
        assert_eq!(s.acked_below(), 1, "1 still open");
        assert_eq!(s.in_flight(), 2);
        let (first, floor) = s.open_seqs(1); // 4, sent with floor 1
        assert_eq!((first, floor), (4, 1));
        s.finish([1]);
        assert_eq!(s.acked_below(), 3, "1 and 2 done");
        s.finish([3, 4]);
        assert_eq!(s.acked_below(), 5);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn wrapped_command_decodes_as_a_session() {
        let s = SessionState::new(9);
        let inner = KvCommand::Delete { key: b"k".to_vec() }.encode();
        let cmd = KvCommand::decode(&s.wrap_one(5, 3, &inner)).unwrap();
        assert_eq!(
            cmd,
            KvCommand::Session {
                client: 9,
                seq: 5,
                acked_below: 3,
                inner: Box::new(KvCommand::Delete { key: b"k".to_vec() }),
            }
        );
    }

    #[test]
    fn random_ids_differ_and_are_never_zero() {
        let a = random_client_id();
        let b = random_client_id();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }
}
