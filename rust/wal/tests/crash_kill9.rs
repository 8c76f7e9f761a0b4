//! Crash safety with a real process: `wal_crash_child` appends and syncs in a loop, printing
//! each synced LSN; we SIGKILL it at varied moments (after 0..1500 acknowledged batches), reopen
//! the same directory each round, and check that every acknowledged record is there, at its
//! LSN, with the hard state at least as new as the last acknowledged one. Bounded: 20 rounds,
//! each waits at most 30 s for output.
//! Rounds that kill before the first ack hit recovery and segment creation. Preallocation is on
//! (the default): kills land in zero-filled segments, in their preparation, and in rolls.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nodedb_wal::{Wal, WalOptions};

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const ROUND_WAIT_MAX: Duration = Duration::from_secs(30);
/// Acknowledged batches to wait for before each kill: small, large, and in between.
/// 0 kills it during recovery / segment creation.
const KILL_AFTER_BATCHES: [usize; 20] = [
    1, 3, 17, 0, 50, 120, 7, 240, 0, 2, 90, 400, 1500, 33, 700, 1, 64, 128, 999, 5,
];

#[derive(Debug, Clone, Copy)]
struct Ack {
    lsn: u64,
    group_id: u64,
    index: u64,
    term: u64,
}

fn parse(line: &str) -> Ack {
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(f.len(), 4, "bad line {line:?}");
    Ack {
        lsn: f[0],
        group_id: f[1],
        index: f[2],
        term: f[3],
    }
}

/// Runs the child until `kill_after` batches were acknowledged, SIGKILLs it, returns all acks.
fn run_and_kill(dir: &std::path::Path, kill_after: usize) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wal_crash_child"))
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + ROUND_WAIT_MAX;
    let mut acks = Vec::new();
    while acks.len() < kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => acks.push(parse(&line)),
            Err(e) => panic!("child stalled after {} acks: {e}", acks.len()),
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "child exited on its own"
    );
    // 0 = kill as soon as it runs: before or during recovery, segment creation, first sync.
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    // Lines already in the pipe were acknowledged before the kill: collect them too.
    while let Ok(line) = rx.recv_timeout(ROUND_WAIT_MAX) {
        acks.push(parse(&line));
    }
    reader.join().unwrap();
    acks
}

#[test]
fn every_acknowledged_record_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut first_lsn_final = 0;
    let mut torn_rounds = 0;
    let mut stale_prep_rounds = 0;
    let options = WalOptions {
        segment_bytes_max: 64 * 1024,
        sticky_kinds: vec![KIND_HARD_STATE],
        ..WalOptions::default()
    };
    for (round, kill_after) in KILL_AFTER_BATCHES.iter().enumerate() {
        let acks = run_and_kill(dir.path(), *kill_after);
        stale_prep_rounds += usize::from(common::prep_files(dir.path()) > 0);
        let (wal, recovered) = Wal::open(dir.path(), options.clone()).unwrap();
        drop(wal);
        // The child and this open run with preallocation on (the default): the segment left
        // active is full-size (continued or freshly prepared), never a growing one.
        // The child's half-prepared `.prep` file (killed mid-fill) was deleted by this open,
        // and this `Wal`'s own preparation was cancelled and deleted by its drop.
        assert_eq!(common::prep_files(dir.path()), 0, "round {round}");
        let active = common::segment_files(dir.path()).pop().unwrap();
        assert!(
            std::fs::metadata(&active).unwrap().len() >= options.segment_bytes_max,
            "round {round}: {} is not preallocated",
            active.display()
        );
        torn_rounds += usize::from(recovered.report.torn_tail.is_some());
        let records = &recovered.records;
        if records.is_empty() {
            assert!(
                acks.is_empty(),
                "round {round}: acked records but the log is empty"
            );
            continue;
        }
        // LSNs form one unbroken range (compaction only removes a prefix).
        let first_lsn = records[0].lsn.0;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.lsn.0, first_lsn + i as u64, "round {round}: lsn gap");
        }
        first_lsn_final = first_lsn;
        let by_lsn = |lsn: u64| records.get((lsn - first_lsn) as usize);
        let mut acked_term: HashMap<u64, u64> = HashMap::new();
        for ack in &acks {
            acked_term.insert(ack.group_id, ack.term);
            if ack.lsn < first_lsn {
                continue; // compacted away: below the floor the child set
            }
            let r = by_lsn(ack.lsn).unwrap_or_else(|| panic!("round {round}: acked {ack:?} lost"));
            assert_eq!(
                (r.group_id, r.kind, r.index),
                (ack.group_id, KIND_ENTRY, ack.index),
                "round {round}"
            );
        }
        if let Some(last) = acks.last() {
            assert!(
                last.lsn >= first_lsn,
                "round {round}: the newest ack can never be compacted"
            );
        }
        for (group_id, term) in acked_term {
            let hs = records
                .iter()
                .rev()
                .find(|r| r.group_id == group_id && r.kind == KIND_HARD_STATE)
                .unwrap();
            let recovered_term = u64::from_le_bytes(hs.payload[..8].try_into().unwrap());
            assert!(
                recovered_term >= term,
                "round {round}: group {group_id} hard state {recovered_term} < acked {term}"
            );
        }
    }
    // Informational: how often a kill landed inside a write (large entries make it likely).
    println!(
        "rounds with a torn tail: {torn_rounds}, with a stale .prep file: {stale_prep_rounds}, of {}",
        KILL_AFTER_BATCHES.len()
    );
    assert!(
        first_lsn_final > 1,
        "the child's compaction removed a prefix during the rounds"
    );
}
