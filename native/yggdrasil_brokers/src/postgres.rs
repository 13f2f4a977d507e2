//! `:postgres`: PostgreSQL LISTEN/NOTIFY (section 10 of the API spec).
//!
//! A client has one listening session and one publishing connection. The listening session is a
//! tokio-postgres `Client` (the control half: LISTEN/UNLISTEN) plus a task that polls its
//! `Connection`, because tokio-postgres hands out notifications only from there; that task
//! forwards them through an mpsc (the message half) and ends with the connection. Publishing runs
//! `SELECT pg_notify($1, $2)`, prepared once per connection: the channel name and the payload
//! travel as parameters, never spliced into SQL, and concurrent publishes pipeline on one socket.

use std::future::poll_fn;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Connection, NoTls, Socket, Statement};

use crate::broker::{Broker, Incoming, ListenError, PublishError};
use crate::{Common, Error, Metadata, Properties, Topic};

/// `pg_notify` refuses a payload of 8000 bytes or more (NOTIFY_PAYLOAD_MAX_LENGTH with the
/// default 8 kB block size).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 7999;

/// Connection settings of section 10, with the defaults of `yggdrasil_postgres`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A host name or IP address; a path starting with `/` is a Unix socket directory.
    pub hostname: String,
    pub port: u16,
    pub username: String,
    pub password: Option<String>,
    pub database: String,
    pub common: Common,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".to_owned(),
            port: 5432,
            username: "postgres".to_owned(),
            password: Some("postgres".to_owned()),
            database: "postgres".to_owned(),
            common: Common::default(),
        }
    }
}

/// Checks a payload before it is sent: NOTIFY carries text shorter than 8000 bytes.
pub(crate) fn check_payload(payload: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(payload).map_err(|e| {
        format!(
            "a postgres payload must be valid UTF-8 (NOTIFY carries text); invalid byte at offset {}",
            e.valid_up_to()
        )
    })?;
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "a postgres payload must be shorter than {} bytes, got {} bytes",
            MAX_PAYLOAD_BYTES + 1,
            text.len()
        ));
    }
    if text.contains('\0') {
        return Err("a postgres payload cannot contain NUL bytes (PostgreSQL text)".to_owned());
    }
    Ok(text)
}

/// `name` as a quoted SQL identifier, so LISTEN keeps its case, spaces and quotes.
pub(crate) fn quote_identifier(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The `:postgres` protocol, driven by the shared client machinery.
pub(crate) struct Postgres {
    common: Common,
    listener: tokio_postgres::Config,
    publisher: tokio_postgres::Config,
}

impl Postgres {
    /// Checks the settings; does not connect.
    pub(crate) fn new(config: Config) -> Result<Self, Error> {
        if config.hostname.is_empty() {
            return Err(Error::new("the postgres hostname cannot be empty"));
        }
        if config.port == 0 {
            return Err(Error::new("the postgres port cannot be 0"));
        }
        Ok(Postgres {
            listener: connection_config(&config, "yggdrasil listen"),
            publisher: connection_config(&config, "yggdrasil publish"),
            common: config.common,
        })
    }
}

fn connection_config(config: &Config, application_name: &str) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.hostname)
        .port(config.port)
        .user(&config.username)
        .dbname(&config.database)
        // Lets an operator (and the leak tests) tell our backends apart in pg_stat_activity.
        .application_name(application_name);
    if let Some(password) = &config.password {
        pg.password(password);
    }
    pg
}

/// The message half of a listening session: notifications in the order the server sent them;
/// closed when the connection ends.
pub(crate) struct Notifications(mpsc::UnboundedReceiver<Incoming<()>>);

/// A publishing connection, shared by concurrent publishes.
#[derive(Clone)]
pub(crate) struct Publisher {
    client: Arc<tokio_postgres::Client>,
    notify: Statement,
}

impl Broker for Postgres {
    type Control = tokio_postgres::Client;
    type Messages = Notifications;
    type Publisher = Publisher;
    type Ack = ();

