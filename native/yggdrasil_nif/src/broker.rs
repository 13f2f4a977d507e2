//! The broker NIFs: a `yggdrasil_brokers::Client` per broker and namespace
//! as a resource, and the one thread that turns its events into messages.
//!
//! Every NIF here only hands a command to the client (tokio mpsc, no I/O)
//! and returns. Events come back through one `crossbeam_channel` shared by
//! every client and leave it on ONE delivery thread (`yggdrasil-delivery`,
//! a plain `std::thread`), which builds each message in an `OwnedEnv` and
//! `enif_send`s it: no scheduler ever waits on a broker or sends its
//! traffic, and the events for one pid keep the order the client produced.
//! Publish replies skip the thread (see [`Outbox`]).
//!
//! Messages sent to BEAM processes (`Yggdrasil.Native` documents them too):
//! - `{:"$yggdrasil_broker", :connected}` / `{:"$yggdrasil_broker", :disconnected}`
//!   to a subscriber, when the broker confirmed its topic / the connection
//!   carrying it was lost;
//! - `{:"$yggdrasil_broker", :event, payload, metadata}` to a subscriber;
//! - `{:"$yggdrasil_broker", :published, tag, :ok | {:error, reason}}` to a
//!   publisher, exactly one per accepted `broker_publish/5`;
//! - `{:"$yggdrasil_broker", :warning, reason}` to the client's owner.
//!
//! Subscribers are monitored by the client resource: a dead subscriber's
//! topics are unsubscribed in the `down` callback. The owner is monitored
//! too: when it dies the client closes (its connections with it).
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rustler::thread::is_scheduler_thread;
use rustler::types::binary::NewBinary;
use rustler::types::map::MapIterator;
use rustler::types::tuple::get_tuple;
use rustler::{
    Atom, Binary, Encoder, Env, LocalPid, Monitor, OwnedEnv, Resource, ResourceArc, Term,
};
use yggdrasil_brokers::{
    runtime_stats, Client, Delivery, Event, EventSink, HeaderValue, Metadata, Properties, Topic,
};

use crate::pid::Pid;

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
        redis,
        postgres,
        rabbitmq,
        channel,
        routing_key,
        message_id,
        headers,
        connections,
        tasks,
        topics,
        subscriptions,
        monitored,
        started,
        runtime_tasks,
        our_tasks,
        pending_deliveries,
    }
}

type Events = Delivery<Pid>;

/// The brokers compiled into this library (cargo features of the NIF crate,
/// forwarded to `yggdrasil_brokers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Redis,
    Postgres,
    RabbitMq,
}

impl Kind {
    fn from_atom(atom: Atom) -> Result<Kind, String> {
        if atom == atoms::redis() {
            Ok(Kind::Redis)
        } else if atom == atoms::postgres() {
            Ok(Kind::Postgres)
        } else if atom == atoms::rabbitmq() {
            Ok(Kind::RabbitMq)
        } else {
            Err("unknown broker: expected :redis, :postgres or :rabbitmq".to_string())
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
            Kind::RabbitMq => "rabbitmq",
        }
    }

    fn compiled(self) -> bool {
        yggdrasil_brokers::features().contains(&self.name())
    }

    fn atom(self) -> Atom {
        match self {
            Kind::Redis => atoms::redis(),
            Kind::Postgres => atoms::postgres(),
            Kind::RabbitMq => atoms::rabbitmq(),
        }
    }

    /// The channel name as this broker's topic; the topic constructors
    /// check what the broker would refuse.
    fn topic(self, name: Term<'_>) -> Result<Topic, String> {
        let error = |e: yggdrasil_brokers::Error| e.to_string();
        match self {
            Kind::Redis => {
                let pattern = name.decode::<Binary>().map_err(|_| {
                    "a :redis channel name must be a binary (a PSUBSCRIBE pattern)".to_string()
                })?;
                Topic::redis(pattern.as_slice()).map_err(error)
            }
            Kind::Postgres => {
                let channel = name
                    .decode::<Binary>()
                    .ok()
                    .and_then(|b| std::str::from_utf8(b.as_slice()).ok().map(str::to_owned))
                    .ok_or_else(|| {
                        "a :postgres channel name must be a UTF-8 binary (a LISTEN channel)"
                            .to_string()
                    })?;
                Topic::postgres(channel).map_err(error)
            }
            Kind::RabbitMq => {
                let expected = || {
                    "a :rabbitmq channel name must be {exchange, routing_key}, two UTF-8 binaries"
                        .to_string()
                };
                let parts = get_tuple(name).map_err(|_| expected())?;
                let [exchange, routing_key] = parts.as_slice() else {
                    return Err(expected());
                };
                let exchange = utf8(*exchange).ok_or_else(expected)?;
                let routing_key = utf8(*routing_key).ok_or_else(expected)?;
                Topic::rabbitmq(exchange, routing_key).map_err(error)
            }
        }
    }
}

