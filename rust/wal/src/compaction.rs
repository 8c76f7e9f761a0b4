//! Pure compaction decision: may a closed segment be deleted, given the engine's floors?

use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::segment::GroupSpan;

/// A closed segment is obsolete when every group that has counted records in it is done with
/// them:
/// - the group was forgotten (`Wal::forget_group`) after its last record in the segment, or
/// - the engine's floor for the group is ≥ the group's highest index in the segment.
///
/// A group with records in the segment but no floor (and not forgotten) keeps the segment:
/// a missing floor must never read as "delete". Sticky and WAL-internal records are not
/// counted in `groups` at all, because their latest versions are rewritten into every newer
/// segment.
pub fn segment_obsolete<S: BuildHasher>(
    groups: &HashMap<u64, GroupSpan, S>,
    floors: &HashMap<u64, u64>,
    forgotten_lsn: &HashMap<u64, u64>,
) -> bool {
    groups.iter().all(|(group_id, span)| {
        let forgotten = forgotten_lsn
            .get(group_id)
            .is_some_and(|lsn| *lsn > span.lsn_last);
        let below_floor = floors
            .get(group_id)
            .is_some_and(|floor| *floor >= span.index_max);
        forgotten || below_floor
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(items: &[(u64, u64, u64)]) -> HashMap<u64, GroupSpan> {
        items
            .iter()
            .map(|(g, index_max, lsn_last)| {
                (
                    *g,
                    GroupSpan {
                        index_max: *index_max,
                        lsn_last: *lsn_last,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn every_group_must_be_at_or_below_its_floor() {
        let groups = spans(&[(1, 10, 5), (2, 20, 6)]);
        let none = HashMap::new();
        assert!(segment_obsolete(
            &groups,
            &HashMap::from([(1, 10), (2, 20)]),
            &none
        ));
        assert!(!segment_obsolete(
            &groups,
            &HashMap::from([(1, 10), (2, 19)]),
            &none
        ));
        assert!(
            !segment_obsolete(&groups, &HashMap::from([(1, 100)]), &none),
            "missing floor keeps"
        );
        assert!(
            segment_obsolete(&HashMap::new(), &HashMap::new(), &none),
            "only sticky records"
        );
    }

    #[test]
    fn forgotten_groups_release_only_older_records() {
        let groups = spans(&[(1, 10, 5)]);
        assert!(segment_obsolete(
            &groups,
            &HashMap::new(),
            &HashMap::from([(1, 6)])
        ));
        assert!(!segment_obsolete(
            &groups,
            &HashMap::new(),
            &HashMap::from([(1, 5)])
        ));
    }
}