    fn name(&self) -> &'static str {
        "postgres"
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn check_topic(&self, topic: &Topic) -> Result<(), String> {
        match topic {
            // The constructor holds the name rules; a variant built by hand is checked the same.
            Topic::Postgres(name) => Topic::postgres(name.as_str()).map(drop).map_err(|e| e.0),
            _ => Err(not_postgres(topic)),
        }
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), String> {
        check_payload(payload).map(drop)
    }

    async fn connect_listener(&self) -> Result<(Self::Control, Self::Messages), String> {
        let (client, connection) = self
            .listener
            .connect(NoTls)
            .await
            .map_err(|e| describe(&e))?;
        // Unbounded on purpose: this task must keep polling the connection, which also carries
        // the replies to LISTEN the session may be awaiting; with a bounded queue a full queue
        // would stop those replies and the session would wait for itself. The consumer only
        // moves each notification on to the delivery channel.
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(forward_notifications(connection, sender));
        Ok((client, Notifications(receiver)))
    }

    async fn listen(&self, control: &mut Self::Control, topic: &Topic) -> Result<(), ListenError> {
        run_on_channel(control, "LISTEN", topic).await
    }

    async fn unlisten(
        &self,
        control: &mut Self::Control,
        topic: &Topic,
    ) -> Result<(), ListenError> {
        run_on_channel(control, "UNLISTEN", topic).await
    }

    async fn ping(&self, control: &mut Self::Control) -> Result<(), ListenError> {
        // An empty query: the server answers EmptyQueryResponse, the cheapest round trip.
        control
            .batch_execute("")
            .await
            .map_err(|e| ListenError::Connection(describe(&e)))
    }

    async fn next_message(&self, messages: &mut Self::Messages) -> Option<Incoming<()>> {
        messages.0.recv().await
    }

    async fn connect_publisher(&self) -> Result<Self::Publisher, String> {
        let (client, connection) = self
            .publisher
            .connect(NoTls)
            .await
            .map_err(|e| describe(&e))?;
        // Runs until the last clone of the Publisher drops its Client or the socket fails.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let notify = client
            .prepare_typed("SELECT pg_notify($1, $2)", &[Type::TEXT, Type::TEXT])
            .await
            .map_err(|e| describe(&e))?;
        Ok(Publisher {
            client: Arc::new(client),
            notify,
        })
    }

    async fn publish(
        &self,
        publisher: &Self::Publisher,
        topic: &Topic,
        payload: &[u8],
        _properties: &Properties,
    ) -> Result<(), PublishError> {
        let Topic::Postgres(channel) = topic else {
            return Err(PublishError::Refused(not_postgres(topic)));
        };
        let payload = check_payload(payload).map_err(PublishError::Refused)?;
        publisher
            .client
            .execute(&publisher.notify, &[channel, &payload])
            .await
            .map(drop)
            .map_err(|e| {
                if is_connection_lost(&publisher.client, &e) {
                    PublishError::Connection(describe(&e))
                } else {
                    PublishError::Refused(describe(&e))
                }
            })
    }
}

/// `LISTEN name` / `UNLISTEN name` with the channel quoted; returns once the server answered.
async fn run_on_channel(
    control: &mut tokio_postgres::Client,
    command: &str,
    topic: &Topic,
) -> Result<(), ListenError> {
    let Topic::Postgres(channel) = topic else {
        return Err(ListenError::Topic(not_postgres(topic)));
    };
    control
        .batch_execute(&format!("{command} {}", quote_identifier(channel)))
        .await
        .map_err(|e| {
            if is_connection_lost(control, &e) {
                ListenError::Connection(describe(&e))
            } else {
                ListenError::Topic(describe(&e))
            }
        })
}

