//! The `:rabbitmq` broker (AMQP 0-9-1) on `lapin`: its protocol only; the
//! reconnect loop, replay, events and deadlines are the shared code's.
//!
//! One AMQP connection per client, shared by the subscribing session and the
//! publisher (each keeps it alive; it closes when neither holds it), with
//! AMQP channels as needed:
//! - **Subscribing** a topic `{exchange, routing_key}` opens a channel of its
//!   own, declares a client-named, exclusive, auto-delete queue, binds it to
//!   the exchange with the routing key and consumes it. A missing exchange
//!   makes the broker close that channel only, so it is a topic error: the
//!   connection and the other topics go on. lapin's automatic recovery is
//!   off (it replays declarations of server-named queues, which the broker
//!   refuses); after a reconnect the shared loop calls `listen` again and
//!   every queue, binding and consumer is made anew.
//! - **Publishing** uses one channel in confirm mode per exchange published
//!   to: the broker closes a channel when a publish names a missing
//!   exchange, and that must not fail publishes in flight to other
//!   exchanges. `Ok` means the broker confirmed (basic.ack) the message.
//! - **Acknowledgements**: consumed messages are acked once the shared code
//!   handed their events on (`Broker::ack`; batched into one
//!   `basic.ack(multiple)` per channel), so at most `PREFETCH` messages per
//!   topic wait on our side and a slow delivery side leaves the backlog in
//!   the broker. When the connection breaks, the broker deletes the
//!   exclusive queue with whatever it still held, unacked messages included:
//!   those, and messages published while the connection is down, are not
//!   delivered (the queue that would get them back is gone), so a
//!   subscription never sees a broker redelivery; after a reconnect it gets
//!   what is published after its new `Connected`.
//! - **What can arrive twice**: a publish whose connection breaks after the
//!   broker took the message but before its confirm came back is sent again
//!   by the shared retry (within `publish_timeout`), so subscribers can
//!   receive that message twice.
//!
//! Header values that are tables, arrays or void (other AMQP clients may
//! send them) are left out of the metadata (`properties.rs`).
mod properties;

use std::fmt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use async_compat::CompatExt;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{
    AsyncTcpStream, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    ConnectionStatus, ErrorKind,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::AbortHandle;

use crate::broker::{Broker, Incoming, ListenError, PublishError};
use crate::settings::{Key, Kind, Preset, Schema, Settings, Value, PORT};
use crate::tls::Tls;
use crate::url::BrokerUrl;
use crate::{Common, Data, Error, Name};
use properties::{short, AMQP_MAX_SHORTSTR};

/// Unacknowledged messages the broker may send ahead, per subscribed topic:
/// enough to keep a consumer busy while acks travel, small enough that a
/// slow delivery side holds the backlog in the broker, not in our memory.
const PREFETCH: u16 = 1000;

/// How long the TCP connect may take (the shared code also times out the
/// whole handshake).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a session looks whether its connection is still up, besides
/// waking on each of lapin's connection events.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

const DEFAULT_PORT: i64 = 5672;
const DEFAULT_TLS_PORT: i64 = 5671;

/// Section 10 `:rabbitmq` keys, with the original's defaults.
const KEYS: &[Key] = &[
    Key::new("hostname", Kind::Host, Preset::Text("localhost")),
    Key::new("port", PORT, Preset::Int(DEFAULT_PORT)),
    Key::new("username", Kind::Text, Preset::Text("guest")),
    Key::new("password", Kind::Secret, Preset::Text("guest")),
    Key::new("virtual_host", Kind::Text, Preset::Text("/")),
    // Seconds between heartbeats the client asks for (0: none).
    Key::new(
        "heartbeat",
        Kind::Int {
            min: 0,
            max: u16::MAX as i64,
        },
        Preset::Int(10),
    ),
];

/// `amqp://[user[:password]@]host[:port][/vhost]` (the vhost percent-encoded,
/// an empty path is "/"); `amqps://` is the same with `tls: true` and port
/// 5671; param `heartbeat`.
fn from_url(url: BrokerUrl) -> Result<Vec<(&'static str, Value)>, Error> {
    let tls = url.scheme == "amqps";
    let default_port = if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT };
    let mut values = vec![
        ("hostname", Value::Text(url.host)),
        ("port", Value::Int(url.port.map_or(default_port, i64::from))),
        ("username", Value::Text(url.username.unwrap_or_else(|| "guest".to_owned()))),
        ("password", url.password.map_or(Value::Secret(crate::Secret::new("guest")), Value::Secret)),
        ("virtual_host", Value::Text(url.path.unwrap_or_else(|| "/".to_owned()))),
        ("tls", Value::Bool(tls)),
    ];
    for (param, value) in url.query {
        match param.as_str() {
            "heartbeat" => match value.parse::<u16>() {
                Ok(seconds) => values.push(("heartbeat", Value::Int(i64::from(seconds)))),
                Err(_) => {
                    return Err(Error::new(format!(
                        "url: heartbeat must be 0..65535 seconds, got {value:?}"
                    )))
                }
            },
            other => {
                return Err(Error::new(format!(
                    "url: unknown parameter {other:?} (amqp URLs take heartbeat)"
                )))
            }
        }
    }
    Ok(values)
}

