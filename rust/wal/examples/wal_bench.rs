//! Log-append benchmark (issue 4). Run through `benches/bench_wal.py`, or directly:
//!
//! `cargo run --release -p nodedb-wal --example wal_bench -- --dir <dir on the data disk> --runs 3`
//!
//! Measures, in ONE invocation so ratios are meaningful on a shared machine:
//! - the disk's physical limit: 4 KiB (and 128 B, one framed entry) write + fsync / fdatasync
//!   per call (appending, as a log does), and 4 KiB overwrite + fdatasync of a pre-written file (what preallocation would buy);
//! - unsynced append throughput (4 KiB and 100 B payloads) into one large segment, so no roll
//!   fsync is timed: the CPU + page-cache cost of `append`;
//! - recovery: `Wal::open` replaying 2M 100-byte records (256 MB, page cache warm);
//! - durable group commit: batches of N 100-byte entries, each batch `append` + one `sync`, with
//!   default options (64 MiB preallocated segments, fdatasync), for several N; for N = 1, 100,
//!   1000 also with growing segments (`preallocate: false`), the baseline for preallocation;
//! - foreground syncs while the next segment is zero-filled in the background (1 entry per
//!   sync, timed from `open` until the preparation is done), and `Wal::open` of an empty
//!   directory with and without preallocation (the first segment is zero-filled synchronously).
//!
//! Each case runs once as a discarded warm-up, then `--runs` times, runs interleaved across cases.
//! Prints one JSON line per run and a `SUMMARY {json}` line per case with the median and range.
//! Refuses a debug build.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nodedb_wal::{RecordRef, SyncMode, Wal, WalOptions, PREALLOCATE_CHUNK_BYTES_DEFAULT};

const RAW_WRITES_COUNT: usize = 2000;
const RAW_WRITE_BYTES: usize = 4096;
const UNSYNCED_BYTES_TOTAL: usize = 256 * 1024 * 1024;
const UNSYNCED_SMALL_RECORDS: usize = 2_000_000;
const ENTRY_BYTES: usize = 100;
/// 2M framed 100 B records = 256 MB = 4 default segments: what a restart replays.
const RECOVERY_RECORDS: usize = 2_000_000;
/// (entries per sync, syncs timed, also timed with growing segments): sync counts bounded so
/// each case takes well under 2 s.
const GROUP_COMMIT_CASES: [(usize, usize, bool); 5] = [
    (1, 2000, true),
    (10, 1500, false),
    (100, 1000, true),
    (1000, 400, true),
    (10_000, 60, false),
];
/// Bound on waiting for the background preparation before a timed preallocated case.
const PREPARED_WAIT_MAX: Duration = Duration::from_secs(30);
/// Bound on the syncs timed while a preparation runs (it takes ~0.1-0.3 s here).
const SYNCS_DURING_PREPARATION_MAX: usize = 100_000;
const OPEN_EMPTY_REPEATS: usize = 5;

struct Args {
    dir: PathBuf,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut runs = 3;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from),
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--runs needs a number")?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let dir = dir.ok_or("--dir is required (a directory on the disk under test)")?;
    if !(1..=20).contains(&runs) {
        return Err("--runs must be in 1..=20".to_string());
    }
    Ok(Args { dir, runs })
}

fn main() {
    if cfg!(debug_assertions) {
        eprintln!("wal_bench refuses a debug build: run with --release");
        std::process::exit(2);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wal_bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("wal_bench: {e}");
        std::process::exit(1);
    }
}

