//! Test helper for `tests/crash_kill9.rs`: appends and syncs in a loop, printing one line per
//! synced batch, until it is killed with SIGKILL. Not part of the library's API.
//!
//! Usage: `wal_crash_child <dir> [--fsize-limit-bytes N [--preallocate]]`. Each batch holds, for one group, 1–8 entries plus the group's
//! hard state (term = batch number), then one `sync()`. After the sync it prints
//! `synced <lsn> <group> <index> <term>` (the LSN and index of the batch's last entry).
//! Every 16th batch has one 512 KiB entry. Every 64 batches it compacts, keeping the last 64 indexes of each group. On restart it
//! recovers and continues each group's indexes and the term where they left off.
//!
//! With `--fsize-limit-bytes N` it first sets `RLIMIT_FSIZE` to N (writes past N fail with
//! EFBIG: a real write failure), and on the first error prints `error <message>`, tries one more
//! append and prints `after <message>` (expected: poisoned), then exits 0.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nodedb_wal::{RecordRef, Wal, WalError, WalOptions};

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const GROUPS: u64 = 8;
/// Every 16th batch carries one 512 KiB entry: a multi-page write that SIGKILL can cut
/// partway, so real kills also produce torn tails (not in `--fsize-limit-bytes` mode).
const BIG_ENTRY_EVERY_BATCHES: u64 = 16;
const BIG_ENTRY_BYTES: usize = 512 * 1024;
/// Bounds: the parent kills us long before either is reached.
const BATCHES_MAX: u64 = 1_000_000;
const RUNTIME_MAX: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, fsize_limit, preallocate) = match args.as_slice() {
        [dir] => (dir.clone(), None, true),
        [dir, flag, n, rest @ ..] if flag == "--fsize-limit-bytes" => {
            let preallocate = match rest {
                [] => false,
                [p] if p == "--preallocate" => true,
                _ => return usage(),
            };
            match n.parse::<u64>() {
                Ok(n) => (dir.clone(), Some(n), preallocate),
                Err(_) => return usage(),
            }
        }
        _ => return usage(),
    };
    if let Some(limit) = fsize_limit {
        if let Err(e) = limit_file_size(limit) {
            eprintln!("wal_crash_child: setrlimit: {e}");
            return ExitCode::from(2);
        }
    }
    match run(&dir, fsize_limit.is_some(), preallocate) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wal_crash_child: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: wal_crash_child <dir> [--fsize-limit-bytes N [--preallocate]]");
    ExitCode::from(2)
}

/// Makes writes past `limit` bytes of any file fail with EFBIG instead of killing us (SIGXFSZ).
fn limit_file_size(limit: u64) -> std::io::Result<()> {
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: plain syscalls with a valid pointer to a local struct / a constant handler.
    unsafe {
        if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setrlimit(libc::RLIMIT_FSIZE, &rlim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Preallocation on (the default) unless `--fsize-limit-bytes` without `--preallocate`: with
/// it, preparing a full-size segment fails at the limit and the WAL must fall back to growing
/// segments (at open and at every roll) before the write itself fails.
fn options(preallocate: bool) -> WalOptions {
    WalOptions {
        segment_bytes_max: 64 * 1024,
        write_buffer_bytes: 16 * 1024,
        sticky_kinds: vec![KIND_HARD_STATE],
        preallocate,
        ..WalOptions::default()
    }
}

fn run(dir: &str, report_first_error: bool, preallocate: bool) -> Result<(), WalError> {
    let mut next_index: HashMap<u64, u64> = HashMap::new();
    let mut term = 0u64;
    let (mut wal, _report) = Wal::open_with(dir, options(preallocate), |_lsn, record| {
        if record.kind == KIND_ENTRY {
            let next = next_index.entry(record.group_id).or_insert(1);
            *next = (*next).max(record.index + 1);
        } else if record.kind == KIND_HARD_STATE {
            term = term.max(decode_u64(record.payload));
        }
    })?;
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let payload = [0xABu8; 100];
    let big_payload = vec![0xCDu8; BIG_ENTRY_BYTES];
    for batch in 0..BATCHES_MAX {
        if started.elapsed() > RUNTIME_MAX {
            break;
        }
        term += 1;
        let group_id = batch % GROUPS;
        let count = 1 + (batch * 7 + term) % 8;
        let first = *next_index.get(&group_id).unwrap_or(&1);
        let big = !report_first_error && batch % BIG_ENTRY_EVERY_BATCHES == 5;
        let mut records: Vec<RecordRef<'_>> = (first..first + count)
            .map(|index| RecordRef {
                group_id,
                kind: KIND_ENTRY,
                index,
                payload: if big && index == first {
                    &big_payload
                } else {
                    &payload
                },
            })
            .collect();
        let term_bytes = term.to_le_bytes();
        records.push(RecordRef {
            group_id,
            kind: KIND_HARD_STATE,
            index: 0,
            payload: &term_bytes,
        });
        let result = wal.append(&records).and_then(|out| Ok((out, wal.sync()?)));
        let (out, synced) = match result {
            Ok(ok) => ok,
            Err(e) if report_first_error => {
                let _ = writeln!(stdout, "error {e}");
                let again = wal.append(&records).and_then(|_| wal.sync());
                let _ = writeln!(
                    stdout,
                    "after {}",
                    again.err().map_or("ok".to_string(), |e| e.to_string())
                );
                let _ = stdout.flush();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        next_index.insert(group_id, first + count);
        let last_entry_lsn = out.last_lsn.0 - 1; // the hard state is the batch's last record
        assert!(synced >= out.last_lsn);
        // Stdout is a pipe to the parent; if it is gone there is nobody left to report to.
        if writeln!(
            stdout,
            "synced {last_entry_lsn} {group_id} {} {term}",
            first + count - 1
        )
        .is_err()
        {
            return Ok(());
        }
        let _ = stdout.flush();
        if batch % 64 == 63 {
            let floors = next_index
                .iter()
                .map(|(g, next)| (*g, next.saturating_sub(65)))
                .collect();
            wal.compact(&floors)?;
        }
    }
    Ok(())
}

fn decode_u64(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(a)
}
