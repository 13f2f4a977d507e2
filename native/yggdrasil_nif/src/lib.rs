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

mod alloc;
mod broker;
mod json;
mod key;
mod pid;
mod timing;

use key::{ChannelKey, TermKey};
use pid::Pid;
use rustler::schedule::consume_timeslice;
use rustler::sys::enif_send;
use rustler::types::binary::NewBinary;
use rustler::{Binary, Encoder, Env, LocalPid, Monitor, OwnedEnv, Resource, ResourceArc, Term};
use std::collections::VecDeque;
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;
use yggdrasil_engine::{Detached, Engine, Snapshot, SubscribeError};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

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
        internal,
        table,
        channels,
        subscribers,
        subscriptions,
        memory_bytes,
        deliveries,
        emptied_channel = "$yggdrasil_emptied",
        y_connected = "Y_CONNECTED",
    }
}

type Table = Engine<ChannelKey, Pid, Monitor>;

/// The one subscription table of this VM. A plain mutex: every critical
/// section is a few hash-map operations (bounded, see the engine: tables
/// grow shard by shard, big removals happen in steps), and delivery happens
/// after the lock is released, from a snapshot.
///
/// Not sharded, on purpose: measured on this 2-core machine, publishers on
/// their own channels scale from 2.58 M publishes/s (1 publisher) to 5.38 M/s
/// (2 publishers, one per scheduler) and stay at 4.99 M/s with 8, so the lock
/// is not the bottleneck; a publish holds it for one hash lookup and a
/// reference-count increment. Sharding would split the per-process monitor
/// and reverse index across shards and cost every subscribe more. Revisit if
/// a many-core measurement shows contention.
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

/// Sends per batch of a fan-out: the unit the fence waits for and the unit
/// between clock reads. 32 `enif_send`s of a small message usually take a
/// few µs, but waking 32 sleeping receivers among 100k was measured at up to
/// ~250 µs of CPU, which is why batches are small and the cap below leaves
/// room for one.
const BATCH: usize = 32;

/// How often a long fan-out reports its time to the scheduler.
const REPORT_EVERY_US: u128 = 100;

/// A fan-out call returns `{:more, _}` after this long at the latest,
/// leaving room under 1 ms for the batch in progress.
const MAX_CALL_US: u128 = 700;

/// Pids per call of `subscribers_page/1` / `subscribers_more/1`: building
/// a list of this many takes well under 100 µs.
const PAGE: usize = 4096;

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
        let pid = Pid::of(&pid);
        let mut table = table();
        let Some(detached) = table.detach_subscriber(pid) else {
            return;
        };
        if detached.len() <= INLINE_REMOVALS {
            let (_monitor, channels) = detached.into_channels();
            let emptied = table.remove_memberships(pid, &channels);
            drop(table);
            tell_janitor(env, &emptied);
        } else {
            drop(table);
            reap_later(env, pid, detached);
        }
    }
}

/// A dead subscriber on at most this many channels is removed right in the
/// monitor's callback; one on more is handed to the reaper thread, which
/// removes it REAP_STEP memberships at a time, so that neither a scheduler
/// nor the table lock is held for long (a process on a million channels
/// takes about half a second to remove).
const INLINE_REMOVALS: usize = 256;
const REAP_STEP: usize = 256;

struct Reaper {
    queue: VecDeque<(Pid, Detached<Monitor>)>,
    running: bool,
}

static REAPER: Mutex<Reaper> = Mutex::new(Reaper {
    queue: VecDeque::new(),
    running: false,
});

fn reaper() -> MutexGuard<'static, Reaper> {
    REAPER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Queues a detached subscriber for the reaper thread, starting it if it is
/// not running (it exits when the queue is empty, so no thread lingers). If
/// no thread can be started, removes the memberships here, still in steps.
fn reap_later(env: Env<'_>, pid: Pid, detached: Detached<Monitor>) {
    let mut reaper = reaper();
    reaper.queue.push_back((pid, detached));
    if reaper.running {
        return;
    }
    reaper.running = true;
    drop(reaper);
    let started = std::thread::Builder::new()
        .name("yggdrasil-reaper".into())
        .spawn(reap);
    if started.is_err() {
        drain_reaper(|emptied| tell_janitor(env, emptied));
    }
}