/// A binding of `routing_key` on `exchange` (publishing: that exchange and key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Binding {
    exchange: String,
    routing_key: String,
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rabbitmq exchange {:?} routing key {:?}",
            self.exchange, self.routing_key
        )
    }
}

/// The broker for one client: its settings and the one AMQP connection its
/// listener session and publisher share.
pub(crate) struct RabbitMq {
    common: Common,
    hostname: String,
    port: u16,
    uri: AMQPUri,
    tls: Option<Tls>,
    /// The current connection while a session or the publisher holds it. A
    /// tokio mutex: whoever finds it gone connects while holding it, so the
    /// listener and the publisher never open two.
    connection: tokio::sync::Mutex<Weak<Connection>>,
}

impl RabbitMq {
    /// The shared connection if it is up, else a new one.
    async fn connection(&self) -> Result<Arc<Connection>, String> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.upgrade() {
            if connection.status().connected() {
                return Ok(connection);
            }
        }
        let describe_failure = |reason: String| {
            format!(
                "{}:{} (virtual host {:?}): {reason}",
                self.hostname, self.port, self.uri.vhost
            )
        };
        // The TCP connection is made here and handed to lapin: when lapin
        // connects by itself and that fails, it leaves its internal tasks
        // behind on our runtime (a few per attempt, forever, while a broker
        // is unreachable). Past this point its failures clean up after them.
        let address = (self.hostname.as_str(), self.port);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(describe_failure(e.to_string())),
            Err(_) => {
                return Err(describe_failure(format!(
                    "no TCP connection within {CONNECT_TIMEOUT:?}"
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = std::sync::Mutex::new(Some(stream));
        let runtime =
            lapin::runtime::default_runtime().map_err(|e| describe_failure(describe(&e)))?;
        // No `enable_auto_recover()`: the shared loop reconnects.
        let properties = ConnectionProperties::default().with_connection_name("yggdrasil".into());
        let connection = Connection::connector(
            self.uri.clone(),
            runtime,
            async move |_uri, _runtime| {
                // Called once: lapin retries nothing without auto-recovery.
                let taken = stream.lock().map(|mut s| s.take()).unwrap_or(None);
                taken
                    .map(|s| AsyncTcpStream::Plain(s.compat()))
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected).into())
            },
            properties,
        )
        .await
        .map(Arc::new)
        .map_err(|e| describe_failure(describe(&e)))?;
        *current = Arc::downgrade(&connection);
        Ok(connection)
    }
}

/// A subscribing session: the connection, one consuming channel per topic.
pub(crate) struct Control {
    connection: Arc<Connection>,
    topics: HashMap<Binding, Subscription>,
    messages: UnboundedSender<Item>,
    acks: UnboundedSender<PendingAck>,
}

struct Subscription {
    channel: Channel,
    /// The task forwarding this topic's consumer into `Messages`.
    forward: AbortOnDrop,
}

/// What consumer tasks and the connection watcher feed into `Messages`.
// Not boxed: a message is the common case and an mpsc slot holds it inline.
#[allow(clippy::large_enum_variant)]
enum Item {
    Message(Incoming<Binding, Ack>),
    /// The connection (or a consumer the broker cancelled) is gone.
    Lost,
}

pub(crate) struct Messages {
    items: UnboundedReceiver<Item>,
    _watcher: AbortOnDrop,
}

/// Acknowledges one delivery of one consuming channel.
pub(crate) struct Ack {
    channel: Channel,
    delivery_tag: u64,
    acks: UnboundedSender<PendingAck>,
}

struct PendingAck {
    channel: Channel,
    delivery_tag: u64,
}

/// The publishing side: confirm-mode channels by exchange, on the shared
/// connection.
#[derive(Clone)]
pub(crate) struct Publisher(Arc<PublisherState>);

struct PublisherState {
    connection: Arc<Connection>,
    channels: tokio::sync::Mutex<HashMap<String, Channel>>,
}

impl Broker for RabbitMq {
    const NAME: &'static str = "rabbitmq";
    const SCHEMA: Schema = Schema {
        keys: KEYS,
        url_schemes: &["amqp", "amqps"],
        from_url,
    };
    type Topic = Binding;
    type Control = Control;
    type Messages = Messages;
    type Publisher = Publisher;
    type Ack = Ack;
    type Properties = BasicProperties;

