//! The broker NIFs: a `yggdrasil_brokers::Client` per broker and namespace
//! as a resource ([`resource`]), the thread and sink its events leave by
//! ([`outbox`]), and the terms in and out ([`terms`]). Nothing here names a
//! broker: the broker crate's registry knows them, and its schemas check
//! the settings.
//!
//! Every NIF here only hands a command to the client (tokio mpsc, no I/O)
//! and returns. Messages sent to BEAM processes (`Yggdrasil.Native`
//! documents them too):
//! - `{:"$yggdrasil_broker", :connected}` / `{:"$yggdrasil_broker", :disconnected}`
//!   to a subscriber, when the broker confirmed its name / the connection
//!   carrying it was lost;
//! - `{:"$yggdrasil_broker", :event, payload, metadata}` to a subscriber;
//! - `{:"$yggdrasil_broker", :published, tag, :ok | {:error, reason}}` to a
//!   publisher, exactly one per accepted `broker_publish/5`, `tag` its
//!   reference ([`reply_tags`]);
//! - `{:"$yggdrasil_broker", :warning, reason}` to the client's owner.
mod direct;
mod outbox;
mod pace;
mod reply_tags;
mod resource;
mod senders;
mod terms;

use rustler::{Atom, Binary, Encoder, Env, LocalPid, ResourceArc, Term};
use yggdrasil_brokers::Client;

use crate::pid::Pid;
use direct::{Decode, Route, Target};
pub use resource::BrokerClient;

mod atoms {
    rustler::atoms! {
        ok,
        error,
        nil,
        tag = "$yggdrasil_broker",
        connected,
        disconnected,
        event,
        published,
        warning,
        inspected,
        connections,
        tasks,
        topics,
        subscriptions,
        monitored,
        publish_timeout,
        endpoint,
        queued,
        queued_bytes,
        dropped,
        shed,
        cuts,
        binary,
        json,
    }
}

fn error<'a>(env: Env<'a>, reason: impl AsRef<str>) -> Term<'a> {
    (atoms::error(), reason.as_ref()).encode(env)
}

fn ok_or_error<'a>(env: Env<'a>, result: Result<(), String>) -> Term<'a> {
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(reason) => error(env, reason),
    }
}

fn broker_name(env: Env<'_>, broker: Atom) -> Result<String, String> {
    broker
        .to_term(env)
        .atom_to_string()
        .map_err(|_| "a broker is an atom".to_owned())
}

/// `{:ok, keys}`: the setting keys of `broker` (its own, then the common
/// ones), which `Yggdrasil.Config` looks up; `{:error, reason}` for a
/// broker that is unknown or not built in.
#[rustler::nif]
fn broker_keys(env: Env<'_>, broker: Atom) -> Term<'_> {
    let keys = broker_name(env, broker)
        .and_then(|name| yggdrasil_brokers::keys(&name).map_err(|e| e.to_string()));
    match keys {
        Ok(keys) => {
            let atoms: Vec<Term<'_>> = keys
                .into_iter()
                .filter_map(|key| Atom::from_str(env, key).ok())
                .map(|atom| atom.encode(env))
                .collect();
            (atoms::ok(), atoms).encode(env)
        }
        Err(reason) => error(env, reason),
    }
}

/// `{:ok, keyword}`: `broker`'s settings from `given` (`[{key, origin,
/// value}]`), checked, with defaults and a `url` applied; `{:error,
/// reason}` naming the key and where it was set.
#[rustler::nif]
fn broker_settings<'a>(env: Env<'a>, broker: Atom, given: Term<'a>) -> Term<'a> {
    let settings = broker_name(env, broker).and_then(|name| {
        let given = terms::given(given)?;
        yggdrasil_brokers::settings(&name, &given).map_err(|e| e.to_string())
    });
    match settings {
        Ok(settings) => (atoms::ok(), terms::settings(env, settings.values())).encode(env),
        Err(reason) => error(env, reason),
    }
}

/// `{:ok, client}` or `{:error, reason}`. Checks the settings as
/// `broker_settings/2` does, reads TLS files, connects nothing:
/// connections open on first use. `owner` gets the client's warnings; its
/// death closes it.
#[rustler::nif]
fn broker_open<'a>(env: Env<'a>, broker: Atom, given: Term<'a>, owner: LocalPid) -> Term<'a> {
    let opened = broker_name(env, broker).and_then(|name| {
        let given = terms::given(given)?;
        let sink = outbox::sink()?;
        let owner_target = Target::Process(Pid::of(&owner));
        let client =
            Client::open(&name, &given, owner_target, sink.clone()).map_err(|e| e.to_string())?;
        BrokerClient::new(env, client, sink, &owner)
    });
    match opened {
        Ok(client) => (atoms::ok(), client).encode(env),
        Err(reason) => error(env, reason),
    }
}

/// `%{publish_timeout: ms, endpoint: "host:port"}` of a client (no secret).
#[rustler::nif]
fn broker_info(env: Env<'_>, client: ResourceArc<BrokerClient>) -> Term<'_> {
    let timeout = client.client.common().publish_timeout.as_millis() as u64;
    let map = Term::map_new(env);
    let map = map
        .map_put(atoms::publish_timeout(), timeout)
        .unwrap_or(map);
    map.map_put(atoms::endpoint(), client.client.endpoint())
        .unwrap_or(map)
}

/// `:ok` when `name` is a valid channel name for the client's broker, else
/// `{:error, reason}`. Lets the adapter refuse a name before any process starts.
#[rustler::nif]
fn broker_check_name<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
) -> Term<'a> {
    let result = client.client.check_name(&terms::name(name));
    ok_or_error(env, result.map_err(|e| e.to_string()))
}

