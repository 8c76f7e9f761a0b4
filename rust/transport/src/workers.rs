//! How many worker threads a process's transport runtime gets.
//!
//! The runtime is process-wide (every endpoint, connection and KV serving task of the process
//! shares it), so it is sized once, from the host and an optional override, never per object.
//!
//! Measured on this project's 2-core hosts (BENCHMARKS.md, "one transport worker on a 2-core
//! host"): with three node processes and a client sharing the cores, a second worker costs more
//! than it adds. Each hop between the workers, quinn's drivers and the stream tasks is a
//! cross-thread wake-up, and the cores are already shared with the Raft driver thread and the
//! asyncio loop. One worker wrote with 14-26 % less CPU per write at W1 and 4-15 % at W64, a
//! lower W1 p50 in every placement (asyncio 0.407 → 0.274 ms) and served more Rust-answered
//! RPCs; only bulk transfer lost a few percent. Larger hosts keep the 2 workers chosen before
//! that measurement.

/// Workers on a host with more than [`SMALL_HOST_CPUS`] CPUs.
pub const RUNTIME_WORKERS_DEFAULT: usize = 2;
/// Workers on a host with at most [`SMALL_HOST_CPUS`] CPUs.
pub const RUNTIME_WORKERS_SMALL_HOST: usize = 1;
/// The CPU count up to which a host counts as small.
pub const SMALL_HOST_CPUS: usize = 2;
/// Environment variable that overrides the choice for the whole process.
pub const RUNTIME_WORKERS_ENV: &str = "NODEDB_TRANSPORT_WORKERS";
/// Largest accepted override.
pub const RUNTIME_WORKERS_MAX: usize = 64;

/// The worker count for a process that may use `cpus` CPUs (affinity and quota included), or
/// the override's value (1..=[`RUNTIME_WORKERS_MAX`]; anything else is refused, naming the
/// variable).
pub fn runtime_workers(override_text: Option<&str>, cpus: usize) -> Result<usize, String> {
    let Some(text) = override_text else {
        return Ok(if cpus <= SMALL_HOST_CPUS {
            RUNTIME_WORKERS_SMALL_HOST
        } else {
            RUNTIME_WORKERS_DEFAULT
        });
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=RUNTIME_WORKERS_MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "{RUNTIME_WORKERS_ENV}={text:?} is not a worker count in 1..={RUNTIME_WORKERS_MAX}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_host_gets_one_worker_and_a_larger_one_two() {
        assert_eq!(runtime_workers(None, 1), Ok(1));
        assert_eq!(runtime_workers(None, 2), Ok(1));
        assert_eq!(runtime_workers(None, 3), Ok(2));
        assert_eq!(runtime_workers(None, 64), Ok(2));
    }

    #[test]
    fn the_override_wins_within_its_range() {
        assert_eq!(runtime_workers(Some("3"), 2), Ok(3));
        assert_eq!(runtime_workers(Some(" 1 "), 16), Ok(1));
        assert_eq!(runtime_workers(Some("64"), 2), Ok(64));
    }

    #[test]
    fn a_bad_override_is_refused_naming_the_variable() {
        for bad in ["0", "65", "-1", "two", ""] {
            let err = runtime_workers(Some(bad), 2).unwrap_err();
            assert!(err.contains(RUNTIME_WORKERS_ENV), "{err}");
            assert!(err.contains("1..=64"), "{err}");
        }
    }
}
