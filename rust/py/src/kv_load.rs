//! `run_native_load`: a closed-loop load generator in Rust over the KV client core.
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

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokio::sync::mpsc;

use crate::bridge::spawn_settle;
use crate::errors::cluster_error;
use crate::kv_client::{Inner, NativeDone, PyKvClient, UnresolvedCall};

/// Longest run accepted (the bench's own bound).
const DURATION_S_MAX: f64 = 3600.0;
/// Callers at most.
const CLIENTS_MAX: usize = 10_000;
/// Operations per caller at most (`nodedb_cluster.bench.OPS_PER_CLIENT_MAX`).
const OPS_PER_CLIENT_MAX: u64 = 10_000_000;
/// Largest value written.
const VALUE_BYTES_MAX: usize = 1 << 20;

#[derive(Clone, Copy)]
struct LoadSpec {
    clients: usize,
    duration: Duration,
    value_bytes: usize,
    keyspace: u64,
    read_fraction: f64,
    seed: u64,
    timeout: Duration,
}

/// Live counts, readable from Python while the run goes (`NativeLoad.counts`).
#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
struct LoadResult {
    first_error: String,
    latencies_us: Vec<u32>,
    elapsed_s: f64,
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
    core: &'a Arc<Inner>,
    spec: LoadSpec,
    rng: SplitMix64,
    value: Vec<u8>,
    tx: mpsc::UnboundedSender<NativeDone>,
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
        let submitted = if read {
            self.core.get_native(key, deadline, &self.tx, caller)
        } else {
            self.core
                .put_native(key, self.value.clone(), deadline, &self.tx, caller)
        };
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

async fn run(core: Arc<Inner>, spec: LoadSpec, counts: Arc<Counts>) -> LoadResult {
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

/// A running native load: `counts` while it runs; its future gets the result.
#[pyclass(frozen, name = "NativeLoad", module = "nodedb_cluster_core")]
pub struct PyNativeLoad {
    counts: Arc<Counts>,
}

#[pymethods]
impl PyNativeLoad {
    /// (writes, reads, errors) so far.
    #[getter]
    fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counts;
        (
            c.writes.load(Ordering::Relaxed),
            c.reads.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
        )
    }
}

/// `run_native_load(client, clients, duration_s, value_bytes, keyspace, read_fraction, seed,
/// timeout_s, future)`: starts the run on the client's runtime; `future` (of the loop the
/// client is attached to) gets `{"writes", "reads", "errors", "first_error", "latencies_us"
/// (uint32 little-endian bytes, one per successful operation), "elapsed_s"}`.
// Python keyword arguments, one per setting of the run: the count is the API, not a smell.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (client, clients, duration_s, value_bytes, keyspace, read_fraction, seed, timeout_s, future))]
fn run_native_load(
    py: Python<'_>,
    client: &PyKvClient,
    clients: usize,
    duration_s: f64,
    value_bytes: usize,
    keyspace: u64,
    read_fraction: f64,
    seed: u64,
    timeout_s: f64,
    future: Py<PyAny>,
) -> PyResult<PyNativeLoad> {
    let bad = |field: &str, reason: String| cluster_error(py, "ConfigError", (field, reason));
    if !(1..=CLIENTS_MAX).contains(&clients) {
        return Err(bad(
            "clients",
            format!("{clients} is not in 1..={CLIENTS_MAX}"),
        ));
    }
    if !(duration_s.is_finite() && duration_s > 0.0 && duration_s <= DURATION_S_MAX) {
        return Err(bad(
            "duration_s",
            format!("{duration_s} is not in (0, {DURATION_S_MAX}]"),
        ));
    }
    if value_bytes > VALUE_BYTES_MAX {
        return Err(bad(
            "value_bytes",
            format!("{value_bytes} exceeds {VALUE_BYTES_MAX}"),
        ));
    }
    if keyspace == 0 {
        return Err(bad("keyspace", "must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&read_fraction) {
        return Err(bad(
            "read_fraction",
            format!("{read_fraction} is not in [0, 1]"),
        ));
    }
    if !(timeout_s.is_finite() && timeout_s > 0.0 && timeout_s <= DURATION_S_MAX) {
        return Err(bad(
            "timeout_s",
            format!("{timeout_s} is not in (0, {DURATION_S_MAX}]"),
        ));
    }
    let spec = LoadSpec {
        clients,
        duration: Duration::from_secs_f64(duration_s),
        value_bytes,
        keyspace,
        read_fraction,
        seed,
        timeout: Duration::from_secs_f64(timeout_s),
    };
    let counts = Arc::new(Counts::default());
    let core = client.core();
    let run_counts = Arc::clone(&counts);
    let call = client.unresolved_call();
    let work = async move {
        let result = run(core, spec, Arc::clone(&run_counts)).await;
        Ok::<_, Infallible>(Finished {
            result,
            counts: run_counts,
            _call: call,
        })
    };
    spawn_settle(
        client.runtime(),
        client.bridge(),
        future,
        work,
        to_py,
        |_, never| match never {},
    );
    Ok(PyNativeLoad { counts })
}

/// What the run's future is resolved with; `_call` is uncounted when this is dropped, on the
/// loop thread, right after the conversion.
struct Finished {
    result: LoadResult,
    counts: Arc<Counts>,
    _call: UnresolvedCall,
}

fn to_py(py: Python<'_>, finished: Finished) -> PyResult<Py<PyAny>> {
    let Finished { result, counts, .. } = finished;
    let doc = PyDict::new(py);
    doc.set_item("writes", counts.writes.load(Ordering::Relaxed))?;
    doc.set_item("reads", counts.reads.load(Ordering::Relaxed))?;
    doc.set_item("errors", counts.errors.load(Ordering::Relaxed))?;
    doc.set_item("first_error", result.first_error)?;
    let lat: Vec<u8> = result
        .latencies_us
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    doc.set_item("latencies_us", PyBytes::new(py, &lat))?;
    doc.set_item("elapsed_s", result.elapsed_s)?;
    Ok(doc.into_any().unbind())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNativeLoad>()?;
    m.add_function(wrap_pyfunction!(run_native_load, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