/// Subscribes `pid` (monitored from now on) to `name`; `:ok` at once,
/// `{:"$yggdrasil_broker", :connected}` once the broker confirmed.
/// Idempotent per (name, pid).
///
/// `route` `nil`: events go to `pid` as messages. `{key, :binary | :json}`:
/// the delivery thread decodes them and delivers them to the subscribers
/// of the engine channel `key` itself, connection states included
/// (`direct.rs`); `pid` only gets events it cannot decode.
#[rustler::nif]
fn broker_subscribe<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
    pid: LocalPid,
    route: Term<'a>,
) -> Term<'a> {
    let result = target(&pid, route)
        .and_then(|target| resource::subscribe(&client, env, terms::name(name), &pid, target));
    ok_or_error(env, result)
}

fn target(pid: &LocalPid, route: Term<'_>) -> Result<Target, String> {
    let process = Pid::of(pid);
    if route
        .decode::<Atom>()
        .is_ok_and(|atom| atom == atoms::nil())
    {
        return Ok(Target::Process(process));
    }
    let bad = || "a route is nil or {channel_key, :binary | :json}".to_owned();
    let (key, decode): (Term<'_>, Atom) = route.decode().map_err(|_| bad())?;
    let decode = if decode == atoms::binary() {
        Decode::Binary
    } else if decode == atoms::json() {
        Decode::Json
    } else {
        return Err(bad());
    };
    if !key.is_map() {
        return Err(bad());
    }
    Ok(Target::Direct(std::sync::Arc::new(Route::new(
        process, key, decode,
    ))))
}

/// Unsubscribes `pid` from `name`; `:ok` also when it was not subscribed.
/// No message follows.
#[rustler::nif]
fn broker_unsubscribe<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
    pid: LocalPid,
) -> Term<'a> {
    ok_or_error(
        env,
        resource::unsubscribe(&client, env, terms::name(name), &pid),
    )
}

/// Publishes `payload` on `name` with `options` (a map: the broker's message
/// properties, checked by its schema). `:ok` means exactly one
/// `{:"$yggdrasil_broker", :published, tag, result}` reaches the caller
/// within the client's `publish_timeout`; `{:error, reason}` means the
/// request was refused here and no message follows. `tag` is a reference
/// the caller made for this publish.
#[rustler::nif]
fn broker_publish<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
    payload: Binary<'a>,
    options: Term<'a>,
    tag: Term<'a>,
) -> Term<'a> {
    publish(env, &client, name, payload, options, tag)
}

/// `broker_publish/5` for payloads too big to copy within a scheduler
/// slice (the client takes its own copy of the bytes).
#[rustler::nif(schedule = "DirtyCpu")]
fn broker_publish_dirty<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
    payload: Binary<'a>,
    options: Term<'a>,
    tag: Term<'a>,
) -> Term<'a> {
    publish(env, &client, name, payload, options, tag)
}

fn publish<'a>(
    env: Env<'a>,
    client: &BrokerClient,
    name: Term<'a>,
    payload: Binary<'a>,
    options: Term<'a>,
    tag: Term<'a>,
) -> Term<'a> {
    let result = terms::options(options).and_then(|options| {
        let id = reply_tags::hold(tag)?;
        client
            .client
            .publish(
                terms::name(name),
                payload.as_slice().to_vec(),
                &options,
                Target::Process(Pid::of(&env.pid())),
                id,
            )
            .map_err(|e| {
                reply_tags::release(id);
                e.to_string()
            })
    });
    ok_or_error(env, result)
}

/// Makes the calling process, `pid`, the sender of share `index` of `of`
/// (`Yggdrasil.Broker.Sender` at its start, `senders.rs`). After a restart
/// the wide routes whose last fan-out for that share may have been lost
/// with the old sender hand it their gap notices first
/// (`direct::tell_restarted`).
#[rustler::nif]
fn broker_set_sender(
    env: Env<'_>,
    index: usize,
    of: usize,
    pid: LocalPid,
) -> rustler::NifResult<Atom> {
    match senders::set_sender(index, of, Pid::of(&pid)) {
        None => Err(rustler::Error::BadArg),
        Some(replaced) => {
            if replaced {
                direct::tell_restarted(env, index);
            }
            Ok(atoms::ok())
        }
    }
}

/// Counts `dropped` events a subscriber process of this client shed from
/// its mailbox (one shedding), in `broker_stats/1`.
#[rustler::nif]
fn broker_shed(client: ResourceArc<BrokerClient>, dropped: u64) -> Atom {
    client.count_shed(dropped);
    atoms::ok()
}

/// What the client holds: `%{connections, tasks, topics, subscriptions,
/// monitored, queued, queued_bytes, dropped, shed, cuts}` (monitored =
/// subscriber processes it watches; queued..shed are its outbox's, see
/// `outbox.rs`; cuts: sessions cut for being behind the broker).
#[rustler::nif]
fn broker_stats(env: Env<'_>, client: ResourceArc<BrokerClient>) -> Term<'_> {
    let stats = client.client.stats();
    let load = client.load();
    let pairs = [
        (atoms::connections(), stats.connections as u64),
        (atoms::tasks(), stats.tasks as u64),
        (atoms::topics(), stats.topics as u64),
        (atoms::subscriptions(), stats.subscriptions as u64),
        (atoms::monitored(), client.monitored() as u64),
        (atoms::queued(), load.queued as u64),
        (atoms::queued_bytes(), load.queued_bytes as u64),
        (atoms::dropped(), load.dropped),
        (atoms::shed(), load.shed),
        (atoms::cuts(), stats.cuts as u64),
    ];
    pairs.iter().fold(Term::map_new(env), |map, (key, value)| {
        map.map_put(*key, *value).unwrap_or(map)
    })
}
