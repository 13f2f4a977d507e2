//! The NIFs that change or read membership of the subscription table
//! (`state`).

use crate::key::{ChannelKey, TermKey};
use crate::monitor;
use crate::pid::{self, Pid};
use crate::state::table;
use rustler::{Encoder, Env, LocalPid, NifTaggedEnum, NifUnitEnum, Term};
use yggdrasil_engine::SubscribeError;

mod atoms {
    rustler::atoms! {
        y_connected = "Y_CONNECTED",
    }
}

/// `:ok` (also when the caller already was a subscriber) or
/// `{:error, reason}`.
#[derive(NifTaggedEnum)]
#[rustler(encode)]
enum Subscribed {
    Ok,
    Error(SubscribeFailure),
}

#[derive(NifUnitEnum)]
enum SubscribeFailure {
    ProcessDead,
    TooManyChannels,
    Internal,
}

#[derive(NifUnitEnum)]
enum UnsubscribeOutcome {
    NotSubscribed,
    Unsubscribed,
    /// The caller was the last subscriber of a watched channel.
    Emptied,
}

/// Subscribes the calling process. When the channel is connected (an
/// adapter reported it), the caller also gets its own `{:Y_CONNECTED,
/// channel}`, sent under the table lock so that no later state change can
/// overtake it.
#[rustler::nif]
fn subscribe<'a>(env: Env<'a>, channel: Term<'a>) -> Subscribed {
    let watcher = monitor::watcher();
    let caller = env.pid();
    let pid = Pid::of(&caller);
    let key = TermKey::new(channel);
    let mut table = table();
    let result = table.subscribe(
        &key,
        || ChannelKey::store(&key),
        pid,
        || watcher.monitor(Some(env), &caller).ok_or(()),
    );
    match result {
        Ok(done) => {
            if done.connected {
                pid::send(env, pid, (atoms::y_connected(), channel).encode(env));
            }
            drop(table);
            Subscribed::Ok
        }
        Err(SubscribeError::Register(())) => Subscribed::Error(SubscribeFailure::ProcessDead),
        Err(SubscribeError::TooManyChannels) => {
            Subscribed::Error(SubscribeFailure::TooManyChannels)
        }
        Err(SubscribeError::Internal) => Subscribed::Error(SubscribeFailure::Internal),
    }
}

/// Unsubscribes the calling process. Nothing from the channel reaches it
/// after this returns.
#[rustler::nif]
fn unsubscribe<'a>(env: Env<'a>, channel: Term<'a>) -> UnsubscribeOutcome {
    let pid = Pid::of(&env.pid());
    let outcome = table().unsubscribe(&TermKey::new(channel), pid);
    let Some(outcome) = outcome else {
        return UnsubscribeOutcome::NotSubscribed;
    };
    // "Nothing arrives after unsubscribe/1 returned": a publish that took
    // its snapshot before we left may still be sending from it. The table
    // lock is released by now (fencing may wait for one batch of that
    // publish's sends, and no global lock is held meanwhile); after the
    // fences, no send to this process can start from those snapshots, and
    // every later publish takes a snapshot without it. Deliveries that are
    // not in flight cost nothing here: `in_flight` is then empty.
    for snapshot in &outcome.in_flight {
        snapshot.fence(pid);
    }
    if let Some(monitor) = outcome.released {
        monitor::release(env, &monitor);
    }
    match outcome.emptied {
        Some(_) => UnsubscribeOutcome::Emptied,
        None => UnsubscribeOutcome::Unsubscribed,
    }
}

#[rustler::nif]
fn set_watched(channel: Term<'_>, watched: bool) -> bool {
    table().set_watched(&TermKey::new(channel), watched)
}

/// Table slots per call of `watched_page/1`: copying out that many channel
/// keys stays well under 1 ms.
const WATCHED_PAGE: usize = 1024;

/// The watched channels (those served by an adapter process), a bounded
/// page of the table per call: `{keys, next}` with `next` the argument of
/// the following call, `nil` at the end. For the Generator, which restarts
/// their adapters when it starts (see `Yggdrasil.Subscriber.Generator`).
#[rustler::nif]
fn watched_page(env: Env<'_>, from: usize) -> Term<'_> {
    let (keys, next) = table().watched_page(from, WATCHED_PAGE);
    let keys: Vec<Term<'_>> = keys.iter().map(|key| key.to_term(env)).collect();
    (keys, next).encode(env)
}

#[rustler::nif]
fn subscriber_count(channel: Term<'_>) -> usize {
    table().subscriber_count(&TermKey::new(channel))
}

#[rustler::nif]
fn is_subscribed(channel: Term<'_>, pid: LocalPid) -> bool {
    table().is_subscribed(&TermKey::new(channel), Pid::of(&pid))
}

#[rustler::nif]
fn is_connected(channel: Term<'_>) -> bool {
    table().is_connected(&TermKey::new(channel))
}
