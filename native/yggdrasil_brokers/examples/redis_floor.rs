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
//! the full adapter. `--via client-direct` lets the event sink hand each
//! reply to its publisher itself, skipping the delivery thread's wake-up.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncConnectionConfig;

#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// The redis crate alone: the floor.
    Redis,
    /// `Client`, events through a crossbeam channel to a delivery thread.
    Client,
    /// `Client`, replies handed to the waiting publisher by the sink itself.
    ClientDirect,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Redis => "redis",
            Via::Client => "client",
            Via::ClientDirect => "client-direct",
        }
    }
}

struct Args {
    host: String,
    port: u16,
    publishers: usize,
    messages: usize,
    payload_bytes: usize,
    via: Via,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".to_string(),
        port: 6379,
        publishers: 1,
        messages: 10_000,
        payload_bytes: 16,
        via: Via::Redis,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--host" => args.host = value.clone(),
            "--port" => args.port = value.parse().map_err(|e| format!("--port {value}: {e}"))?,
            "--publishers" => args.publishers = number()?.max(1),
            "--messages" => args.messages = number()?.max(1),
            "--payload-bytes" => args.payload_bytes = number()?,
            "--via" => match value.as_str() {
                "redis" => args.via = Via::Redis,
                "client" => args.via = Via::Client,
                "client-direct" => args.via = Via::ClientDirect,
                _ => return Err(format!("--via {value}: redis, client or client-direct")),
            },
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    // Every payload carries its send time.
    args.payload_bytes = args.payload_bytes.max(8);
    Ok(args)
}

struct Report {
    seconds: f64,
    latencies_us: Vec<u64>,
}

