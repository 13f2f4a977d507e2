//! The `:redis` broker: `PSUBSCRIBE` on one pub/sub connection, `PUBLISH`
//! on a separate multiplexed one.
//!
//! Reconnection is the shared loop's job, not the crate's: redis's
//! `ConnectionManager` with auto-resubscribe was measured to lose messages
//! after `CLIENT KILL`, so this module only ever opens plain connections.
use std::fmt;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, RedisConnectionInfo};

mod connect;
mod limits;

use crate::broker::{Behind, Broker, Incoming, ListenError, PublishError};
use crate::settings::{Key, Kind, Preset, Schema, Settings, Value, PORT};
use crate::tls::Tls;
use connect::Multiplexed;
use crate::url::BrokerUrl;
use crate::{Common, Data, Error, Name};

/// Redis refuses bulk strings above `proto-max-bulk-len` (512 MiB by default).
const MAX_NAME: usize = 512 * 1024 * 1024;

const DEFAULT_PORT: i64 = 6379;

/// Section 10 `:redis` keys (plus the common ones: `url`, TLS, timeouts).
const KEYS: &[Key] = &[
    Key::new("hostname", Kind::Host, Preset::Text("localhost")),
    Key::new("port", PORT, Preset::Int(DEFAULT_PORT)),
    Key::new("password", Kind::Secret, Preset::Nil),
    Key::new(
        "database",
        Kind::Int {
            min: 0,
            max: i32::MAX as i64,
        },
        Preset::Int(0),
    ),
    Key::new("username", Kind::Text, Preset::Nil),
];

/// `redis://[[username]:password@]host[:port][/database]`; `rediss://` is
/// the same with `tls: true`. What the URL leaves out takes its default,
/// except the TLS keys: `redis://` leaves `tls` as configured (spec 10.1:
/// they still apply), so a URL never turns TLS off.
fn from_url(url: BrokerUrl) -> Result<Vec<(&'static str, Value)>, Error> {
    let database = match url.path.as_deref() {
        None => 0,
        Some(db) => db
            .parse::<u32>()
            .ok()
            .filter(|db| i32::try_from(*db).is_ok())
            .ok_or_else(|| Error::new(format!("url: expected a database number as its path, got {db:?}")))?,
    };
    if let Some((param, _)) = url.query.first() {
        return Err(Error::new(format!(
            "url: unknown parameter {param:?} (redis URLs take none)"
        )));
    }
    let mut values = vec![
        ("hostname", Value::Text(url.host)),
        ("port", Value::Int(url.port.map_or(DEFAULT_PORT, i64::from))),
        ("username", url.username.map_or(Value::Nil, Value::Text)),
        ("password", url.password.map_or(Value::Nil, Value::Secret)),
        ("database", Value::Int(i64::from(database))),
    ];
    if url.scheme == "rediss" {
        values.push(("tls", Value::Bool(true)));
    }
    Ok(values)
}

/// A `PSUBSCRIBE` pattern (a name without glob characters is one channel);
/// publishing sends `PUBLISH` to it as a channel name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Pattern(Vec<u8>);

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis channel {:?}", String::from_utf8_lossy(&self.0))
    }
}

pub(crate) struct Redis {
    host: String,
    port: u16,
    tls: Option<Tls>,
    info: RedisConnectionInfo,
    common: Common,
}

/// Server replies (`NOPERM`, `WRONGTYPE`...) concern one request; anything
/// else (I/O, a closed socket, a protocol error) means the connection is done.
fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

fn listen_error(e: redis::RedisError) -> ListenError {
    if is_connection_error(&e) {
        ListenError::Connection(e.to_string())
    } else {
        ListenError::Topic(e.to_string())
    }
}

impl Broker for Redis {
    const NAME: &'static str = "redis";
    const SCHEMA: Schema = Schema {
        keys: KEYS,
        url_schemes: &["redis", "rediss"],
        from_url,
    };
    // redis-rs buffers what it read for `PubSubStream` without bound.
    const WHEN_BEHIND: Behind = Behind::Cut;
    type Topic = Pattern;
    type Control = PubSubSink;
    type Messages = PubSubStream;
    type Publisher = Multiplexed;
    type Ack = ();
    type Properties = ();

