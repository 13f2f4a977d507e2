//! Wide fan-outs of a route, sent from scheduler threads.
//!
//! The delivery thread is not a scheduler: every `enif_send` from it copies
//! the message into a heap fragment of its own and wakes an idle subscriber
//! from outside the subscriber's scheduler, about 1.7 µs a subscriber,
//! where a process sending the same message from a scheduler is about
//! three times faster (`docs/performance.md`). So a route whose channel is
//! wide hands each fan-out to the senders: one `Yggdrasil.Broker.Sender`
//! process per scheduler, each given a cursor over its [`Share`] of the
//! subscribers, which it sends with the engine's own fan-out
//! (`fanout_more`, yielding as any fan-out does).
//!
//! A subscriber's share depends on its pid alone, and each sender takes its
//! jobs in order, so every subscriber still gets a channel's events and
//! notices in the order the broker client produced them. For the same
//! reason a route that went wide stays wide (`Route`): an event sent
//! directly could overtake the ones still with a sender.
//!
//! The senders' mailboxes are bounded by the pacer, which answers a pace
//! only once every sender holds a few jobs at most (`pace.rs`).
use std::sync::{Mutex, PoisonError};

use rustler::{Encoder, Env, LocalPid, Term};
use yggdrasil_engine::Snapshot;

use crate::cursor::{Cursor, Purpose, Share};
use crate::fanout::BATCH;
use crate::pid::{send_copy, Pid};
use crate::stats;

mod atoms {
    rustler::atoms! { ok, send, tag = "$yggdrasil_broker" }
}

/// The senders by share index; a slot is `None` until its sender started.
static SENDERS: Mutex<Vec<Option<Pid>>> = Mutex::new(Vec::new());

/// The senders' pids, for the pacer to watch; empty unless all started.
pub(super) fn pids() -> Vec<Pid> {
    let senders = SENDERS.lock().unwrap_or_else(PoisonError::into_inner);
    senders
        .iter()
        .copied()
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default()
}

/// Hands `message` for `members` to the senders, one share each, as
/// `{tag, :send, cursor, message}`; false (nothing sent) when they are not
/// all started. A share whose sender is gone (restarting) is sent from
/// here: late rather than lost.
pub(super) fn hand(env: Env<'_>, members: &Snapshot<Pid>, message: Term<'_>) -> bool {
    let senders = pids();
    if senders.is_empty() {
        return false;
    }
    for (index, &sender) in senders.iter().enumerate() {
        let Some(share) = Share::new(index, senders.len()) else {
            continue;
        };
        let cursor = Cursor::shared(Purpose::FanOut, members.clone(), share, 0);
        let job = (atoms::tag(), atoms::send(), cursor, message).encode(env);
        if !send_copy(sender, job) {
            send_here(members, share, message);
        }
    }
    true
}

/// `share` of `members`, sent from this thread (not a scheduler) in
/// batches: an unsubscribe racing with it waits for one batch at most (the
/// fence of `Members::deliver`). Returns how many it sent to.
pub(super) fn send_here(members: &Snapshot<Pid>, share: Share, message: Term<'_>) -> usize {
    let mut sent = 0;
    let mut next = 0;
    while next < members.len() {
        let end = next.saturating_add(BATCH).min(members.len());
        members.deliver(next, end, |pid| {
            if share.owns(pid) {
                send_copy(*pid, message);
                sent += 1;
            }
        });
        next = end;
    }
    stats::COUNTERS.deliveries.add(sent);
    sent
}

/// Makes `pid` the sender of share `index` of `of`
/// (`Yggdrasil.Broker.Sender` at its start). A different `of` (the
/// schedulers changed between two starts) forgets the other senders until
/// they start again.
#[rustler::nif]
fn broker_set_sender(index: usize, of: usize, pid: LocalPid) -> rustler::NifResult<rustler::Atom> {
    if Share::new(index, of).is_none() || of > MAX_SENDERS {
        return Err(rustler::Error::BadArg);
    }
    let mut senders = SENDERS.lock().unwrap_or_else(PoisonError::into_inner);
    if senders.len() != of {
        *senders = vec![None; of];
    }
    if let Some(slot) = senders.get_mut(index) {
        *slot = Some(Pid::of(&pid));
    }
    Ok(atoms::ok())
}

/// More than the schedulers a VM can have (1,024): a bound on the jobs one
/// fan-out makes.
const MAX_SENDERS: usize = 1_024;