fn utf8(term: Term<'_>) -> Option<String> {
    let binary = term.decode::<Binary>().ok()?;
    std::str::from_utf8(binary.as_slice())
        .ok()
        .map(str::to_owned)
}

fn not_built(kind: Kind) -> String {
    format!(
        "yggdrasil was built without :{0} (enable it with `config :yggdrasil, brokers: [...]` \
         or YGGDRASIL_BROKERS, including {0}, and rebuild)",
        kind.name()
    )
}

// ---------------------------------------------------------------------------
// Delivery

/// Where every client's events go. A publish reply is sent to its caller
/// at once, from the runtime thread that produced it: one `enif_send` from
/// an owned environment, which any thread outside the VM may do, instead of
/// a hand-off that wakes the delivery thread on the path a publisher waits
/// on. The caller is the only process that event goes to, so no order
/// between it and the thread's events can matter. Everything else
/// (subscriber events, connection states, warnings) goes through the
/// delivery thread, in the order the client produced it.
#[derive(Clone)]
struct Outbox(Sender<Events>);

impl EventSink<Pid> for Outbox {
    fn deliver(&self, delivery: Events) {
        // A reply dropped on a VM thread (a client closed from a NIF) takes
        // the delivery thread: owned environments cannot send from there.
        let direct = matches!(delivery.event, Event::Published { .. }) && !is_scheduler_thread();
        let left = if direct {
            send_here(delivery)
        } else {
            Some(delivery)
        };
        if let Some(delivery) = left {
            // A dropped receiver means nobody listens any more.
            let _ = self.0.send(delivery);
        }
    }
}

/// Sends `delivery` from this thread's own environment; gives it back when
/// the thread cannot (its locals are being destroyed as it exits).
fn send_here(delivery: Events) -> Option<Events> {
    let mut delivery = Some(delivery);
    let _ = REPLY_ENV.try_with(|env| {
        if let Ok(mut env) = env.try_borrow_mut() {
            if let Some(delivery) = delivery.take() {
                send_from(&mut env, delivery);
            }
        }
    });
    delivery
}

thread_local! {
    /// The environment publish replies are built in, one per runtime thread.
    static REPLY_ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
}

/// Builds the event's message in `env` and sends it. A panic while building
/// it loses that message only (the environment is replaced), never the
/// thread.
fn send_from(env: &mut OwnedEnv, delivery: Events) {
    let sent = catch_unwind(AssertUnwindSafe(|| {
        // A dead recipient is not an error: its events just go nowhere.
        let _ = env.send_and_clear(&delivery.to.local(), |env| message(env, delivery.event));
    }));
    if sent.is_err() {
        *env = OwnedEnv::new();
    }
}

/// The sending end every client gets; the delivery thread owns the
/// receiving end. Created with the first client, so a VM that never opens a
/// broker has no such thread.
static OUTBOX: LazyLock<Result<Outbox, String>> = LazyLock::new(|| {
    let (sender, receiver) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("yggdrasil-delivery".into())
        .spawn(move || deliver_forever(receiver))
        .map(|_| Outbox(sender))
        .map_err(|e| format!("cannot start the broker delivery thread: {e}"))
});

fn outbox() -> Result<Outbox, String> {
    OUTBOX.as_ref().cloned().map_err(Clone::clone)
}

/// Runs for the life of the VM (the static sender never drops).
fn deliver_forever(receiver: Receiver<Events>) {
    let mut env = OwnedEnv::new();
    for delivery in receiver.iter() {
        send_from(&mut env, delivery);
    }
}

