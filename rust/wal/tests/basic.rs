//! Append, sync, reopen: the round trip the engine relies on, plus input validation.

mod common;

use common::*;
use nodedb_wal::{Lsn, RecordRef, Wal, WalError, WalOptions};

#[test]
fn synced_records_come_back_in_order_with_their_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, recovered) = open(dir.path(), options());
    assert!(recovered.records.is_empty());
    let batch: Vec<Rec> = (1..=10)
        .map(|i| Rec::entry(i % 3, i, format!("e{i}").as_bytes()))
        .collect();
    let refs: Vec<RecordRef<'_>> = batch.iter().map(Rec::as_ref).collect();
    let out = wal.append(&refs).unwrap();
    assert_eq!(
        (out.first_lsn, out.last_lsn, out.rolled),
        (Lsn(1), Lsn(10), false)
    );
    assert_eq!(wal.synced_lsn(), Lsn(0));
    assert_eq!(wal.sync().unwrap(), Lsn(10));
    drop(wal);

    let (mut wal, recovered) = open(dir.path(), options());
    assert_eq!(owned(&recovered), batch);
    let lsns: Vec<u64> = recovered.records.iter().map(|r| r.lsn.0).collect();
    assert_eq!(lsns, (1..=10).collect::<Vec<_>>());
    assert_eq!(recovered.report.torn_tail, None);
    // Replayed records were made durable by open: they count as synced.
    assert_eq!(wal.synced_lsn(), Lsn(10));
    // Appends continue after the recovered LSNs.
    let out = wal.append(&[Rec::entry(1, 11, b"more").as_ref()]).unwrap();
    assert_eq!(out.first_lsn, Lsn(11));
}

#[test]
fn bad_input_is_rejected_whole_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        record_payload_bytes_max: 8,
        ..options()
    };
    let (mut wal, _) = open(dir.path(), opts.clone());
    let ok = Rec::entry(1, 1, b"small");
    let big = Rec::entry(1, 2, b"this is too large");
    let err = wal.append(&[ok.as_ref(), big.as_ref()]).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::RecordTooLarge {
                payload_bytes: 17,
                limit_bytes: 8
            }
        ),
        "{err}"
    );
    let reserved = RecordRef {
        group_id: 1,
        kind: 0xF3,
        index: 0,
        payload: b"",
    };
    let err = wal.append(&[ok.as_ref(), reserved]).unwrap_err();
    assert!(
        matches!(err, WalError::ReservedKind { kind: 0xF3, .. }),
        "{err}"
    );
    assert_eq!(wal.last_lsn(), Lsn(0));
    wal.append(&[ok.as_ref()]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = open(dir.path(), opts);
    assert_eq!(owned(&recovered), vec![ok]);
}

#[test]
fn invalid_options_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes_max: 1,
        ..options()
    };
    match Wal::open(dir.path(), opts) {
        Err(WalError::InvalidOptions { field, .. }) => assert_eq!(field, "segment_bytes_max"),
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("accepted segment_bytes_max = 1"),
    }
}

#[test]
fn sync_without_new_records_is_a_noop_and_returns_the_durable_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), options());
    assert_eq!(wal.sync().unwrap(), Lsn(0));
    append_all(&mut wal, &[Rec::entry(1, 1, b"x")]);
    assert_eq!(wal.sync().unwrap(), Lsn(1));
    assert_eq!(wal.sync().unwrap(), Lsn(1));
}

#[test]
fn creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("data").join("raft");
    let (mut wal, _) = open(&nested, options());
    append_all(&mut wal, &[Rec::entry(1, 1, b"x")]);
    wal.sync().unwrap();
    assert_eq!(segment_files(&nested).len(), 1);
}

#[test]
fn a_batch_keeps_consecutive_lsns_across_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(4096);
    let (mut wal, _) = open(dir.path(), opts.clone());
    append_all(
        &mut wal,
        &[Rec {
            kind: KIND_HARD_STATE,
            ..Rec::entry(1, 0, b"hs")
        }],
    );
    append_all(&mut wal, &[Rec::entry(1, 1, &[0u8; 3000])]);
    let batch: Vec<Rec> = (2..=6).map(|i| Rec::entry(1, i, &[1u8; 300])).collect();
    let refs: Vec<RecordRef<'_>> = batch.iter().map(Rec::as_ref).collect();
    let out = wal.append(&refs).unwrap();
    assert!(out.rolled, "the batch did not fit: it starts a new segment");
    assert_eq!(out.last_lsn.0 - out.first_lsn.0 + 1, 5);
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = open(dir.path(), opts);
    let got: Vec<_> = recovered
        .records
        .iter()
        .filter(|r| (out.first_lsn..=out.last_lsn).contains(&r.lsn))
        .cloned()
        .collect();
    assert_eq!(
        got.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
}

#[test]
fn a_batch_over_the_limit_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), options());
    let payload = vec![0u8; 60 * 1024 * 1024];
    let refs: Vec<RecordRef<'_>> = (1..=5)
        .map(|i| RecordRef {
            group_id: 1,
            kind: KIND_ENTRIES,
            index: i,
            payload: &payload,
        })
        .collect();
    let err = wal.append(&refs).unwrap_err();
    assert!(matches!(err, WalError::BatchTooLarge { .. }), "{err}");
    assert_eq!(wal.last_lsn(), Lsn(0));
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), options());
    match Wal::open(dir.path(), options()) {
        Err(WalError::Locked { path }) => {
            assert_eq!(path, dir.path().join(nodedb_wal::LOCK_FILE_NAME))
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("two writers on one log"),
    }
    drop(wal);
    let (_wal, _) = open(dir.path(), options());
}

#[test]
fn streaming_open_sees_the_same_records_as_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small_segments(4096));
    for i in 1..=100 {
        append_all(
            &mut wal,
            &[
                Rec::entry(i % 5, i, &[i as u8; 90]),
                Rec {
                    kind: KIND_HARD_STATE,
                    ..Rec::entry(i % 5, 0, b"hs")
                },
            ],
        );
    }
    wal.sync().unwrap();
    drop(wal);
    let mut streamed = Vec::new();
    let (wal, report) = Wal::open_with(dir.path(), small_segments(4096), |lsn, r| {
        streamed.push((lsn, r.group_id, r.kind, r.index, r.payload.to_vec()));
    })
    .unwrap();
    drop(wal);
    let (_, recovered) = open(dir.path(), small_segments(4096));
    let collected: Vec<_> = recovered
        .records
        .iter()
        .map(|r| (r.lsn, r.group_id, r.kind, r.index, r.payload.clone()))
        .collect();
    // The second open replays the segment the first one started (carried hard states) too.
    assert_eq!(&collected[..streamed.len()], &streamed[..]);
    assert_eq!(report.records_replayed, streamed.len() as u64);
    assert_eq!(report.last_lsn, streamed.last().unwrap().0);
    assert!(report.segments_replayed > 3);
}
