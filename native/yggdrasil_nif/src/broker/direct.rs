//! Broker events straight to a channel's subscribers, with no BEAM process
//! in between.
//!
//! A broker channel's process subscribes with a [`Route`] when the engine
//! can do all that the process would: the `:default` or `:json` transformer
//! and the default backend. The delivery thread then decodes each event
//! itself and fans `{:Y_EVENT, channel, message}` out through the engine's
//! table, and turns `Connected`/`Disconnected` into the engine's
//! `set_connected` (which sends `{:Y_CONNECTED, channel}` /
//! `{:Y_DISCONNECTED, channel}` when the state changed), exactly as
//! `Yggdrasil.Subscriber.Manager` and `Yggdrasil.Backend` do from the
//! process. One thread does it all, so a channel's events and notices keep
//! the order the broker client produced them in.
//!
//! A channel with a user transformer or backend keeps the process path
//! ([`Target::Process`]): its events go to its process, which decodes them.
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender};
use rustler::env::SavedTerm;
use rustler::sys::ErlNifTerm;
use rustler::{Encoder, Env, OwnedEnv, Term};
use yggdrasil_brokers::Event;
use yggdrasil_engine::{Snapshot, Targets};

use super::pace::Pace;
use super::terms;
use crate::fanout::{BATCH, SEND_UNDER_LOCK};
use crate::key::TermKey;
use crate::pid::{send_copy, send_copy_raw, Pid};
use crate::state::table;
use crate::stats;

mod atoms {
    rustler::atoms! {
        metadata,
        y_event = "Y_EVENT",
        y_connected = "Y_CONNECTED",
        y_disconnected = "Y_DISCONNECTED",
    }
}

/// How a route decodes a payload: what `Yggdrasil.Transformer.Default`
/// and `Yggdrasil.Transformer.Json` would give.
#[derive(Clone, Copy)]
pub enum Decode {
    Binary,
    Json,
}

/// A channel the delivery thread serves itself.
pub struct Route {
    /// The channel's process: the recipient the broker client knows, and
    /// where an event goes that the route cannot decode (the process logs it).
    process: Pid,
    /// The channel's engine key (`Yggdrasil.Channel.key/1`), kept in its
    /// own environment.
    key: Mutex<(OwnedEnv, SavedTerm)>,
    decode: Decode,
}

impl Route {
    pub fn new(process: Pid, key: Term<'_>, decode: Decode) -> Route {
        let env = OwnedEnv::new();
        let saved = env.save(key);
        Route {
            process,
            key: Mutex::new((env, saved)),
            decode,
        }
    }

    /// The key, copied into `env`.
    fn key<'a>(&self, env: Env<'a>) -> Term<'a> {
        let guard = self.key.lock().unwrap_or_else(PoisonError::into_inner);
        let (own, saved) = &*guard;
        own.run(|own| saved.load(own).in_env(env))
    }
}

/// Where a broker client sends an event: a process, or a route to the
/// subscribers of a channel. Identified by the pid alone, so that
/// unsubscribing a process finds its route.
#[derive(Clone)]
pub enum Target {
    Process(Pid),
    Direct(Arc<Route>),
}

impl Target {
    pub fn pid(&self) -> Pid {
        match self {
            Target::Process(pid) => *pid,
            Target::Direct(route) => route.process,
        }
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.pid() == other.pid()
    }
}

impl Eq for Target {}

impl Hash for Target {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pid().hash(state);
    }
}

/// Delivers a route's event from the delivery thread's environment `env`
/// (cleared after), with `helper` sending part of a wide fan-out and `pace`
/// keeping it behind the subscribers; gives back a message the route cannot
/// decode, for the channel's process.
pub(super) fn deliver(
    env: &mut OwnedEnv,
    helper: &mut Helper,
    pace: &mut Pace,
    route: &Route,
    event: Event,
) -> Option<Event> {
    let left = env.run(|env| match &event {
        Event::Message {
            payload, metadata, ..
        } => {
            let key = route.key(env);
            let decoded = match route.decode {
                Decode::Binary => terms::bytes(env, payload),
                Decode::Json => match crate::json::decode_value(env, payload) {
                    Ok(value) => value,
                    Err(_) => return true,
                },
            };
            let metadata = terms::encode(env, metadata);
            let channel = key.map_put(atoms::metadata(), metadata).unwrap_or(key);
            let message = (atoms::y_event(), channel, decoded).encode(env);
            let (sent, sample) = fan_out(helper, key, message, pace.turn());
            pace.count(env, sent, sample);
            false
        }
        Event::Connected { .. } | Event::Disconnected { .. } => {
            let connected = matches!(event, Event::Connected { .. });
            let (sent, sample) = set_connected(env, route, connected, pace.turn());
            pace.count(env, sent, sample);
            false
        }
        // Replies and warnings go to processes, never to a route.
        Event::Published { .. } | Event::Warning { .. } => false,
    });
    env.clear();
    left.then_some(event)
}

/// `Yggdrasil.Engine.broadcast/2` from a thread: small channels under the
/// table lock, bigger ones from a snapshot after releasing it, the widest
/// with the helper thread sending half.
/// Returns how many subscribers it sent to, and the one at `turn` (modulo
/// their number) for the pacer to watch.
fn fan_out(
    helper: &mut Helper,
    key: Term<'_>,
    message: Term<'_>,
    turn: usize,
) -> (usize, Option<Pid>) {
    let mut table = table();
    let snapshot = match table.targets(&TermKey::new(key), SEND_UNDER_LOCK) {
        Some(Targets::Few(members)) => {
            members.iter().for_each(|&pid| send_copy(pid, message));
            stats::COUNTERS.deliveries.add(members.len());
            return (members.len(), sample(members, turn));
        }
        Some(Targets::Many(snapshot)) => snapshot,
        None => return (0, None),
    };
    drop(table);
    let total = snapshot.len();
    let half = if total >= SPLIT_AT { total / 2 } else { total };
    // SAFETY: `message` lives in the delivery thread's environment, which is
    // cleared or dropped only after this function returned, and `_joined`
    // waits for the helper when it does (even by unwinding).
    let shared = helper.start(&snapshot, half, unsafe { RawTerm::of(message) });
    let _joined = shared.then_some(Joined(helper));
    let sent = send_batches(&snapshot, 0, half, message.as_c_arg());
    stats::COUNTERS.deliveries.add(sent);
    (total, sample(snapshot.as_slice(), turn))
}

