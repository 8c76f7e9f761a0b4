//! The driver's watchdog. A driver thread that makes no progress for
//! [`MultiRaftConfig::driver_stall_max`](crate::config::MultiRaftConfig) (a state machine's
//! apply, snapshot or restore that never returns, a disk whose sync hangs, a bug that loops)
//! leaves a process that answers nothing while it still holds its groups' replicas. The
//! watchdog ends the engine as a panic would, through `stopped()`, so the host stops instead
//! of lingering; the stuck thread is left behind (only the process's exit can end it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use crate::ids::NodeId;
use crate::lease_board::LeaseBoard;

/// The driver loop's signs of life, as the watchdog reads them.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Loops the driver began.
    beats: AtomicU64,
    /// The watchdog ended the engine: nobody may wait for the thread.
    stalled: AtomicBool,
}

impl Progress {
    /// The driver began a loop (it does at least once a tick).
    pub(super) fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }
}

/// How long the driver has gone without a loop, as the watchdog saw it wake after wake. A
/// wake much later than its period means the whole process was held (SIGSTOP, a suspended
/// VM): that gap counts as one period at most, so a pause alone never reads as a stall.
#[derive(Debug)]
struct Idle {
    period: Duration,
    beats: u64,
    idle: Duration,
}

impl Idle {
    fn new(period: Duration, beats: u64) -> Self {
        Idle {
            period,
            beats,
            idle: Duration::ZERO,
        }
    }

    /// One wake, `slept` after the last one, seeing `beats` loops begun so far.
    fn wake(&mut self, slept: Duration, beats: u64) -> Duration {
        if beats != self.beats {
            self.beats = beats;
            self.idle = Duration::ZERO;
        } else {
            self.idle += slept.min(self.period);
        }
        self.idle
    }
}

/// Why the engine stopped when its driver made no progress for `idle`.
pub(super) fn stall_reason(idle: Duration) -> String {
    format!(
        "the driver thread made no progress for {:.1} s (a state machine's apply_batch, \
         snapshot or restore that does not return, a disk whose sync hangs, or a bug): the \
         engine stops",
        idle.as_secs_f64()
    )
}

/// Watches `shared`'s driver until the engine stops; ends it once the driver went `stall_max`
/// without beginning a loop. A zero `stall_max` watches nothing.
pub(super) fn spawn(
    node: NodeId,
    stall_max: Duration,
    shared: Arc<Shared>,
    leases: Arc<LeaseBoard>,
) -> std::io::Result<()> {
    if stall_max.is_zero() {
        return Ok(());
    }
    let period = (stall_max / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    std::thread::Builder::new()
        .name(format!("multiraft-{}-watch", node.0))
        .spawn(move || {
            let mut idle = Idle::new(period, shared.progress.beats());
            let mut last = Instant::now();
            loop {
                std::thread::sleep(period);
                let now = Instant::now();
                let seen = idle.wake(now - last, shared.progress.beats());
                last = now;
                if shared.stopped.borrow().is_some() {
                    return;
                }
                if seen >= stall_max {
                    shared.progress.stalled.store(true, Ordering::Release);
                    leases.clear(); // a stuck leader serves no lease read from now on
                    shared.stopped.send_if_modified(|stopped| {
                        let first = stopped.is_none();
                        if first {
                            *stopped = Some(stall_reason(seen));
                        }
                        first
                    });
                    return;
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_begun_resets_the_idle_time_and_a_held_process_counts_one_period() {
        let period = Duration::from_millis(100);
        let mut idle = Idle::new(period, 0);
        assert_eq!(idle.wake(period, 0), period);
        assert_eq!(idle.wake(period, 0), period * 2);
        assert_eq!(idle.wake(period, 1), Duration::ZERO, "the driver looped");
        // The process was stopped for a minute: one period of it counts, not the minute.
        assert_eq!(idle.wake(Duration::from_secs(60), 1), period);
        let p = Progress::default();
        p.beat();
        assert_eq!(p.beats(), 1);
        assert!(!p.stalled());
    }

    #[test]
    fn the_reason_says_how_long_and_what_may_hang() {
        let text = stall_reason(Duration::from_millis(61_250));
        assert!(
            text.starts_with("the driver thread made no progress for 61.2 s"),
            "{text}"
        );
        assert!(text.contains("apply_batch"));
    }
}
