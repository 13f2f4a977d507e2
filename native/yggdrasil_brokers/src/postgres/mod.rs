//! `:postgres`: PostgreSQL LISTEN/NOTIFY (section 10 of the API spec).
//!
//! A client has one listening session and one publishing connection. The listening session is a
//! tokio-postgres `Client` (the control half: LISTEN/UNLISTEN) plus a task that polls its
//! `Connection`, because tokio-postgres hands out notifications only from there; that task
//! forwards them through an mpsc (the message half) and ends with the connection. Publishing runs
//! `SELECT pg_notify($1, $2)`, prepared once per connection: the channel name and the payload
//! travel as parameters, never spliced into SQL, and concurrent publishes pipeline on one socket.

use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_postgres::types::Type;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Connection, NoTls, Statement};

mod limits;
mod tls;

use crate::bounded::Bounded;
use crate::broker::{Broker, Incoming, ListenError, PublishError};
use crate::settings::{Key, Kind, Preset, Schema, Settings, Value, PORT};
use limits::PgMessages;
use tls::{PostgresTls, PostgresTlsStream, SslMode};
use crate::url::BrokerUrl;
use crate::{Common, Data, Error, Name};

/// `pg_notify` refuses a payload of 8000 bytes or more (NOTIFY_PAYLOAD_MAX_LENGTH with the
/// default 8 kB block size).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 7999;

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes: refuse instead.
const MAX_NAME: usize = 63;

const DEFAULT_PORT: i64 = 5432;

/// Notifications read from the socket and not yet taken by the listener.
const NOTIFICATIONS_QUEUED: usize = 16_384;


/// libpq's `sslmode`s, each with libpq's meaning.
const SSLMODES: &[&str] = &["disable", "prefer", "require", "verify-ca", "verify-full"];

/// Section 10 `:postgres` keys, with the defaults of `yggdrasil_postgres`; `sslmode` (set by
/// a URL's `?sslmode=`, or directly) overrides `tls`/`tls_verify` when set.
const KEYS: &[Key] = &[
    Key::new("hostname", Kind::Host, Preset::Text("localhost")),
    Key::new("port", PORT, Preset::Int(DEFAULT_PORT)),
    Key::new("username", Kind::Text, Preset::Text("postgres")),
    Key::new("password", Kind::Secret, Preset::Text("postgres")),
    Key::new("database", Kind::Text, Preset::Text("postgres")),
    Key::new("sslmode", Kind::Choice(SSLMODES), Preset::Nil),
];

/// `postgres://` or `postgresql://[user[:password]@]host[:port][/database][?params]`, as libpq
/// reads it; params `sslmode` and `sslrootcert` (= `tls_cacertfile`), nothing else.
fn from_url(url: BrokerUrl) -> Result<Vec<(&'static str, Value)>, Error> {
    let mut values = vec![
        ("hostname", Value::Text(url.host)),
        ("port", Value::Int(url.port.map_or(DEFAULT_PORT, i64::from))),
        ("username", Value::Text(url.username.unwrap_or_else(|| "postgres".to_owned()))),
        ("password", url.password.map_or(Value::Nil, Value::Secret)),
        ("database", Value::Text(url.path.unwrap_or_else(|| "postgres".to_owned()))),
    ];
    for (param, value) in url.query {
        match param.as_str() {
            "sslmode" if SSLMODES.contains(&value.as_str()) => {
                values.push(("sslmode", Value::Text(value)))
            }
            "sslmode" => {
                return Err(Error::new(format!(
                    "url: sslmode must be one of {}, got {value:?}",
                    SSLMODES.join(", ")
                )))
            }
            "sslrootcert" => values.push(("tls_cacertfile", Value::Text(value))),
            other => {
                return Err(Error::new(format!(
                    "url: unknown parameter {other:?} (postgres URLs take sslmode and sslrootcert)"
                )))
            }
        }
    }
    Ok(values)
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

/// A `LISTEN` channel (quoted as an identifier when used).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Channel(String);

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres channel {:?}", self.0)
    }
}

/// The `:postgres` protocol, driven by the shared client machinery.
pub(crate) struct Postgres {
    common: Common,
    host: String,
    port: u16,
    /// What `sslmode` asks for, with the TLS configuration it needs.
    tls: PostgresTls,
    /// `sslmode=disable`: the socket carries the messages themselves.
    plaintext: bool,
    listener: tokio_postgres::Config,
    publisher: tokio_postgres::Config,
}

