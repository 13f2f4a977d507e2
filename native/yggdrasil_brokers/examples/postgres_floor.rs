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
//! thread); `--via client-sink` lets the event sink hand each reply to its publisher itself.
mod floor;

use std::future::poll_fn;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use floor::{collect_latencies, finish, stamped, Args, Report};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, NoTls};
use yggdrasil_brokers::Name;

fn connection_config(args: &Args) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&args.host)
        .port(args.port)
        .user("postgres")
        .password("postgres")
        .dbname("postgres");
    config
}

async fn run(args: &Args) -> Result<Report, String> {
    let err = |e: tokio_postgres::Error| e.to_string();
    let config = connection_config(args);
    let channel = format!("ygg-floor-{}", std::process::id());

    let (listener, mut connection) = config.connect(NoTls).await.map_err(err)?;
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

    let (publisher, connection) = config.connect(NoTls).await.map_err(err)?;
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
