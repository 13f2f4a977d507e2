//! Keeps the delivery thread from running ahead of the subscribers.
//!
//! The delivery thread is not a BEAM process: nothing slows it down when
//! subscribers take their messages slower than it sends them, and their
//! mailboxes would grow without bound under a flood. So after each wide
//! fan-out it sends one message to the pacer (`Yggdrasil.Broker.Pacer`, a
//! process like the subscribers) and waits for its answer: by then the
//! schedulers have run the processes that were woken before it, the
//! subscribers among them. The wait is capped ([`MAX_WAIT`]) so that a
//! missing or stuck pacer slows delivery down, never stops it.
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustler::{Encoder, Env, LocalPid};

use crate::pid::{send_copy, Pid};

mod atoms {
    rustler::atoms! { ok, pace, tag = "$yggdrasil_broker" }
}

/// The longest a fan-out waits for the pacer.
const MAX_WAIT: Duration = Duration::from_millis(200);

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

/// Sends a pace to the pacer from `env` (the delivery thread's) and waits
/// for its answer, at most `MAX_WAIT`; returns at once without a pacer.
pub(super) fn wait(env: Env<'_>) {
    let mut pacer = PACER.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(pid) = pacer.pid else {
        return;
    };
    pacer.sent += 1;
    let seq = pacer.sent;
    send_copy(pid, (atoms::tag(), atoms::pace(), seq).encode(env));
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