impl Postgres {
    /// A session: the client, and the connection that must be polled for it
    /// to work. A host starting with `/` is a Unix socket directory, as in
    /// libpq (no TLS there: the socket never leaves the machine).
    async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, Driver), String> {
        if self.host.starts_with('/') {
            let path = format!("{}/.s.PGSQL.{}", self.host, self.port);
            let stream = UnixStream::connect(&path)
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            let stream = Bounded::new(stream, PgMessages::default());
            let mut config = config.clone();
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, connection) = config
                .connect_raw(stream, NoTls)
                .await
                .map_err(|e| describe(&e))?;
            return Ok((client, Driver::Unix(connection)));
        }
        // TLS, when asked for, starts inside the protocol (SSLRequest): the
        // connector does the handshake once the server agreed, and scans the
        // session's bytes; without TLS (or declined, under `prefer`) they are
        // scanned on the socket.
        let scanner = if self.plaintext {
            PgMessages::default()
        } else {
            PgMessages::after_ssl_request()
        };
        let stream = Bounded::new(crate::tls::connect_tcp(&self.host, self.port).await?, scanner);
        let (client, connection) = config
            .connect_raw(stream, self.tls.clone())
            .await
            .map_err(|e| describe(&e))?;
        Ok((client, Driver::Tcp(connection)))
    }
}

/// A socket whose message lengths are bounded before the crate reads them.
type Socket<S> = Bounded<S, PgMessages>;

/// The connection half of a session, whatever its transport.
enum Driver {
    Tcp(Connection<Socket<TcpStream>, PostgresTlsStream<Socket<TcpStream>>>),
    Unix(Connection<Socket<UnixStream>, NoTlsStream>),
}

impl Driver {
    /// Polls the connection until it ends, forwarding notifications to a
    /// listening session (`Some`) or dropping them (a publisher's).
    async fn run(self, forward: Option<Forward>) {
        match self {
            Driver::Tcp(connection) => forward_notifications(connection, forward).await,
            Driver::Unix(connection) => forward_notifications(connection, forward).await,
        }
    }
}

/// Where a listening session's connection task puts notifications.
struct Forward {
    sender: mpsc::Sender<Incoming<Channel, ()>>,
    /// `Notifications::overran`.
    overran: Arc<AtomicBool>,
}

fn connection_config(
    settings: &Settings,
    application_name: &str,
    ssl_mode: SslMode,
) -> Result<tokio_postgres::Config, Error> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(settings.text("hostname")?)
        .port(settings.port("port")?)
        .user(settings.text("username")?)
        .dbname(settings.text("database")?)
        .ssl_mode(ssl_mode.tokio_postgres())
        // Lets an operator (and the leak tests) tell our backends apart in pg_stat_activity.
        .application_name(application_name);
    if let Some(password) = settings.secret("password")? {
        pg.password(password.expose());
    }
    Ok(pg)
}

/// The TLS mode: `sslmode` when set, else `tls` and `tls_verify`.
fn ssl_mode(settings: &Settings) -> Result<SslMode, Error> {
    match settings.opt_text("sslmode")? {
        Some(mode) => SslMode::parse(&mode),
        None if !settings.bool("tls")? => Ok(SslMode::Disable),
        None if settings.text("tls_verify")? == "verify_none" => Ok(SslMode::Require),
        None => Ok(SslMode::VerifyFull),
    }
}

/// The message half of a listening session: notifications in the order the server sent them;
/// closed when the connection ends.
pub(crate) struct Notifications {
    queue: mpsc::Receiver<Incoming<Channel, ()>>,
    /// Set by the connection task when it ended the session on a full `queue`.
    overran: Arc<AtomicBool>,
}

/// A publishing connection, shared by concurrent publishes.
#[derive(Clone)]
pub(crate) struct Publisher {
    client: Arc<tokio_postgres::Client>,
    notify: Statement,
}

impl Broker for Postgres {
    const NAME: &'static str = "postgres";
    const SCHEMA: Schema = Schema {
        keys: KEYS,
        url_schemes: &["postgres", "postgresql"],
        from_url,
    };
    type Topic = Channel;
    type Control = tokio_postgres::Client;
    type Messages = Notifications;
    type Publisher = Publisher;
    type Ack = ();
    type Properties = ();

