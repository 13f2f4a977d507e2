//! The NIF behind `Yggdrasil.Native`: converts terms, owns the one global
//! subscription table, monitors subscribers and delivers messages with
//! `enif_send` from the publisher's own process.
//!
//! Nothing a caller passes can panic here: bad terms raise `ArgumentError`
//! through rustler's decoding, and engine failures come back as
//! `{:error, reason}`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod json;
mod key;

use key::{ChannelKey, TermKey};
use rustler::schedule::consume_timeslice;
use rustler::sys::enif_send;
use rustler::types::binary::NewBinary;
use rustler::{Binary, Encoder, Env, LocalPid, Monitor, Resource, ResourceArc, Term};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;
use yggdrasil_engine::{Engine, Snapshot, SubscribeError};

mod atoms {
    rustler::atoms! {
        ok,
        error,
        more,
        too_big,
        not_subscribed,
        unsubscribed,
        emptied,
        process_dead,
        too_many_channels,
        channels,
        subscribers,
        subscriptions,
        memory_bytes,
        deliveries,
        emptied_channel = "$yggdrasil_emptied",
        y_connected = "Y_CONNECTED",
    }
}

type Table = Engine<ChannelKey, LocalPid, Monitor>;

/// The one subscription table of this VM. A plain mutex: every critical
/// section is a few hash-map operations, and delivery happens after the
/// lock is released, from a snapshot.
static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| Mutex::new(Engine::new()));

/// The resource whose monitors watch every subscriber. Created on first
/// use, not in `load`: the VM attaches a resource type's `down` callback
/// only once loading has finished, and an object allocated during `load`
/// never gets it (measured on OTP 25: `enif_monitor_process` returns -1).
static WATCHER: OnceLock<ResourceArc<Watcher>> = OnceLock::new();

fn watcher() -> &'static ResourceArc<Watcher> {
    WATCHER.get_or_init(|| ResourceArc::new(Watcher))
}

/// Process told about watched channels emptied by a subscriber's death.
static JANITOR: Mutex<Option<LocalPid>> = Mutex::new(None);

static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// Subscribers served before asking the scheduler whether the time slice
/// is used up: small enough that one chunk stays far below 1 ms.
const CHUNK: usize = 512;

/// Budget of JSON nodes on a normal scheduler; larger terms go dirty.
const JSON_NODE_BUDGET: usize = 20_000;

fn table() -> MutexGuard<'static, Table> {
    // Engine operations do not panic on any input; if one ever did, its
    // state is still structurally sound (no unsafe inside), so recovering
    // the guard beats refusing service for the rest of the VM's life.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Watcher;

#[rustler::resource_impl]
impl Resource for Watcher {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, env: Env<'a>, pid: LocalPid, _monitor: Monitor) {
        let removed = table().remove_subscriber(pid);
        if let Some(removed) = removed {
            tell_janitor(env, &removed.emptied);
        }
    }
}

/// A fan-out that yielded: the rest of the subscriber snapshot, resumed by
/// `publish_more/2`. Usable once.
struct Delivery {
    targets: Snapshot<LocalPid>,
    next: AtomicUsize,
}

#[rustler::resource_impl]
impl Resource for Delivery {}

fn tell_janitor(env: Env<'_>, emptied: &[ChannelKey]) {
    if emptied.is_empty() {
        return;
    }
    let janitor = *JANITOR.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(janitor) = janitor {
        for key in emptied {
            let message = (atoms::emptied_channel(), key.to_term(env)).encode(env);
            // A dead janitor is restarted and re-registers; nothing to do.
            let _ = env.send(&janitor, message);
        }
    }
}

fn error<'a>(env: Env<'a>, reason: rustler::Atom) -> Term<'a> {
    (atoms::error(), reason).encode(env)
}