fn message(env: Env<'_>, event: Event) -> Term<'_> {
    let tag = atoms::tag();
    match event {
        Event::Connected { .. } => (tag, atoms::connected()).encode(env),
        Event::Disconnected { .. } => (tag, atoms::disconnected()).encode(env),
        Event::Message {
            payload, metadata, ..
        } => (
            tag,
            atoms::event(),
            bytes(env, &payload),
            encode_metadata(env, metadata),
        )
            .encode(env),
        Event::Published { tag: id, result } => {
            let result = match result {
                Ok(()) => atoms::ok().encode(env),
                Err(reason) => (atoms::error(), reason).encode(env),
            };
            (tag, atoms::published(), id, result).encode(env)
        }
        Event::Warning { message } => (tag, atoms::warning(), message).encode(env),
    }
}

fn bytes<'a>(env: Env<'a>, data: &[u8]) -> Term<'a> {
    let mut binary = NewBinary::new(env, data.len());
    binary.as_mut_slice().copy_from_slice(data);
    Binary::from(binary).encode(env)
}

fn encode_metadata(env: Env<'_>, metadata: Metadata) -> Term<'_> {
    let map = Term::map_new(env);
    let pairs: Vec<(Atom, Term<'_>)> = match metadata {
        Metadata::Redis { channel } => vec![(atoms::channel(), bytes(env, &channel))],
        Metadata::Postgres { channel } => vec![(atoms::channel(), channel.encode(env))],
        Metadata::RabbitMq {
            routing_key,
            message_id,
            headers,
        } => vec![
            (atoms::routing_key(), routing_key.encode(env)),
            (atoms::message_id(), message_id.encode(env)),
            (
                atoms::headers(),
                match headers {
                    Some(headers) => encode_headers(env, headers),
                    None => atoms::nil().encode(env),
                },
            ),
        ],
    };
    pairs.into_iter().fold(map, |map, (key, value)| {
        map.map_put(key, value).unwrap_or(map)
    })
}

fn encode_headers(env: Env<'_>, headers: Vec<(String, HeaderValue)>) -> Term<'_> {
    headers
        .into_iter()
        .fold(Term::map_new(env), |map, (key, value)| {
            let value = match value {
                HeaderValue::Binary(b) => bytes(env, &b),
                HeaderValue::Int(i) => i.encode(env),
                HeaderValue::Float(f) => f.encode(env),
                HeaderValue::Bool(b) => b.encode(env),
            };
            map.map_put(key, value).unwrap_or(map)
        })
}

// ---------------------------------------------------------------------------
// The client resource

/// One broker + namespace, opened by `broker_open/3`. Dropping the last
/// reference (or the owner's death) closes it.
pub struct BrokerClient {
    kind: Kind,
    client: Client<Pid>,
    owner: Pid,
    /// Each subscriber's monitor and topics, so that its death unsubscribes
    /// them all.
    subscribers: Mutex<HashMap<Pid, Watched>>,
}

struct Watched {
    monitor: Monitor,
    topics: HashSet<Topic>,
}

impl BrokerClient {
    fn subscribers(&self) -> MutexGuard<'_, HashMap<Pid, Watched>> {
        // Only map operations and non-blocking sends run under this lock.
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
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
        for topic in watched.map(|w| w.topics).unwrap_or_default() {
            // Only fails once the client is closed, when nothing is left anyway.
            let _ = self.client.unsubscribe(topic, pid);
        }
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

/// The brokers this library was built with, e.g. `[:redis, :postgres, :rabbitmq]`.
#[rustler::nif]
fn broker_features() -> Vec<Atom> {
    [Kind::Redis, Kind::Postgres, Kind::RabbitMq]
        .into_iter()
        .filter(|kind| kind.compiled())
        .map(Kind::atom)
        .collect()
}

/// `{:ok, client}` or `{:error, reason}`. Connects nothing: connections open
/// on first use. `owner` gets the client's warnings; its death closes it.
#[rustler::nif]
fn broker_open<'a>(env: Env<'a>, kind: Atom, config: Term<'a>, owner: LocalPid) -> Term<'a> {
    match open(env, kind, config, owner) {
        Ok(client) => (atoms::ok(), client).encode(env),
        Err(reason) => error(env, reason),
    }
}

fn open(
    env: Env<'_>,
    kind: Atom,
    config: Term<'_>,
    owner: LocalPid,
) -> Result<ResourceArc<BrokerClient>, String> {
    let kind = Kind::from_atom(kind)?;
    let config = config::decode(kind, config)?;
    let client = Client::open(config, Pid::of(&owner), outbox()?).map_err(|e| e.to_string())?;
    let resource = ResourceArc::new(BrokerClient {
        kind,
        client,
        owner: Pid::of(&owner),
        subscribers: Mutex::new(HashMap::new()),
    });
    resource
        .monitor(Some(env), &owner)
        .ok_or("the owner process is not alive")?;
    Ok(resource)
}

/// `:ok` when `name` is a valid channel name for the client's broker, else
/// `{:error, reason}`. Lets the adapter refuse a name before any process starts.
#[rustler::nif]
fn broker_check_topic<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
) -> Term<'a> {
    ok_or_error(env, client.kind.topic(name).map(|_| ()))
}

/// Subscribes `pid` (monitored from now on) to the topic `name`; `:ok` at
/// once, `{:"$yggdrasil_broker", :connected}` once the broker confirmed.
/// Idempotent per (name, pid).
#[rustler::nif]
fn broker_subscribe<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
    pid: LocalPid,
) -> Term<'a> {
    ok_or_error(env, subscribe(env, &client, name, pid))
}