type Case<'a> = (
    String,
    Box<dyn Fn(&Path) -> Result<Vec<(&'static str, f64)>, Box<dyn std::error::Error>> + 'a>,
);

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(&args.dir)?;
    let mut cases: Vec<Case<'_>> = vec![
        (
            "raw_append_4k_fsync".into(),
            Box::new(|d| raw_sync(d, false, RAW_WRITE_BYTES, |f| f.sync_all())),
        ),
        (
            "raw_append_4k_fdatasync".into(),
            Box::new(|d| raw_sync(d, false, RAW_WRITE_BYTES, |f| f.sync_data())),
        ),
        (
            // One framed 100-byte entry per sync: the limit for the batch-of-1 WAL case.
            "raw_append_128b_fdatasync".into(),
            Box::new(|d| {
                raw_sync(
                    d,
                    false,
                    ENTRY_BYTES + nodedb_wal::FRAME_HEADER_BYTES,
                    |f| f.sync_data(),
                )
            }),
        ),
        (
            "raw_overwrite_4k_fdatasync".into(),
            Box::new(|d| raw_sync(d, true, RAW_WRITE_BYTES, |f| f.sync_data())),
        ),
        (
            "raw_unsynced_1m_writes".into(),
            Box::new(|d| raw_unsynced(d, UNSYNCED_BYTES_TOTAL)),
        ),
        (
            "wal_unsynced_4k_records".into(),
            Box::new(|d| unsynced(d, 4096, UNSYNCED_BYTES_TOTAL / 4096)),
        ),
        (
            "wal_unsynced_100b_records".into(),
            Box::new(|d| unsynced(d, ENTRY_BYTES, UNSYNCED_SMALL_RECORDS)),
        ),
    ];
    for (batch, syncs, with_growing) in GROUP_COMMIT_CASES {
        cases.push((
            format!("wal_group_commit_100b_batch{batch}"),
            Box::new(move |d| group_commit(d, batch, syncs, SyncMode::Fdatasync, true)),
        ));
        if with_growing {
            cases.push((
                format!("wal_group_commit_100b_batch{batch}_growing"),
                Box::new(move |d| group_commit(d, batch, syncs, SyncMode::Fdatasync, false)),
            ));
        }
    }
    cases.push((
        "wal_group_commit_100b_batch1000_fsync".into(),
        Box::new(|d| group_commit(d, 1000, 400, SyncMode::Fsync, true)),
    ));
    for (name, chunk_bytes) in [
        (
            "wal_sync_during_preparation_batch1",
            PREALLOCATE_CHUNK_BYTES_DEFAULT,
        ),
        ("wal_sync_during_preparation_batch1_chunk1m", 1024 * 1024),
        ("wal_sync_during_preparation_batch1_chunk64k", 64 * 1024),
    ] {
        cases.push((
            name.into(),
            Box::new(move |d| syncs_during_preparation(d, chunk_bytes)),
        ));
    }
    cases.push((
        "wal_open_empty_preallocated".into(),
        Box::new(|d| open_empty(d, true)),
    ));
    cases.push((
        "wal_open_empty_growing".into(),
        Box::new(|d| open_empty(d, false)),
    ));
    cases.push((
        "wal_recovery_100b_records".into(),
        Box::new(|d| recovery(d, RECOVERY_RECORDS, true)),
    ));
    cases.push((
        "wal_recovery_100b_records_growing".into(),
        Box::new(|d| recovery(d, RECOVERY_RECORDS, false)),
    ));

    // Runs are interleaved (run 1 of every case, then run 2, ...) so a burst of I/O from a
    // neighbour on this shared machine hits all cases alike instead of one case's runs.
    // Run 0 is a discarded warm-up: the first pass over fresh page cache and the allocator
    // measured 5x below the steady state (517 vs 3100 MB/s for 4 KiB records).
    let mut results: Vec<Vec<Vec<(&'static str, f64)>>> = vec![Vec::new(); cases.len()];
    for run in 0..=args.runs {
        for ((name, case), runs) in cases.iter().zip(results.iter_mut()) {
            let work = args
                .dir
                .join(format!("wal_bench_{}_{run}", std::process::id()));
            fs::create_dir_all(&work)?;
            let result = case(&work);
            fs::remove_dir_all(&work)?;
            let metrics = result?;
            if run == 0 {
                continue;
            }
            println!("{}", json_line(name, Some(run), &metrics));
            runs.push(metrics);
        }
    }
    for ((name, _), runs) in cases.iter().zip(&results) {
        println!("SUMMARY {}", summary(name, runs));
    }
    Ok(())
}