/// Subscribes the calling process: `{:ok, added?, connected?}`. When the
/// channel is connected (an adapter reported it), the caller also gets its
/// own `{:Y_CONNECTED, channel}`, sent under the table lock so that no
/// later state change can overtake it.
#[rustler::nif]
fn subscribe<'a>(env: Env<'a>, channel: Term<'a>) -> Term<'a> {
    let watcher = watcher();
    let pid = env.pid();
    let key = TermKey::new(channel);
    let mut table = table();
    let result = table.subscribe(
        &key,
        || ChannelKey::store(&key),
        pid,
        || watcher.monitor(Some(env), &pid).ok_or(()),
    );
    match result {
        Ok(done) => {
            if done.connected {
                send(env, &pid, (atoms::y_connected(), channel).encode(env));
            }
            drop(table);
            (atoms::ok(), done.added, done.connected).encode(env)
        }
        Err(SubscribeError::Register(())) => error(env, atoms::process_dead()),
        Err(SubscribeError::TooManyChannels) => error(env, atoms::too_many_channels()),
    }
}

/// Unsubscribes the calling process: `:not_subscribed`, `:unsubscribed`, or
/// `:emptied` when it was the last subscriber of a watched channel.
#[rustler::nif]
fn unsubscribe<'a>(env: Env<'a>, channel: Term<'a>) -> Term<'a> {
    let pid = env.pid();
    let outcome = table().unsubscribe(&TermKey::new(channel), pid);
    let Some(outcome) = outcome else {
        return atoms::not_subscribed().encode(env);
    };
    if let (Some(monitor), Some(watcher)) = (outcome.released, WATCHER.get()) {
        watcher.demonitor(Some(env), &monitor);
    }
    match outcome.emptied {
        Some(_) => atoms::emptied().encode(env),
        None => atoms::unsubscribed().encode(env),
    }
}

/// Sends `message` to every subscriber of `channel`: `:ok`, or
/// `{:more, continuation}` when the time slice ran out.
#[rustler::nif]
fn publish<'a>(env: Env<'a>, channel: Term<'a>, message: Term<'a>) -> Term<'a> {
    let targets = table().snapshot(&TermKey::new(channel));
    match targets {
        Some(targets) => deliver(env, targets, 0, message),
        None => atoms::ok().encode(env),
    }
}

/// Continues a fan-out that `publish/2` or `set_connected/3` left.
#[rustler::nif]
fn publish_more<'a>(
    env: Env<'a>,
    continuation: ResourceArc<Delivery>,
    message: Term<'a>,
) -> Term<'a> {
    let next = continuation.next.swap(usize::MAX, Ordering::AcqRel);
    if next == usize::MAX {
        return atoms::ok().encode(env);
    }
    deliver(env, continuation.targets.clone(), next, message)
}

/// Sets the channel's connection state and sends `message` to its
/// subscribers, atomically with the change.
#[rustler::nif]
fn set_connected<'a>(
    env: Env<'a>,
    channel: Term<'a>,
    connected: bool,
    message: Term<'a>,
) -> Term<'a> {
    let targets = table().set_connected(&TermKey::new(channel), connected);
    match targets {
        Some(targets) => deliver(env, targets, 0, message),
        None => atoms::ok().encode(env),
    }
}

/// `send/2` from inside a NIF call: `env` is the caller's (process-bound,
/// on a scheduler thread), so the VM copies `message` into the target's
/// heap. A dead target is not an error, as with `send/2`.
#[inline]
fn send(env: Env<'_>, pid: &LocalPid, message: Term<'_>) {
    // SAFETY: `env` is the calling process's environment and `message`
    // belongs to it; a null message env means "copy", which is what we want.
    unsafe {
        enif_send(
            env.as_c_arg(),
            pid.as_c_arg(),
            ptr::null_mut(),
            message.as_c_arg(),
        );
    }
}

