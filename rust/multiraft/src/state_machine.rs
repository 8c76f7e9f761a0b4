//! The state-machine seam: what a group's committed commands are applied to.

use crate::error::SmError;
use crate::ids::GroupId;

/// One committed command: the entry's index and one payload of its batch.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub index: u64,
    pub data: &'a [u8],
}

/// Applies committed commands of one group. Implemented in Rust (`KvStateMachine`) and by the
/// Python binding (group 0 always; data groups when the user plugs one in).
///
/// `apply_batch` must be deterministic (same commands → same state and results on every node)
/// and returns exactly one result per command; a bad command gets an error *result*, because a
/// committed entry cannot be refused. `snapshot` captures the state after the last applied
/// command; `restore` replaces the whole state with a snapshot.
pub trait StateMachine: Send {
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Vec<Vec<u8>>;
    fn snapshot(&self) -> Result<Vec<u8>, SmError>;
    fn restore(&mut self, data: &[u8]) -> Result<(), SmError>;
}

/// Which state machine a group uses, recorded in the log so a restart re-creates the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StateMachineKind {
    /// The built-in KV state machine (`kv.rs`).
    Kv = 1,
    /// Applied by Python through the binding.
    Python = 2,
}

impl StateMachineKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(StateMachineKind::Kv),
            2 => Some(StateMachineKind::Python),
            _ => None,
        }
    }
}

/// Creates the state machine of a group, on `add_group` and for every group found on restart.
pub trait StateMachineFactory: Send {
    fn create(
        &mut self,
        group: GroupId,
        kind: StateMachineKind,
    ) -> Result<Box<dyn StateMachine>, SmError>;
}

impl<F> StateMachineFactory for F
where
    F: FnMut(GroupId, StateMachineKind) -> Result<Box<dyn StateMachine>, SmError> + Send,
{
    fn create(
        &mut self,
        group: GroupId,
        kind: StateMachineKind,
    ) -> Result<Box<dyn StateMachine>, SmError> {
        self(group, kind)
    }
}