    fn new(settings: &Settings, common: Common) -> Result<Self, Error> {
        let hostname = settings.text("hostname")?;
        let virtual_host = settings.text("virtual_host")?;
        if virtual_host.len() > AMQP_MAX_SHORTSTR {
            return Err(Error::new(format!(
                "virtual_host must be at most {AMQP_MAX_SHORTSTR} bytes"
            )));
        }
        let port = settings.port("port")?;
        let heartbeat = u16::try_from(settings.int("heartbeat")?)
            .map_err(|_| Error::new("heartbeat must be 0..65535 seconds"))?;
        // The URI is built as a struct, not parsed from text: no escaping of
        // the password or the virtual host ("/" is a valid vhost) needed.
        let uri = AMQPUri {
            scheme: AMQPScheme::AMQP,
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: settings.text("username")?,
                    password: settings
                        .secret("password")?
                        .map(|p| p.expose().to_owned())
                        .unwrap_or_default(),
                },
                host: hostname.clone(),
                port,
            },
            vhost: virtual_host,
            query: AMQPQueryString {
                heartbeat: Some(heartbeat),
                ..AMQPQueryString::default()
            },
        };
        Ok(RabbitMq {
            tls: settings.tls(&hostname)?,
            common,
            hostname,
            port,
            uri,
            connection: tokio::sync::Mutex::new(Weak::new()),
        })
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.hostname, self.port)
    }

    fn topic(&self, name: &Name) -> Result<Binding, String> {
        let expected =
            || "a :rabbitmq channel name must be {exchange, routing_key}, two UTF-8 binaries";
        let Name::Tuple(parts) = name else {
            return Err(expected().to_owned());
        };
        let [exchange, routing_key] = parts.as_slice() else {
            return Err(expected().to_owned());
        };
        let (Some(exchange), Some(routing_key)) = (exchange.text(), routing_key.text()) else {
            return Err(expected().to_owned());
        };
        if exchange.is_empty() {
            return Err("a rabbitmq exchange name must not be empty".to_owned());
        }
        for (what, value) in [("exchange name", exchange), ("routing key", routing_key)] {
            if value.len() > AMQP_MAX_SHORTSTR {
                return Err(format!(
                    "a rabbitmq {what} must be at most {AMQP_MAX_SHORTSTR} bytes, got {}",
                    value.len()
                ));
            }
        }
        Ok(Binding {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        })
    }

    fn properties(&self, options: &[(String, Data)]) -> Result<BasicProperties, String> {
        properties::from_options(options)
    }

    async fn connect_listener(&self) -> Result<(Control, Messages), String> {
        let connection = self.connection().await?;
        let (messages_tx, messages_rx) = mpsc::unbounded_channel();
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        // Ends when the last sender (Control, or an Ack in flight) is gone.
        tokio::spawn(acknowledge(acks_rx));
        let watcher = AbortOnDrop::spawn(watch_connection(
            connection.status().clone(),
            connection.events_listener(),
            messages_tx.clone(),
        ));
        let control = Control {
            connection,
            topics: HashMap::new(),
            messages: messages_tx,
            acks: acks_tx,
        };
        let messages = Messages {
            items: messages_rx,
            _watcher: watcher,
        };
        Ok((control, messages))
    }

    async fn listen(&self, control: &mut Control, topic: &Binding) -> Result<(), ListenError> {
        let Binding {
            exchange,
            routing_key,
        } = topic;
        if control.topics.contains_key(topic) {
            return Ok(());
        }
        let status = control.connection.status().clone();
        let listen_error = |e: lapin::Error| listen_error(&status, &e);
        let channel = control
            .connection
            .create_channel()
            .await
            .map_err(listen_error)?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(listen_error)?;
        let queue = next_queue_name();
        let declare = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.clone(), declare, FieldTable::default())
            .await
            .map_err(listen_error)?;
        // Both fit in a short string: `topic` checked them before this topic was queued.
        let (exchange, routing_key) = (short(exchange), short(routing_key));
        if let Err(e) = channel
            .queue_bind(
                queue.clone(),
                exchange.map_err(ListenError::Topic)?,
                routing_key.map_err(ListenError::Topic)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            let error = listen_error(e);
            if let ListenError::Topic(_) = error {
                // The broker closed the channel; the queue it never consumed
                // from would stay until the connection closes.
                delete_queue(&control.connection, queue).await;
            }
            return Err(error);
        }
        let consume = BasicConsumeOptions {
            exclusive: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(queue.clone(), queue, consume, FieldTable::default())
            .await
            .map_err(listen_error)?;
        let forward = AbortOnDrop::spawn(forward(
            consumer,
            topic.clone(),
            channel.clone(),
            control.messages.clone(),
            control.acks.clone(),
        ));
        control
            .topics
            .insert(topic.clone(), Subscription { channel, forward });
        Ok(())
    }

    async fn unlisten(&self, control: &mut Control, topic: &Binding) -> Result<(), ListenError> {
        let Some(subscription) = control.topics.remove(topic) else {
            return Ok(());
        };
        // Stop forwarding first, so the consumer's end is not taken for a
        // lost connection; closing the channel cancels the consumer and the
        // broker deletes the auto-delete queue.
        drop(subscription.forward);
        if !subscription.channel.status().connected() {
            return Ok(()); // already closed by the broker: nothing to undo
        }
        let status = control.connection.status().clone();
        subscription
            .channel
            .close(200, "unsubscribed".into())
            .await
            .map_err(|e| listen_error(&status, &e))
    }

    async fn next_message(&self, messages: &mut Messages) -> Option<Incoming<Binding, Ack>> {
        match messages.items.recv().await {
            Some(Item::Message(incoming)) => Some(incoming),
            Some(Item::Lost) | None => None,
        }
    }

    async fn ack(&self, ack: Ack) {
        // Handed to the session's ack task, which batches: the listener
        // loop does not wait for lapin's I/O thread once per message.
        let _ = ack.acks.send(PendingAck {
            channel: ack.channel,
            delivery_tag: ack.delivery_tag,
        });
    }

    async fn connect_publisher(&self) -> Result<Publisher, String> {
        let connection = self.connection().await?;
        Ok(Publisher(Arc::new(PublisherState {
            connection,
            channels: tokio::sync::Mutex::new(HashMap::new()),
        })))
    }

    async fn publish(
        &self,
        publisher: &Publisher,
        topic: &Binding,
        payload: &[u8],
        properties: &BasicProperties,
    ) -> Result<(), PublishError> {
        let Binding {
            exchange,
            routing_key,
        } = topic;
        let exchange_name = short(exchange).map_err(PublishError::Refused)?;
        let routing_key = short(routing_key).map_err(PublishError::Refused)?;
        let state = &publisher.0;
        let status = state.connection.status().clone();
        let channel = state.channel_for(exchange).await?;
        let outcome = async {
            channel
                .basic_publish(
                    exchange_name,
                    routing_key,
                    BasicPublishOptions::default(),
                    payload,
                    properties.clone(),
                )
                .await?
                .await
        }
        .await;
        match outcome {
            Ok(Confirmation::Ack(_)) => Ok(()),
            Ok(Confirmation::Nack(_)) => Err(PublishError::Refused(
                "the broker refused the message (basic.nack)".into(),
            )),
            Ok(Confirmation::NotRequested) => Err(PublishError::Connection(
                "the publishing channel is not in confirm mode".into(),
            )),
            Err(e) => {
                let error = publish_error(&status, &e);
                if let PublishError::Refused(_) = error {
                    // The broker closed this exchange's channel: open a new
                    // one on the next publish.
                    state.forget_channel(exchange, channel.id()).await;
                }
                Err(error)
            }
        }
    }
}