fn deliver<'a>(
    env: Env<'a>,
    targets: Snapshot<LocalPid>,
    mut next: usize,
    message: Term<'a>,
) -> Term<'a> {
    let total = targets.len();
    loop {
        let end = next.saturating_add(CHUNK).min(total);
        let started = (total > CHUNK).then(Instant::now);
        for pid in targets.get(next..end).unwrap_or_default() {
            send(env, pid, message);
        }
        DELIVERIES.fetch_add((end - next) as u64, Ordering::Relaxed);
        next = end;
        if next >= total {
            return atoms::ok().encode(env);
        }
        // 100% of a time slice is about 1 ms.
        let spent = started.map_or(0, |at| at.elapsed().as_micros() / 10);
        let percent = spent.clamp(1, 100) as i32;
        if consume_timeslice(env, percent) {
            let rest = ResourceArc::new(Delivery {
                targets,
                next: AtomicUsize::new(next),
            });
            return (atoms::more(), rest).encode(env);
        }
    }
}

#[rustler::nif]
fn set_watched(channel: Term<'_>, watched: bool) -> bool {
    table().set_watched(&TermKey::new(channel), watched)
}

#[rustler::nif]
fn set_janitor(pid: LocalPid) -> rustler::Atom {
    *JANITOR.lock().unwrap_or_else(PoisonError::into_inner) = Some(pid);
    atoms::ok()
}

#[rustler::nif]
fn subscribers(channel: Term<'_>) -> Vec<LocalPid> {
    let targets = table().snapshot(&TermKey::new(channel));
    targets.map_or_else(Vec::new, |targets| targets.to_vec())
}

#[rustler::nif]
fn subscriber_count(channel: Term<'_>) -> usize {
    table().subscriber_count(&TermKey::new(channel))
}

#[rustler::nif]
fn is_subscribed(channel: Term<'_>, pid: LocalPid) -> bool {
    table().is_subscribed(&TermKey::new(channel), pid)
}

#[rustler::nif]
fn is_connected(channel: Term<'_>) -> bool {
    table().is_connected(&TermKey::new(channel))
}

#[rustler::nif]
fn info(env: Env<'_>) -> Term<'_> {
    let stats = table().stats();
    let keys = [
        atoms::channels(),
        atoms::subscribers(),
        atoms::subscriptions(),
        atoms::memory_bytes(),
        atoms::deliveries(),
    ]
    .map(|key| key.encode(env));
    let values = [
        stats.channels as u64,
        stats.subscribers as u64,
        stats.subscriptions as u64,
        stats.memory_bytes as u64,
        DELIVERIES.load(Ordering::Relaxed),
    ]
    .map(|value| value.encode(env));
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| atoms::error().encode(env))
}

fn json_encode_with<'a>(env: Env<'a>, term: Term<'a>, budget: Option<usize>) -> Term<'a> {
    match json::encode(term, budget) {
        Ok(bytes) => {
            let mut binary = NewBinary::new(env, bytes.len());
            binary.as_mut_slice().copy_from_slice(&bytes);
            (atoms::ok(), Binary::from(binary)).encode(env)
        }
        Err(json::EncodeError::OverBudget) => atoms::too_big().encode(env),
        Err(json::EncodeError::Invalid(reason)) => (atoms::error(), reason).encode(env),
    }
}

/// `{:ok, json}`, `{:error, reason}`, or `:too_big` when the term should be
/// encoded on a dirty scheduler instead.
#[rustler::nif]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    json_encode_with(env, term, Some(JSON_NODE_BUDGET))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode_dirty<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    json_encode_with(env, term, None)
}

fn json_decode_with<'a>(env: Env<'a>, text: Binary<'a>) -> Term<'a> {
    match json::decode(env, text.as_slice()) {
        Ok(term) => (atoms::ok(), term).encode(env),
        Err(reason) => (atoms::error(), reason).encode(env),
    }
}

#[rustler::nif]
fn json_decode<'a>(env: Env<'a>, text: Binary<'a>) -> Term<'a> {
    json_decode_with(env, text)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode_dirty<'a>(env: Env<'a>, text: Binary<'a>) -> Term<'a> {
    json_decode_with(env, text)
}

rustler::init!("Elixir.Yggdrasil.Native");