/// One write of `write_bytes` + one sync call per iteration; `overwrite` pre-writes and syncs the whole
/// file first, so the syncs never change the file size or allocate blocks.
fn raw_sync(
    dir: &Path,
    overwrite: bool,
    write_bytes: usize,
    sync: impl Fn(&File) -> std::io::Result<()>,
) -> Result<Vec<(&'static str, f64)>, Box<dyn std::error::Error>> {
    let path = dir.join("raw.dat");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![0x5Au8; write_bytes];
    if overwrite {
        let zeros = vec![0u8; write_bytes * RAW_WRITES_COUNT];
        file.write_all(&zeros)?;
        file.sync_all()?;
    }
    let mut latencies_s = Vec::with_capacity(RAW_WRITES_COUNT);
    let started = Instant::now();
    for i in 0..RAW_WRITES_COUNT {
        let t = Instant::now();
        if overwrite {
            file.write_all_at(&block, (i * write_bytes) as u64)?;
        } else {
            file.write_all(&block)?;
        }
        sync(&file)?;
        latencies_s.push(t.elapsed().as_secs_f64());
    }
    let total_s = started.elapsed().as_secs_f64();
    latencies_s.sort_by(f64::total_cmp);
    Ok(vec![
        ("syncs_per_s", RAW_WRITES_COUNT as f64 / total_s),
        ("p50_ms", percentile(&latencies_s, 0.50) * 1e3),
        ("p99_ms", percentile(&latencies_s, 0.99) * 1e3),
    ])
}

/// Writes and deletes a scratch file of `bytes` (untimed) so every unsynced case starts from the
/// same kernel state: free pages just released, as in a steady-state log whose compaction
/// deletes old segments. Without it the figure depends on which case ran before (measured
/// 594 vs 3400 MB/s for the same 4 KiB case).
fn prime_page_cache(dir: &Path, bytes: usize) -> std::io::Result<()> {
    let path = dir.join("prime.dat");
    let chunk = vec![0u8; 1 << 20];
    let mut file = File::create(&path)?;
    for _ in 0..bytes / chunk.len() {
        file.write_all(&chunk)?;
    }
    drop(file);
    fs::remove_file(&path)
}

