//! Keeps the delivery thread from running ahead of the subscribers.
//!
//! The delivery thread is not a BEAM process: nothing slows it down when
//! subscribers take their messages slower than it sends them, and their
//! mailboxes would grow without bound under a flood. So once it has sent a
//! budget of messages ([`BUDGET`]) it names one recipient of its last
//! fan-out to the pacer (`Yggdrasil.Broker.Pacer`, a process) and waits
//! until the pacer answers that this recipient's mailbox is short again:
//! no longer than the fan-outs since the last pace, or a few messages.
//! Subscribers that keep up cost one round trip per budget; subscribers
//! that do not keep the thread waiting, so each mailbox holds about one
//! budget's worth of events, not a flood.
//!
//! The recipient named changes at every pace, so one slow subscriber sets
//! the pace of one wait in many, not all. Each wait is capped ([`MAX_WAIT`])
//! so that a missing or stuck pacer slows delivery down, never stops it;
//! the outbox then drops what grew too old (`docs/guarantees.md`).
//!
//! A runtime thread that delivers an event itself (`outbox.rs`, express)
//! spends the same budget but never waits: with the budget spent it leaves
//! the event to the delivery thread, which paces.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustler::{Encoder, Env, LocalPid};

use crate::pid::{send_copy, Pid};

mod atoms {
    rustler::atoms! { ok, pace, tag = "$yggdrasil_broker" }
}

/// Messages sent between two paces: one round trip to the pacer per 8,192
/// sends is noise next to the sends, and at most a few events per
/// subscriber of a wide channel.
const BUDGET: usize = 8_192;

/// The longest one pace waits for the pacer.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// Messages sent and fan-outs since the last pace, and paces so far.
static SENT: AtomicUsize = AtomicUsize::new(0);
static FAN_OUTS: AtomicUsize = AtomicUsize::new(0);
static PACES: AtomicUsize = AtomicUsize::new(0);

/// Who counts a fan-out: the delivery thread, which waits for the pacer
/// once the budget is spent, or a runtime thread, which must not wait.
#[derive(Clone, Copy)]
pub(super) enum Pace {
    Waits,
    Express,
}

/// Whether the budget has room for an express fan-out.
pub(super) fn has_room() -> bool {
    SENT.load(Ordering::Relaxed) < BUDGET
}

impl Pace {
    /// A number for the fan-out to pick its sample with (modulo its
    /// size): it changes at each pace.
    pub(super) fn turn(self) -> usize {
        PACES.load(Ordering::Relaxed)
    }

    /// Counts a fan-out of `sent` messages; once the budget is spent, the
    /// delivery thread waits (from `env`, its own) until the pacer finds
    /// `sample`, one of its recipients, keeping up.
    pub(super) fn count(self, env: Env<'_>, sent: usize, sample: Option<Pid>) {
        let total = SENT.fetch_add(sent, Ordering::Relaxed) + sent;
        let fan_outs = FAN_OUTS.fetch_add(1, Ordering::Relaxed) + 1;
        if total < BUDGET || matches!(self, Pace::Express) {
            return;
        }
        if let Some(sample) = sample {
            wait(env, sample, fan_outs);
        }
        // Counts an express fan-out added meanwhile may be lost: the
        // budget is a rate, not an account.
        PACES.fetch_add(1, Ordering::Relaxed);
        SENT.store(0, Ordering::Relaxed);
        FAN_OUTS.store(0, Ordering::Relaxed);
    }
}

struct Pacer {
    pid: Option<Pid>,
    /// The last pace sent and the last answered.
    sent: u64,
    answered: u64,
}

static PACER: Mutex<Pacer> = Mutex::new(Pacer {
    pid: None,
    sent: 0,
    answered: 0,
});
static ANSWERED: Condvar = Condvar::new();

/// Sends the pacer `{tag, :pace, seq, sample, window, senders}` and waits
/// for its answer, at most `MAX_WAIT`; returns at once without a pacer.
/// The senders are watched too: the fan-outs handed to them are not in the
/// sample's mailbox yet.
fn wait(env: Env<'_>, sample: Pid, window: usize) {
    let mut pacer = PACER.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(pid) = pacer.pid else {
        return;
    };
    pacer.sent += 1;
    let seq = pacer.sent;
    send_copy(
        pid,
        (
            atoms::tag(),
            atoms::pace(),
            seq,
            sample,
            window,
            super::senders::pids(),
        )
            .encode(env),
    );
    let until = Instant::now() + MAX_WAIT;
    while pacer.answered < seq {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        pacer = ANSWERED
            .wait_timeout(pacer, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// `{budget, max_wait_ms}`: what a channel process (`Yggdrasil.Broker.Subscriber`)
/// paces its own fan-outs by, the same as the delivery thread.
#[rustler::nif]
fn broker_pace_limits() -> (usize, u64) {
    (BUDGET, MAX_WAIT.as_millis() as u64)
}

/// Makes `pid` the pacer (`Yggdrasil.Broker.Pacer` at its start).
#[rustler::nif]
fn broker_set_pacer(pid: LocalPid) -> rustler::Atom {
    let mut pacer = PACER.lock().unwrap_or_else(PoisonError::into_inner);
    pacer.pid = Some(Pid::of(&pid));
    pacer.answered = pacer.sent;
    ANSWERED.notify_all();
    atoms::ok()
}

/// The pacer's answer to pace `seq`.
#[rustler::nif]
fn broker_paced(seq: u64) -> rustler::Atom {
    let mut pacer = PACER.lock().unwrap_or_else(PoisonError::into_inner);
    pacer.answered = pacer.answered.max(seq);
    ANSWERED.notify_all();
    atoms::ok()
}