/// Removes the queued subscribers' memberships, one step per table lock,
/// handing each step's emptied channels to `tell`.
fn drain_reaper(mut tell: impl FnMut(&[ChannelKey])) {
    while let Some((pid, detached)) = next_to_reap() {
        let (_monitor, channels) = detached.into_channels();
        for step in channels.chunks(REAP_STEP) {
            let emptied = table().remove_memberships(pid, step);
            tell(&emptied);
        }
    }
}

fn next_to_reap() -> Option<(Pid, Detached<Monitor>)> {
    let mut reaper = reaper();
    let next = reaper.queue.pop_front();
    if next.is_none() {
        reaper.running = false;
        // Give back what a burst of deaths made the queue grow to.
        reaper.queue = VecDeque::new();
    }
    next
}

/// The reaper thread: not a scheduler thread, so it may take its time; it
/// takes the table lock for one step at a time.
fn reap() {
    let mut owned = OwnedEnv::new();
    drain_reaper(|emptied| {
        each_janitor_notice(emptied, |janitor, key| {
            let _ = owned.send_and_clear(&janitor, |env| notice(env, key));
        })
    });
}

/// A fan-out that yielded: the rest of the subscriber snapshot, resumed by
/// `publish_more/2`. Usable once.
struct Delivery {
    targets: Snapshot<Pid>,
    next: AtomicUsize,
}

#[rustler::resource_impl]
impl Resource for Delivery {}

/// `{:"$yggdrasil_emptied", key}`: what the janitor hears per channel.
fn notice<'a>(env: Env<'a>, key: &ChannelKey) -> Term<'a> {
    (atoms::emptied_channel(), key.to_term(env)).encode(env)
}

/// Calls `send` with the janitor for each emptied watched channel (none
/// when no janitor is registered). The caller picks the environment: a
/// callback's own, or an owned one on the reaper thread.
fn each_janitor_notice(emptied: &[ChannelKey], mut send: impl FnMut(LocalPid, &ChannelKey)) {
    if emptied.is_empty() {
        return;
    }
    let janitor = *JANITOR.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(janitor) = janitor {
        for key in emptied {
            send(janitor, key);
        }
    }
}

fn tell_janitor(env: Env<'_>, emptied: &[ChannelKey]) {
    each_janitor_notice(emptied, |janitor, key| {
        // A dead janitor is restarted and re-registers; nothing to do.
        let _ = env.send(&janitor, notice(env, key));
    });
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
                send(env, pid, (atoms::y_connected(), channel).encode(env));
            }
            drop(table);
            (atoms::ok(), done.added, done.connected).encode(env)
        }
        Err(SubscribeError::Register(())) => error(env, atoms::process_dead()),
        Err(SubscribeError::TooManyChannels) => error(env, atoms::too_many_channels()),
        Err(SubscribeError::Internal) => error(env, atoms::internal()),
    }
}

