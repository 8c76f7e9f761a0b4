//! A group's view of a vShard while it moves between groups: the states, what a command or
//! read on one of its keys gets in each, and the steps between them. Pure; the state machine
//! ([`crate::state_machine`]) holds one [`VShardState`] per vShard not in the plain state and
//! applies [`step`]'s verdict (replicated: every replica takes the same steps at the same
//! indexes).
//!
//! A move of vShard v from source group S to target T (the control plane drives it through
//! group 0, which alone decides whether it finishes or aborts):
//! 1. T `Incoming{from: S}`: T answers v with Paused (and drops keys of v an earlier attempt
//!    left) until it is activated; imports of v are taken only in this state;
//! 2. S `Tracking`: S records the keys of v written from now on (the dirty set);
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

use std::collections::BTreeSet;

use crate::command::{KvResult, VShardStep};

/// A vShard's state in this group, when not plain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VShardState {
    /// This group is the target of a move from group `from`, not yet active: answers Paused.
    Incoming { from: u64 },
    /// This group is the source of a move: serves the vShard and records the keys written.
    Tracking { dirty: BTreeSet<Vec<u8>> },
    /// The source with writes paused for the last copy to target `to`: answers Paused.
    Frozen { to: u64, dirty: BTreeSet<Vec<u8>> },
    /// The vShard moved to group `to`: answers Moved{to}.
    Moved { to: u64 },
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

    /// The other group of the move (source for Incoming, target for Frozen/Moved), or 0.
    pub fn group(&self) -> u64 {
        match self {
            VShardState::Incoming { from } => *from,
            VShardState::Tracking { .. } => 0,
            VShardState::Frozen { to, .. } | VShardState::Moved { to } => *to,
        }
    }

    /// The dirty set of a source (Tracking, Frozen).
    pub fn dirty(&self) -> Option<&BTreeSet<Vec<u8>>> {
        match self {
            VShardState::Tracking { dirty } | VShardState::Frozen { dirty, .. } => Some(dirty),
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

/// What a step does to a vShard: its new state (`None` = plain) and whether its keys here
/// are deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: Option<VShardState>,
    pub clear_keys: bool,
}

/// The transition `step` (with its `group`) makes from `current` (`None` = plain), or why it
/// is refused. Repeating the last step changes nothing (a mover that restarts may send it
/// again), except Incoming, which always empties the vShard here (its copy starts over).
pub fn step(
    current: Option<&VShardState>,
    step: VShardStep,
    group: u64,
) -> Result<Transition, String> {
    use VShardState::{Frozen, Incoming, Moved, Tracking};
    let to = |state: Option<VShardState>, clear_keys: bool| Ok(Transition { state, clear_keys });
    let keep = || to(current.cloned(), false);
    let refuse = || {
        Err(format!(
            "vshard step {} refused in state {}",
            step.name(),
            current.map_or("plain", VShardState::name)
        ))
    };
    match (step, current) {
        // The target: leftovers of an earlier attempt go (a repeated Incoming too: the copy
        // starts over after it); a vShard it moved away may return.
        (VShardStep::Incoming, None | Some(Incoming { .. } | Moved { .. })) => {
            to(Some(Incoming { from: group }), true)
        }
        (VShardStep::Activate, Some(Incoming { .. })) => to(None, false),
        (VShardStep::Activate, None) => keep(),
        (VShardStep::Drop, Some(Incoming { .. })) => to(None, true),
        (VShardStep::Drop, None) => keep(),
        // The source.
        (VShardStep::Track, None) => to(
            Some(Tracking {
                dirty: BTreeSet::new(),
            }),
            false,
        ),
        (VShardStep::Track, Some(Tracking { .. })) => keep(),
        (VShardStep::Freeze, Some(Tracking { dirty })) => to(
            Some(Frozen {
                to: group,
                dirty: dirty.clone(),
            }),
            false,
        ),
        (VShardStep::Freeze, Some(Frozen { to: t, .. })) if *t == group => keep(),
        (VShardStep::Unfreeze, Some(Tracking { .. } | Frozen { .. })) => to(None, false),
        (VShardStep::Unfreeze, None) => keep(),
        (VShardStep::Release, Some(Frozen { to: t, .. })) if *t == group => {
            to(Some(Moved { to: group }), true)
        }
        (VShardStep::Release, Some(Moved { to: t })) if *t == group => keep(),
        _ => refuse(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: &[(VShardStep, u64)]) -> Result<(Option<VShardState>, bool), String> {
        let mut state = None;
        let mut cleared = false;
        for &(s, g) in steps {
            let t = step(state.as_ref(), s, g)?;
            state = t.state;
            cleared |= t.clear_keys;
        }
        Ok((state, cleared))
    }

    #[test]
    fn a_move_runs_source_and_target_through_their_states() {
        use VShardStep::*;
        assert_eq!(
            run(&[(Track, 0), (Freeze, 9), (Release, 9)]),
            Ok((Some(VShardState::Moved { to: 9 }), true))
        );
        assert_eq!(run(&[(Incoming, 4), (Activate, 0)]), Ok((None, true)));
        // Aborts.
        assert_eq!(
            run(&[(Track, 0), (Freeze, 9), (Unfreeze, 0)]),
            Ok((None, false))
        );
        assert_eq!(run(&[(Incoming, 4), (Drop, 0)]), Ok((None, true)));
        // A vShard that moved away can come back.
        assert_eq!(
            run(&[(Track, 0), (Freeze, 9), (Release, 9), (Incoming, 9)]),
            Ok((Some(VShardState::Incoming { from: 9 }), true))
        );
    }

    #[test]
    fn repeating_a_step_changes_nothing_and_out_of_order_steps_are_refused() {
        use VShardStep::*;
        assert_eq!(
            run(&[
                (Track, 0),
                (Track, 0),
                (Freeze, 9),
                (Freeze, 9),
                (Release, 9),
                (Release, 9)
            ]),
            Ok((Some(VShardState::Moved { to: 9 }), true))
        );
        for bad in [
            vec![(Freeze, 9)],
            vec![(Release, 9)],
            vec![(Track, 0), (Release, 9)],
            vec![(Track, 0), (Freeze, 9), (Freeze, 8)],
            vec![(Track, 0), (Freeze, 9), (Release, 8)],
            vec![(Track, 0), (Incoming, 3)],
            vec![(Incoming, 3), (Track, 0)],
            vec![(Track, 0), (Freeze, 9), (Release, 9), (Unfreeze, 0)],
            vec![(Track, 0), (Activate, 0)],
        ] {
            let err = run(&bad).expect_err("refused");
            assert!(err.contains("refused in state"), "{err}");
        }
    }

    #[test]
    fn what_each_state_refuses() {
        let none = BTreeSet::new;
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
        assert_eq!(VShardState::Tracking { dirty: none() }.refusal(), None);
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