async fn run(args: &Args) -> Result<Report, String> {
    let err = |e: redis::RedisError| e.to_string();
    let client =
        redis::Client::open(format!("redis://{}:{}/", args.host, args.port)).map_err(err)?;
    let channel = format!("ygg-floor-{}", std::process::id());
    let (mut sink, mut stream) = client.get_async_pubsub().await.map_err(err)?.split();
    sink.psubscribe(&channel).await.map_err(err)?;
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let publisher = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(err)?;

    let base = Instant::now();
    let total = args.messages;
    let receiver = tokio::spawn(async move {
        let mut latencies_us = Vec::with_capacity(total);
        while latencies_us.len() < total {
            let msg = match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                Ok(Some(msg)) => msg,
                _ => {
                    return Err(format!(
                        "only {} of {total} messages arrived",
                        latencies_us.len()
                    ))
                }
            };
            let payload = msg.get_payload_bytes();
            let mut sent = [0u8; 8];
            sent.copy_from_slice(payload.get(..8).ok_or("short payload")?);
            let now = base.elapsed().as_nanos() as u64;
            latencies_us.push(now.saturating_sub(u64::from_le_bytes(sent)) / 1000);
        }
        Ok((latencies_us, Instant::now()))
    });

    let start = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let count = total / args.publishers + usize::from(p < total % args.publishers);
        let (mut connection, channel) = (publisher.clone(), channel.clone());
        let padding = args.payload_bytes - 8;
        publishers.push(tokio::spawn(async move {
            for _ in 0..count {
                let mut payload = (base.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
                payload.resize(8 + padding, b'x');
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(payload)
                    .query_async::<i64>(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    for publisher in publishers {
        publisher.await.map_err(|e| e.to_string())??;
    }
    let (mut latencies_us, end) = receiver.await.map_err(|e| e.to_string())??;
    latencies_us.sort_unstable();
    Ok(Report {
        seconds: (end - start).as_secs_f64(),
        latencies_us,
    })
}

/// The same loop through `yggdrasil_brokers::Client`.
/// Hands replies straight to the waiting publisher thread, the rest to the
/// delivery thread: what a NIF sink doing `enif_send` itself would do.
struct DirectSink {
    others: crossbeam_channel::Sender<yggdrasil_brokers::Delivery<u64>>,
    replies: Vec<crossbeam_channel::Sender<Result<(), String>>>,
}

impl yggdrasil_brokers::EventSink<u64> for DirectSink {
    fn deliver(&self, delivery: yggdrasil_brokers::Delivery<u64>) {
        if let yggdrasil_brokers::Event::Published { result, .. } = &delivery.event {
            if let Some(reply) = self.replies.get(delivery.to as usize - 1) {
                let _ = reply.send(result.clone());
                return;
            }
        }
        let _ = self.others.send(delivery);
    }
}

/// The same loop through `yggdrasil_brokers::Client`.
fn run_client(args: &Args) -> Result<Report, String> {
    use yggdrasil_brokers::{redis::Config, Client, Common, Config as Broker, Event, Topic};
    const SUBSCRIBER: u64 = 0;
    // Replies go to the publisher (recipient p + 1) that is waiting for them.
    let replies: Vec<_> = (0..args.publishers)
        .map(|_| crossbeam_channel::unbounded())
        .collect();
    let (events_tx, events) = crossbeam_channel::unbounded();
    let config = Broker::Redis(Config {
        hostname: args.host.clone(),
        port: args.port,
        common: Common::default(),
        ..Config::default()
    });
    let client = match args.via {
        Via::ClientDirect => {
            let sink = DirectSink {
                others: events_tx,
                replies: replies.iter().map(|(tx, _)| tx.clone()).collect(),
            };
            Client::open(config, SUBSCRIBER, sink)
        }
        _ => Client::open(config, SUBSCRIBER, events_tx),
    }
    .map_err(|e| e.to_string())?;
    let topic = Topic::redis(format!("ygg-floor-client-{}", std::process::id()))
        .map_err(|e| e.to_string())?;
    client
        .subscribe(topic.clone(), SUBSCRIBER)
        .map_err(|e| e.to_string())?;
    match events.recv_timeout(Duration::from_secs(30)) {
        Ok(d) if matches!(d.event, Event::Connected { .. }) => {}
        other => return Err(format!("no Connected: {other:?}")),
    }

    let base = Instant::now();
    let total = args.messages;
    let start = Instant::now();
    std::thread::scope(|s| {
        for (p, (_, reply)) in replies.iter().enumerate() {
            let count = total / args.publishers + usize::from(p < total % args.publishers);
            let (client, topic, padding) = (&client, topic.clone(), args.payload_bytes - 8);
            s.spawn(move || {
                for tag in 0..count as u64 {
                    let mut payload = (base.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
                    payload.resize(8 + padding, b'x');
                    let sent = client.publish(
                        topic.clone(),
                        payload,
                        Default::default(),
                        p as u64 + 1,
                        tag,
                    );
                    // Bounded wait: after an error nobody routes replies any more.
                    let answer = reply.recv_timeout(Duration::from_secs(30));
                    if sent.is_err() || !matches!(answer, Ok(Ok(()))) {
                        return;
                    }
                }
            });
        }
        let mut latencies_us = Vec::with_capacity(total);
        while latencies_us.len() < total {
            let delivery = events
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| format!("only {} of {total} messages arrived", latencies_us.len()))?;
            match delivery.event {
                Event::Message { payload, .. } => {
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(payload.get(..8).ok_or("short payload")?);
                    let now = base.elapsed().as_nanos() as u64;
                    latencies_us.push(now.saturating_sub(u64::from_le_bytes(sent)) / 1000);
                }
                Event::Published { result, .. } => {
                    let to = delivery.to as usize - 1;
                    let _ = replies[to].0.send(result);
                }
                _ => {}
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        latencies_us.sort_unstable();
        Ok(Report {
            seconds,
            latencies_us,
        })
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(rank).copied().unwrap_or(0)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("redis_floor: {e}\nusage: redis_floor --port P [--host H] [--publishers N] [--messages M] [--payload-bytes B]");
            return ExitCode::from(2);
        }
    };
    // One worker, as the broker runtime has.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(_) if args.via != Via::Redis => run_client(&args),
        Ok(rt) => rt.block_on(run(&args)),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(report) => {
            println!(
                "redis_floor via={} publishers={} messages={} payload_bytes={} seconds={:.3} deliveries_per_s={:.0} p50_us={} p99_us={}",
                args.via.name(),
                args.publishers,
                args.messages,
                args.payload_bytes,
                report.seconds,
                args.messages as f64 / report.seconds,
                percentile(&report.latencies_us, 0.50),
                percentile(&report.latencies_us, 0.99),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redis_floor: {e}");
            ExitCode::FAILURE
        }
    }
}