/// Unsubscribes the calling process: `:not_subscribed`, `:unsubscribed`, or
/// `:emptied` when it was the last subscriber of a watched channel.
#[rustler::nif]
fn unsubscribe<'a>(env: Env<'a>, channel: Term<'a>) -> Term<'a> {
    let pid = Pid::of(&env.pid());
    let outcome = table().unsubscribe(&TermKey::new(channel), pid);
    let Some(outcome) = outcome else {
        return atoms::not_subscribed().encode(env);
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
fn send(env: Env<'_>, pid: Pid, message: Term<'_>) {
    let pid = pid.c_pid();
    // SAFETY: `env` is the calling process's environment and `message`
    // belongs to it; a null message env means "copy", which is what we want.
    unsafe {
        enif_send(env.as_c_arg(), &pid, ptr::null_mut(), message.as_c_arg());
    }
}

/// Delivers `message` to `targets[next..]`, yielding the scheduler when its
/// time slice is used up.
///
/// Sends go out in batches of [`BATCH`] under the snapshot's fence (see
/// `Members::deliver`): an unsubscribe racing with this fan-out waits at
/// most for the batch being sent, never for the whole fan-out, and the rest
/// of the fan-out skips it. A fan-out that fits in one batch (the common
/// 1-subscriber publish) does no clock reads at all.
fn deliver<'a>(
    env: Env<'a>,
    targets: Snapshot<Pid>,
    mut next: usize,
    message: Term<'a>,
) -> Term<'a> {
    let total = targets.len();
    if total.saturating_sub(next) <= BATCH {
        let sent = targets.deliver(next, total, |&pid| send(env, pid, message));
        DELIVERIES.fetch_add(sent as u64, Ordering::Relaxed);
        return atoms::ok().encode(env);
    }
    let started = Instant::now();
    let cpu_started = timing::thread_cpu_us();
    let mut reported = started;
    loop {
        let end = next.saturating_add(BATCH).min(total);
        let sent = targets.deliver(next, end, |&pid| send(env, pid, message));
        DELIVERIES.fetch_add(sent as u64, Ordering::Relaxed);
        next = end;
        if next >= total {
            timing::record(started, cpu_started);
            return atoms::ok().encode(env);
        }
        // Report to the scheduler every ~100 µs (100% of a slice is about
        // 1 ms), and stop after MAX_CALL_US even if the slice is not used
        // up, so that no call reaches 1 ms.
        let now = Instant::now();
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
                timing::record(started, cpu_started);
                let rest = ResourceArc::new(Delivery {
                    targets,
                    next: AtomicUsize::new(next),
                });
                return (atoms::more(), rest).encode(env);
            }
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

/// The rest of a `subscribers_page/1` listing, resumed by
/// `subscribers_more/1`.
struct Listing {
    members: Snapshot<Pid>,
    next: AtomicUsize,
}

#[rustler::resource_impl]
impl Resource for Listing {}

/// The channel's subscribers, one bounded page per call so that a channel
/// with millions of subscribers never holds a scheduler: `{pids, nil}` when
/// that is all, `{pids, cursor}` for `subscribers_more/1` otherwise. The
/// pages come from one snapshot, so together they are the membership at the
/// instant of the first call.
#[rustler::nif]
fn subscribers_page<'a>(env: Env<'a>, channel: Term<'a>) -> Term<'a> {
    let members = table().snapshot(&TermKey::new(channel));
    match members {
        Some(members) => page(env, members, 0),
        None => (Vec::<LocalPid>::new(), None::<rustler::Atom>).encode(env),
    }
}

#[rustler::nif]
fn subscribers_more(env: Env<'_>, cursor: ResourceArc<Listing>) -> Term<'_> {
    let next = cursor.next.swap(usize::MAX, Ordering::AcqRel);
    if next == usize::MAX {
        return (Vec::<LocalPid>::new(), None::<rustler::Atom>).encode(env);
    }
    page(env, cursor.members.clone(), next)
}

fn page(env: Env<'_>, members: Snapshot<Pid>, from: usize) -> Term<'_> {
    let end = from.saturating_add(PAGE).min(members.len());
    let pids = members
        .as_slice()
        .get(from..end)
        .unwrap_or_default()
        .encode(env);
    if end >= members.len() {
        return (pids, None::<rustler::Atom>).encode(env);
    }
    let rest = ResourceArc::new(Listing {
        members,
        next: AtomicUsize::new(end),
    });
    (pids, rest).encode(env)
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

/// Duration of the fan-out calls that took more than one batch, since the
/// last reset: `{calls, max_wall_us, max_cpu_us, over_1ms_wall,
/// over_1ms_cpu}`. CPU time is the calling thread's, so it leaves out the
/// time the OS gave the scheduler thread's core to someone else; wall time
/// includes it. For the soak's scheduler check.
#[rustler::nif]
fn call_stats(reset: bool) -> (u64, u64, u64, u64, u64) {
    timing::stats(reset)
}

#[rustler::nif]
fn info(env: Env<'_>) -> Term<'_> {
    let stats = table().counts();
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
        alloc::allocated() as u64,
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

/// TEST HOOK, never called by the library: panics on purpose so that the
/// test suite can prove a Rust panic comes back to the caller as an Erlang
/// error (rustler catches it and raises `:nif_panicked`) instead of taking
/// the VM down. `:table` panics while holding the subscription table's lock,
/// which poisons it; every later call must keep working (see `table()`).
#[rustler::nif]
#[allow(clippy::panic)]
fn debug_panic(mode: rustler::Atom) -> rustler::Atom {
    if mode == atoms::table() {
        let _held = table();
        panic!("yggdrasil: debug_panic(:table) test hook, panicking with the table locked");
    }
    panic!("yggdrasil: debug_panic test hook");
}

rustler::init!("Elixir.Yggdrasil.Native");
