//! The data the public API speaks: configuration, topics, events, errors.
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

/// Anything that identifies where an event goes (the NIF uses rustler's
/// `LocalPid`; tests use `u64`). No `Debug` needed: `LocalPid` has none.
pub trait Recipient: Clone + Send + Sync + Eq + Hash + 'static {}
impl<T: Clone + Send + Sync + Eq + Hash + 'static> Recipient for T {}

/// Why a call was refused. Its text is meant for `{:error, reason}` as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Keys every broker takes (section 10, "Common to all three").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Common {
    /// How long a publish may wait for a connection and the broker's answer.
    pub publish_timeout: Duration,
    /// Upper bound of the reconnect backoff (attempts start within ~100 ms).
    pub backoff_max: Duration,
    /// A connection with nothing subscribed and no publish for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            publish_timeout: Duration::from_millis(5000),
            backoff_max: Duration::from_millis(5000),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Which broker a [`crate::Client`] talks to, with its settings. One variant
/// per compiled-in broker (cargo features `redis`, `postgres`, `rabbitmq`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Config {
    #[cfg(feature = "redis")]
    Redis(crate::redis::Config),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::Config),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(crate::rabbitmq::Config),
}

impl Config {
    pub fn common(&self) -> &Common {
        match self {
            #[cfg(feature = "redis")]
            Config::Redis(c) => &c.common,
            #[cfg(feature = "postgres")]
            Config::Postgres(c) => &c.common,
            #[cfg(feature = "rabbitmq")]
            Config::RabbitMq(c) => &c.common,
            // Built without any broker: no Config value can exist.
            #[cfg(not(any(feature = "redis", feature = "postgres", feature = "rabbitmq")))]
            _ => match *self {},
        }
    }
}

/// Where a subscription listens and a publish goes. Build with the
/// constructors, which check what the broker would refuse.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A `PSUBSCRIBE` pattern (a name without glob characters is one channel);
    /// publishing sends `PUBLISH` to it as a channel name.
    Redis(Vec<u8>),
    /// A `LISTEN` channel (quoted as an identifier by the broker module).
    Postgres(String),
    /// A binding of `routing_key` on `exchange` (publishing: that exchange and key).
    RabbitMq {
        exchange: String,
        routing_key: String,
    },
}

/// Redis refuses bulk strings above `proto-max-bulk-len` (512 MiB by default).
const REDIS_MAX_NAME: usize = 512 * 1024 * 1024;
/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes: refuse instead.
const POSTGRES_MAX_NAME: usize = 63;
/// AMQP 0-9-1 short strings (exchange names, routing keys) hold at most 255 bytes.
const AMQP_MAX_SHORTSTR: usize = 255;

impl Topic {
    pub fn redis(pattern: impl Into<Vec<u8>>) -> Result<Topic, Error> {
        let pattern = pattern.into();
        if pattern.is_empty() {
            return Err(Error::new("a redis channel name must not be empty"));
        }
        if pattern.len() > REDIS_MAX_NAME {
            return Err(Error::new(format!(
                "a redis channel name must be at most {REDIS_MAX_NAME} bytes, got {}",
                pattern.len()
            )));
        }
        Ok(Topic::Redis(pattern))
    }

    pub fn postgres(channel: impl Into<String>) -> Result<Topic, Error> {
        let channel = channel.into();
        if channel.is_empty() {
            return Err(Error::new("a postgres channel name must not be empty"));
        }
        if channel.len() > POSTGRES_MAX_NAME {
            return Err(Error::new(format!(
                "a postgres channel name must be at most {POSTGRES_MAX_NAME} bytes, got {}",
                channel.len()
            )));
        }
        if channel.contains('\0') {
            return Err(Error::new("a postgres channel name must not contain NUL"));
        }
        Ok(Topic::Postgres(channel))
    }

    pub fn rabbitmq(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Result<Topic, Error> {
        let (exchange, routing_key) = (exchange.into(), routing_key.into());
        if exchange.is_empty() {
            return Err(Error::new("a rabbitmq exchange name must not be empty"));
        }
        for (what, value) in [("exchange name", &exchange), ("routing key", &routing_key)] {
            if value.len() > AMQP_MAX_SHORTSTR {
                return Err(Error::new(format!(
                    "a rabbitmq {what} must be at most {AMQP_MAX_SHORTSTR} bytes, got {}",
                    value.len()
                )));
            }
        }
        Ok(Topic::RabbitMq {
            exchange,
            routing_key,
        })
    }
}

impl fmt::Display for Topic {
    /// As a user wrote the name (for warnings and errors).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Redis(name) => write!(f, "redis channel {:?}", String::from_utf8_lossy(name)),
            Topic::Postgres(name) => write!(f, "postgres channel {name:?}"),
            Topic::RabbitMq {
                exchange,
                routing_key,
            } => write!(
                f,
                "rabbitmq exchange {exchange:?} routing key {routing_key:?}"
            ),
        }
    }
}

/// Message properties for publishing. AMQP uses them; redis and postgres
/// ignore them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Vec<(String, HeaderValue)>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub priority: Option<u8>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub persistent: bool,
}

/// An AMQP header value (the types section 10 allows).
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    Binary(Vec<u8>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// One event for one recipient, as it leaves on the crossbeam channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery<R> {
    pub to: R,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The broker confirmed the subscription (again after every reconnect).
    Connected { topic: Topic },
    /// The connection carrying a confirmed subscription was lost.
    Disconnected { topic: Topic },
    Message {
        topic: Topic,
        payload: Vec<u8>,
        metadata: Metadata,
    },
    /// Exactly one per `publish()`, within its `publish_timeout`.
    Published {
        tag: u64,
        result: Result<(), String>,
    },
    /// To the client's owner: one per failed connect attempt (not per topic),
    /// a refused subscription, or a restarted task.
    Warning { message: String },
}

/// What the broker said about a delivered message beyond its payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Metadata {
    /// The channel the message was published on (the topic may be a pattern).
    Redis {
        channel: Vec<u8>,
    },
    Postgres {
        channel: String,
    },
    RabbitMq {
        routing_key: String,
        message_id: Option<String>,
        headers: Option<Vec<(String, HeaderValue)>>,
    },
}

/// What a client holds right now; tests count leaks with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Broker connections currently open (redis: 0, 1 or 2).
    pub connections: usize,
    /// This client's tasks alive on the runtime.
    pub tasks: usize,
    /// Broker-level subscriptions (distinct topics).
    pub topics: usize,
    /// (topic, recipient) pairs.
    pub subscriptions: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_the_broker_would_refuse_are_errors() {
        assert!(Topic::redis("").is_err());
        assert_eq!(Topic::redis("a.*"), Ok(Topic::Redis(b"a.*".to_vec())));
        assert!(Topic::postgres("").is_err());
        assert!(Topic::postgres("x".repeat(64)).is_err());
        assert!(Topic::postgres("nul\0").is_err());
        assert!(Topic::postgres("x".repeat(63)).is_ok());
        assert!(Topic::rabbitmq("", "key").is_err());
        assert!(Topic::rabbitmq("ex", "k".repeat(256)).is_err());
        assert!(Topic::rabbitmq("e".repeat(256), "key").is_err());
        assert!(Topic::rabbitmq("ex", "").is_ok());
    }

    #[test]
    fn topics_print_as_written() {
        let t = Topic::redis("orders.*").expect("valid");
        assert_eq!(t.to_string(), "redis channel \"orders.*\"");
    }
}
