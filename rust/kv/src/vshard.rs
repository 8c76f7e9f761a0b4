//! A group's view of a vShard while it moves between groups: the states, what a command or
//! read on one of its keys gets in each, and the steps between them. Pure; the state machine
//! ([`crate::state_machine`]) holds one [`VShardMark`] (state and move id) per vShard not in
//! the plain state and applies [`step`]'s verdict (replicated: every replica takes the same steps at the same
//! indexes).
//!
//! A move of vShard v from source group S to target T (the control plane drives it through
//! group 0, which alone decides whether it finishes or aborts):
//! 1. T `Incoming{from: S}`: T answers v with Paused (and drops keys of v an earlier attempt
//!    left) until it is activated; imports of v (of this move) are taken only in this state;
//! 2. S `Tracking{to: T}`: S records the keys of v written from now on (the dirty set);
//! 3. bulk copy S → T (no pause);
//! 4. S `Frozen{to: T}`: S answers v with Paused (nothing applied, nothing recorded);
//! 5. delta copy: the dirty keys' current values (or deletions) and S's sessions;
//! 6. group 0 flips v to T;
//! 7. T `activate` (plain: T serves v), S `release` → `Moved{to: T}` (keys of v deleted; v
//!    answered with Moved{T}).
//!
//! Abort (before the flip): S `unfreeze` (plain again), T `drop` (keys of v deleted, plain).
//! The plain state ("serve it") is every vShard's state before any move, so a group that never
//! took part in one answers exactly as before.
//!
//! The fence: the state machine also keeps, per vShard, the highest move id of a step it
//! applied ([`step`]'s `fence`), and refuses a step of an older move (group 0 numbers moves in
//! order and runs one per vShard at a time, so once a step of move m applied, every older move
//! of the vShard has ended). Without it, an `incoming` of an old move whose Raft entry commits
//! after a later move made this group the vShard's owner would mark it incoming again and
//! empty it. A refused step changes nothing, fence included, so a mark's move id is never below
//! its fence (the convergence of a dead mover's marks never meets a stale refusal).

use crate::command::{KvResult, VShardStep};
use crate::partition::key_seed;

/// The keys of a vShard written since its move began tracking: the delta copy's keys. A
/// persistent set, so the freeze step and a snapshot view copy it in O(1) however many keys
/// clients write during the move (a std set was copied whole on the driver thread), and the
/// digest's part (count and a sum of key hashes) is kept as it grows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyKeys {
    keys: imbl::OrdSet<Vec<u8>>,
    hash_sum: u64,
}

impl DirtyKeys {
    /// Records `key` (once).
    pub fn insert(&mut self, key: &[u8]) {
        if !self.keys.contains(key) {
            self.hash_sum = self.hash_sum.wrapping_add(key_seed(key));
            self.keys.insert(key.to_vec());
        }
    }

    /// The keys in order.
    pub fn iter(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The set's part of the group's digest, O(1): equal on two replicas iff the sets are.
    pub(crate) fn digest_into(&self, h: &mut xxhash_rust::xxh3::Xxh3) {
        h.update(&(self.keys.len() as u64).to_le_bytes());
        h.update(&self.hash_sum.to_le_bytes());
    }
}

impl FromIterator<Vec<u8>> for DirtyKeys {
    fn from_iter<I: IntoIterator<Item = Vec<u8>>>(keys: I) -> Self {
        let mut set = DirtyKeys::default();
        for key in keys {
            set.insert(&key);
        }
        set
    }
}

/// A vShard's state in this group, when not plain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VShardState {
    /// This group is the target of a move from group `from`, not yet active: answers Paused.
    Incoming { from: u64 },
    /// This group is the source of a move to `to`: serves the vShard and records the keys
    /// written.
    Tracking { to: u64, dirty: DirtyKeys },
    /// The source with writes paused for the last copy to target `to`: answers Paused.
    Frozen { to: u64, dirty: DirtyKeys },
    /// The vShard moved to group `to`: answers Moved{to}.
    Moved { to: u64 },
}

