//! The pure-Rust floor of the `brokers` bench for `:rabbitmq`: the same
//! publish/subscribe loop as `Yggdrasil.publish` → RabbitMQ → one
//! subscriber, with the same `lapin` crate and the same AMQP shape as our
//! broker module (one connection; an exclusive auto-delete queue bound to
//! `amq.topic`, consumed with the same prefetch and acked in batches after
//! delivery; one confirm-mode channel shared by all publishers, each
//! waiting for its confirm before the next message), a one-worker tokio
//! runtime like ours, and no BEAM.
//!
//! ```text
//! cargo run --release --example rabbitmq_floor -- --port 5690 --publishers 8 --messages 20000
//! rabbitmq_floor via=lapin publishers=8 messages=20000 payload_bytes=16 seconds=... deliveries_per_s=... p50_us=... p99_us=...
//! ```
//! Needs a running RabbitMQ (the bench starts one with test/brokers/ctl.sh).
//!
//! `--via client` runs the same loop through this crate's `Client` instead
//! (publisher threads, events through its crossbeam channel): the cost of
//! our runtime without the BEAM, between the floor and the full adapter.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

/// The broker module's prefetch per subscribed topic.
const PREFETCH: u16 = 1000;

struct Args {
    host: String,
    port: u16,
    publishers: usize,
    messages: usize,
    payload_bytes: usize,
    via_client: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".to_string(),
        port: 5672,
        publishers: 1,
        messages: 10_000,
        payload_bytes: 16,
        via_client: false,
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
                "lapin" => args.via_client = false,
                "client" => args.via_client = true,
                _ => return Err(format!("--via {value}: lapin or client")),
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

/// Nanoseconds since `base`, in the first 8 bytes, padded to `bytes`.
fn stamped_payload(base: Instant, bytes: usize) -> Vec<u8> {
    let mut payload = (base.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
    payload.resize(bytes, b'x');
    payload
}

/// Microseconds since the payload's stamp.
fn latency_us(base: Instant, payload: &[u8]) -> Result<u64, String> {
    let mut sent = [0u8; 8];
    sent.copy_from_slice(payload.get(..8).ok_or("short payload")?);
    let now = base.elapsed().as_nanos() as u64;
    Ok(now.saturating_sub(u64::from_le_bytes(sent)) / 1000)
}

async fn run(args: &Args) -> Result<Report, String> {
    let err = |e: lapin::Error| e.to_string();
    let url = format!(
        "amqp://guest:guest@{}:{}/%2f?heartbeat=10",
        args.host, args.port
    );
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(err)?;
    let key = format!("ygg-floor-{}", std::process::id());

    let consuming = connection.create_channel().await.map_err(err)?;
    consuming
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(err)?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = key.as_str();
    consuming
        .queue_declare(queue.into(), exclusive, FieldTable::default())
        .await
        .map_err(err)?;
    consuming
        .queue_bind(
            queue.into(),
            "amq.topic".into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    let mut consumer = consuming
        .basic_consume(
            queue.into(),
            queue.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;

    let publishing = connection.create_channel().await.map_err(err)?;
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err)?;

    let base = Instant::now();
    let total = args.messages;
    // Acks as the broker module sends them: off the receiving loop, all
    // those queued at once as one basic.ack(multiple).
    let (acks, mut queued) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let acking = consuming.clone();
    tokio::spawn(async move {
        while let Some(mut tag) = queued.recv().await {
            while let Ok(later) = queued.try_recv() {
                tag = later;
            }
            let multiple = BasicAckOptions { multiple: true };
            if acking.basic_ack(tag, multiple).await.is_err() {
                return;
            }
        }
    });
    let receiver = tokio::spawn(async move {
        let mut latencies_us = Vec::with_capacity(total);
        while latencies_us.len() < total {
            let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
            let delivery = match next {
                Ok(Some(Ok(delivery))) => delivery,
                _ => {
                    let got = latencies_us.len();
                    return Err(format!("only {got} of {total} messages arrived"));
                }
            };
            latencies_us.push(latency_us(base, &delivery.data)?);
            let _ = acks.send(delivery.delivery_tag);
        }
        Ok((latencies_us, Instant::now()))
    });

    let start = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let count = total / args.publishers + usize::from(p < total % args.publishers);
        let (channel, key, bytes) = (publishing.clone(), key.clone(), args.payload_bytes);
        publishers.push(tokio::spawn(async move {
            for _ in 0..count {
                let payload = stamped_payload(base, bytes);
                let confirm = channel
                    .basic_publish(
                        "amq.topic".into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        BasicProperties::default(),
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                if !matches!(confirm, Confirmation::Ack(_)) {
                    return Err(format!("not confirmed: {confirm:?}"));
                }
            }
            Ok::<(), String>(())
        }));
    }
    for publisher in publishers {
        publisher.await.map_err(|e| e.to_string())??;
    }
    let (mut latencies_us, end) = receiver.await.map_err(|e| e.to_string())??;
    latencies_us.sort_unstable();
    let _ = connection.close(200, "done".into()).await;
    Ok(Report {
        seconds: (end - start).as_secs_f64(),
        latencies_us,
    })
}

/// The same loop through `yggdrasil_brokers::Client`.
fn run_client(args: &Args) -> Result<Report, String> {
    use yggdrasil_brokers::{rabbitmq::Config, Client, Common, Config as Broker, Event, Topic};
    const SUBSCRIBER: u64 = 0;
    let (events_tx, events) = crossbeam_channel::unbounded();
    let config = Broker::RabbitMq(Config {
        hostname: args.host.clone(),
        port: args.port,
        common: Common::default(),
        ..Config::default()
    });
    let client = Client::open(config, SUBSCRIBER, events_tx).map_err(|e| e.to_string())?;
    let key = format!("ygg-floor-client-{}", std::process::id());
    let topic = Topic::rabbitmq("amq.topic", key).map_err(|e| e.to_string())?;
    client
        .subscribe(topic.clone(), SUBSCRIBER)
        .map_err(|e| e.to_string())?;
    match events.recv_timeout(Duration::from_secs(30)) {
        Ok(d) if matches!(d.event, Event::Connected { .. }) => {}
        other => return Err(format!("no Connected: {other:?}")),
    }

    // Replies go to the publisher (recipient p + 1) that is waiting for them.
    let replies: Vec<_> = (0..args.publishers)
        .map(|_| crossbeam_channel::unbounded())
        .collect();
    let base = Instant::now();
    let total = args.messages;
    let start = Instant::now();
    std::thread::scope(|s| {
        for (p, (_, reply)) in replies.iter().enumerate() {
            let count = total / args.publishers + usize::from(p < total % args.publishers);
            let (client, topic, bytes) = (&client, topic.clone(), args.payload_bytes);
            s.spawn(move || {
                for tag in 0..count as u64 {
                    let payload = stamped_payload(base, bytes);
                    let to = p as u64 + 1;
                    let sent = client.publish(topic.clone(), payload, Default::default(), to, tag);
                    if sent.is_err()
                        || !matches!(reply.recv_timeout(Duration::from_secs(30)), Ok(Ok(())))
                    {
                        return;
                    }
                }
            });
        }
        let mut latencies_us = Vec::with_capacity(total);
        // Until every message arrived and every reply was passed on: a
        // confirm may come after its own delivery, and its publisher waits.
        let mut replied = 0;
        while latencies_us.len() < total || replied < total {
            let delivery = events.recv_timeout(Duration::from_secs(30)).map_err(|_| {
                let got = latencies_us.len();
                format!("only {got} of {total} messages and {replied} replies arrived")
            })?;
            match delivery.event {
                Event::Message { payload, .. } => latencies_us.push(latency_us(base, &payload)?),
                Event::Published { result, .. } => {
                    replied += 1;
                    if let Some((tx, _)) = (delivery.to as usize)
                        .checked_sub(1)
                        .and_then(|i| replies.get(i))
                    {
                        let _ = tx.send(result);
                    }
                }
                _ => {}
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        latencies_us.sort_unstable();
        // Unblock publishers still waiting (none on success).
        client.close();
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
            eprintln!("rabbitmq_floor: {e}\nusage: rabbitmq_floor --port P [--host H] [--publishers N] [--messages M] [--payload-bytes B] [--via lapin|client]");
            return ExitCode::from(2);
        }
    };
    // One worker, as the broker runtime has.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(_) if args.via_client => run_client(&args),
        Ok(rt) => rt.block_on(run(&args)),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(report) => {
            println!(
                "rabbitmq_floor via={} publishers={} messages={} payload_bytes={} seconds={:.3} deliveries_per_s={:.0} p50_us={} p99_us={}",
                if args.via_client { "client" } else { "lapin" },
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
            eprintln!("rabbitmq_floor: {e}");
            ExitCode::FAILURE
        }
    }
}
