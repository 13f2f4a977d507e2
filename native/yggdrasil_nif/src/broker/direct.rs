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
//! the order the broker client produced them in; a wide channel's sends are
//! spread over the senders, one per scheduler, which keep that order for
//! each subscriber (`senders.rs`).
//!
//! A channel with a user transformer or backend keeps the process path
//! ([`Target::Process`]): its events go to its process, which decodes them.
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rustler::env::SavedTerm;
use rustler::{Encoder, Env, OwnedEnv, Term};
use yggdrasil_brokers::Event;
use yggdrasil_engine::{Snapshot, Targets};

use super::pace::Pace;
use super::{senders, terms};
use crate::cursor::Share;
use crate::fanout::SEND_UNDER_LOCK;
use crate::key::TermKey;
use crate::pid::{send_copy, Pid};
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
    /// Set once the channel was wide: its fan-outs then all go through the
    /// senders, for good, since a fan-out sent from the delivery thread
    /// could overtake one still with a sender.
    wide: AtomicBool,
    /// Which sender got each share of its last fan-out.
    handoffs: Mutex<senders::Handoffs>,
}

impl Route {
    pub fn new(process: Pid, key: Term<'_>, decode: Decode) -> Route {
        let env = OwnedEnv::new();
        let saved = env.save(key);
        Route {
            process,
            key: Mutex::new((env, saved)),
            decode,
            wide: AtomicBool::new(false),
            handoffs: Mutex::default(),
        }
    }

    pub(super) fn is_wide(&self) -> bool {
        self.wide.load(Ordering::Relaxed)
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

/// The most subscribers a runtime thread sends an express message to
/// (`outbox.rs`): each send holds up every client's socket reads for a
/// microsecond or two. A bigger channel's messages wait for the delivery
/// thread.
const EXPRESS_MAX_FANOUT: usize = 32;

/// Delivers a route's event from `env`, the delivery thread's or a runtime
/// thread's environment (cleared after), counted by `pace`, which keeps it
/// behind the subscribers. Gives the event back when it was not delivered:
/// a message the route cannot decode (for the channel's process), or an
/// express message for more than [`EXPRESS_MAX_FANOUT`] subscribers.
pub(super) fn deliver(
    env: &mut OwnedEnv,
    pace: Pace,
    route: &Arc<Route>,
    event: Event,
) -> Result<(), Event> {
    let most = match pace {
        Pace::Waits => usize::MAX,
        Pace::Express => EXPRESS_MAX_FANOUT,
    };
    let delivered = env.run(|env| match &event {
        Event::Message {
            payload, metadata, ..
        } => {
            let key = route.key(env);
            // Hashed once, before any lock.
            let hashed = TermKey::new(key);
            // Checked before decoding too, so that a crowded channel's
            // messages are not decoded twice.
            if most < usize::MAX && table().subscriber_count(&hashed) > most {
                return false;
            }
            let decoded = match route.decode {
                Decode::Binary => terms::bytes(env, payload),
                Decode::Json => match crate::json::decode_value(env, payload) {
                    Ok(value) => value,
                    Err(_) => return false,
                },
            };
            let metadata = terms::encode(env, metadata);
            let channel = key.map_put(atoms::metadata(), metadata).unwrap_or(key);
            let message = (atoms::y_event(), channel, decoded).encode(env);
            // A decoded document is copied into each mailbox in a time that grows with it (a
            // binary payload is shared, not copied).
            let small = matches!(route.decode, Decode::Binary) || payload.len() <= SMALL_JSON;
            let plan = Plan {
                most,
                under_lock: small,
                turn: pace.turn(),
            };
            let Some((sent, sample)) = fan_out(env, route, &hashed, message, plan) else {
                return false;
            };
            pace.count(env, sent, sample);
            true
        }
        Event::Connected { .. } | Event::Disconnected { .. } => {
            let connected = matches!(event, Event::Connected { .. });
            let (sent, sample) = set_connected(env, route, connected, pace.turn());
            pace.count(env, sent, sample);
            true
        }
        // Replies and warnings go to processes, never to a route.
        Event::Published { .. } | Event::Warning { .. } => true,
    });
    env.clear();
    if delivered {
        Ok(())
    } else {
        Err(event)
    }
}

/// A JSON payload of at most this many bytes may be sent under the table
/// lock (as `Yggdrasil.Engine.broadcast/2` sends flat messages).
const SMALL_JSON: usize = 4096;

/// How one message is fanned out: to at most `most` subscribers, under the
/// table lock when the channel is small and `under_lock` allows it, and
/// which subscriber the pacer watches (`turn`).
struct Plan {
    most: usize,
    under_lock: bool,
    turn: usize,
}

/// `Yggdrasil.Engine.broadcast/2` from a thread: small channels under the
/// table lock, bigger ones from a snapshot after releasing it; nothing
/// (`None`) for a channel of more than `plan.most` subscribers.
/// Returns how many subscribers it sent to, and the one at `plan.turn`
/// (modulo their number) for the pacer to watch.
fn fan_out<'a>(
    env: Env<'a>,
    route: &Arc<Route>,
    key: &TermKey<'a>,
    message: Term<'a>,
    plan: Plan,
) -> Option<(usize, Option<Pid>)> {
    let Plan {
        most,
        under_lock,
        turn,
    } = plan;
    // A wide route sends everything through the senders, so never under
    // the lock.
    let few = if route.is_wide() || !under_lock {
        0
    } else {
        SEND_UNDER_LOCK
    };
    let mut table = table();
    let snapshot = match table.targets(key, few) {
        Some(Targets::Few(members)) => {
            members.iter().for_each(|&pid| {
                send_copy(pid, message);
            });
            stats::COUNTERS.deliveries.add(members.len());
            return Some((members.len(), sample(members, turn)));
        }
        Some(Targets::Many(snapshot)) if snapshot.len() <= most => snapshot,
        Some(Targets::Many(_)) => return None,
        None => return Some((0, None)),
    };
    drop(table);
    let sent = send_all(env, route, &snapshot, message);
    Some((sent, sample(snapshot.as_slice(), turn)))
}

/// The member at `turn`, modulo their number: the one the pacer watches.
fn sample(members: &[Pid], turn: usize) -> Option<Pid> {
    members.get(turn % members.len().max(1)).copied()
}

/// A route whose channel has this many subscribers goes wide: its fan-outs
/// go through the senders from then on (`senders.rs`). Below it, the hop
/// to a sender costs more than the sends it saves.
const WIDE_AT: usize = 256;

/// Sends `message` to `members`: through the senders once the route is
/// wide, else from this thread. Returns how many it was sent (or handed)
/// to.
fn send_all<'a>(
    env: Env<'a>,
    route: &Arc<Route>,
    members: &Snapshot<Pid>,
    message: Term<'a>,
) -> usize {
    let wide = route.is_wide() || members.len() >= WIDE_AT;
    if wide {
        let mut handoffs = route
            .handoffs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if senders::hand(env, &mut handoffs, members, message, || gap(env, route)) {
            if !route.wide.swap(true, Ordering::Relaxed) {
                remember_wide(route);
            }
            return members.len();
        }
    }
    // No senders (the application is not running): this thread sends.
    senders::send_here(members, Share::ALL, message)
}