impl PublisherState {
    /// The confirm-mode channel for `exchange`, opened on first use.
    async fn channel_for(&self, exchange: &str) -> Result<Channel, PublishError> {
        let mut channels = self.channels.lock().await;
        if let Some(channel) = channels.get(exchange) {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let status = self.connection.status().clone();
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| publish_error(&status, &e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| publish_error(&status, &e))?;
        channels.insert(exchange.to_owned(), channel.clone());
        Ok(channel)
    }

    async fn forget_channel(&self, exchange: &str, id: u16) {
        let mut channels = self.channels.lock().await;
        if channels.get(exchange).map(Channel::id) == Some(id) {
            channels.remove(exchange);
        }
    }
}

/// Forwards one topic's consumer into `Messages` until it ends; its end
/// while the session is up (the broker cancelled the consumer, e.g. the
/// queue was deleted by an operator) is reported as a lost session, so the
/// shared loop makes everything anew rather than leave a topic deaf.
async fn forward(
    mut consumer: lapin::Consumer,
    topic: Binding,
    channel: Channel,
    messages: UnboundedSender<Item>,
    acks: UnboundedSender<PendingAck>,
) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let properties = &delivery.properties;
        let optional = |text: Option<String>| text.map_or(Data::Nil, Data::text);
        let metadata = Data::fields([
            ("routing_key", Data::text(delivery.routing_key.to_string())),
            (
                "message_id",
                optional(properties.message_id().as_ref().map(ToString::to_string)),
            ),
            (
                "headers",
                properties
                    .headers()
                    .as_ref()
                    .map_or(Data::Nil, properties::headers_data),
            ),
        ]);
        let incoming = Incoming {
            topic: topic.clone(),
            payload: delivery.data,
            metadata,
            ack: Some(Ack {
                channel: channel.clone(),
                delivery_tag: delivery.delivery_tag,
                acks: acks.clone(),
            }),
        };
        if messages.send(Item::Message(incoming)).is_err() {
            return; // the session is gone
        }
    }
    let _ = messages.send(Item::Lost);
}

