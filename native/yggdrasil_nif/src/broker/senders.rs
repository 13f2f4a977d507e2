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
//! only once every sender holds a few jobs at most (`pace.rs`). A sender
//! killed from outside loses what its mailbox held; its restarted successor
//! hands the gap notices for that share of every wide route that may have
//! lost a fan-out to itself first ([`tell_replaced`]), and a route whose
//! next fan-out finds the sender changed or gone tells them before it
//! ([`Handoffs`]), so nothing is lost without notice.
use std::sync::{Mutex, PoisonError};

use rustler::{Encoder, Env, Term};
use yggdrasil_engine::Snapshot;

use crate::cursor::{Cursor, Purpose, Share};
use crate::fanout::BATCH;
use crate::pid::{send_copy, Pid};
use crate::stats;

mod atoms {
    rustler::atoms! { send, tag = "$yggdrasil_broker" }
}

/// A started sender, and which start it was: a restarted sender has a new
/// generation, and what its predecessor held may be lost.
#[derive(Clone, Copy)]
struct Slot {
    pid: Pid,
    generation: u64,
}

/// The senders by share index (a slot is `None` until its sender started),
/// and the last generation given.
static SENDERS: Mutex<(u64, Vec<Option<Slot>>)> = Mutex::new((0, Vec::new()));

/// The senders, empty unless all started.
fn slots() -> Vec<Slot> {
    let senders = SENDERS.lock().unwrap_or_else(PoisonError::into_inner);
    senders
        .1
        .iter()
        .copied()
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default()
}

/// The senders' pids, for the pacer to watch; empty unless all started.
pub(super) fn pids() -> Vec<Pid> {
    slots().iter().map(|slot| slot.pid).collect()
}

/// Where a route's last fan-out went, per share.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Never,
    /// To the sender of this generation: it may still be in its mailbox.
    Sender(u64),
    /// Sent from the delivery thread, as its sender was gone: nothing
    /// waits with a sender.
    Here,
}

impl Last {
    /// Handed to a sender before `slot`'s, which may have died with it.
    fn went_before(self, slot: &Slot) -> bool {
        matches!(self, Last::Sender(generation) if generation != slot.generation)
    }
}

/// A route's handoffs, share by share: a fan-out handed to a sender that
/// was then killed is lost with its mailbox, and that share's subscribers
/// are told as for any gap (`Y_DISCONNECTED`, then `Y_CONNECTED` if the
/// channel is connected), when the sender restarts or before the route's
/// next event, whichever comes first.
#[derive(Default)]
pub(super) struct Handoffs(Vec<Last>);

/// Hands `message` for `members` to the senders, one share each, as
/// `{tag, :send, cursor, message}`; false (nothing sent) when they are not
/// all started. A share whose sender is gone (restarting) is sent from
/// here: late rather than lost. A share whose sender changed since this
/// route's last fan-out is first sent `gap()`, the notices of a gap.
pub(super) fn hand<'a>(
    env: Env<'a>,
    handoffs: &mut Handoffs,
    members: &Snapshot<Pid>,
    message: Term<'a>,
    gap: impl Fn() -> Vec<Term<'a>>,
) -> bool {
    let senders = slots();
    if senders.is_empty() {
        return false;
    }
    handoffs.0.resize(senders.len(), Last::Never);
    for (index, (slot, last)) in senders.iter().zip(handoffs.0.iter_mut()).enumerate() {
        let Some(share) = Share::new(index, senders.len()) else {
            continue;
        };
        let hand_one = |message| send_copy(slot.pid, job(env, members, share, message));
        let replaced = last.went_before(slot);
        let handed = (!replaced || gap().into_iter().all(&hand_one)) && hand_one(message);
        if handed {
            *last = Last::Sender(slot.generation);
            continue;
        }
        // The sender is gone: anything it still held is lost.
        if matches!(*last, Last::Sender(_)) {
            for notice in gap() {
                send_here(members, share, notice);
            }
        }
        send_here(members, share, message);
        *last = Last::Here;
    }
    true
}

/// Sender `index` was restarted and this is its process (`env`): if the
/// route's last fan-out for that share went to an earlier sender, the new
/// one is handed `gap()` for the share first, so its subscribers hear of
/// what may have been lost without waiting for the channel's next event.
/// Fan-outs handed to the new sender after this come behind it, and the
/// route's next fan-out does not tell it again.
pub(super) fn tell_replaced<'a>(
    env: Env<'a>,
    handoffs: &mut Handoffs,
    members: &Snapshot<Pid>,
    index: usize,
    gap: impl Fn() -> Vec<Term<'a>>,
) {
    let senders = slots();
    let (Some(slot), Some(last), Some(share)) = (
        senders.get(index),
        handoffs.0.get_mut(index),
        Share::new(index, senders.len()),
    ) else {
        return;
    };
    if !last.went_before(slot) {
        return;
    }
    for notice in gap() {
        crate::pid::send(env, slot.pid, job(env, members, share, notice));
    }
    *last = Last::Sender(slot.generation);
}

/// A sender's job: `{tag, :send, cursor, message}`, the cursor over `share`
/// of `members`.
fn job<'a>(env: Env<'a>, members: &Snapshot<Pid>, share: Share, message: Term<'a>) -> Term<'a> {
    let cursor = Cursor::shared(Purpose::FanOut, members.clone(), share, 0);
    (atoms::tag(), atoms::send(), cursor, message).encode(env)
}

/// `share` of `members`, sent from this thread (not a scheduler) in
/// batches: an unsubscribe racing with it waits for one batch at most (the
/// fence of `Members::deliver`). Returns how many it sent to.
pub(super) fn send_here(members: &Snapshot<Pid>, share: Share, message: Term<'_>) -> usize {
    let mut sent = 0;
    let mut next = 0;
    while next < members.len() {
        let end = next.saturating_add(BATCH).min(members.len());
        sent += share.deliver(members, next, end, |pid| {
            send_copy(pid, message);
        });
        next = end;
    }
    stats::COUNTERS.deliveries.add(sent);
    sent
}

/// Makes `pid` the sender of share `index` of `of`
/// (`Yggdrasil.Broker.Sender` at its start); true when it replaces an
/// earlier one (a restart), `None` for an index out of range. A different
/// `of` (the schedulers changed between two starts) forgets the other
/// senders until they start again.
pub(super) fn set_sender(index: usize, of: usize, pid: Pid) -> Option<bool> {
    if Share::new(index, of).is_none() || of > MAX_SENDERS {
        return None;
    }
    let mut senders = SENDERS.lock().unwrap_or_else(PoisonError::into_inner);
    let (generations, slots) = &mut *senders;
    if slots.len() != of {
        *slots = vec![None; of];
    }
    *generations += 1;
    let slot = slots.get_mut(index)?;
    let replaced = slot.is_some();
    *slot = Some(Slot {
        pid,
        generation: *generations,
    });
    Some(replaced)
}

/// More than the schedulers a VM can have (1,024): a bound on the jobs one
/// fan-out makes.
const MAX_SENDERS: usize = 1_024;
