//! The loop bridge: how Rust hands work to one asyncio loop without ever taking the GIL on a
//! tokio thread.
//!
//! Tokio tasks push closures into a queue; the first push after a drain writes one byte to a
//! socketpair whose read end the loop watches (`loop.add_reader(fd, drain)`). `drain()` runs on
//! the loop thread with the GIL and executes every queued closure (complete a future, call the
//! Python handler). Under load many completions share one wake-up; at one in flight the cost is one
//! byte written and one epoll wake. (pyo3-async-runtimes takes the GIL on a tokio thread and does a
//! `call_soon_threadsafe` per completion, which measured 5-10x slower here.)
//!
//! The bridge also counts the futures it still owes (`UnresolvedCall`): a completion pushed after
//! the loop stopped watching would never settle its future and the coroutine awaiting it would
//! hang, so the owner keeps watching a closed core until the count is 0 (`loop_bridge.py`).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

/// Work for the loop thread.
pub type LoopTask = Box<dyn FnOnce(Python<'_>) + Send>;

/// Bytes read from the wake socket per `read` call while draining.
const WAKE_DRAIN_CHUNK_BYTES: usize = 256;
/// Tasks waiting for the loop, at most. Healthy use stays far below (every task is an in-flight
/// request or a completion, themselves bounded by stream limits and timeouts); the cap only
/// matters when the owning loop stopped draining (closed without closing the transport): then
/// further tasks are dropped, which answers inbound requests with "no_reply" instead of growing
/// without bound.
const QUEUED_TASKS_MAX: usize = 1 << 20;

pub struct LoopBridge {
    queue: Mutex<Vec<LoopTask>>,
    /// True between the wake byte being written and the next drain.
    signalled: AtomicBool,
    reader: UnixStream,
    writer: UnixStream,
    /// Futures some task will settle through this bridge and has not yet (see `UnresolvedCall`).
    unresolved: Arc<AtomicUsize>,
}

/// One future the bridge owes its loop: counted from the call until this guard is dropped, which
/// the settling task does on the loop thread right after settling it (or wherever the task is
/// dropped unrun: a stopped runtime, a full queue).
pub struct UnresolvedCall(Arc<AtomicUsize>);

impl Drop for UnresolvedCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LoopBridge {
    pub fn new() -> std::io::Result<LoopBridge> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(LoopBridge {
            queue: Mutex::new(Vec::new()),
            signalled: AtomicBool::new(false),
            reader,
            writer,
            unresolved: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Count one more future to be settled through this bridge until the guard is dropped.
    pub fn unresolved_call(&self) -> UnresolvedCall {
        self.unresolved.fetch_add(1, Ordering::AcqRel);
        UnresolvedCall(Arc::clone(&self.unresolved))
    }

    /// Futures owed (the owner of a closed core watches the bridge until this is 0).
    pub fn unresolved(&self) -> usize {
        self.unresolved.load(Ordering::Acquire)
    }

    /// The fd the loop watches for readability.
    pub fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// Queue `task` for the loop thread (any thread, no GIL needed). Returns false (and drops
    /// the task) when `QUEUED_TASKS_MAX` tasks are already waiting: the loop is not draining.
    pub fn push(&self, task: LoopTask) -> bool {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() >= QUEUED_TASKS_MAX {
                drop(queue);
                // Dropped outside the lock: its Python references are released through pyo3's
                // deferred reference pool when no GIL is held.
                drop(task);
                return false;
            }
            queue.push(task);
        }
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // A full socket buffer means a wake-up is already pending: nothing lost.
            match (&self.writer).write(&[1]) {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => eprintln!("nodedb_cluster_core: loop bridge wake failed: {err}"),
            }
        }
        true
    }

    /// Run every queued task (loop thread, GIL held). Returns how many ran.
    pub fn drain(&self, py: Python<'_>) -> usize {
        let mut sink = [0u8; WAKE_DRAIN_CHUNK_BYTES];
        while matches!((&self.reader).read(&mut sink), Ok(n) if n > 0) {}
        // Clear before taking the queue: a push racing with us re-signals, never gets lost.
        self.signalled.store(false, Ordering::Release);
        let tasks = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let count = tasks.len();
        for task in tasks {
            task(py);
        }
        count
    }
}

/// Resolve an asyncio future from the loop thread: `Ok` → `set_result`, `Err` → `set_exception`.
/// A future already done (cancelled by its awaiter) is left alone.
pub fn settle(py: Python<'_>, future: &Py<PyAny>, result: PyResult<Py<PyAny>>) {
    let future = future.bind(py);
    let done = future
        .call_method0("done")
        .and_then(|d| d.is_truthy())
        .unwrap_or(true);
    if done {
        return;
    }
    let outcome = match result {
        Ok(value) => future.call_method1("set_result", (value,)),
        Err(err) => future.call_method1("set_exception", (err.into_value(py),)),
    };
    if let Err(err) = outcome {
        err.write_unraisable(py, Some(future));
    }
}

/// Run `work` on `runtime`; resolve `future` on the loop thread with its outcome, mapping a
/// value with `to_py` and an error with `err_to_py` (each binding passes its own error mapper).
pub fn spawn_settle<F, T, E>(
    runtime: &tokio::runtime::Runtime,
    bridge: &Arc<LoopBridge>,
    future: Py<PyAny>,
    work: F,
    to_py: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
    err_to_py: fn(Python<'_>, E) -> PyErr,
) where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let bridge = Arc::clone(bridge);
    let call = bridge.unresolved_call();
    runtime.spawn(async move {
        let result = work.await;
        bridge.push(Box::new(move |py| {
            let value = match result {
                Ok(value) => to_py(py, value),
                Err(err) => Err(err_to_py(py, err)),
            };
            settle(py, &future, value);
            drop(call);
        }));
    });
}