/// A vShard's state and the move (group 0's move id) that put it there: a step names its
/// move, and a step of another move is refused, so a step decided on an old view (a mover or
/// a convergence round that lost the race) never ends a newer move of the same vShard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VShardMark {
    pub state: VShardState,
    pub move_id: u64,
}

impl VShardMark {
    /// A vShard's mark in an error: "plain" (none) or "<state> for move <id>".
    pub fn describe(mark: Option<&VShardMark>) -> String {
        mark.map_or("plain".to_string(), |m| {
            format!("{} for move {}", m.state.name(), m.move_id)
        })
    }
}

impl VShardState {
    /// `kv_vshard_states`' name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            VShardState::Incoming { .. } => "incoming",
            VShardState::Tracking { .. } => "tracking",
            VShardState::Frozen { .. } => "frozen",
            VShardState::Moved { .. } => "moved",
        }
    }

    /// The other group of the move: the source for Incoming, the target otherwise.
    pub fn group(&self) -> u64 {
        match self {
            VShardState::Incoming { from } => *from,
            VShardState::Tracking { to, .. }
            | VShardState::Frozen { to, .. }
            | VShardState::Moved { to } => *to,
        }
    }

    /// The dirty set of a source (Tracking, Frozen).
    pub fn dirty(&self) -> Option<&DirtyKeys> {
        match self {
            VShardState::Tracking { dirty, .. } | VShardState::Frozen { dirty, .. } => Some(dirty),
            VShardState::Incoming { .. } | VShardState::Moved { .. } => None,
        }
    }

    /// Why a command or read on a key of this vShard is not served here (None: it is, and a
    /// Tracking source records the written keys).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            VShardState::Incoming { .. } | VShardState::Frozen { .. } => Some(Refusal::Paused),
            VShardState::Tracking { .. } => None,
            VShardState::Moved { to } => Some(Refusal::Moved(*to)),
        }
    }
}

/// Why a key is not served by this group now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its vShard is in a move: retry shortly (nothing applied, nothing recorded).
    Paused,
    /// Its vShard lives in this group now.
    Moved(u64),
}

impl From<Refusal> for KvResult {
    fn from(r: Refusal) -> KvResult {
        match r {
            Refusal::Paused => KvResult::Paused,
            Refusal::Moved(group) => KvResult::Moved { group },
        }
    }
}

