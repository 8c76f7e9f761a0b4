//! Detecting a log that lost acknowledged entries, at open.
//!
//! A group's persisted commit index is written after (or with) the entries it covers, so on a
//! healthy disk the recovered log always reaches it. A log that ends *before* it lost entries
//! this node had made durable and acknowledged: the WAL's recovery took damage in the newest
//! segment (a cut or a flipped bit in its last records) for a torn write and cut it off.
//! raft-rs would panic on the first heartbeat (`to_commit is out of range`); worse, the node
//! could vote as if it never held those entries. So the engine refuses to open such a group,
//! or, when the operator asks for it ([`LostTailPolicy::Discard`], `start --rejoin`), forgets
//! this node's copy of it so the control plane can rejoin it as a learner that the leader
//! re-replicates.

use std::collections::BTreeMap;
use std::fmt;

use crate::ids::GroupId;
use crate::log_sink::RecoveredGroup;

/// What [`crate::MultiRaftCore::open`] does with a group whose log lost its acknowledged tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LostTailPolicy {
    /// Refuse to open ([`crate::EngineError::LostTail`]): the default, nothing is changed.
    #[default]
    Refuse,
    /// Forget this node's state of each such group (log and snapshots) and open the others;
    /// [`crate::MultiRaftCore::discarded_groups`] lists what was forgotten.
    Discard,
}

/// One group whose recovered log ends before its persisted commit index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostTail {
    pub group: GroupId,
    /// The commit index the hard state recorded.
    pub commit_index: u64,
    /// The last index the recovered log (snapshot or entries) holds.
    pub last_index: u64,
}

impl fmt::Display for LostTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: log ends at index {} but index {} was committed",
            self.group, self.last_index, self.commit_index
        )
    }
}

/// Every recovered group whose log ends before its commit index, in group order.
pub fn find_lost_tails(groups: &BTreeMap<GroupId, RecoveredGroup>) -> Vec<LostTail> {
    groups
        .iter()
        .filter_map(|(gid, rg)| {
            let commit_index = rg.storage.hard_state().commit;
            let last_index = rg.storage.last();
            (commit_index > last_index).then_some(LostTail {
                group: *gid,
                commit_index,
                last_index,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{ConfState, Entry, HardState};

    use super::*;
    use crate::log_sink::{recover, GroupMeta, LogRecord};

    fn entry(index: u64) -> Entry {
        Entry {
            index,
            term: 1,
            ..Default::default()
        }
    }

    fn group(g: u64, entries: u64, commit: u64) -> Vec<LogRecord> {
        let gid = GroupId(g);
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let mut recs = vec![LogRecord::group_created(gid, GroupMeta { sm_kind: 1 }, &cs)];
        recs.extend((1..=entries).map(|i| LogRecord::entry(gid, &entry(i))));
        let hs = HardState {
            term: 1,
            commit,
            ..Default::default()
        };
        recs.push(LogRecord::hard_state(gid, &hs));
        recs
    }

    #[test]
    fn a_log_reaching_its_commit_index_is_whole() {
        let mut recs = group(1, 5, 5);
        recs.extend(group(2, 5, 3));
        let groups = recover(&recs).expect("recover");
        assert!(find_lost_tails(&groups).is_empty());
    }

    #[test]
    fn a_log_ending_before_its_commit_index_lost_its_tail() {
        let mut recs = group(1, 25, 26);
        recs.extend(group(2, 4, 4));
        recs.extend(group(3, 0, 2));
        let groups = recover(&recs).expect("recover");
        let lost = find_lost_tails(&groups);
        assert_eq!(
            lost,
            vec![
                LostTail {
                    group: GroupId(1),
                    commit_index: 26,
                    last_index: 25
                },
                LostTail {
                    group: GroupId(3),
                    commit_index: 2,
                    last_index: 0
                },
            ]
        );
        assert_eq!(
            lost[0].to_string(),
            "g1: log ends at index 25 but index 26 was committed"
        );
    }
}