fn subscribe(
    env: Env<'_>,
    resource: &ResourceArc<BrokerClient>,
    name: Term<'_>,
    pid: LocalPid,
) -> Result<(), String> {
    let topic = resource.kind.topic(name)?;
    let key = Pid::of(&pid);
    let mut subscribers = resource.subscribers();
    let fresh = !subscribers.contains_key(&key);
    if fresh {
        let monitor = resource
            .monitor(Some(env), &pid)
            .ok_or("the subscribing process is not alive")?;
        subscribers.insert(
            key,
            Watched {
                monitor,
                topics: HashSet::new(),
            },
        );
    }
    let added = subscribers
        .get_mut(&key)
        .is_some_and(|w| w.topics.insert(topic.clone()));
    if !added {
        return Ok(());
    }
    if let Err(e) = resource.client.subscribe(topic.clone(), key) {
        forget(env, resource, &mut subscribers, key, &topic);
        return Err(e.to_string());
    }
    Ok(())
}

/// Removes `topic` from `pid`'s topics, and the monitor with the last one.
fn forget(
    env: Env<'_>,
    resource: &ResourceArc<BrokerClient>,
    subscribers: &mut HashMap<Pid, Watched>,
    pid: Pid,
    topic: &Topic,
) -> bool {
    let Some(watched) = subscribers.get_mut(&pid) else {
        return false;
    };
    let removed = watched.topics.remove(topic);
    if watched.topics.is_empty() {
        resource.demonitor(Some(env), &watched.monitor);
        subscribers.remove(&pid);
    }
    removed
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
    let result = client.kind.topic(name).and_then(|topic| {
        let key = Pid::of(&pid);
        let mut subscribers = client.subscribers();
        if forget(env, &client, &mut subscribers, key, &topic) {
            client
                .client
                .unsubscribe(topic, key)
                .map_err(|e| e.to_string())
        } else {
            Ok(())
        }
    });
    ok_or_error(env, result)
}

/// Publishes `payload` on `name` with the AMQP `properties` (a map; redis
/// and postgres ignore it). `:ok` means exactly one
/// `{:"$yggdrasil_broker", :published, tag, result}` reaches the caller
/// within the client's `publish_timeout`; `{:error, reason}` means the
/// request was refused here and no message follows.
#[rustler::nif]
fn broker_publish<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
    payload: Binary<'a>,
    properties: Term<'a>,
    tag: u64,
) -> Term<'a> {
    publish(env, &client, name, payload, properties, tag)
}

/// `broker_publish/5` for payloads too big to copy within a scheduler
/// slice (the client takes its own copy of the bytes).
#[rustler::nif(schedule = "DirtyCpu")]
fn broker_publish_dirty<'a>(
    env: Env<'a>,
    client: ResourceArc<BrokerClient>,
    name: Term<'a>,
    payload: Binary<'a>,
    properties: Term<'a>,
    tag: u64,
) -> Term<'a> {
    publish(env, &client, name, payload, properties, tag)
}

