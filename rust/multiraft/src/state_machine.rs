//! The state-machine seam: what a group's committed commands are applied to.

use std::any::Any;
use std::io::Write;

use crate::error::SmError;
use crate::ids::GroupId;

/// A consistent view of a state machine's state at one applied index, taken on the driver
/// thread (cheaply: a copy-on-write clone, not a serialization) and written to a snapshot file
/// on the engine's snapshot thread, so a large state never stalls the groups' heartbeats.
pub trait SnapshotView: Send {
    /// Writes the snapshot's bytes (what [`StateMachine::restore`] reads back) to `out`.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<(), SmError>;
}

/// A state decoded from a snapshot off the driver thread, handed back to the state machine
/// that made its decoder ([`StateMachine::install_decoded`]). Opaque to the engine.
pub type DecodedState = Box<dyn Any + Send>;

/// Decodes a snapshot's bytes into a [`DecodedState`] off the driver thread, fed in order as
/// they arrive from the leader (in pieces of any size), so a large state is decoded while the
/// rest of it is still on the wire.
pub trait SnapshotDecoder: Send {
    /// The next bytes of the snapshot.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), SmError>;
    /// Every byte was fed: the state.
    fn finish(self: Box<Self>) -> Result<DecodedState, SmError>;
}

/// The decoder of a machine without one of its own: gathers the bytes for `restore`
/// ([`install_buffered`]).
#[derive(Default)]
pub struct BufferedDecoder(Vec<u8>);

impl SnapshotDecoder for BufferedDecoder {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), SmError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<DecodedState, SmError> {
        Ok(Box::new(self.0))
    }
}

/// The view of a machine without one of its own: the bytes `snapshot()` returned.
pub struct SnapshotBytes(pub Vec<u8>);

impl SnapshotView for SnapshotBytes {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<(), SmError> {
        out.write_all(&self.0)
            .map_err(|e| SmError::Other(format!("writing a snapshot: {e}")))
    }
}

/// What [`BufferedDecoder`] gathered, handed to `restore` (the default `install_decoded`).
pub fn install_buffered<M: StateMachine + ?Sized>(
    machine: &mut M,
    state: DecodedState,
) -> Result<(), SmError> {
    match state.downcast::<Vec<u8>>() {
        Ok(bytes) => machine.restore(&bytes),
        Err(_) => Err(SmError::Other(
            "a decoded snapshot of another state machine".into(),
        )),
    }
}

/// One committed command: the entry's index and one payload of its batch.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub index: u64,
    pub data: &'a [u8],
}

/// Applies committed commands of one group. Implemented by the crates that define state
/// machines (`nodedb-kv`'s KV state machine) and by the Python binding (group 0 always; data
/// groups when the user plugs one in); the engine knows none of them.
///
/// `apply_batch` must be deterministic (same commands → same state and results on every node)
/// and returns exactly one result per command; a bad command gets an error *result*, because a
/// committed entry cannot be refused. `Err` (or a result count unequal to the command count)
/// says the machine cannot go on, e.g. its own storage failed: its state after part of a batch
/// is unknown, and batch boundaries differ between replicas, so moving on could make this copy
/// differ from the others. The engine stops instead; nothing of the batch is answered and the
/// applied index stays before it. `snapshot` captures the state after the last applied
/// command; `restore` replaces the whole state with a snapshot.
pub trait StateMachine: Send {
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Result<Vec<Vec<u8>>, SmError>;
    fn snapshot(&self) -> Result<Vec<u8>, SmError>;
    fn restore(&mut self, data: &[u8]) -> Result<(), SmError>;

    /// A view of the state after the last applied command, to be written to a snapshot file
    /// off the driver thread. The default serializes here (`snapshot()`): right for small
    /// states; a large one returns a cheap copy-on-write view instead.
    fn snapshot_view(&self) -> Result<Box<dyn SnapshotView>, SmError> {
        Ok(Box::new(SnapshotBytes(self.snapshot()?)))
    }

    /// A decoder run off the driver thread on a received snapshot's bytes; its result goes to
    /// [`StateMachine::install_decoded`] on the driver thread. The default only gathers the
    /// bytes and `install_decoded` restores them there: right for small states.
    fn snapshot_decoder(&self) -> Box<dyn SnapshotDecoder> {
        Box::new(BufferedDecoder::default())
    }

    /// Replaces the whole state with one this machine's decoder produced (a swap, on the
    /// driver thread).
    fn install_decoded(&mut self, state: DecodedState) -> Result<(), SmError> {
        install_buffered(self, state)
    }

    /// Whether followers must learn a new commit index at once (a broadcast per commit) rather
    /// than on the next append or heartbeat (one tick at most). True by default: control-plane
    /// machines apply metadata changes promptly on followers and their rate makes the cost nil.
    /// A machine whose followers never serve without asking first (a ReadIndex round carries
    /// the commit) returns false and saves a frame to each follower per write wave.
    fn commit_broadcast_wanted(&self) -> bool {
        true
    }
}

/// Which state machine a group runs: an opaque one-byte tag the engine records in the log and
/// hands back to the factory on restart, never interpreting it (the engine knows no state
/// machine). The crates that define state machines assign the tags — `nodedb-kv`'s
/// `KV_STATE_MACHINE` is 1, the binding's host (Python) machine is 2 — and since tags are on
/// disk they are never reused for something else. 0 is never a kind.
///
/// A kind made by its owner with [`StateMachineKind::new`] also carries a name for messages
/// ("group 0 does not run the Kv state machine"); names are not recorded, and two kinds are
/// equal when their tags are.
#[derive(Clone, Copy, Debug)]
pub struct StateMachineKind {
    tag: u8,
    name: &'static str,
}

impl StateMachineKind {
    /// The kind `tag`, named `name` in messages (its owner's constant).
    pub const fn new(tag: u8, name: &'static str) -> StateMachineKind {
        StateMachineKind { tag, name }
    }

    /// The kind recorded as `tag` (read back from the log: no name).
    pub const fn from_tag(tag: u8) -> StateMachineKind {
        StateMachineKind { tag, name: "" }
    }

    pub const fn tag(self) -> u8 {
        self.tag
    }
}

impl PartialEq for StateMachineKind {
    fn eq(&self, other: &Self) -> bool {
        self.tag == other.tag
    }
}

impl Eq for StateMachineKind {}

impl std::hash::Hash for StateMachineKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.tag.hash(state);
    }
}

impl std::fmt::Display for StateMachineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name.is_empty() {
            write!(f, "state machine kind {}", self.tag)
        } else {
            write!(f, "the {} state machine", self.name)
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