/// Polls the listening connection, forwarding notifications until the connection ends or the
/// session drops its half (which closes the socket).
async fn forward_notifications(
    mut connection: Connection<Socket, NoTlsStream>,
    sender: mpsc::UnboundedSender<Incoming<()>>,
) {
    loop {
        let message = tokio::select! {
            message = poll_fn(|cx| connection.poll_message(cx)) => message,
            () = sender.closed() => return,
        };
        match message {
            Some(Ok(AsyncMessage::Notification(notification))) => {
                let channel = notification.channel().to_owned();
                let incoming = Incoming {
                    topic: Topic::Postgres(channel.clone()),
                    payload: notification.payload().as_bytes().to_vec(),
                    metadata: Metadata::Postgres { channel },
                    ack: None,
                };
                if sender.send(incoming).is_err() {
                    return;
                }
            }
            // Notices (warnings from the server) carry nothing a subscriber needs.
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

fn not_postgres(topic: &Topic) -> String {
    format!("{topic} is not a postgres channel")
}

/// True when the session cannot go on: closed socket, I/O failure, or a FATAL/PANIC error from
/// the server (e.g. "terminating connection due to administrator command" on shutdown). A plain
/// ERROR refuses one statement only.
fn is_connection_lost(client: &tokio_postgres::Client, e: &tokio_postgres::Error) -> bool {
    if client.is_closed() || e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        Some(db) => matches!(db.severity(), "FATAL" | "PANIC"),
        None => true,
    }
}

/// tokio-postgres' Display says only "db error"; the server's own message is what helps.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_doubling_quotes() {
        assert_eq!(quote_identifier("orders"), "\"orders\"");
        assert_eq!(quote_identifier("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(quote_identifier("a\"b\"\""), "\"a\"\"b\"\"\"\"\"");
        assert_eq!(quote_identifier("ümlaut;--"), "\"ümlaut;--\"");
    }

    #[test]
    fn channel_names_are_bounded() {
        let Ok(broker) = Postgres::new(Config::default()) else {
            panic!("the defaults are valid");
        };
        let check = |name: &str| broker.check_topic(&Topic::Postgres(name.to_owned()));
        assert!(check("x").is_ok());
        assert!(check(&"n".repeat(63)).is_ok());
        // 62 ASCII bytes + one two-byte character = 64 bytes.
        assert!(check(&format!("{}é", "n".repeat(62))).is_err());
        assert!(check(&"n".repeat(64)).is_err());
        assert!(check("").is_err());
        assert!(check("a\0b").is_err());
        assert!(broker.check_topic(&Topic::Redis(b"x".to_vec())).is_err());
    }

    #[test]
    fn settings_are_checked_without_connecting() {
        let empty_host = Config {
            hostname: String::new(),
            ..Config::default()
        };
        assert!(Postgres::new(empty_host).is_err());
        let port_zero = Config {
            port: 0,
            ..Config::default()
        };
        assert!(Postgres::new(port_zero).is_err());
    }

    #[test]
    fn payloads_are_checked_before_sending() {
        assert_eq!(check_payload(b"a b\nc"), Ok("a b\nc"));
        assert!(check_payload(&[b'x'; 7999]).is_ok());
        let Err(too_long) = check_payload(&[b'x'; 8000]) else {
            panic!("8000 bytes accepted");
        };
        assert!(too_long.contains("8000"), "{too_long}");
        let Err(invalid) = check_payload(&[b'a', 0xff, b'b']) else {
            panic!("invalid UTF-8 accepted");
        };
        assert!(
            invalid.contains("UTF-8") && invalid.contains("offset 1"),
            "{invalid}"
        );
        assert!(check_payload(b"a\0b").is_err());
    }

    #[test]
    fn defaults_are_the_original_packages() {
        let config = Config::default();
        assert_eq!(config.hostname, "localhost");
        assert_eq!(config.port, 5432);
        assert_eq!(config.username, "postgres");
        assert_eq!(config.password.as_deref(), Some("postgres"));
        assert_eq!(config.database, "postgres");
    }
}