fn publish<'a>(
    env: Env<'a>,
    client: &BrokerClient,
    name: Term<'a>,
    payload: Binary<'a>,
    properties: Term<'a>,
    tag: u64,
) -> Term<'a> {
    let result = client.kind.topic(name).and_then(|topic| {
        let properties = config::properties(properties)?;
        client
            .client
            .publish(
                topic,
                payload.as_slice().to_vec(),
                properties,
                Pid::of(&env.pid()),
                tag,
            )
            .map_err(|e| e.to_string())
    });
    ok_or_error(env, result)
}

/// What the client holds: `%{connections, tasks, topics, subscriptions,
/// monitored}` (monitored = subscriber processes it watches).
#[rustler::nif]
fn broker_stats(env: Env<'_>, client: ResourceArc<BrokerClient>) -> Term<'_> {
    let stats = client.client.stats();
    let monitored = client.subscribers().len();
    let pairs = [
        (atoms::connections(), stats.connections),
        (atoms::tasks(), stats.tasks),
        (atoms::topics(), stats.topics),
        (atoms::subscriptions(), stats.subscriptions),
        (atoms::monitored(), monitored),
    ];
    count_map(env, &pairs)
}

/// The shared runtime: `%{started, runtime_tasks, our_tasks,
/// pending_deliveries}` (events queued for the delivery thread).
#[rustler::nif]
fn broker_runtime_stats(env: Env<'_>) -> Term<'_> {
    let stats = runtime_stats();
    let pending = match LazyLock::get(&OUTBOX) {
        Some(Ok(Outbox(sender))) => sender.len(),
        _ => 0,
    };
    let map = count_map(
        env,
        &[
            (atoms::runtime_tasks(), stats.runtime_tasks),
            (atoms::our_tasks(), stats.our_tasks),
            (atoms::pending_deliveries(), pending),
        ],
    );
    map.map_put(atoms::started(), stats.started).unwrap_or(map)
}

fn count_map<'a>(env: Env<'a>, pairs: &[(Atom, usize)]) -> Term<'a> {
    pairs.iter().fold(Term::map_new(env), |map, (key, value)| {
        map.map_put(*key, *value as u64).unwrap_or(map)
    })
}

/// Terms to the broker crate's settings.
mod config {
    use super::*;

