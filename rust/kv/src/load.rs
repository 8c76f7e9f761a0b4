//! The native load generator: closed-loop callers in Rust over the KV client core (the
//! binding's `run_native_load` starts it).
//!
//! Why: the etcd side of `benches/compare` is loaded by a Go program (`etcdload`); loading
//! nodedb only from Python coroutines measured the caller's language as much as the cluster
//! (about a quarter of the CPU per write went to the asyncio callers). This driver is to
//! `nodedb_cluster.Client` what etcdload is to etcd's client: the same client core (routing,
//! write sessions, coalescing, retries, deadlines), with `clients` closed-loop callers that
//! live on the runtime instead of in asyncio. Everything one wake-up frees is resubmitted and
//! flushed once, as asyncio's one flush per loop iteration, so requests coalesce the same way.
//!
//! Bounded: `duration_s` ≤ `DURATION_S_MAX`, at most `OPS_PER_CLIENT_MAX` operations per
//! caller; a caller whose call cannot even start (client closed, no member known) stops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::client::{Answer, Completion, Failure, KvClient, ReadAt, Request};

/// Longest run accepted (the bench's own bound).
pub const DURATION_S_MAX: f64 = 3600.0;
/// Callers at most.
pub const CLIENTS_MAX: usize = 10_000;
/// Operations per caller at most (`nodedb_cluster.bench.OPS_PER_CLIENT_MAX`).
pub const OPS_PER_CLIENT_MAX: u64 = 10_000_000;
/// Largest value written.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// One run's settings, checked by [`LoadSpec::new`].
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    clients: usize,
    duration: Duration,
    value_bytes: usize,
    keyspace: u64,
    read_fraction: f64,
    seed: u64,
    timeout: Duration,
}

/// A setting out of its range: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

impl LoadSpec {
    // One argument per setting of the run: the count is the API, not a smell.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clients: usize,
        duration_s: f64,
        value_bytes: usize,
        keyspace: u64,
        read_fraction: f64,
        seed: u64,
        timeout_s: f64,
    ) -> Result<LoadSpec, SpecError> {
        let bad = |field, reason| Err(SpecError { field, reason });
        if !(1..=CLIENTS_MAX).contains(&clients) {
            return bad("clients", format!("{clients} is not in 1..={CLIENTS_MAX}"));
        }
        if !(duration_s.is_finite() && duration_s > 0.0 && duration_s <= DURATION_S_MAX) {
            return bad(
                "duration_s",
                format!("{duration_s} is not in (0, {DURATION_S_MAX}]"),
            );
        }
        if value_bytes > VALUE_BYTES_MAX {
            return bad(
                "value_bytes",
                format!("{value_bytes} exceeds {VALUE_BYTES_MAX}"),
            );
        }
        if keyspace == 0 {
            return bad("keyspace", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&read_fraction) {
            return bad("read_fraction", format!("{read_fraction} is not in [0, 1]"));
        }
        if !(timeout_s.is_finite() && timeout_s > 0.0 && timeout_s <= DURATION_S_MAX) {
            return bad(
                "timeout_s",
                format!("{timeout_s} is not in (0, {DURATION_S_MAX}]"),
            );
        }
        Ok(LoadSpec {
            clients,
            duration: Duration::from_secs_f64(duration_s),
            value_bytes,
            keyspace,
            read_fraction,
            seed,
            timeout: Duration::from_secs_f64(timeout_s),
        })
    }
}

/// Live counts, readable while the run goes (the binding's `NativeLoad.counts`).
#[derive(Default, Debug)]
pub struct Counts {
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub errors: AtomicU64,
}

/// What a run measured besides its counts.
#[derive(Default, Debug)]
pub struct LoadResult {
    /// The first error's text (empty: none).
    pub first_error: String,
    /// One per successful operation.
    pub latencies_us: Vec<u32>,
    pub elapsed_s: f64,
}

/// A finished call of a caller: its tag, and whether it succeeded (else why not).
struct Done {
    tag: usize,
    result: Result<(), String>,
}

/// Tells the run loop, through its channel, that caller `tag`'s call finished: writes must
/// have applied (not refused), reads must have answered.
struct ToRun {
    tx: mpsc::UnboundedSender<Done>,
    tag: usize,
}

impl Completion for ToRun {
    fn complete(self: Box<Self>, outcome: Result<Answer, Failure>) {
        let result = match outcome {
            Ok(Answer::Written {
                refused: Some(reason),
            }) => Err(format!("refused: {reason}")),
            Ok(_) => Ok(()),
            Err(failure) => Err(failure.describe()),
        };
        // A closed receiver: the run ended and stopped waiting.
        let _ = self.tx.send(Done {
            tag: self.tag,
            result,
        });
    }
}

/// SplitMix64: a fixed, seedable sequence (keys and the read/write mix).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The bench's key for `i` (`nodedb_cluster.bench._key`), so reads find prefilled values.
fn key_of(i: u64) -> Vec<u8> {
    format!("bench:{i:010}").into_bytes()
}