/// The member at `turn`, modulo their number: the one the pacer watches.
fn sample(members: &[Pid], turn: usize) -> Option<Pid> {
    members.get(turn % members.len().max(1)).copied()
}

/// Waits for the helper's half when dropped.
struct Joined<'a>(&'a mut Helper);

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.0.join();
    }
}

/// Fan-outs to this many subscribers or more are split in two halves, sent
/// at once by the delivery thread and its helper: a wide channel's events
/// then go out at the pace of two threads, as the `:elixir` adapter's do
/// from two schedulers. Each event's fan-out ends before the next one
/// starts, so every subscriber still gets a channel's events in order.
const SPLIT_AT: usize = 256;

/// `snapshot[from..to]`, in batches: an unsubscribe racing with it waits
/// for one batch at most (the fence of `Members::deliver`).
fn send_batches(snapshot: &Snapshot<Pid>, from: usize, to: usize, message: ErlNifTerm) -> usize {
    let mut sent = 0;
    let mut next = from;
    while next < to {
        let end = next.saturating_add(BATCH).min(to);
        // SAFETY: the caller keeps `message` alive until this returns.
        sent += snapshot.deliver(next, end, |&pid| unsafe { send_copy_raw(pid, message) });
        next = end;
    }
    sent
}

/// A term handed to the helper thread for one fan-out.
#[derive(Clone, Copy)]
struct RawTerm(ErlNifTerm);

// SAFETY: only read (copied by `enif_send`) while its environment is kept
// alive by the thread that made it, which waits for the helper.
unsafe impl Send for RawTerm {}

impl RawTerm {
    /// # Safety
    /// The term must outlive every use the helper makes of it.
    unsafe fn of(term: Term<'_>) -> RawTerm {
        RawTerm(term.as_c_arg())
    }
}

struct Half {
    snapshot: Snapshot<Pid>,
    from: usize,
    message: RawTerm,
}

/// The delivery thread's helper: a thread started with the first wide
/// fan-out, which sends the second half of each.
#[derive(Default)]
pub(super) struct Helper {
    thread: Option<(Sender<Half>, Receiver<usize>)>,
}

impl Helper {
    /// Hands `snapshot[from..]` to the helper thread; false when there is
    /// nothing to hand or no thread (the caller then sends it all itself).
    fn start(&mut self, snapshot: &Snapshot<Pid>, from: usize, message: RawTerm) -> bool {
        if from >= snapshot.len() {
            return false;
        }
        if self.thread.is_none() {
            self.thread = spawn_helper();
        }
        let half = Half {
            snapshot: snapshot.clone(),
            from,
            message,
        };
        if let Some((jobs, _)) = &self.thread {
            if jobs.send(half).is_ok() {
                return true;
            }
            self.thread = None;
        }
        let sent = send_batches(snapshot, from, snapshot.len(), message.0);
        stats::COUNTERS.deliveries.add(sent);
        false
    }

    /// Waits until the helper sent its half.
    fn join(&mut self) {
        let done = match &self.thread {
            Some((_, done)) => done.recv(),
            None => return,
        };
        match done {
            Ok(sent) => stats::COUNTERS.deliveries.add(sent),
            // The thread is gone (it cannot be: it catches panics); a new
            // one is started with the next wide fan-out.
            Err(_) => self.thread = None,
        }
    }
}

fn spawn_helper() -> Option<(Sender<Half>, Receiver<usize>)> {
    // One job at a time: the delivery thread waits for each.
    let (jobs_tx, jobs) = crossbeam_channel::bounded::<Half>(1);
    let (done, done_rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("yggdrasil-delivery-helper".into())
        .spawn(move || {
            for half in jobs {
                let Half {
                    snapshot,
                    from,
                    message,
                } = half;
                let sent = std::panic::catch_unwind(|| {
                    send_batches(&snapshot, from, snapshot.len(), message.0)
                })
                .unwrap_or(0);
                // Released before answering: the delivery thread may clear
                // the message's environment as soon as it hears back.
                drop(snapshot);
                if done.send(sent).is_err() {
                    return;
                }
            }
        })
        .ok()
        .map(|_| (jobs_tx, done_rx))
}

/// `Yggdrasil.Subscriber.Manager.connected/1` and `disconnected/1`;
/// returns what `fan_out` does.
fn set_connected(
    env: Env<'_>,
    route: &Route,
    connected: bool,
    turn: usize,
) -> (usize, Option<Pid>) {
    let key = route.key(env);
    let Some(snapshot) = table().set_connected(&TermKey::new(key), connected) else {
        return (0, None);
    };
    let tag = if connected {
        atoms::y_connected()
    } else {
        atoms::y_disconnected()
    };
    let message = (tag, key).encode(env);
    // Counted as the engine's own notices are.
    let sent = send_batches(&snapshot, 0, snapshot.len(), message.as_c_arg());
    stats::COUNTERS.deliveries.add(sent);
    (sent, sample(snapshot.as_slice(), turn))
}
