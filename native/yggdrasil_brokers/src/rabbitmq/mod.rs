//! The `:rabbitmq` broker (AMQP 0-9-1) on `lapin`: its protocol only; the
//! reconnect loop, replay, events and deadlines are the shared code's.
//!
//! One AMQP connection per client, shared by the subscribing session and the
//! publisher (each keeps it alive; it closes when neither holds it), with
//! AMQP channels as needed:
//! - **Subscribing** a topic `{exchange, routing_key}` opens a channel of its
//!   own, declares a client-named, exclusive queue, binds it to the exchange
//!   with the routing key and consumes it. The queue lives as an auto-delete
//!   one would (until the unsubscribe, or the session's or the connection's
//!   end), but is not declared auto-delete: a purge cancels its consumer,
//!   which would delete it, backlog and all, and the session would have to
//!   be opened again. A missing exchange
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
mod frames;
mod properties;
mod publisher;
mod session;

use std::fmt;
use std::sync::{Arc, Weak};

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use async_compat::CompatExt;
use lapin::{
    AsyncTcpStream, BasicProperties, Connection, ConnectionProperties, ConnectionStatus, ErrorKind,
};

use crate::bounded::CutOnDrop;
use crate::broker::{Behind, Broker, Incoming, ListenError, PublishError};
use crate::settings::{Key, Kind, Preset, Schema, Settings, Value, PORT};
use crate::tls::Tls;
use crate::url::BrokerUrl;
use crate::{Common, Data, Error, Name};
use properties::AMQP_MAX_SHORTSTR;
use publisher::Publisher;
use session::{Ack, Control, Messages};

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
/// 5671; param `heartbeat`. `amqp://` leaves `tls` as configured (spec
/// 10.1: the TLS keys still apply), so a URL never turns TLS off.
fn from_url(url: BrokerUrl) -> Result<Vec<(&'static str, Value)>, Error> {
    let tls = url.scheme == "amqps";
    let default_port = if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT };
    let mut values = vec![
        ("hostname", Value::Text(url.host)),
        ("port", Value::Int(url.port.map_or(default_port, i64::from))),
        ("username", Value::Text(url.username.unwrap_or_else(|| "guest".to_owned()))),
        ("password", url.password.map_or(Value::Secret(crate::Secret::new("guest")), Value::Secret)),
        ("virtual_host", Value::Text(url.path.unwrap_or_else(|| "/".to_owned()))),
    ];
    if tls {
        values.push(("tls", Value::Bool(true)));
    }
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
        // The connection (TCP, then TLS when configured) is made here and
        // handed to lapin: when lapin connects by itself and that fails, it
        // leaves its internal tasks behind on our runtime (a few per
        // attempt, forever, while a broker is unreachable). Past this point
        // its failures clean up after them.
        let stream = crate::tls::connect(&self.hostname, self.port, self.tls.as_ref())
            .await
            .map_err(describe_failure)?;
        // Checked as it arrives (`frames.rs`); cut if this attempt is given
        // up (the shared code's timeout drops this future): lapin's I/O
        // thread would otherwise wait on a silent server forever, holding
        // the socket.
        let stream = frames::stream(stream);
        let attempt = CutOnDrop::new(stream.cut_handle());
        let stream = std::sync::Mutex::new(Some(stream));
        let runtime = frames::runtime();
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
        attempt.disarm();
        *current = Arc::downgrade(&connection);
        Ok(connection)
    }
}

impl Broker for RabbitMq {
    const NAME: &'static str = "rabbitmq";
    const SCHEMA: Schema = Schema {
        keys: KEYS,
        url_schemes: &["amqp", "amqps"],
        from_url,
    };
    // What a flood leaves in our queues waits in the broker, ready.
    const WHEN_BEHIND: Behind = Behind::Purge;
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
            // The lower of ours and the server's wins, ours when it says 0
            // ("no limit"): what lapin sizes from them stays bounded.
            query: AMQPQueryString {
                heartbeat: Some(heartbeat),
                frame_max: Some(frames::FRAME_MAX),
                channel_max: Some(frames::CHANNEL_MAX),
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

    fn tls_unverified(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| !tls.verifies_peer())
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
        Ok(session::open(self.connection().await?))
    }

    async fn listen(&self, control: &mut Control, topic: &Binding) -> Result<(), ListenError> {
        control.listen(topic).await
    }

    async fn unlisten(&self, control: &mut Control, topic: &Binding) -> Result<(), ListenError> {
        control.unlisten(topic).await
    }

    async fn next_message(&self, messages: &mut Messages) -> Option<Incoming<Binding, Ack>> {
        messages.next().await
    }

    async fn ping(&self, control: &mut Control) -> Result<(), ListenError> {
        control.ping().await
    }

    async fn backlog(&self, control: &mut Control) -> Result<u64, ListenError> {
        control.backlog().await
    }

    async fn purge(&self, control: &mut Control) -> Result<(), ListenError> {
        control.purge().await
    }

    async fn resume(&self, control: &mut Control) -> Result<(), ListenError> {
        control.resume().await
    }

    async fn ack(&self, ack: Ack) {
        // Handed to the session's ack task, which batches: the listener
        // loop does not wait for lapin's I/O thread once per message.
        ack.hand_on();
    }

    async fn connect_publisher(&self) -> Result<Publisher, String> {
        Ok(publisher::open(self.connection().await?))
    }

    async fn publish(
        &self,
        publisher: &Publisher,
        topic: &Binding,
        payload: &[u8],
        properties: &BasicProperties,
    ) -> Result<(), PublishError> {
        publisher.publish(topic, payload, properties).await
    }
}

/// A channel-level (soft) AMQP error on a connection still up concerns this
/// topic only; anything else ends the session.
/// A soft error, or no channel left on a connection still up, concerns the
/// one topic or publish; anything else, the connection.
fn concerns_one(status: &ConnectionStatus, error: &lapin::Error) -> bool {
    let one = error.is_amqp_soft_error() || matches!(error.kind(), ErrorKind::ChannelsLimitReached);
    one && status.connected()
}

fn listen_error(status: &ConnectionStatus, error: &lapin::Error) -> ListenError {
    if concerns_one(status, error) {
        ListenError::Topic(describe(error))
    } else {
        ListenError::Connection(describe(error))
    }
}

fn publish_error(status: &ConnectionStatus, error: &lapin::Error) -> PublishError {
    if concerns_one(status, error) {
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