/// Issues the callers' operations (one call in flight per caller, tagged with its index).
struct Issuer<'a> {
    core: &'a Arc<KvClient>,
    spec: LoadSpec,
    rng: SplitMix64,
    value: Vec<u8>,
    tx: mpsc::UnboundedSender<Done>,
    started: Vec<Instant>,
    is_read: Vec<bool>,
    issued: Vec<u64>,
    needs_flush: bool,
}

impl Issuer<'_> {
    /// `caller`'s next operation; false when it could not start (counted as an error).
    fn issue(&mut self, caller: usize, result: &mut LoadResult, counts: &Counts) -> bool {
        if self.issued[caller] >= OPS_PER_CLIENT_MAX {
            return false;
        }
        self.issued[caller] += 1;
        let key = key_of(self.rng.next() % self.spec.keyspace);
        let read = self.rng.unit() < self.spec.read_fraction;
        let now = Instant::now();
        let deadline = now + self.spec.timeout;
        let request = if read {
            Request::Get {
                key,
                read: ReadAt::LINEARIZABLE,
            }
        } else {
            Request::Put {
                key,
                value: self.value.clone(),
            }
        };
        let completion = Box::new(ToRun {
            tx: self.tx.clone(),
            tag: caller,
        });
        let submitted = self.core.submit(request, deadline, completion);
        match submitted {
            Ok(flush) => {
                self.needs_flush |= flush;
                self.started[caller] = now;
                self.is_read[caller] = read;
                true
            }
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                if result.first_error.is_empty() {
                    result.first_error = e.describe();
                }
                false
            }
        }
    }
}

/// Run `spec` over `core` until its duration ends and every call in flight finished.
pub async fn run(core: Arc<KvClient>, spec: LoadSpec, counts: Arc<Counts>) -> LoadResult {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let end = start + spec.duration;
    let mut result = LoadResult::default();
    let mut issuer = Issuer {
        core: &core,
        spec,
        rng: SplitMix64(spec.seed),
        value: vec![b'v'; spec.value_bytes],
        tx,
        started: vec![start; spec.clients],
        is_read: vec![false; spec.clients],
        issued: vec![0; spec.clients],
        needs_flush: false,
    };
    let mut outstanding = 0usize;
    for caller in 0..spec.clients {
        outstanding += usize::from(issuer.issue(caller, &mut result, &counts));
    }
    let mut done = Vec::new();
    while outstanding > 0 {
        if std::mem::take(&mut issuer.needs_flush) {
            core.flush();
        }
        let Some(first) = rx.recv().await else {
            break; // unreachable while `issuer.tx` lives
        };
        done.push(first);
        while let Ok(more) = rx.try_recv() {
            done.push(more);
        }
        let now = Instant::now();
        for d in done.drain(..) {
            outstanding -= 1;
            match d.result {
                Ok(()) => {
                    let us = now
                        .saturating_duration_since(issuer.started[d.tag])
                        .as_micros();
                    result
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                    let counter = if issuer.is_read[d.tag] {
                        &counts.reads
                    } else {
                        &counts.writes
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(reason) => {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    if result.first_error.is_empty() {
                        result.first_error = reason;
                    }
                }
            }
            if now < end {
                outstanding += usize::from(issuer.issue(d.tag, &mut result, &counts));
            }
        }
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_out_of_range_names_its_field() {
        assert!(LoadSpec::new(4, 1.0, 16, 100, 0.5, 1, 5.0).is_ok());
        let field = |r: Result<LoadSpec, SpecError>| r.unwrap_err().field;
        assert_eq!(
            field(LoadSpec::new(0, 1.0, 16, 100, 0.5, 1, 5.0)),
            "clients"
        );
        assert_eq!(
            field(LoadSpec::new(4, f64::NAN, 16, 100, 0.5, 1, 5.0)),
            "duration_s"
        );
        assert_eq!(
            field(LoadSpec::new(4, 1.0, usize::MAX, 100, 0.5, 1, 5.0)),
            "value_bytes"
        );
        assert_eq!(field(LoadSpec::new(4, 1.0, 16, 0, 0.5, 1, 5.0)), "keyspace");
        assert_eq!(
            field(LoadSpec::new(4, 1.0, 16, 100, 1.5, 1, 5.0)),
            "read_fraction"
        );
        assert_eq!(
            field(LoadSpec::new(4, 1.0, 16, 100, 0.5, 1, 0.0)),
            "timeout_s"
        );
    }

    #[test]
    fn keys_match_the_python_bench_and_the_mix_follows_the_fraction() {
        assert_eq!(key_of(42), b"bench:0000000042".to_vec());
        let mut rng = SplitMix64(7);
        let reads = (0..10_000).filter(|_| rng.unit() < 0.9).count();
        assert!((8_800..=9_200).contains(&reads), "{reads}");
        let mut a = SplitMix64(1);
        let mut b = SplitMix64(1);
        assert_eq!(a.next(), b.next(), "seeded: the same sequence");
    }
}
