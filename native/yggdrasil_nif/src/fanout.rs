//! Sending one message to every subscriber of a channel, from the
//! publisher's own process, in calls that never hold a scheduler for 1 ms:
//! a fan-out that runs out of time returns `{:more, cursor}` and
//! `fanout_more/2` resumes it.

use crate::cursor::{Cursor, Purpose, Share};
use crate::key::TermKey;
use crate::pid::{send, Pid};
use crate::state::table;
use crate::stats;
use rustler::schedule::consume_timeslice;
use rustler::{Env, NifResult, NifTaggedEnum, ResourceArc, Term};
use std::time::Instant;
use yggdrasil_engine::{Snapshot, Targets};

/// Sends per batch of a fan-out: the unit the fence waits for and the unit
/// between clock reads. 32 `enif_send`s of a small message usually take a
/// few µs, but waking 32 sleeping receivers can take a good part of the cap
/// below (`docs/performance.md`), which is why batches are small and the cap
/// leaves room for one.
pub(crate) const BATCH: usize = 32;

/// How often a long fan-out reports its time to the scheduler.
const REPORT_EVERY_US: u128 = 100;

/// A fan-out call returns `{:more, _}` after this long at the latest. The
/// other half of the 1 ms is room for the batch in progress: a batch
/// normally takes a few µs, but on a busy machine one `enif_send` now and
/// then takes a few hundred µs of the thread's CPU time (the crowd soak
/// shows it, and pure computation on the same machine shows the same
/// outliers: `docs/guarantees.md`).
const MAX_CALL_US: u128 = 500;

/// `:ok` once every subscriber was sent the message, `{:more, cursor}`
/// when the call's time ran out first.
#[derive(NifTaggedEnum)]
#[rustler(encode)]
pub enum FanOut {
    Ok,
    More(ResourceArc<Cursor>),
}

/// Channels of up to this many subscribers are sent to under the table
/// lock, straight from the table: no snapshot to build after a change, no
/// reference count or fence to take per publish (the lock orders the sends
/// with unsubscribes). That is most of a one-subscriber publish's cost
/// beyond the `enif_send` itself; bigger channels are sent to from a
/// snapshot, after the lock is released, so the lock is never held for more
/// than this many sends.
pub(crate) const SEND_UNDER_LOCK: usize = 4;

/// Sends `message` to every subscriber of `channel`.
#[rustler::nif]
fn publish<'a>(env: Env<'a>, channel: Term<'a>, message: Term<'a>) -> FanOut {
    publish_to(env, channel, message, SEND_UNDER_LOCK)
}

/// `publish/2` for a message whose copy grows with what it holds (a list,
/// map or tuple payload): sent from a snapshot whatever the channel's size,
/// so the table lock, which every scheduler's subscribe and publish takes,
/// is never held while it is copied. Each copy still takes the publisher's
/// scheduler as long as `send/2`'s would.
#[rustler::nif]
fn publish_large<'a>(env: Env<'a>, channel: Term<'a>, message: Term<'a>) -> FanOut {
    publish_to(env, channel, message, 0)
}

/// Sends under the lock to a channel of at most `few` subscribers, from a
/// snapshot to a bigger one.
fn publish_to<'a>(env: Env<'a>, channel: Term<'a>, message: Term<'a>, few: usize) -> FanOut {
    // Hashed before the lock: a name can be any term, of any size.
    let key = TermKey::new(channel);
    let mut table = table();
    let targets = match table.targets(&key, few) {
        Some(Targets::Few(members)) => {
            members.iter().for_each(|&pid| send(env, pid, message));
            stats::COUNTERS.deliveries.add(members.len());
            return FanOut::Ok;
        }
        Some(Targets::Many(snapshot)) => snapshot,
        None => return FanOut::Ok,
    };
    drop(table);
    deliver(env, targets, Share::ALL, 0, message)
}

/// Sets the channel's connection state and sends `message` to its
/// subscribers, atomically with the change; nothing when it did not change.
#[rustler::nif]
fn set_connected<'a>(
    env: Env<'a>,
    channel: Term<'a>,
    connected: bool,
    message: Term<'a>,
) -> FanOut {
    let targets = table().set_connected(&TermKey::new(channel), connected);
    match targets {
        Some(targets) => deliver(env, targets, Share::ALL, 0, message),
        None => FanOut::Ok,
    }
}

/// Continues a fan-out that `publish/2` or `set_connected/3` left.
#[rustler::nif]
fn fanout_more<'a>(
    env: Env<'a>,
    cursor: ResourceArc<Cursor>,
    message: Term<'a>,
) -> NifResult<FanOut> {
    Ok(match cursor.take(Purpose::FanOut)? {
        Some((targets, share, next)) => deliver(env, targets, share, next, message),
        None => FanOut::Ok,
    })
}

/// Delivers `message` to `share` of `targets[next..]`, yielding the
/// scheduler when its time slice is used up.
///
/// Sends go out in batches of [`BATCH`] under the snapshot's fence (see
/// `Members::deliver`): an unsubscribe racing with this fan-out waits at
/// most for the batch being sent, never for the whole fan-out, and the rest
/// of the fan-out skips it. A fan-out that fits in one batch (the common
/// 1-subscriber publish) does no clock reads at all.
fn deliver<'a>(
    env: Env<'a>,
    targets: Snapshot<Pid>,
    share: Share,
    mut next: usize,
    message: Term<'a>,
) -> FanOut {
    let total = targets.len();
    let send_batch = |from, to| share.deliver(&targets, from, to, |pid| send(env, pid, message));
    if total.saturating_sub(next) <= BATCH {
        stats::COUNTERS.deliveries.add(send_batch(next, total));
        return FanOut::Ok;
    }
    let mut timer = stats::CallTimer::start();
    let started = Instant::now();
    let mut reported = started;
    let mut batch_started = started;
    loop {
        let end = next.saturating_add(BATCH).min(total);
        stats::COUNTERS.deliveries.add(send_batch(next, end));
        next = end;
        let now = Instant::now();
        timer.batch(now.duration_since(batch_started));
        batch_started = now;
        if next >= total {
            timer.stop();
            return FanOut::Ok;
        }
        // Report to the scheduler every ~100 µs (100% of a slice is about
        // 1 ms), and stop after MAX_CALL_US even if the slice is not used
        // up, so that no call reaches 1 ms.
        let spent = now.duration_since(reported).as_micros();
        let over = now.duration_since(started).as_micros() >= MAX_CALL_US;
        if spent >= REPORT_EVERY_US || over {
            reported = now;
            let percent = (spent / 10).clamp(1, 100) as i32;
            let exhausted = consume_timeslice(env, percent);
            if exhausted || over {
                if !exhausted {
                    // Stopped by our own cap: spend the rest of the slice so
                    // the publisher is scheduled out before it resumes,
                    // and no process holds a scheduler across two calls.
                    consume_timeslice(env, 100);
                }
                timer.stop();
                return FanOut::More(Cursor::shared(Purpose::FanOut, targets, share, next));
            }
        }
    }
}