    fn new(settings: &Settings, common: Common) -> Result<Self, Error> {
        let host = settings.text("hostname")?;
        let ssl_mode = ssl_mode(settings)?;
        let tls = match ssl_mode.verify() {
            Some(verify) => Some(settings.tls_config(&host, verify)?),
            None => None,
        };
        Ok(Postgres {
            listener: connection_config(settings, "yggdrasil listen", ssl_mode)?,
            publisher: connection_config(settings, "yggdrasil publish", ssl_mode)?,
            port: settings.port("port")?,
            host,
            plaintext: tls.is_none(),
            tls: PostgresTls::new(tls),
            common,
        })
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn tls_unverified(&self) -> bool {
        self.tls.unverified()
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn topic(&self, name: &Name) -> Result<Channel, String> {
        let channel = name
            .text()
            .ok_or("a :postgres channel name must be a UTF-8 binary (a LISTEN channel)")?;
        if channel.is_empty() {
            return Err("a postgres channel name must not be empty".to_owned());
        }
        if channel.len() > MAX_NAME {
            return Err(format!(
                "a postgres channel name must be at most {MAX_NAME} bytes, got {}",
                channel.len()
            ));
        }
        if channel.contains('\0') {
            return Err("a postgres channel name must not contain NUL".to_owned());
        }
        Ok(Channel(channel.to_owned()))
    }

    /// NOTIFY has no properties: `publish/3` options are ignored.
    fn properties(&self, _options: &[(String, Data)]) -> Result<(), String> {
        Ok(())
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), String> {
        check_payload(payload).map(drop)
    }

    async fn connect_listener(&self) -> Result<(Self::Control, Self::Messages), String> {
        let (client, connection) = self.connect(&self.listener).await?;
        // The connection task never waits on this queue: it also carries the replies to LISTEN
        // the session may be awaiting, so waiting here would make the session wait for itself.
        // The listener takes each notification at once (its outbox sheds, it never blocks), so
        // a full queue means the runtime thread itself fell behind the server: the session is
        // cut (subscribers get `Disconnected`, then `Connected` on the new session) rather than
        // leaving the backlog in the server's NOTIFY queue, which every session shares.
        let (sender, queue) = mpsc::channel(NOTIFICATIONS_QUEUED);
        let overran = Arc::new(AtomicBool::new(false));
        tokio::spawn(connection.run(Some(Forward {
            sender,
            overran: overran.clone(),
        })));
        Ok((client, Notifications { queue, overran }))
    }

    async fn listen(&self, control: &mut Self::Control, topic: &Channel) -> Result<(), ListenError> {
        run_on_channel(control, "LISTEN", topic).await
    }

    async fn unlisten(
        &self,
        control: &mut Self::Control,
        topic: &Channel,
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

    async fn next_message(&self, messages: &mut Self::Messages) -> Option<Incoming<Channel, ()>> {
        messages.queue.recv().await
    }

    fn overrun(&self, messages: &Self::Messages) -> Option<String> {
        messages.overran.load(Ordering::SeqCst).then(|| {
            format!(
                "{NOTIFICATIONS_QUEUED} notifications were read and not yet taken: this side fell \
                 behind the server, so the session is cut (what it had not read is dropped) and \
                 opened again"
            )
        })
    }

    async fn connect_publisher(&self) -> Result<Self::Publisher, String> {
        let (client, connection) = self.connect(&self.publisher).await?;
        // Runs until the last clone of the Publisher drops its Client or the socket fails.
        tokio::spawn(connection.run(None));
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
        topic: &Channel,
        payload: &[u8],
        _properties: &(),
    ) -> Result<(), PublishError> {
        let channel = &topic.0;
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
    topic: &Channel,
) -> Result<(), ListenError> {
    control
        .batch_execute(&format!("{command} {}", quote_identifier(&topic.0)))
        .await
        .map_err(|e| {
            if is_connection_lost(control, &e) {
                ListenError::Connection(describe(&e))
            } else {
                ListenError::Topic(describe(&e))
            }
        })
}

/// Polls a connection until it ends, or until the listening session drops its half (which closes
/// the socket), forwarding notifications to it. A full queue ends the session (`overran`).
async fn forward_notifications<S, T>(mut connection: Connection<S, T>, forward: Option<Forward>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let session_gone = async {
            match &forward {
                Some(forward) => forward.sender.closed().await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            message = poll_fn(|cx| connection.poll_message(cx)) => message,
            () = session_gone => return,
        };
        match message {
            Some(Ok(AsyncMessage::Notification(notification))) => {
                let Some(forward) = &forward else { continue };
                let channel = notification.channel().to_owned();
                let incoming = Incoming {
                    metadata: Data::fields([("channel", Data::text(channel.clone()))]),
                    topic: Channel(channel),
                    payload: notification.payload().as_bytes().to_vec(),
                    ack: None,
                };
                match forward.sender.try_send(incoming) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        // Before the sender drops: the session reads it once the queue ends.
                        forward.overran.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(TrySendError::Closed(_)) => return,
                }
            }
            // Notices (warnings from the server) carry nothing a subscriber needs.
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
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

    fn broker(given: &[crate::Given]) -> Result<Postgres, Error> {
        let settings = crate::settings::resolve(&Postgres::SCHEMA, given)?;
        Postgres::new(&settings, Common::from_settings(&settings)?)
    }

    #[test]
    fn channel_names_are_bounded() {
        let broker = broker(&[]).unwrap();
        let check = |name: &str| broker.topic(&Name::from(name));
        assert!(check("x").is_ok());
        assert!(check(&"n".repeat(63)).is_ok());
        // 62 ASCII bytes + one two-byte character = 64 bytes.
        assert!(check(&format!("{}é", "n".repeat(62))).is_err());
        assert!(check(&"n".repeat(64)).is_err());
        assert!(check("").is_err());
        assert!(check("a\0b").is_err());
        assert!(broker.topic(&Name::pair("a", "b")).is_err());
        assert!(broker.topic(&Name::Bytes(vec![0xff])).is_err());
    }

    #[test]
    fn settings_are_checked_without_connecting() {
        use crate::{Given, Raw};
        assert!(broker(&[Given::new("hostname", Raw::Text(String::new()))]).is_err());
        assert!(broker(&[Given::new("port", Raw::Int(0))]).is_err());
        assert!(broker(&[Given::new("sslmode", Raw::Text("sometimes".into()))]).is_err());
    }

    #[test]
    fn urls_as_libpq_reads_them() {
        use crate::{Given, Raw};
        let url = |text: &str| {
            let given = [Given::new("url", Raw::Text(text.into()))];
            crate::settings::resolve(&Postgres::SCHEMA, &given)
        };
        let s = url("postgresql://u%40x:p%2Fw@db.example:6543/app?sslmode=verify-ca&sslrootcert=/ca.pem").unwrap();
        assert_eq!(s.text("hostname").unwrap(), "db.example");
        assert_eq!(s.port("port").unwrap(), 6543);
        assert_eq!(s.text("username").unwrap(), "u@x");
        assert_eq!(s.secret("password").unwrap().unwrap().expose(), "p/w");
        assert_eq!(s.text("database").unwrap(), "app");
        assert_eq!(s.text("sslmode").unwrap(), "verify-ca");
        assert_eq!(s.text("tls_cacertfile").unwrap(), "/ca.pem");
        let plain = url("postgres://h").unwrap();
        assert_eq!(plain.port("port").unwrap(), 5432);
        assert_eq!(plain.text("database").unwrap(), "postgres");
        for bad in ["postgres://h/?sslmode=sometimes", "postgres://h/?connect_timeout=3", "mysql://h"] {
            let error = url(bad).unwrap_err();
            assert!(error.message().contains("url: "), "{error}");
        }
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

    /// `sslmode=prefer` against a server that declines TLS goes on in plaintext, on the socket
    /// whose scanner was waiting for the handshake: the messages there are bounded too.
    #[tokio::test]
    async fn a_session_whose_tls_is_declined_is_still_bounded() {
        use crate::{Given, Raw};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (port, server) = crate::tls::tests::one_connection(|mut tcp| async move {
            let mut ssl_request = [0u8; 8];
            tcp.read_exact(&mut ssl_request).await.unwrap();
            tcp.write_all(b"N").await.unwrap();
            // An authentication request that declares 2 GiB, and a first part of it; the socket
            // stays open, so only our cap ends the session.
            tcp.write_all(b"R\x7f\xff\xff\xff").await.unwrap();
            tcp.write_all(&[0u8; 4096]).await.unwrap();
            let _ = tcp.read_to_end(&mut Vec::new()).await;
        })
        .await;
        let broker = broker(&[
            Given::new("hostname", Raw::Text("127.0.0.1".into())),
            Given::new("port", Raw::Int(port.into())),
            Given::new("sslmode", Raw::Text("prefer".into())),
        ])
        .unwrap();
        let connecting = broker.connect(&broker.listener);
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), connecting)
            .await
            .expect("the cap ends the session");
        let Err(error) = result else {
            panic!("connected to a server that sent no session");
        };
        assert!(error.contains("above the 1048576 we allow"), "{error}");
        server.abort();
    }

    #[test]
    fn defaults_are_the_original_packages() {
        let settings = crate::settings::resolve(&Postgres::SCHEMA, &[]).unwrap();
        assert_eq!(settings.text("hostname").unwrap(), "localhost");
        assert_eq!(settings.port("port").unwrap(), 5432);
        assert_eq!(settings.text("username").unwrap(), "postgres");
        assert_eq!(settings.secret("password").unwrap().unwrap().expose(), "postgres");
        assert_eq!(settings.text("database").unwrap(), "postgres");
    }
}
