//! Subscribers are monitored: when one dies, its memberships are removed
//! (right away, or in steps by the reaper thread when it was on many
//! channels), and the Generator (`Yggdrasil.Subscriber.Generator`) hears of
//! the watched channels that emptied.

use crate::key::ChannelKey;
use crate::pid::Pid;
use crate::state::table;
use rustler::{Encoder, Env, LocalPid, Monitor, OwnedEnv, Resource, ResourceArc, Term};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use yggdrasil_engine::Detached;

mod atoms {
    rustler::atoms! {
        ok,
        emptied_channel = "$yggdrasil_emptied",
    }
}

/// The resource whose monitors watch every subscriber. Created on first
/// use, not in `load`: the VM attaches a resource type's `down` callback
/// only once loading has finished, and an object allocated during `load`
/// never gets it (measured on OTP 25: `enif_monitor_process` returns -1).
static WATCHER: OnceLock<ResourceArc<Watcher>> = OnceLock::new();

pub fn watcher() -> &'static ResourceArc<Watcher> {
    WATCHER.get_or_init(|| ResourceArc::new(Watcher))
}

/// Drops the monitor of a process that left its last channel.
pub fn release(env: Env<'_>, monitor: &Monitor) {
    if let Some(watcher) = WATCHER.get() {
        watcher.demonitor(Some(env), monitor);
    }
}

pub struct Watcher;

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
            tell_generator(env, &emptied);
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
        drain_reaper(|emptied| tell_generator(env, emptied));
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
        each_generator_notice(emptied, |generator, key| {
            let _ = owned.send_and_clear(&generator, |env| notice(env, key));
        })
    });
}

/// The Generator: the process told about watched channels emptied by a
/// subscriber's death.
static GENERATOR: Mutex<Option<LocalPid>> = Mutex::new(None);

#[rustler::nif]
fn set_generator(pid: LocalPid) -> rustler::Atom {
    *GENERATOR.lock().unwrap_or_else(PoisonError::into_inner) = Some(pid);
    atoms::ok()
}

/// `{:"$yggdrasil_emptied", key}`: what the Generator hears per channel.
fn notice<'a>(env: Env<'a>, key: &ChannelKey) -> Term<'a> {
    (atoms::emptied_channel(), key.to_term(env)).encode(env)
}

/// Calls `send` with the Generator for each emptied watched channel (none
/// when no Generator is registered). The caller picks the environment: a
/// callback's own, or an owned one on the reaper thread.
fn each_generator_notice(emptied: &[ChannelKey], mut send: impl FnMut(LocalPid, &ChannelKey)) {
    if emptied.is_empty() {
        return;
    }
    let generator = *GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(generator) = generator {
        for key in emptied {
            send(generator, key);
        }
    }
}

fn tell_generator(env: Env<'_>, emptied: &[ChannelKey]) {
    each_generator_notice(emptied, |generator, key| {
        // A dead Generator is restarted and re-registers; nothing to do.
        let _ = env.send(&generator, notice(env, key));
    });
}
