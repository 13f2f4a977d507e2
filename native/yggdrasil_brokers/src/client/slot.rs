//! How commands reach a task that may not be running, and the counts of
//! what a client holds.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::{ClientStats, Error};

/// The sending end of a task's command channel, or nothing while the task
/// is not running. The lock makes "start on first use" and "end when idle"
/// exclusive: a task ends only if its queue is empty under the lock, so no
/// command is ever sent to a task that is leaving.
pub(super) struct Slot<C>(Mutex<Option<UnboundedSender<C>>>);

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot(Mutex::new(None))
    }
}

/// A command that could not be queued; `reason` None: the client is closed.
pub(super) struct NotSent<C> {
    pub(super) cmd: C,
    pub(super) reason: Option<Error>,
}

impl<C> Slot<C> {
    fn lock(&self) -> MutexGuard<'_, Option<UnboundedSender<C>>> {
        // Nothing that can panic runs under this lock; recover anyway.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `cmd` for the task, starting the task if none runs; gives the
    /// command back if it could not be queued.
    pub(super) fn send(
        &self,
        closed: &AtomicBool,
        cmd: C,
        start: impl FnOnce(UnboundedReceiver<C>) -> Result<(), Error>,
    ) -> Result<(), NotSent<C>> {
        let mut slot = self.lock();
        // Checked under the lock: once `close` took the sender, no call
        // racing with it can start a new task.
        if closed.load(Ordering::SeqCst) {
            return Err(NotSent { cmd, reason: None });
        }
        let cmd = match slot.as_ref() {
            Some(tx) => match tx.send(cmd) {
                Ok(()) => return Ok(()),
                // The task is gone without retiring (runtime shut down).
                Err(mpsc::error::SendError(cmd)) => cmd,
            },
            None => cmd,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if let Err(e) = start(rx) {
            return Err(NotSent {
                cmd,
                reason: Some(e),
            });
        }
        match tx.send(cmd) {
            Ok(()) => {
                *slot = Some(tx);
                Ok(())
            }
            Err(mpsc::error::SendError(cmd)) => Err(NotSent {
                cmd,
                reason: Some(Error::new("the broker task ended at once")),
            }),
        }
    }

    /// Called by an idle task: true if it may end (nothing queued for it).
    pub(super) fn retire_if_idle(&self, rx: &UnboundedReceiver<C>) -> bool {
        let mut slot = self.lock();
        if rx.is_empty() {
            *slot = None;
            true
        } else {
            false
        }
    }

    pub(super) fn take(&self) {
        self.lock().take();
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) connections: AtomicUsize,
    pub(super) tasks: AtomicUsize,
    pub(super) topics: AtomicUsize,
    pub(super) subscriptions: AtomicUsize,
    pub(super) cuts: AtomicUsize,
}

impl Counters {
    pub(super) fn snapshot(&self) -> ClientStats {
        ClientStats {
            connections: self.connections.load(Ordering::SeqCst),
            tasks: self.tasks.load(Ordering::SeqCst),
            topics: self.topics.load(Ordering::SeqCst),
            subscriptions: self.subscriptions.load(Ordering::SeqCst),
            cuts: self.cuts.load(Ordering::SeqCst),
        }
    }
}

/// Counts one thing (a connection, a task) in a counter while alive.
pub(super) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(super) fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