    /// The settings map `Yggdrasil.Broker` builds from
    /// `Yggdrasil.Config.broker_config/2` (atom keys, every key present).
    pub(super) fn decode(kind: Kind, map: Term<'_>) -> Result<yggdrasil_brokers::Config, String> {
        if !map.is_map() {
            return Err("broker settings must be a map".to_string());
        }
        if !kind.compiled() {
            return Err(not_built(kind));
        }
        let settings = Settings { map, kind };
        // Unused only in a build without any broker.
        #[cfg_attr(
            not(any(feature = "redis", feature = "postgres", feature = "rabbitmq")),
            allow(unused_variables)
        )]
        let common = yggdrasil_brokers::Common {
            publish_timeout: settings.millis("publish_timeout")?,
            backoff_max: settings.millis("backoff_max")?,
            idle_timeout: settings.millis("idle_timeout")?,
        };
        match kind {
            #[cfg(feature = "redis")]
            Kind::Redis => Ok(yggdrasil_brokers::Config::Redis(
                yggdrasil_brokers::redis::Config {
                    hostname: settings.get("hostname")?,
                    port: settings.get("port")?,
                    password: settings.get("password")?,
                    username: settings.get("username")?,
                    database: settings.get("database")?,
                    // Yggdrasil.Config already resolved a `url` into the other keys.
                    url: None,
                    common,
                },
            )),
            #[cfg(feature = "postgres")]
            Kind::Postgres => Ok(yggdrasil_brokers::Config::Postgres(
                yggdrasil_brokers::postgres::Config {
                    hostname: settings.get("hostname")?,
                    port: settings.get("port")?,
                    username: settings.get("username")?,
                    password: settings.get("password")?,
                    database: settings.get("database")?,
                    common,
                },
            )),
            #[cfg(feature = "rabbitmq")]
            Kind::RabbitMq => Ok(yggdrasil_brokers::Config::RabbitMq(
                yggdrasil_brokers::rabbitmq::Config {
                    hostname: settings.get("hostname")?,
                    port: settings.get("port")?,
                    username: settings.get("username")?,
                    password: settings.get("password")?,
                    virtual_host: settings.get("virtual_host")?,
                    heartbeat: settings.get("heartbeat")?,
                    common,
                },
            )),
            // Left out of this build (checked above).
            #[allow(unreachable_patterns)]
            _ => Err(not_built(kind)),
        }
    }

    struct Settings<'a> {
        map: Term<'a>,
        kind: Kind,
    }

    impl<'a> Settings<'a> {
        fn get<T: rustler::Decoder<'a>>(&self, key: &str) -> Result<T, String> {
            let bad = || format!("bad :{} setting `{key}`", self.kind.name());
            let atom = Atom::from_str(self.map.get_env(), key).map_err(|_| bad())?;
            let value = self.map.map_get(atom).map_err(|_| bad())?;
            value.decode::<T>().map_err(|_| bad())
        }

        fn millis(&self, key: &str) -> Result<Duration, String> {
            self.get::<u64>(key).map(Duration::from_millis)
        }
    }

    /// `publish/3` options as AMQP properties: a map with atom keys.
    pub(super) fn properties(map: Term<'_>) -> Result<Properties, String> {
        let iter = MapIterator::new(map).ok_or("publish properties must be a map")?;
        let mut props = Properties::default();
        for (key, value) in iter {
            let key = key
                .atom_to_string()
                .map_err(|_| "publish property names must be atoms".to_string())?;
            let bad = |what: &str| format!("publish option :{key} must be {what}");
            let text = || utf8(value).ok_or_else(|| bad("a UTF-8 binary"));
            match key.as_str() {
                "content_type" => props.content_type = Some(text()?),
                "content_encoding" => props.content_encoding = Some(text()?),
                "message_id" => props.message_id = Some(text()?),
                "correlation_id" => props.correlation_id = Some(text()?),
                "reply_to" => props.reply_to = Some(text()?),
                "expiration" => props.expiration = Some(text()?),
                "type" => props.kind = Some(text()?),
                "user_id" => props.user_id = Some(text()?),
                "app_id" => props.app_id = Some(text()?),
                "priority" => {
                    props.priority = Some(value.decode::<u8>().map_err(|_| bad("0..255"))?)
                }
                "timestamp" => {
                    props.timestamp = Some(
                        value
                            .decode::<u64>()
                            .map_err(|_| bad("a non-negative integer (seconds)"))?,
                    )
                }
                "persistent" => {
                    props.persistent = value.decode::<bool>().map_err(|_| bad("a boolean"))?
                }
                "headers" => props.headers = headers(value).map_err(|what| bad(&what))?,
                _ => return Err(format!("unknown publish option :{key}")),
            }
        }
        Ok(props)
    }

    /// A map or keyword list of atom/binary keys to binary, integer, float
    /// or boolean values.
    fn headers(term: Term<'_>) -> Result<Vec<(String, HeaderValue)>, String> {
        let expected = "a map or keyword list of atom or binary keys to binary, integer, \
                        float or boolean values"
            .to_string();
        let pairs: Vec<(Term<'_>, Term<'_>)> = if term.is_map() {
            MapIterator::new(term).ok_or(expected.clone())?.collect()
        } else {
            term.decode::<Vec<(Term<'_>, Term<'_>)>>()
                .map_err(|_| expected.clone())?
        };
        pairs
            .into_iter()
            .map(|(key, value)| {
                let key = if key.is_atom() {
                    key.atom_to_string().ok()
                } else {
                    utf8(key)
                }
                .ok_or(expected.clone())?;
                let value = if value.is_atom() {
                    HeaderValue::Bool(value.decode::<bool>().map_err(|_| expected.clone())?)
                } else if value.is_binary() {
                    HeaderValue::Binary(
                        value
                            .decode::<Binary>()
                            .map_err(|_| expected.clone())?
                            .to_vec(),
                    )
                } else if value.is_float() {
                    HeaderValue::Float(value.decode::<f64>().map_err(|_| expected.clone())?)
                } else {
                    HeaderValue::Int(value.decode::<i64>().map_err(|_| expected.clone())?)
                };
                Ok((key, value))
            })
            .collect()
    }
}
