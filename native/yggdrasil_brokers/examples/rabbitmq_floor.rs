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
//! `--via client` (or `client-caller`) runs the same loop through this
//! crate's `Client` instead (`examples/floor`): the cost of our runtime
//! without the BEAM, between the floor and the full adapter.
//!
//! `--tls-ca PATH` runs it over TLS (`floor::Tls`). Either way lapin is handed a
//! stream we connected, through a runtime whose stream type is ours, as
//! `src/rabbitmq` does (`frames.rs`).
mod floor;

use std::future::{ready, Ready};
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_compat::{Compat, CompatExt};
use async_rs::traits::Reactor;
use async_rs::util::RuntimeParts;
use async_rs::{Runtime, Tokio};
use floor::{collect_latencies, connect, finish, stamped, Args, Io, Report};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{AsyncTcpStream, BasicProperties, Confirmation, Connection, ConnectionProperties};
use yggdrasil_brokers::Name;

/// lapin's tokio runtime with our stream as its stream type.
#[derive(Clone, Debug)]
struct Ours(Tokio);

impl Reactor for Ours {
    type TcpStream = Compat<Box<dyn Io>>;
    type Sleep = <Tokio as Reactor>::Sleep;

    // Never called: lapin is handed a connected stream.
    #[allow(refining_impl_trait)]
    fn register<H: io::Read + io::Write + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<Self::TcpStream> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(
        &self,
        dur: Duration,
    ) -> impl futures_util::Stream<Item = Instant> + Send + 'static {
        self.0.interval(dur)
    }

    #[allow(refining_impl_trait)]
    fn tcp_connect_addr(&self, _addr: SocketAddr) -> Ready<io::Result<Self::TcpStream>> {
        ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

/// The broker module's prefetch per subscribed topic.
const PREFETCH: u16 = 1000;

async fn run(args: &Args) -> Result<Report, String> {
    let err = |e: lapin::Error| e.to_string();
    let url = format!(
        "amqp://guest:guest@{}:{}/%2f?heartbeat=10",
        args.host, args.port
    );
    let uri: AMQPUri = url.parse()?;
    let stream = Mutex::new(Some(connect(args).await?));
    let runtime = Runtime::new(RuntimeParts::new(Tokio::current(), Ours(Tokio::current())));
    let connection = Connection::connector(
        uri,
        runtime,
        async move |_uri, _runtime| {
            let taken = stream.lock().map(|mut s| s.take()).unwrap_or(None);
            let taken = taken.map(|s| AsyncTcpStream::Plain(s.compat()));
            taken.ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected).into())
        },
        ConnectionProperties::default(),
    )
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
    let consumer = consuming
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
    // A consumer error ends the stream; each delivery is acked once counted.
    let payloads = consumer
        .take_while(|delivery| ready(delivery.is_ok()))
        .filter_map(move |delivery| {
            ready(delivery.ok().map(|delivery| {
                let _ = acks.send(delivery.delivery_tag);
                delivery.data
            }))
        });
    let base = Instant::now();
    let receiver = tokio::spawn(collect_latencies(base, args.messages, payloads));

    let start = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let (channel, key) = (publishing.clone(), key.clone());
        let (count, bytes) = (args.share(p), args.payload_bytes);
        publishers.push(tokio::spawn(async move {
            for _ in 0..count {
                let confirm = channel
                    .basic_publish(
                        "amq.topic".into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        &stamped(base, bytes),
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
    let report = finish(start, publishers, receiver).await;
    let _ = connection.close(200, "done".into()).await;
    report
}

fn main() -> ExitCode {
    floor::main(
        "rabbitmq_floor",
        "lapin",
        5672,
        |rt, args| rt.block_on(run(args)),
        |args| floor::ClientSetup {
            broker: "rabbitmq",
            settings: floor::host_and_port(args),
            name: Name::pair(
                "amq.topic",
                format!("ygg-floor-client-{}", std::process::id()),
            ),
        },
    )
}