/// Reports the connection's loss into `Messages`: a session whose topics
/// all failed has no consumer to notice it. lapin reports I/O errors as
/// events, but not every way a connection closes, hence the periodic look.
async fn watch_connection(
    status: ConnectionStatus,
    events: impl futures_util::Stream<Item = lapin::Event> + Send,
    messages: UnboundedSender<Item>,
) {
    let mut events = std::pin::pin!(events);
    while status.connected() {
        // Any event (channel errors such as a missing exchange come here
        // too) or a second passing: look at the connection again.
        tokio::select! {
            event = events.next() => if event.is_none() { break },
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
    let _ = messages.send(Item::Lost);
}

/// Sends the acks handed to `Broker::ack`: everything queued at once is one
/// `basic.ack(multiple)` per channel (delivery tags of a channel arrive in
/// order, and every earlier one was handed on before).
async fn acknowledge(mut pending: UnboundedReceiver<PendingAck>) {
    while let Some(first) = pending.recv().await {
        let mut latest: Vec<PendingAck> = vec![first];
        while let Ok(next) = pending.try_recv() {
            match latest
                .iter_mut()
                .find(|p| p.channel.id() == next.channel.id())
            {
                Some(same) => same.delivery_tag = next.delivery_tag,
                None => latest.push(next),
            }
        }
        for ack in latest {
            let multiple = BasicAckOptions { multiple: true };
            // A channel closed meanwhile took its unacked messages with it.
            let _ = ack.channel.basic_ack(ack.delivery_tag, multiple).await;
        }
    }
}

async fn delete_queue(connection: &Connection, queue: ShortString) {
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "done".into()).await;
    }
}

/// A queue name unique to this process and subscription. Client-named: the
/// broker refuses server-named queues being declared again by name.
fn next_queue_name() -> ShortString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static STARTED: std::sync::LazyLock<u128> = std::sync::LazyLock::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The start time tells apart processes that reuse a pid (containers).
    let name = format!(
        "yggdrasil.{}.{:x}.{n}",
        std::process::id(),
        *STARTED & 0xffff_ffff
    );
    name.into()
}

/// A channel-level (soft) AMQP error on a connection still up concerns this
/// topic only; anything else ends the session.
fn listen_error(status: &ConnectionStatus, error: &lapin::Error) -> ListenError {
    if error.is_amqp_soft_error() && status.connected() {
        ListenError::Topic(describe(error))
    } else {
        ListenError::Connection(describe(error))
    }
}

fn publish_error(status: &ConnectionStatus, error: &lapin::Error) -> PublishError {
    if error.is_amqp_soft_error() && status.connected() {
        PublishError::Refused(describe(error))
    } else {
        PublishError::Connection(describe(error))
    }
}

/// The broker's own words when it gave a reason ("NOT_FOUND - no exchange
/// 'x' in vhost '/'"), lapin's otherwise.
fn describe(error: &lapin::Error) -> String {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => error.to_string(),
    }
}

/// A spawned task that ends when its handle is dropped.
struct AbortOnDrop(AbortHandle);

impl AbortOnDrop {
    fn spawn<F>(task: F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        AbortOnDrop(tokio::spawn(task).abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
