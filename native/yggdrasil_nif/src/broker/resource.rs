//! The client resource: a `yggdrasil_brokers::Client` per broker and
//! namespace, and the monitors that unsubscribe a dead subscriber.
//!
//! Subscribers are monitored by the resource: a dead subscriber's names are
//! unsubscribed in the `down` callback. The owner is monitored too: when it
//! dies the client closes (its connections with it).
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustler::{Env, LocalPid, Monitor, Resource, ResourceArc};
use yggdrasil_brokers::{Client, LoadStats, Name};

use super::direct::Target;
use super::outbox::Sink;
use crate::pid::Pid;

/// One broker + namespace, opened by `broker_open/3`. Dropping the last
/// reference (or the owner's death) closes it.
pub struct BrokerClient {
    pub(super) client: Client<Target>,
    /// Its way into the outbox: what it has queued and shed.
    sink: Sink,
    owner: Pid,
    /// Each subscriber's monitor and names, so that its death unsubscribes
    /// them all.
    subscribers: Mutex<HashMap<Pid, Watched>>,
}

struct Watched {
    monitor: Monitor,
    names: HashSet<Name>,
}

impl BrokerClient {
    /// Wraps `client`, monitoring `owner`.
    pub(super) fn new(
        env: Env<'_>,
        client: Client<Target>,
        sink: Sink,
        owner: &LocalPid,
    ) -> Result<ResourceArc<BrokerClient>, String> {
        let resource = ResourceArc::new(BrokerClient {
            client,
            sink,
            owner: Pid::of(owner),
            subscribers: Mutex::new(HashMap::new()),
        });
        resource
            .monitor(Some(env), owner)
            .ok_or("the owner process is not alive")?;
        Ok(resource)
    }

    fn subscribers(&self) -> MutexGuard<'_, HashMap<Pid, Watched>> {
        // Only map operations and non-blocking sends run under this lock.
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn load(&self) -> LoadStats {
        self.sink.load()
    }

    pub(super) fn count_shed(&self, dropped: u64) {
        self.sink.count_shed(dropped)
    }

    /// Subscriber processes watched right now.
    pub(super) fn monitored(&self) -> usize {
        self.subscribers().len()
    }
}

/// Subscribes `pid` (monitored from now on) to `name`, its events going to
/// `target` (the process itself, or a route to its channel's subscribers);
/// idempotent.
pub(super) fn subscribe(
    this: &ResourceArc<BrokerClient>,
    env: Env<'_>,
    name: Name,
    pid: &LocalPid,
    target: Target,
) -> Result<(), String> {
    this.client.check_name(&name).map_err(|e| e.to_string())?;
    let key = Pid::of(pid);
    let mut subscribers = this.subscribers();
    let watched = match subscribers.entry(key) {
        Entry::Occupied(watched) => watched.into_mut(),
        Entry::Vacant(slot) => {
            let monitor = this
                .monitor(Some(env), pid)
                .ok_or("the subscribing process is not alive")?;
            slot.insert(Watched {
                monitor,
                names: HashSet::new(),
            })
        }
    };
    if !watched.names.insert(name.clone()) {
        return Ok(());
    }
    if let Err(e) = this.client.subscribe(name.clone(), target) {
        forget(this, env, &mut subscribers, key, &name);
        return Err(e.to_string());
    }
    Ok(())
}

/// Unsubscribes `pid` from `name`; `Ok` also when it was not subscribed.
pub(super) fn unsubscribe(
    this: &ResourceArc<BrokerClient>,
    env: Env<'_>,
    name: Name,
    pid: &LocalPid,
) -> Result<(), String> {
    this.client.check_name(&name).map_err(|e| e.to_string())?;
    let key = Pid::of(pid);
    let mut subscribers = this.subscribers();
    if forget(this, env, &mut subscribers, key, &name) {
        this.client
            .unsubscribe(name, Target::Process(key))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes `name` from `pid`'s names, and the monitor with the last one.
fn forget(
    this: &ResourceArc<BrokerClient>,
    env: Env<'_>,
    subscribers: &mut HashMap<Pid, Watched>,
    pid: Pid,
    name: &Name,
) -> bool {
    let Some(watched) = subscribers.get_mut(&pid) else {
        return false;
    };
    let removed = watched.names.remove(name);
    if watched.names.is_empty() {
        this.demonitor(Some(env), &watched.monitor);
        subscribers.remove(&pid);
    }
    removed
}

#[rustler::resource_impl]
impl Resource for BrokerClient {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _monitor: Monitor) {
        let pid = Pid::of(&pid);
        if pid == self.owner {
            self.client.close();
            return;
        }
        let watched = self.subscribers().remove(&pid);
        for name in watched.map(|w| w.names).unwrap_or_default() {
            // Only fails once the client is closed, when nothing is left anyway.
            let _ = self.client.unsubscribe(name, Target::Process(pid));
        }
    }
}
