//! The `:redis` broker: `PSUBSCRIBE` on one pub/sub connection, `PUBLISH`
//! on a separate multiplexed one.
//!
//! Reconnection is the shared loop's job, not the crate's: redis's
//! `ConnectionManager` with auto-resubscribe was measured to lose messages
//! after `CLIENT KILL`, so this module only ever opens plain connections.
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::broker::{Broker, Incoming, ListenError, PublishError};
use crate::{Common, Error, Metadata, Properties, Topic};

/// Section 10 `:redis` keys. `url` (`redis://[user:password@]host:port/db`)
/// overrides the others when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub hostname: String,
    pub port: u16,
    pub password: Option<String>,
    pub username: Option<String>,
    pub database: i64,
    pub url: Option<String>,
    pub common: Common,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".to_string(),
            port: 6379,
            password: None,
            username: None,
            database: 0,
            url: None,
            common: Common::default(),
        }
    }
}

pub(crate) struct Redis {
    client: redis::Client,
    common: Common,
}

impl Redis {
    /// Checks the settings (a bad URL fails here); does not connect.
    pub(crate) fn new(config: Config) -> Result<Self, Error> {
        let info = match &config.url {
            Some(url) => url.as_str().into_connection_info(),
            None => {
                let mut settings = RedisConnectionInfo::default().set_db(config.database);
                if let Some(user) = &config.username {
                    settings = settings.set_username(user);
                }
                if let Some(password) = &config.password {
                    settings = settings.set_password(password);
                }
                ConnectionAddr::Tcp(config.hostname.clone(), config.port)
                    .into_connection_info()
                    .map(|info| info.set_redis_settings(settings))
            }
        }
        .map_err(|e| Error::new(format!("bad redis configuration: {e}")))?;
        let client = redis::Client::open(info)
            .map_err(|e| Error::new(format!("bad redis configuration: {e}")))?;
        Ok(Redis {
            client,
            common: config.common,
        })
    }
}

/// Server replies (`NOPERM`, `WRONGTYPE`...) concern one request; anything
/// else (I/O, a closed socket, a protocol error) means the connection is done.
fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

fn pattern(topic: &Topic) -> &[u8] {
    match topic {
        Topic::Redis(pattern) => pattern,
        // check_topic keeps other topics out; an empty pattern matches nothing.
        _ => b"",
    }
}

fn listen_error(e: redis::RedisError) -> ListenError {
    if is_connection_error(&e) {
        ListenError::Connection(e.to_string())
    } else {
        ListenError::Topic(e.to_string())
    }
}

impl Broker for Redis {
    type Control = PubSubSink;
    type Messages = PubSubStream;
    type Publisher = MultiplexedConnection;
    type Ack = ();

    fn name(&self) -> &'static str {
        "redis"
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn check_topic(&self, topic: &Topic) -> Result<(), String> {
        match topic {
            Topic::Redis(_) => Ok(()),
            other => Err(format!("not a redis channel: {other}")),
        }
    }

    async fn connect_listener(&self) -> Result<(PubSubSink, PubSubStream), String> {
        let pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| e.to_string())?;
        Ok(pubsub.split())
    }

    async fn listen(&self, sink: &mut PubSubSink, topic: &Topic) -> Result<(), ListenError> {
        sink.psubscribe(pattern(topic)).await.map_err(listen_error)
    }

    async fn unlisten(&self, sink: &mut PubSubSink, topic: &Topic) -> Result<(), ListenError> {
        sink.punsubscribe(pattern(topic))
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

    async fn next_message(&self, stream: &mut PubSubStream) -> Option<Incoming<()>> {
        loop {
            let msg = stream.next().await?;
            // Only pattern subscriptions are made, so every message has one.
            let Ok(Some(pattern)) = msg.get_pattern::<Option<Vec<u8>>>() else {
                continue;
            };
            let channel = msg.get_channel::<Vec<u8>>().unwrap_or_default();
            return Some(Incoming {
                topic: Topic::Redis(pattern),
                payload: msg.get_payload_bytes().to_vec(),
                metadata: Metadata::Redis { channel },
                ack: None,
            });
        }
    }

    async fn connect_publisher(&self) -> Result<MultiplexedConnection, String> {
        // The shared code puts its own deadline on every publish; the crate's
        // default 500 ms response timeout would cut it short.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())
    }

    async fn publish(
        &self,
        publisher: &MultiplexedConnection,
        topic: &Topic,
        payload: &[u8],
        _props: &Properties,
    ) -> Result<(), PublishError> {
        let mut connection = publisher.clone();
        redis::cmd("PUBLISH")
            .arg(pattern(topic))
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