impl Refusal {
    /// The refusal an encoded command result carries, if any (cheap: one byte looked at for
    /// every other result).
    pub fn of_result(result: &[u8]) -> Option<Refusal> {
        match result.first() {
            Some(4 | 5) => match KvResult::decode(result) {
                Ok(KvResult::Paused) => Some(Refusal::Paused),
                Ok(KvResult::Moved { group }) => Some(Refusal::Moved(group)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What a step does to a vShard: its new mark (`None` = plain) and whether its keys here are
/// deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub mark: Option<VShardMark>,
    pub clear_keys: bool,
}

/// The transition `step` of move `move_id` (with its `group`) makes from `current` (`None` =
/// plain), or why it is refused. A step of a move older than `fence` (the highest move id of a
/// step applied to this vShard here, 0 = none) is refused as stale; the caller raises the
/// fence to `move_id` when the step applies. Repeating a step changes nothing (a convergence
/// round may send it again), except Track (a second mover of the move is refused: one mover per
/// move) and Incoming of a move that already ended here (refused as stale). A step naming another move than the mark's is refused, except
/// Incoming (a new move into this group replaces the marks of ended ones, emptying the vShard).
pub fn step(
    current: Option<&VShardMark>,
    fence: u64,
    step: VShardStep,
    group: u64,
    move_id: u64,
) -> Result<Transition, String> {
    use VShardState::{Frozen, Incoming, Moved, Tracking};
    if move_id < fence {
        return Err(format!(
            "vshard step {} of move {move_id} refused as stale: move {fence} came since",
            step.name()
        ));
    }
    let mark = |state: VShardState| Some(VShardMark { state, move_id });
    let to = |mark: Option<VShardMark>, clear_keys: bool| Ok(Transition { mark, clear_keys });
    let keep = || to(current.cloned(), false);
    let refuse = |why: &str| {
        Err(format!(
            "vshard step {} of move {move_id} refused in state {}{why}",
            step.name(),
            current.map_or("plain".to_string(), |m| format!(
                "{} (move {}, group {})",
                m.state.name(),
                m.move_id,
                m.state.group()
            )),
        ))
    };
    if step == VShardStep::Incoming {
        // The target: leftovers of an earlier move go; a vShard it moved away may return. The
        // same move's Incoming again keeps what it imported (a retry must not empty a copy in
        // progress), and once the move ended here (activated or dropped: plain, with this move
        // as the fence) a late Incoming of it is refused: it would empty a vShard this group
        // now serves.
        return match current.map(|m| (m.move_id, &m.state)) {
            Some((id, Incoming { .. })) if id == move_id => keep(),
            None if move_id == fence && fence > 0 => Err(format!(
                "vshard step incoming of move {move_id} refused as stale: the move already \
                 ended in this group"
            )),
            None | Some((_, Incoming { .. } | Moved { .. })) => {
                to(mark(Incoming { from: group }), true)
            }
            Some((_, Tracking { .. } | Frozen { .. })) => refuse(": this group is a move's source"),
        };
    }
    let Some(current_mark) = current else {
        return match step {
            VShardStep::Track => to(
                mark(Tracking {
                    to: group,
                    dirty: DirtyKeys::default(),
                }),
                false,
            ),
            // Already plain: a repeated end of a move.
            VShardStep::Activate | VShardStep::Drop | VShardStep::Unfreeze => keep(),
            _ => refuse(""),
        };
    };
    if current_mark.move_id != move_id {
        return refuse(": another move's mark");
    }
    match (step, &current_mark.state) {
        (VShardStep::Activate, Incoming { .. }) => to(None, false),
        (VShardStep::Drop, Incoming { .. }) => to(None, true),
        // Only one mover of a move passes Track: a second (a new leader of the source while
        // the first, paused or cut off, may still run) is refused and rolls the move back;
        // two would interleave their copies at the target. No one repeats Track otherwise.
        (VShardStep::Track, Tracking { .. }) => refuse(": another mover began this move"),
        (VShardStep::Freeze, Tracking { to: t, dirty }) if *t == group => to(
            mark(Frozen {
                to: group,
                dirty: dirty.clone(),
            }),
            false,
        ),
        (VShardStep::Freeze, Frozen { to: t, .. }) if *t == group => keep(),
        (VShardStep::Unfreeze, Tracking { .. } | Frozen { .. }) => to(None, false),
        // Released to wherever group 0 routes the vShard now (a convergence round may name a
        // group the vShard moved on to since).
        (VShardStep::Release, Tracking { .. } | Frozen { .. }) => {
            to(mark(Moved { to: group }), true)
        }
        (VShardStep::Release, Moved { to: t }) if *t == group => keep(),
        (VShardStep::Release, Moved { .. }) => to(mark(Moved { to: group }), false),
        _ => refuse(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The freeze step (and a snapshot view) copy the dirty set by sharing it, and its digest
    /// part depends on the keys alone, not on the order they were written in.
    #[test]
    fn a_dirty_set_is_shared_by_the_freeze_and_digested_by_its_keys() {
        let mut dirty: DirtyKeys = (0..100_000u32).map(|k| k.to_le_bytes().to_vec()).collect();
        dirty.insert(&7u32.to_le_bytes()); // again: once
        assert_eq!(dirty.len(), 100_000);
        let tracking = VShardMark {
            state: VShardState::Tracking {
                to: 2,
                dirty: dirty.clone(),
            },
            move_id: 1,
        };
        let frozen = step(Some(&tracking), 1, VShardStep::Freeze, 2, 1)
            .expect("freeze")
            .mark
            .expect("a mark");
        let shared = frozen.state.dirty().expect("frozen keeps the keys");
        assert!(shared.keys.ptr_eq(&dirty.keys), "the set was copied");

        let digest = |d: &DirtyKeys| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            d.digest_into(&mut h);
            h.digest()
        };
        let backwards: DirtyKeys = (0..100_000u32)
            .rev()
            .map(|k| k.to_le_bytes().to_vec())
            .collect();
        assert_eq!(digest(&backwards), digest(&dirty));
        let mut more = backwards.clone();
        more.insert(b"another");
        assert_ne!(digest(&more), digest(&dirty));
    }

    /// The steps in order, as the state machine applies them (the fence rises with each step
    /// that applies); the last mark and whether any step cleared the keys.
    fn run(steps: &[(VShardStep, u64, u64)]) -> Result<(Option<VShardMark>, bool), String> {
        let mut mark = None;
        let mut fence = 0;
        let mut cleared = false;
        for &(s, g, id) in steps {
            let t = step(mark.as_ref(), fence, s, g, id)?;
            mark = t.mark;
            fence = fence.max(id);
            cleared |= t.clear_keys;
        }
        Ok((mark, cleared))
    }

    fn moved(to: u64, move_id: u64) -> Option<VShardMark> {
        Some(VShardMark {
            state: VShardState::Moved { to },
            move_id,
        })
    }

    #[test]
    fn a_move_runs_source_and_target_through_their_states() {
        use VShardStep::*;
        assert_eq!(
            run(&[(Track, 9, 1), (Freeze, 9, 1), (Release, 9, 1)]),
            Ok((moved(9, 1), true))
        );
        assert_eq!(run(&[(Incoming, 4, 1), (Activate, 0, 1)]), Ok((None, true)));
        // Aborts.
        assert_eq!(
            run(&[(Track, 9, 1), (Freeze, 9, 1), (Unfreeze, 0, 1)]),
            Ok((None, false))
        );
        assert_eq!(run(&[(Incoming, 4, 1), (Drop, 0, 1)]), Ok((None, true)));
        // A vShard that moved away can come back (a new move).
        let back = run(&[
            (Track, 9, 1),
            (Freeze, 9, 1),
            (Release, 9, 1),
            (Incoming, 9, 2),
        ]);
        assert_eq!(
            back,
            Ok((
                Some(VShardMark {
                    state: VShardState::Incoming { from: 9 },
                    move_id: 2
                }),
                true
            ))
        );
        // A moved mark follows the vShard's later moves (convergence names the new owner).
        assert_eq!(
            run(&[
                (Track, 9, 1),
                (Freeze, 9, 1),
                (Release, 9, 1),
                (Release, 5, 1)
            ]),
            Ok((moved(5, 1), true))
        );
    }

    #[test]
    fn repeating_a_step_changes_nothing_and_other_steps_are_refused() {
        use VShardStep::*;
        assert_eq!(
            run(&[
                (Track, 9, 1),
                (Freeze, 9, 1),
                (Freeze, 9, 1),
                (Release, 9, 1),
                (Release, 9, 1)
            ]),
            Ok((moved(9, 1), true))
        );
        assert_eq!(
            run(&[(Activate, 0, 1), (Drop, 0, 1), (Unfreeze, 0, 1)]),
            Ok((None, false))
        );
        for bad in [
            vec![(Freeze, 9, 1)],
            vec![(Release, 9, 1)],
            vec![(Track, 9, 1), (Track, 8, 1)],
            vec![(Track, 9, 1), (Freeze, 8, 1)],
            vec![(Track, 9, 1), (Freeze, 9, 1), (Freeze, 8, 1)],
            vec![(Track, 9, 1), (Incoming, 3, 1)],
            vec![(Incoming, 3, 1), (Track, 9, 1)],
            vec![
                (Track, 9, 1),
                (Freeze, 9, 1),
                (Release, 9, 1),
                (Unfreeze, 0, 1),
            ],
            vec![(Track, 9, 1), (Activate, 0, 1)],
        ] {
            let err = run(&bad).expect_err("refused");
            assert!(err.contains("refused in state"), "{err}");
        }
    }

    #[test]
    fn a_step_of_another_move_is_refused() {
        use VShardStep::*;
        let tracking = |move_id| VShardMark {
            state: VShardState::Tracking {
                to: 9,
                dirty: DirtyKeys::default(),
            },
            move_id,
        };
        let incoming = |move_id| VShardMark {
            state: VShardState::Incoming { from: 4 },
            move_id,
        };
        // Either side of the mark's move: an older one (a mark restored from a version-2
        // snapshot has no fence) or a newer one (its mark was never written here).
        for (other, fence) in [(1, 0), (3, 2)] {
            for (s, g) in [(Unfreeze, 0), (Release, 9), (Freeze, 9), (Track, 9)] {
                let err = step(Some(&tracking(2)), fence, s, g, other).expect_err("another move");
                assert!(err.contains("another move's mark"), "{err}");
            }
            for s in [Drop, Activate] {
                let err = step(Some(&incoming(2)), fence, s, 0, other).expect_err("another move");
                assert!(err.contains("another move's mark"), "{err}");
            }
        }
        // An old move's drop after the new move's incoming: the new copy stays.
        assert!(run(&[(Incoming, 4, 1), (Incoming, 4, 2), (Drop, 0, 1)]).is_err());
    }

    #[test]
    fn a_step_of_a_move_older_than_the_fence_is_refused_as_stale() {
        use VShardStep::*;
        // Move 2 made this group the owner (incoming, activate: plain); move 1's incoming,
        // committed late, would mark it incoming and empty it.
        let err = run(&[(Incoming, 4, 2), (Activate, 0, 2), (Incoming, 4, 1)]).expect_err("stale");
        assert!(err.contains("refused as stale: move 2 came since"), "{err}");
        // Every step of an older move, whatever the state, once a later one applied.
        for late in [Incoming, Track, Freeze, Activate, Drop, Unfreeze, Release] {
            let err = run(&[(Track, 9, 5), (Unfreeze, 0, 5), (late, 9, 4)]).expect_err("stale");
            assert!(err.contains("refused as stale"), "{late:?}: {err}");
        }
        // Equal move ids pass the fence: retries of a step are idempotent as before.
        assert_eq!(
            run(&[(Incoming, 4, 3), (Activate, 0, 3), (Activate, 0, 3)]),
            Ok((None, true))
        );
        // A later move passes it.
        assert!(run(&[(Incoming, 4, 2), (Activate, 0, 2), (Incoming, 4, 3)]).is_ok());
    }

    #[test]
    fn one_mover_per_move_and_a_late_incoming_of_an_ended_move_is_refused() {
        use VShardStep::*;
        // A second mover's Track is refused: only the first copies.
        let err = run(&[(Track, 9, 3), (Track, 9, 3)]).expect_err("second mover");
        assert!(err.contains("another mover began this move"), "{err}");
        // A second mover of the same move (its first, paused, resuming after the move ended
        // here) must not empty the vShard this group now serves.
        for end in [Activate, Drop] {
            let err = run(&[(Incoming, 4, 3), (end, 0, 3), (Incoming, 4, 3)]).expect_err("late");
            assert!(
                err.contains("already ended in this group"),
                "{end:?}: {err}"
            );
        }
        // The same move's Incoming again while it is incoming keeps what it imported.
        let mark = step(
            Some(&VShardMark {
                state: VShardState::Incoming { from: 4 },
                move_id: 3,
            }),
            3,
            Incoming,
            4,
            3,
        );
        assert_eq!(mark.map(|t| t.clear_keys), Ok(false));
    }

    #[test]
    fn what_each_state_refuses() {
        let none = DirtyKeys::default;
        assert_eq!(
            VShardState::Incoming { from: 1 }.refusal(),
            Some(Refusal::Paused)
        );
        let frozen = VShardState::Frozen {
            to: 2,
            dirty: none(),
        };
        assert_eq!(frozen.refusal(), Some(Refusal::Paused));
        assert_eq!(
            VShardState::Moved { to: 2 }.refusal(),
            Some(Refusal::Moved(2))
        );
        assert_eq!(
            VShardState::Tracking {
                to: 2,
                dirty: none()
            }
            .refusal(),
            None
        );
        for r in [Refusal::Paused, Refusal::Moved(7)] {
            assert_eq!(Refusal::of_result(&KvResult::from(r).encode()), Some(r));
        }
        assert_eq!(Refusal::of_result(&KvResult::NotFound.encode()), None);
        assert_eq!(
            Refusal::of_result(&[5, 1]),
            None,
            "truncated: not a refusal"
        );
    }
}