    fn new(settings: &Settings, common: Common) -> Result<Self, Error> {
        let host = settings.text("hostname")?;
        let mut info = RedisConnectionInfo::default().set_db(settings.int("database")?);
        if let Some(user) = settings.opt_text("username")? {
            info = info.set_username(user);
        }
        if let Some(password) = settings.secret("password")? {
            info = info.set_password(password.expose());
        }
        Ok(Redis {
            tls: settings.tls(&host)?,
            port: settings.port("port")?,
            host,
            info,
            common,
        })
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn tls_unverified(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| !tls.verifies_peer())
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn topic(&self, name: &Name) -> Result<Pattern, String> {
        let pattern = name
            .bytes()
            .ok_or("a :redis channel name must be a binary (a PSUBSCRIBE pattern)")?;
        if pattern.is_empty() {
            return Err("a redis channel name must not be empty".to_owned());
        }
        if pattern.len() > MAX_NAME {
            return Err(format!(
                "a redis channel name must be at most {MAX_NAME} bytes, got {}",
                pattern.len()
            ));
        }
        Ok(Pattern(pattern.to_vec()))
    }

    /// Redis messages have no properties: `publish/3` options are ignored.
    fn properties(&self, _options: &[(String, Data)]) -> Result<(), String> {
        Ok(())
    }

    async fn connect_listener(&self) -> Result<(PubSubSink, PubSubStream), String> {
        let pubsub = connect::pubsub(&self.host, self.port, self.tls.as_ref(), &self.info).await?;
        Ok(pubsub.split())
    }

    async fn listen(&self, sink: &mut PubSubSink, topic: &Pattern) -> Result<(), ListenError> {
        sink.psubscribe(&topic.0).await.map_err(listen_error)
    }

    async fn unlisten(&self, sink: &mut PubSubSink, topic: &Pattern) -> Result<(), ListenError> {
        sink.punsubscribe(&topic.0)
            .await
            .map_err(listen_error)
    }

    async fn ping(&self, sink: &mut PubSubSink) -> Result<(), ListenError> {
        // Any answer will do: in subscribed mode it is ["pong", ""].
        sink.ping::<redis::Value>()
            .await
            .map(|_| ())
            .map_err(listen_error)
    }

    async fn next_message(&self, stream: &mut PubSubStream) -> Option<Incoming<Pattern, ()>> {
        loop {
            let msg = stream.next().await?;
            // Only pattern subscriptions are made, so every message has one.
            let Ok(Some(pattern)) = msg.get_pattern::<Option<Vec<u8>>>() else {
                continue;
            };
            let channel = msg.get_channel::<Vec<u8>>().unwrap_or_default();
            return Some(Incoming {
                topic: Pattern(pattern),
                payload: msg.get_payload_bytes().to_vec(),
                metadata: Data::fields([("channel", Data::Bytes(channel))]),
                ack: None,
            });
        }
    }

    async fn connect_publisher(&self) -> Result<Multiplexed, String> {
        // The shared code puts its own deadline on every publish; the crate's
        // default 500 ms response timeout would cut it short.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(None);
        connect::multiplexed(&self.host, self.port, self.tls.as_ref(), &self.info, config).await
    }

    async fn publish(
        &self,
        publisher: &Multiplexed,
        topic: &Pattern,
        payload: &[u8],
        _properties: &(),
    ) -> Result<(), PublishError> {
        let mut connection = publisher.connection.clone();
        redis::cmd("PUBLISH")
            .arg(&topic.0)
            .arg(payload)
            .query_async::<i64>(&mut connection)
            .await
            .map(|_receivers| ())
            .map_err(|e| {
                if is_connection_error(&e) {
                    PublishError::Connection(e.to_string())
                } else {
                    PublishError::Refused(e.to_string())
                }
            })
    }
}