/// Baseline for the unsynced cases: the same volume as plain 1 MiB `write`s, no framing or crc.
fn raw_unsynced(
    dir: &Path,
    bytes: usize,
) -> Result<Vec<(&'static str, f64)>, Box<dyn std::error::Error>> {
    prime_page_cache(dir, bytes)?;
    let chunk = vec![0xC3u8; 1 << 20];
    let mut file = File::create(dir.join("raw_unsynced.dat"))?;
    let started = Instant::now();
    for _ in 0..bytes / chunk.len() {
        file.write_all(&chunk)?;
    }
    let total_s = started.elapsed().as_secs_f64();
    Ok(vec![("mb_per_s", bytes as f64 / total_s / 1e6)])
}
/// Appends `count` records of `payload_bytes` with no sync, into one segment large enough that
/// no roll (and so no fsync) happens inside the timed loop. Growing segment: preallocating the
/// 1 GiB segment would zero-fill 2 GiB per run, and no sync is timed here.
fn unsynced(
    dir: &Path,
    payload_bytes: usize,
    count: usize,
) -> Result<Vec<(&'static str, f64)>, Box<dyn std::error::Error>> {
    prime_page_cache(
        dir,
        count * (payload_bytes + nodedb_wal::FRAME_HEADER_BYTES),
    )?;
    let options = WalOptions {
        segment_bytes_max: nodedb_wal::SEGMENT_BYTES_MAX,
        preallocate: false,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(dir, options)?;
    let payload = vec![0xC3u8; payload_bytes];
    const BATCH: usize = 256;
    let batch: Vec<RecordRef<'_>> = (0..BATCH)
        .map(|i| RecordRef {
            group_id: (i % 8) as u64,
            kind: 1,
            index: i as u64 + 1,
            payload: &payload,
        })
        .collect();
    let started = Instant::now();
    let mut appended = 0;
    while appended < count {
        let n = BATCH.min(count - appended);
        let out = wal.append(&batch[..n])?;
        assert!(!out.rolled, "segment too small for the unsynced case");
        appended += n;
    }
    let total_s = started.elapsed().as_secs_f64();
    let framed_bytes = (count * (payload_bytes + nodedb_wal::FRAME_HEADER_BYTES)) as f64;
    Ok(vec![
        ("mb_per_s", framed_bytes / total_s / 1e6),
        (
            "payload_mb_per_s",
            (count * payload_bytes) as f64 / total_s / 1e6,
        ),
        ("records_per_s", count as f64 / total_s),
    ])
}

/// `syncs` rounds of: append `batch` 100-byte entries spread over 8 groups, then one `sync`.
/// Preallocated: timing starts once the background preparation of the next segment is done,
/// so this is the steady state (see `syncs_during_preparation` for the other case). No case
/// rolls inside the timed loop (at most 51 MB into a 64 MiB segment).
fn group_commit(
    dir: &Path,
    batch: usize,
    syncs: usize,
    sync_mode: SyncMode,
    preallocate: bool,
) -> Result<Vec<(&'static str, f64)>, Box<dyn std::error::Error>> {
    let options = WalOptions {
        sync_mode,
        preallocate,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(dir, options)?;
    if preallocate && !wal.wait_for_prepared_segment(PREPARED_WAIT_MAX) {
        return Err(format!("no prepared segment: {:?}", wal.preallocation_stats()).into());
    }
    let payload = [0x7Eu8; ENTRY_BYTES];
    let records: Vec<RecordRef<'_>> = (0..batch)
        .map(|i| RecordRef {
            group_id: (i % 8) as u64,
            kind: 1,
            index: i as u64 + 1,
            payload: &payload,
        })
        .collect();
    let mut latencies_s = Vec::with_capacity(syncs);
    let cpu_before_s = process_cpu_s()?;
    let started = Instant::now();
    for _ in 0..syncs {
        let t = Instant::now();
        let out = wal.append(&records)?;
        let durable = wal.sync()?;
        assert!(durable >= out.last_lsn);
        latencies_s.push(t.elapsed().as_secs_f64());
    }
    let total_s = started.elapsed().as_secs_f64();
    let cpu_s = process_cpu_s()? - cpu_before_s;
    latencies_s.sort_by(f64::total_cmp);
    Ok(vec![
        ("entries_per_s", (batch * syncs) as f64 / total_s),
        ("syncs_per_s", syncs as f64 / total_s),
        ("p50_ms", percentile(&latencies_s, 0.50) * 1e3),
        ("p99_ms", percentile(&latencies_s, 0.99) * 1e3),
        ("cpu_us_per_sync", cpu_s / syncs as f64 * 1e6),
    ])
}

/// One entry per sync from right after `open`, while the background thread zero-fills the next
/// 64 MiB segment (`chunk_bytes` chunks, each fdatasynced, paced); stops when the preparation
/// is done. The
/// steady-state baseline is `wal_group_commit_100b_batch1` (same invocation).
fn syncs_during_preparation(
    dir: &Path,
    chunk_bytes: usize,
) -> Result<Vec<(&'static str, f64)>, Box<dyn std::error::Error>> {
    let options = WalOptions {
        preallocate_chunk_bytes: chunk_bytes,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(dir, options)?;
    let payload = [0x7Eu8; ENTRY_BYTES];
    let record = RecordRef {
        group_id: 1,
        kind: 1,
        index: 1,
        payload: &payload,
    };
    let mut latencies_s = Vec::new();
    let started = Instant::now();
    while latencies_s.len() < SYNCS_DURING_PREPARATION_MAX
        && !wal.wait_for_prepared_segment(Duration::ZERO)
    {
        let t = Instant::now();
        let out = wal.append(&[record])?;
        let durable = wal.sync()?;
        assert!(durable >= out.last_lsn);
        latencies_s.push(t.elapsed().as_secs_f64());
    }
    let preparation_s = started.elapsed().as_secs_f64();
    if latencies_s.is_empty() {
        return Err("the preparation finished before the first sync".into());
    }
    latencies_s.sort_by(f64::total_cmp);
    Ok(vec![
        ("syncs", latencies_s.len() as f64),
        ("preparation_ms", preparation_s * 1e3),
        ("p50_ms", percentile(&latencies_s, 0.50) * 1e3),
        ("p99_ms", percentile(&latencies_s, 0.99) * 1e3),
        ("max_ms", percentile(&latencies_s, 1.0) * 1e3),
    ])
}

/// `Wal::open` of an empty directory (default 64 MiB segments): with preallocation the first
/// segment is zero-filled synchronously inside `open`.
fn open_empty(
    dir: &Path,
    preallocate: bool,
) -> Result<Vec<(&'static str, f64)>, Box<dyn std::error::Error>> {
    let mut times_s = Vec::with_capacity(OPEN_EMPTY_REPEATS);
    for i in 0..OPEN_EMPTY_REPEATS {
        let sub = dir.join(format!("open{i}"));
        let options = WalOptions {
            preallocate,
            ..WalOptions::default()
        };
        let t = Instant::now();
        let (wal, _) = Wal::open(&sub, options)?;
        times_s.push(t.elapsed().as_secs_f64());
        drop(wal);
    }
    times_s.sort_by(f64::total_cmp);
    Ok(vec![("open_ms", percentile(&times_s, 0.5) * 1e3)])
}

/// Writes `count` 100-byte entries (synced, default 64 MiB segments), then times `Wal::open`
/// replaying them with a visitor that only counts (no copies): the restart cost per byte.
/// Preallocated: the last segment is mostly zeros, which the scan must check.
fn recovery(
    dir: &Path,
    count: usize,
    preallocate: bool,
) -> Result<Vec<(&'static str, f64)>, Box<dyn std::error::Error>> {
    let payload = [0x11u8; ENTRY_BYTES];
    let options = WalOptions {
        preallocate,
        ..WalOptions::default()
    };
    {
        let (mut wal, _) = Wal::open(dir, options.clone())?;
        let batch: Vec<RecordRef<'_>> = (0..1000)
            .map(|i| RecordRef {
                group_id: (i % 8) as u64,
                kind: 1,
                index: i as u64 + 1,
                payload: &payload,
            })
            .collect();
        for _ in 0..count / batch.len() {
            wal.append(&batch)?;
        }
        wal.sync()?;
    }
    let started = Instant::now();
    let mut seen = 0usize;
    let (_wal, report) = Wal::open_with(dir, options, |_, _| seen += 1)?;
    let total_s = started.elapsed().as_secs_f64();
    assert_eq!(seen, count);
    assert_eq!(report.records_replayed, count as u64);
    let framed_bytes = (count * (ENTRY_BYTES + nodedb_wal::FRAME_HEADER_BYTES)) as f64;
    Ok(vec![
        ("mb_per_s", framed_bytes / total_s / 1e6),
        ("records_per_s", count as f64 / total_s),
        ("seconds", total_s),
    ])
}

/// User + system CPU time of this process so far (every thread: in the preallocated cases the
/// preparation thread is idle while timing, so this is the foreground's cost, kernel included).
fn process_cpu_s() -> Result<f64, Box<dyn std::error::Error>> {
    // SAFETY: getrusage fills the struct we pass; an all-zero rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn json_line(name: &str, run: Option<usize>, metrics: &[(&'static str, f64)]) -> String {
    let mut s = format!("{{\"case\": \"{name}\"");
    if let Some(run) = run {
        s.push_str(&format!(", \"run\": {run}"));
    }
    for (k, v) in metrics {
        s.push_str(&format!(", \"{k}\": {v:.4}"));
    }
    s.push('}');
    s
}

/// Median, min and max of each metric across runs.
fn summary(name: &str, runs: &[Vec<(&'static str, f64)>]) -> String {
    let mut s = format!("{{\"case\": \"{name}\", \"runs\": {}", runs.len());
    for (i, (key, _)) in runs[0].iter().enumerate() {
        let mut values: Vec<f64> = runs.iter().map(|r| r[i].1).collect();
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        s.push_str(&format!(
            ", \"{key}\": {{\"median\": {median:.4}, \"min\": {:.4}, \"max\": {:.4}}}",
            values[0],
            values[values.len() - 1]
        ));
    }
    s.push('}');
    s
}
