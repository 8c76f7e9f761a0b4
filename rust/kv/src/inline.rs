//! Tasks polled on the thread that wakes them, not on a runtime worker.
//!
//! A write that a node's own caller makes, and that this node leads, passes through three
//! threads at most: the caller's (it queues, proposes and wakes the driver), the driver's (the
//! entry commits, and the reply that wakes the waiting futures runs them to their end right
//! there), and the caller's again (the loop bridge). Spawned on the runtime instead, each
//! wake-up would first hop to a worker thread: two more thread hand-offs per write, each a
//! VM wake-up (BENCHMARKS.md, "in-process writes").
//!
//! A task runs inside the runtime's context (timers and `Notify` work from any thread) and
//! outside tokio's cooperative budget: polled inside another task's poll, a budget it did not
//! spend would otherwise make it yield and wake itself forever. Polls nest (a task that ends
//! wakes or starts the next one); past `NESTED_POLLS_MAX` on one thread the next poll goes to
//! a runtime worker instead, so a cascade (a full engine queue refusing batch after batch at
//! once) cannot grow the waking thread's stack without bound.

use std::cell::Cell;
use std::future::Future;

use tokio::runtime::Handle;

/// Task polls nested on one thread, at most; the next goes to the runtime.
const NESTED_POLLS_MAX: u32 = 16;

thread_local! {
    static NESTED_POLLS: Cell<u32> = const { Cell::new(0) };
}

/// Polls `future` at once on this thread, then on whichever thread wakes it, until it ends.
pub(crate) fn spawn(runtime: &Handle, future: impl Future<Output = ()> + Send + 'static) {
    let runtime = runtime.clone();
    let (runnable, task) = async_task::spawn(tokio::task::unconstrained(future), move |r| {
        if NESTED_POLLS.get() >= NESTED_POLLS_MAX {
            runtime.spawn(async move {
                poll(r);
            });
            return;
        }
        let _context = runtime.enter();
        poll(r);
    });
    task.detach();
    runnable.schedule();
}

fn poll(runnable: async_task::Runnable) {
    NESTED_POLLS.set(NESTED_POLLS.get() + 1);
    // A panic in the task ends the task (its futures are dropped, so whoever waits on it sees
    // a dropped reply), as on the runtime; never the thread that happened to wake it (the
    // engine's driver). The panic hook has printed it.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runnable.run();
    }));
    NESTED_POLLS.set(NESTED_POLLS.get() - 1);
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::spawn;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_task_runs_on_the_thread_that_wakes_it_and_its_panic_stays_in_it() {
        let rt = runtime();
        let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<()>();
        let (seen_tx, seen_rx) = mpsc::channel();
        spawn(rt.handle(), async move {
            let _ = wake_rx.await;
            let _ = seen_tx.send(std::thread::current().name().map(str::to_string));
            panic!("an inline task's panic (expected by this test)");
        });
        let waker = std::thread::Builder::new()
            .name("waker".into())
            .spawn(move || wake_tx.send(()).is_ok())
            .expect("thread");
        assert_eq!(waker.join().ok(), Some(true), "the waking thread survived");
        let seen = seen_rx.recv_timeout(Duration::from_secs(5)).expect("ran");
        assert_eq!(seen.as_deref(), Some("waker"));
    }

    #[test]
    fn a_cascade_of_tasks_ending_at_once_hands_over_to_the_runtime_past_the_nesting_bound() {
        // Each task starts the next from its own poll and ends: inline they would nest 10,000
        // deep on this thread.
        fn chain(rt: tokio::runtime::Handle, left: u32, done: mpsc::Sender<Option<String>>) {
            let next = rt.clone();
            spawn(&rt, async move {
                if left == 0 {
                    let _ = done.send(std::thread::current().name().map(str::to_string));
                } else {
                    chain(next, left - 1, done);
                }
            });
        }
        let rt = runtime();
        let me = std::thread::current().name().map(str::to_string);
        let (done_tx, done_rx) = mpsc::channel();
        chain(rt.handle().clone(), 10_000, done_tx);
        let last = done_rx.recv_timeout(Duration::from_secs(5)).expect("ended");
        assert_ne!(
            last, me,
            "handed over: not all nested on the starting thread"
        );
        assert_eq!(
            super::NESTED_POLLS.get(),
            0,
            "the nesting count is back to zero"
        );
    }

    #[test]
    fn a_task_awaits_the_runtimes_timers_from_any_thread() {
        let rt = runtime();
        let (done_tx, done_rx) = mpsc::channel();
        spawn(rt.handle(), async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the timer woke the task");
    }
}
