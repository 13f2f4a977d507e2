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

use rustler::env::SavedTerm;
use rustler::{Encoder, Env, OwnedEnv, Term};
use yggdrasil_brokers::Event;

use super::terms;
use crate::fanout::SEND_UNDER_LOCK;
use crate::key::TermKey;
use crate::pid::{send_copy, Pid};
use crate::state::table;
use crate::stats;
use yggdrasil_engine::Targets;

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
/// (cleared after); gives back a message the route cannot decode, for the
/// channel's process.
pub(super) fn deliver(env: &mut OwnedEnv, route: &Route, event: Event) -> Option<Event> {
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
            fan_out(key, message);
            false
        }
        Event::Connected { .. } => {
            set_connected(env, route, true);
            false
        }
        Event::Disconnected { .. } => {
            set_connected(env, route, false);
            false
        }
        // Replies and warnings go to processes, never to a route.
        Event::Published { .. } | Event::Warning { .. } => false,
    });
    env.clear();
    left.then_some(event)
}

/// `Yggdrasil.Engine.broadcast/2` from a thread: small channels under the
/// table lock, bigger ones from a snapshot after releasing it.
fn fan_out(key: Term<'_>, message: Term<'_>) {
    let mut table = table();
    let snapshot = match table.targets(&TermKey::new(key), SEND_UNDER_LOCK) {
        Some(Targets::Few(members)) => {
            members.iter().for_each(|&pid| send_copy(pid, message));
            stats::COUNTERS.deliveries.add(members.len());
            return;
        }
        Some(Targets::Many(snapshot)) => snapshot,
        None => return,
    };
    drop(table);
    let sent = snapshot.deliver(0, snapshot.len(), |&pid| send_copy(pid, message));
    stats::COUNTERS.deliveries.add(sent);
}

/// `Yggdrasil.Subscriber.Manager.connected/1` and `disconnected/1`.
fn set_connected(env: Env<'_>, route: &Route, connected: bool) {
    let key = route.key(env);
    let Some(snapshot) = table().set_connected(&TermKey::new(key), connected) else {
        return;
    };
    let tag = if connected {
        atoms::y_connected()
    } else {
        atoms::y_disconnected()
    };
    let message = (tag, key).encode(env);
    snapshot.deliver(0, snapshot.len(), |&pid| send_copy(pid, message));
}