/// The routes that went wide, for [`tell_restarted`].
static WIDE_ROUTES: Mutex<Vec<Weak<Route>>> = Mutex::new(Vec::new());

fn wide_routes() -> std::sync::MutexGuard<'static, Vec<Weak<Route>>> {
    WIDE_ROUTES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds `route`, dropping the routes gone since the last one was added: the
/// list never holds more than the wide routes alive then, plus this one,
/// however many channels come and go.
fn remember_wide(route: &Arc<Route>) {
    let mut wide = wide_routes();
    wide.retain(|route| route.strong_count() > 0);
    wide.push(Arc::downgrade(route));
}

/// Sender `index` was restarted (`env` is the new one's): each wide route
/// whose last fan-out for that share went to its predecessor, maybe lost
/// with it, tells that share's subscribers of a gap now, through the new
/// sender, rather than with the channel's next event, which may never
/// come. One snapshot per wide route alive: O(wide routes), on a restart.
pub(super) fn tell_restarted(env: Env<'_>, index: usize) {
    let routes: Vec<Arc<Route>> = wide_routes().iter().filter_map(Weak::upgrade).collect();
    for route in routes {
        let key = route.key(env);
        let members = match table().targets(&TermKey::new(key), 0) {
            Some(Targets::Many(snapshot)) => snapshot,
            _ => continue,
        };
        let mut handoffs = route
            .handoffs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        senders::tell_replaced(env, &mut handoffs, &members, index, || gap(env, &route));
    }
}

/// What tells a subscriber of a gap in a channel's events:
/// `{:Y_DISCONNECTED, channel}`, then `{:Y_CONNECTED, channel}` if the
/// channel is connected.
fn gap<'a>(env: Env<'a>, route: &Route) -> Vec<Term<'a>> {
    let key = route.key(env);
    let mut notices = vec![(atoms::y_disconnected(), key).encode(env)];
    if table().is_connected(&TermKey::new(key)) {
        notices.push((atoms::y_connected(), key).encode(env));
    }
    notices
}

/// `Yggdrasil.Subscriber.Manager.connected/1` and `disconnected/1`;
/// returns what `fan_out` does.
fn set_connected(
    env: Env<'_>,
    route: &Arc<Route>,
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
    // Counted as the engine's own notices are, and sent the way events
    // are: on a wide route, a notice keeps its place among them.
    let sent = send_all(env, route, &snapshot, message);
    (sent, sample(snapshot.as_slice(), turn))
}
