//! Helpers of the engine's integration tests: a journal state machine that knows no KV (the
//! engine must not need one), and the simulated cluster.
#![allow(dead_code)]

pub mod sim_cluster;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::path::Path;

use nodedb_multiraft::error::SmError;
use nodedb_multiraft::log_sink::MemLogSink;
use nodedb_multiraft::network::SimNetwork;
use nodedb_multiraft::state_machine::{Command, StateMachine, StateMachineKind};
use nodedb_multiraft::{GroupId, MultiRaft, MultiRaftConfig, NodeId};

/// The tag the tests' groups run (any non-zero byte: the engine does not interpret it).
pub const JOURNAL: StateMachineKind = StateMachineKind::new(7, "journal");

/// Every (index, command) a group applied, in order.
pub type Entries = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// A command the journal cannot apply, as a machine whose own storage failed: `Err`.
pub const FAIL: &[u8] = b"fail!";
/// A command the journal answers with no result at all (a result count one short).
pub const SHORT: &[u8] = b"short!";

/// Records what it applies; answers each command with its length as 8 little-endian bytes
/// (`FAIL` and `SHORT` in a batch: nothing of it is recorded).
/// Snapshot: the count, then (index, length, bytes) per entry.
pub struct Journal {
    entries: Entries,
}

impl StateMachine for Journal {
    fn apply_batch(&mut self, commands: &[Command<'_>]) -> Result<Vec<Vec<u8>>, SmError> {
        if commands.iter().any(|c| c.data == FAIL) {
            return Err(SmError::Other("the journal's disk failed".into()));
        }
        if commands.iter().any(|c| c.data == SHORT) {
            return Ok(vec![Vec::new(); commands.len() - 1]);
        }
        let mut entries = self.entries.lock().expect("journal lock");
        Ok(commands
            .iter()
            .map(|c| {
                entries.push((c.index, c.data.to_vec()));
                (c.data.len() as u64).to_le_bytes().to_vec()
            })
            .collect())
    }

    fn snapshot(&self) -> Result<Vec<u8>, SmError> {
        let entries = self.entries.lock().expect("journal lock");
        let mut out = (entries.len() as u64).to_le_bytes().to_vec();
        for (index, data) in entries.iter() {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), SmError> {
        let bad = || SmError::Decode("journal snapshot".into());
        let mut at = 0usize;
        let word = |at: &mut usize| -> Result<u64, SmError> {
            let bytes = data.get(*at..*at + 8).ok_or_else(bad)?;
            *at += 8;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| bad())?))
        };
        let count = word(&mut at)?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let index = word(&mut at)?;
            let len = usize::try_from(word(&mut at)?).map_err(|_| bad())?;
            let bytes = data.get(at..at + len).ok_or_else(bad)?;
            at += len;
            entries.push((index, bytes.to_vec()));
        }
        *self.entries.lock().expect("journal lock") = entries;
        Ok(())
    }
}

/// The journals of one node's groups, filled in as its groups are created.
pub type Journals = Arc<Mutex<HashMap<GroupId, Entries>>>;

/// A journal for every group of kind [`JOURNAL`], registered in `journals`; any other kind is
/// refused, as a real factory refuses a tag it does not know.
pub fn factory(journals: Journals) -> Box<dyn nodedb_multiraft::StateMachineFactory> {
    Box::new(
        move |g: GroupId, kind: StateMachineKind| -> Result<Box<dyn StateMachine>, SmError> {
            if kind != JOURNAL {
                return Err(SmError::Other(format!("no state machine for {kind}")));
            }
            let entries = Entries::default();
            journals
                .lock()
                .expect("lock")
                .insert(g, Arc::clone(&entries));
            Ok(Box::new(Journal { entries }))
        },
    )
}

/// A running engine (driver thread and all) for node `id` on `net`: its log in memory, its
/// groups journals, its config as `edit` leaves it.
pub fn start_engine(
    dir: &Path,
    net: &SimNetwork,
    id: NodeId,
    edit: impl FnOnce(&mut MultiRaftConfig),
) -> Arc<MultiRaft> {
    let mut cfg = MultiRaftConfig::new(id, dir.join(format!("n{}", id.0)));
    edit(&mut cfg);
    Arc::new(
        MultiRaft::start(
            cfg,
            Box::new(MemLogSink::new()),
            Arc::new(net.endpoint(id)),
            factory(Journals::default()),
        )
        .expect("start"),
    )
}
