//! Property: for random batches (random groups, kinds, payload sizes, segment sizes) and a
//! random cut of the last segment, recovery yields exactly the records wholly before the cut,
//! as a prefix of what the uncut log yields, and appends continue after it. Both layouts: growing
//! segments and preallocated ones (zeros after the records; the cut may land in them).

mod common;

use std::collections::HashMap;

use common::*;
use nodedb_wal::{Lsn, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use proptest::prelude::*;

fn record() -> impl Strategy<Value = Rec> {
    (0u64..4, prop_oneof![4 => Just(KIND_ENTRIES), 1 => Just(KIND_HARD_STATE), 1 => Just(KIND_CONF_STATE)], 0u64..1000, prop::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(group_id, kind, index, payload)| Rec { group_id, kind, index, payload })
}

/// Independent oracle: whole frames in the first `cut` bytes of a segment, walking lengths only
/// and stopping at an all-zero frame header (the preallocated zeros; a written frame header is
/// never all zero: the test kinds are non-zero).
fn whole_frames(bytes: &[u8], cut: usize) -> usize {
    let mut at = SEGMENT_HEADER_BYTES;
    let mut count = 0;
    while at + FRAME_HEADER_BYTES <= cut {
        if bytes[at..at + FRAME_HEADER_BYTES].iter().all(|b| *b == 0) {
            break;
        }
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if at + FRAME_HEADER_BYTES + len > cut {
            break;
        }
        at += FRAME_HEADER_BYTES + len;
        count += 1;
    }
    count
}

fn frames_in(bytes: &[u8]) -> usize {
    whole_frames(bytes, bytes.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_batches_and_a_random_cut(
        batches in prop::collection::vec(prop::collection::vec(record(), 1..20), 1..25),
        segment_kib in 4u64..12,
        cut_permille in 0usize..=1000,
        preallocate in any::<bool>(),
    ) {
        let opts = nodedb_wal::WalOptions { preallocate, ..small_segments(segment_kib * 1024) };
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), opts.clone());
        let mut written = Vec::new();
        for batch in &batches {
            append_all(&mut wal, batch);
            wal.sync().unwrap();
            written.extend(batch.iter().cloned());
        }
        drop(wal);
        let files = image(dir.path());

        // The uncut log: non-sticky records exactly as written, sticky ones latest-wins.
        let full_dir = restore(&files);
        let (_, full) = open(full_dir.path(), opts.clone());
        let full = owned(&full);
        let entries = |v: &[Rec]| v.iter().filter(|r| r.kind == KIND_ENTRIES).cloned().collect::<Vec<_>>();
        prop_assert_eq!(entries(&full), entries(&written));
        let latest = |v: &[Rec]| {
            let mut m = HashMap::new();
            for r in v.iter().filter(|r| r.kind != KIND_ENTRIES) { m.insert((r.group_id, r.kind), r.payload.clone()); }
            m
        };
        prop_assert_eq!(latest(&full), latest(&written));

        // Cut the last segment.
        let (last_name, last_bytes) = files.last().unwrap().clone();
        let cut = last_bytes.len() * cut_permille / 1000;
        let mut cut_files = files.clone();
        cut_files.last_mut().unwrap().1 = last_bytes[..cut].to_vec();
        let earlier: usize = files[..files.len() - 1].iter().map(|(_, b)| frames_in(b)).sum();
        let expected_count = earlier + if cut < SEGMENT_HEADER_BYTES { 0 } else { whole_frames(&last_bytes, cut) };
        let cut_dir = restore(&cut_files);
        let (mut wal, recovered) = open(cut_dir.path(), opts.clone());
        let got = owned(&recovered);
        prop_assert_eq!(got.len(), expected_count, "cut {} of {} in {}", cut, last_bytes.len(), last_name);
        prop_assert_eq!(&got[..], &full[..expected_count]);

        // Appends continue after the surviving records, and all of it survives another open.
        let tail = Rec::entry(77, 1, b"after the cut");
        append_all(&mut wal, std::slice::from_ref(&tail));
        let synced = wal.sync().unwrap();
        drop(wal);
        let (_, again) = open(cut_dir.path(), opts);
        prop_assert_eq!(again.records.last().map(|r| r.lsn), Some(synced));
        let again_owned = owned(&again);
        prop_assert_eq!(again_owned.last(), Some(&tail));
        prop_assert_eq!(&again_owned[..expected_count], &got[..]);
        prop_assert!(synced > Lsn(expected_count as u64));
    }
}
