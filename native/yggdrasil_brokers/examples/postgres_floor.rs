//! The pure-Rust floor of the `brokers` bench for `:postgres`: the same loop as
//! `Yggdrasil.publish` → PostgreSQL → one subscriber, with the same `tokio-postgres` crate and
//! the same connections as the broker (one LISTEN connection polled by a task, one publishing
//! connection running a prepared `SELECT pg_notify($1, $2)`, shared by all publishers), each
//! publisher waiting for its reply, on a one-worker runtime, and no BEAM.
//!
//! ```text
//! cargo run --release --example postgres_floor -- --port 5433 --publishers 8 --messages 20000
//! postgres_floor via=postgres publishers=8 messages=20000 payload_bytes=16 seconds=… deliveries_per_s=… p50_us=… p99_us=…
//! ```
//! Needs a running PostgreSQL that takes user `postgres` password `postgres` on database
//! `postgres` (the bench starts one with test/brokers/ctl.sh). `--via client` runs the same
//! loop through this crate's `Client` (events through its crossbeam channel to a delivery
//! thread); `--via client-caller` runs every publisher on one thread, replies straight to it.
//!
//! `--tls-ca PATH` runs it over TLS (`floor::Tls`), negotiated inside the protocol
//! (`SSLRequest`, `sslmode=require`) on a TCP connection of ours, as `src/postgres` does.
mod floor;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use floor::{collect_latencies, connect_tcp, finish, stamped, Args, Report};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, TlsConnect};
use tokio_postgres::types::Type;
use tokio_postgres::AsyncMessage;
use yggdrasil_brokers::Name;

/// A session's socket, and its connector (`--tls-ca`; never called without it: `sslmode=disable`).
type Socket = tokio::net::TcpStream;
struct PgTls(Option<floor::Tls>);
struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type Error = String;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, String>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let tls = self.0.ok_or("TLS is not configured")?;
            tls.handshake(stream).await.map(PgTlsStream)
        })
    }
}

impl tokio_postgres::tls::TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context,
        buf: &mut ReadBuf,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A session over our own TCP connection (with TLS inside the protocol when `--tls-ca`).
async fn session(
    args: &Args,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<Socket, PgTlsStream>,
    ),
    String,
> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&args.host)
        .user("postgres")
        .password("postgres")
        .dbname("postgres")
        .ssl_mode(match args.tls {
            Some(_) => SslMode::Require,
            None => SslMode::Disable,
        });
    let socket = connect_tcp(args).await?;
    let tls = PgTls(args.tls.clone());
    config
        .connect_raw(socket, tls)
        .await
        .map_err(|e| e.to_string())
}

async fn run(args: &Args) -> Result<Report, String> {
    let err = |e: tokio_postgres::Error| e.to_string();
    let channel = format!("ygg-floor-{}", std::process::id());

    let (listener, mut connection) = session(args).await?;
    let (tx, mut notifications) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                if tx.send(n.payload().as_bytes().to_vec()).is_err() {
                    break;
                }
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .map_err(err)?;

    let (publisher, connection) = session(args).await?;
    tokio::spawn(connection);
    let notify = publisher
        .prepare_typed("SELECT pg_notify($1, $2)", &[Type::TEXT, Type::TEXT])
        .await
        .map_err(err)?;
    let publisher = Arc::new(publisher);

    let base = Instant::now();
    let total = args.messages;
    let payloads = futures_util::stream::poll_fn(move |cx| notifications.poll_recv(cx));
    let receiver = tokio::spawn(collect_latencies(base, total, payloads));

    let start = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let (publisher, notify, channel) = (publisher.clone(), notify.clone(), channel.clone());
        let (count, bytes) = (args.share(p), args.payload_bytes);
        publishers.push(tokio::spawn(async move {
            for _ in 0..count {
                let payload = String::from_utf8(stamped(base, bytes)).map_err(|e| e.to_string())?;
                publisher
                    .execute(&notify, &[&channel, &payload])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    let report = finish(start, publishers, receiver).await;
    drop(listener);
    report
}

fn main() -> ExitCode {
    floor::main(
        "postgres_floor",
        "postgres",
        5432,
        |rt, args| rt.block_on(run(args)),
        |args| floor::ClientSetup {
            broker: "postgres",
            settings: floor::host_and_port(args),
            name: Name::from(format!("ygg-floor-client-{}", std::process::id()).as_str()),
        },
    )
}
