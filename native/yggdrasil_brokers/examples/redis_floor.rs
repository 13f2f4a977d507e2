//! The pure-Rust floor of the `brokers` bench: the same publish/subscribe
//! loop as `Yggdrasil.publish` → Redis → one subscriber, with the same
//! `redis` crate, the same connections (one PSUBSCRIBE, one multiplexed
//! publisher shared by all publishers), a one-worker tokio runtime like
//! ours, each publisher waiting for its reply before the next message, and
//! no BEAM.
//!
//! ```text
//! cargo run --release --example redis_floor -- --port 6390 --publishers 8 --messages 20000
//! redis_floor via=redis publishers=8 messages=20000 payload_bytes=16 seconds=1.108 deliveries_per_s=18056 p50_us=71 p99_us=5903
//! ```
//! Needs a running redis-server (the bench starts one with test/brokers/ctl.sh).
//!
//! `--via client` runs the same loop through this crate's `Client` instead
//! (publisher threads, events through its crossbeam channel to a delivery
//! thread): the cost of our runtime without the BEAM, between the floor and
//! the full adapter. `--via client-caller` runs every publisher on one
//! thread, each publishing again when its reply comes straight from the
//! runtime thread (as BEAM processes on one scheduler get `enif_send`s).
//!
//! `--tls-ca PATH` runs it over TLS (`floor::Tls`): the crate is handed our
//! stream, as `src/redis/connect.rs` hands it ours, plaintext or not.
mod floor;

use std::process::ExitCode;
use std::time::Instant;

use floor::{collect_latencies, connect, finish, stamped, Args, Report};
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use yggdrasil_brokers::Name;

async fn run(args: &Args) -> Result<Report, String> {
    let err = |e: redis::RedisError| e.to_string();
    let info = RedisConnectionInfo::default();
    let channel = format!("ygg-floor-{}", std::process::id());
    let pubsub = PubSub::new(&info, connect(args).await?).await;
    let (mut sink, stream) = pubsub.map_err(err)?.split();
    sink.psubscribe(&channel).await.map_err(err)?;
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let (publisher, driver) =
        MultiplexedConnection::new_with_config(&info, connect(args).await?, config)
            .await
            .map_err(err)?;
    let driver = tokio::spawn(driver);

    let base = Instant::now();
    let payloads = stream.map(|msg| msg.get_payload_bytes().to_vec());
    let receiver = tokio::spawn(collect_latencies(base, args.messages, payloads));

    let start = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let (mut connection, channel) = (publisher.clone(), channel.clone());
        let (count, bytes) = (args.share(p), args.payload_bytes);
        publishers.push(tokio::spawn(async move {
            for _ in 0..count {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(stamped(base, bytes))
                    .query_async::<i64>(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    let report = finish(start, publishers, receiver).await;
    drop(sink);
    driver.abort();
    report
}

fn main() -> ExitCode {
    floor::main(
        "redis_floor",
        "redis",
        6379,
        |rt, args| rt.block_on(run(args)),
        |args| floor::ClientSetup {
            broker: "redis",
            settings: floor::host_and_port(args),
            name: Name::from(format!("ygg-floor-client-{}", std::process::id()).as_str()),
        },
    )
}
