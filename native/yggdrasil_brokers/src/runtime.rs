//! The one tokio runtime of the process, shared by every client.
//!
//! `std::sync::LazyLock` (which supersedes `lazy_static`) creates it on first
//! use, so a VM that never touches a broker never starts its thread. One
//! worker is plenty: the work is socket I/O and hand-off into the outbox
//! channel, and the BEAM wants its cores for schedulers.
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;

use tokio::runtime::{Builder, Runtime};

use crate::Error;

static RUNTIME: LazyLock<Result<Runtime, String>> = LazyLock::new(|| {
    Builder::new_multi_thread()
        .worker_threads(1)
        // Only host name lookups block (tokio runs getaddrinfo on this
        // pool); a few threads keep the VM's thread count bounded.
        .max_blocking_threads(4)
        .thread_name("yggdrasil-broker")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the broker runtime: {e}"))
});

/// Tasks this crate spawned and that have not ended (the broker crates'
/// own helper tasks are in `RuntimeStats::runtime_tasks`).
static OUR_TASKS: AtomicUsize = AtomicUsize::new(0);

/// What is alive on the shared runtime; tests count leaks with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Whether the runtime has been created (it never is without a client).
    pub started: bool,
    /// Every task alive on the runtime, including the broker crates' own.
    pub runtime_tasks: usize,
    /// The tasks this crate spawned (connection tasks).
    pub our_tasks: usize,
}

pub fn runtime_stats() -> RuntimeStats {
    // Don't create the runtime just to report that it is empty.
    let started = LazyLock::get(&RUNTIME).is_some();
    let runtime_tasks = match LazyLock::get(&RUNTIME) {
        Some(Ok(rt)) => rt.metrics().num_alive_tasks(),
        _ => 0,
    };
    RuntimeStats {
        started,
        runtime_tasks,
        our_tasks: OUR_TASKS.load(Ordering::Relaxed),
    }
}

/// Makes sure the runtime exists; its creation error otherwise.
pub(crate) fn ensure() -> Result<(), Error> {
    RUNTIME
        .as_ref()
        .map(|_| ())
        .map_err(|e| Error::new(e.clone()))
}

/// Spawns a task counted in `runtime_stats().our_tasks` until it ends.
pub(crate) fn spawn<F>(task: F) -> Result<(), Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let rt = RUNTIME.as_ref().map_err(|e| Error::new(e.clone()))?;
    let guard = TaskGuard::new();
    rt.spawn(async move {
        let _guard = guard;
        task.await
    });
    Ok(())
}

struct TaskGuard;

impl TaskGuard {
    fn new() -> Self {
        OUR_TASKS.fetch_add(1, Ordering::Relaxed);
        TaskGuard
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        OUR_TASKS.fetch_sub(1, Ordering::Relaxed);
    }
}
