//! What the broker floor examples share: their flags, timestamped payloads, the same loop run
//! through this crate's `Client` (`--via client` with a thread per publisher, or `--via
//! client-caller` with one thread running them all), and the one output line the bench parses.
//!
//! Each floor publishes `--messages` payloads from `--publishers` publishers, every publisher
//! waiting for its reply before the next message (as `Yggdrasil.publish` does), to one
//! subscriber, and reports deliveries/s and publish→delivery latency.
//!
//! `--tls-ca PATH` runs it over TLS, trusting the CA certificates in PATH (see [`Tls`]).
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use yggdrasil_brokers::{Client, Delivery, Event, Given, Name, Raw};

/// A payload starts with its send time: 16 hex digits of nanoseconds since the run's base
/// (text, so that every broker takes it).
const STAMP_BYTES: usize = 16;
/// Far above a healthy run's gaps: only a broken run waits this long.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct Args {
    pub host: String,
    pub port: u16,
    pub publishers: usize,
    pub messages: usize,
    pub payload_bytes: usize,
    pub via: Via,
    /// `--tls-ca`: the broker's connections go over TLS.
    pub tls: Option<Tls>,
}

/// The floors' TLS: it mirrors `src/tls` (`Tls::new` with `tls_cacertfile` and
/// `tls_verify: :verify_peer`) with the crates directly: rustls 0.23 with the `ring` provider,
/// TLS 1.3 and 1.2, the CA file's certificates as the only roots, chain and host name checked,
/// tokio-rustls for the stream; the TCP under it without Nagle, as `tls::connect_tcp`.
#[derive(Clone)]
pub struct Tls {
    ca: String,
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    fn new(ca: &Path, host: &str) -> Result<Tls, String> {
        let pem = std::fs::read(ca).map_err(|e| format!("--tls-ca {ca:?}: {e}"))?;
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate.map_err(|e| format!("--tls-ca {ca:?}: {e}"))?;
            roots.add(certificate).map_err(|e| e.to_string())?;
        }
        // Deprecated in rustls 0.23.48 (no post-quantum key exchange): src/tls's choice too.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            ca: ca.display().to_string(),
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?,
        })
    }

    /// The client side of a handshake over `io`.
    pub async fn handshake<S>(&self, io: S) -> Result<TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = self.connector.connect(self.name.clone(), io);
        handshake.await.map_err(|e| format!("TLS handshake: {e}"))
    }
}

/// What the floors hand their client crate: a TCP stream, or TLS over one (postgres_floor
/// starts TLS inside its protocol, so it does not use these two).
#[allow(dead_code)]
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A TCP connection to `--host`/`--port`, without Nagle.
pub async fn connect_tcp(args: &Args) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("{}:{}: {e}", args.host, args.port))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(tcp)
}

/// [`connect_tcp`], then TLS with `--tls-ca`.
#[allow(dead_code)]
pub async fn connect(args: &Args) -> Result<Box<dyn Io>, String> {
    let tcp = connect_tcp(args).await?;
    match &args.tls {
        None => Ok(Box::new(tcp)),
        Some(tls) => Ok(Box::new(tls.handshake(tcp).await?)),
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Via {
    /// The broker crate alone: the floor.
    Broker,
    /// `Client`, every event through a crossbeam channel to a delivery thread that hands
    /// replies on (the NIF design's delivery thread).
    Client,
    /// `Client` with one caller thread running every publisher, each publishing its next
    /// message when its reply arrives, as the BEAM's processes on a scheduler do: the runtime
    /// thread hands events and replies straight to it (as `enif_send`), no thread per publisher.
    ClientCaller,
}

pub struct Report {
    pub seconds: f64,
    pub latencies_us: Vec<u64>,
}

/// `--via` is `direct` (the broker crate alone), `client` or `client-caller` (through `Client`).
fn parse_args(default_port: u16, direct: &str) -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".to_string(),
        port: default_port,
        publishers: 1,
        messages: 10_000,
        payload_bytes: STAMP_BYTES,
        via: Via::Broker,
        tls: None,
    };
    let mut tls_ca = None;
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
            "--tls-ca" => tls_ca = Some(value.clone()),
            "--via" => match value.as_str() {
                v if v == direct => args.via = Via::Broker,
                "client" => args.via = Via::Client,
                "client-caller" => args.via = Via::ClientCaller,
                _ => return Err(format!("--via {value}: {direct}, client or client-caller")),
            },
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    args.payload_bytes = args.payload_bytes.max(STAMP_BYTES);
    if let Some(ca) = tls_ca {
        args.tls = Some(Tls::new(Path::new(&ca), &args.host)?);
    }
    Ok(args)
}

impl Args {
    /// How many of the messages publisher `p` sends.
    pub fn share(&self, p: usize) -> usize {
        self.messages / self.publishers + usize::from(p < self.messages % self.publishers)
    }
}

/// A payload of `bytes` bytes stamped with the time since `base`.
pub fn stamped(base: Instant, bytes: usize) -> Vec<u8> {
    let mut payload = format!("{:016x}", base.elapsed().as_nanos() as u64).into_bytes();
    payload.resize(bytes.max(STAMP_BYTES), b'x');
    payload
}

/// Microseconds from a stamped payload's send time until now.
pub fn latency_us(base: Instant, payload: &[u8]) -> Result<u64, String> {
    let stamp = payload.get(..STAMP_BYTES).ok_or("short payload")?;
    let sent = std::str::from_utf8(stamp)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or("payload without a time stamp")?;
    let now = base.elapsed().as_nanos() as u64;
    Ok(now.saturating_sub(sent) / 1000)
}

/// Collects `total` latencies from the subscriber's payloads, and when the last one came.
pub async fn collect_latencies(
    base: Instant,
    total: usize,
    mut payloads: impl Stream<Item = Vec<u8>> + Unpin,
) -> Result<(Vec<u64>, Instant), String> {
    let mut latencies_us = Vec::with_capacity(total);
    while latencies_us.len() < total {
        match tokio::time::timeout(PATIENCE, payloads.next()).await {
            Ok(Some(payload)) => latencies_us.push(latency_us(base, &payload)?),
            _ => {
                return Err(format!(
                    "only {} of {total} messages arrived",
                    latencies_us.len()
                ))
            }
        }
    }
    Ok((latencies_us, Instant::now()))
}

/// Waits for the publisher tasks and the subscriber's latencies: the run's report, timed from
/// `start` to the last delivery.
pub async fn finish(
    start: Instant,
    publishers: Vec<JoinHandle<Result<(), String>>>,
    receiver: JoinHandle<Result<(Vec<u64>, Instant), String>>,
) -> Result<Report, String> {
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

/// How `--via client` opens its client: the broker, its settings and the channel name.
pub struct ClientSetup {
    pub broker: &'static str,
    pub settings: Vec<Given>,
    pub name: Name,
}

/// `--host`, `--port` and `--tls-ca` as a client's settings (every other key at its default).
pub fn host_and_port(args: &Args) -> Vec<Given> {
    let mut settings = vec![
        Given::new("hostname", Raw::Text(args.host.clone())),
        Given::new("port", Raw::Int(args.port.into())),
    ];
    if let Some(tls) = &args.tls {
        settings.push(Given::new("tls", Raw::Bool(true)));
        settings.push(Given::new("tls_cacertfile", Raw::Text(tls.ca.clone())));
    }
    settings
}

/// The same loop through `yggdrasil_brokers::Client`, events through its crossbeam channel:
/// publisher threads whose replies this thread routes, or with `--via client-caller` this
/// thread running every publisher.
fn run_client(args: &Args, setup: ClientSetup) -> Result<Report, String> {
    let ClientSetup {
        broker,
        settings,
        name: topic,
    } = setup;
    const SUBSCRIBER: u64 = 0;
    // Replies go to the publisher (recipient p + 1) that is waiting for them.
    let replies: Vec<_> = (0..args.publishers)
        .map(|_| crossbeam_channel::unbounded())
        .collect();
    let (events_tx, events) = crossbeam_channel::unbounded();
    let client =
        Client::open(broker, &settings, SUBSCRIBER, events_tx).map_err(|e| e.to_string())?;
    client
        .subscribe(topic.clone(), SUBSCRIBER)
        .map_err(|e| e.to_string())?;
    match events.recv_timeout(PATIENCE) {
        Ok(d) if matches!(d.event, Event::Connected { .. }) => {}
        other => return Err(format!("no Connected: {other:?}")),
    }

    let base = Instant::now();
    if args.via == Via::ClientCaller {
        return run_caller(args, &client, &topic, &events, base);
    }
    let total = args.messages;
    let start = Instant::now();
    std::thread::scope(|s| {
        for (p, (_, reply)) in replies.iter().enumerate() {
            let (client, topic, count) = (&client, topic.clone(), args.share(p));
            s.spawn(move || {
                for tag in 0..count as u64 {
                    let payload = stamped(base, args.payload_bytes);
                    let sent = client.publish(topic.clone(), payload, &[], p as u64 + 1, tag);
                    // Bounded wait: after an error nobody routes replies any more.
                    let answer = reply.recv_timeout(PATIENCE);
                    if sent.is_err() || !matches!(answer, Ok(Ok(()))) {
                        return;
                    }
                }
            });
        }
        // Replies this thread routes to the publisher waiting for them.
        collect(&events, base, start, total, |to, result| {
            if let Some((tx, _)) = (to as usize).checked_sub(1).and_then(|p| replies.get(p)) {
                let _ = tx.send(result);
            }
            Ok(())
        })
    })
}

/// Times each message as it arrives and hands each reply (its recipient and result) to
/// `on_reply`, until `total` of each came: a reply can come after its own message (rabbit: the
/// confirm after the delivery), and its publisher waits for it.
fn collect(
    events: &crossbeam_channel::Receiver<Delivery<u64>>,
    base: Instant,
    start: Instant,
    total: usize,
    mut on_reply: impl FnMut(u64, Result<(), String>) -> Result<(), String>,
) -> Result<Report, String> {
    let (mut latencies_us, mut replies) = (Vec::with_capacity(total), 0);
    while latencies_us.len() < total || replies < total {
        let delivery = events
            .recv_timeout(PATIENCE)
            .map_err(|_| format!("only {} of {total} messages arrived", latencies_us.len()))?;
        match delivery.event {
            Event::Message { payload, .. } => latencies_us.push(latency_us(base, &payload)?),
            Event::Published { result, .. } => {
                replies += 1;
                on_reply(delivery.to, result)?;
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
}

/// `--via client-caller`: this thread runs every publisher. Each publishes its first message,
/// then its next one when its reply arrives; events are timed as they come.
fn run_caller(
    args: &Args,
    client: &Client<u64>,
    topic: &Name,
    events: &crossbeam_channel::Receiver<Delivery<u64>>,
    base: Instant,
) -> Result<Report, String> {
    let start = Instant::now();
    let mut left: Vec<usize> = (0..args.publishers).map(|p| args.share(p)).collect();
    let mut publish = |p: usize| -> Result<(), String> {
        let left = left.get_mut(p).ok_or("a reply to no publisher")?;
        if *left == 0 {
            return Ok(());
        }
        *left -= 1;
        let payload = stamped(base, args.payload_bytes);
        client
            .publish(topic.clone(), payload, &[], p as u64 + 1, *left as u64)
            .map_err(|e| e.to_string())
    };
    for p in 0..args.publishers {
        publish(p)?;
    }
    collect(events, base, start, args.messages, |to, result| {
        result?;
        publish(
            (to as usize)
                .checked_sub(1)
                .ok_or("a reply to no publisher")?,
        )
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(rank).copied().unwrap_or(0)
}

/// Parses the flags, runs the floor (`direct` on a one-worker runtime, as the broker runtime
/// has, or through `Client`) and prints
/// `NAME via=V publishers=N messages=M payload_bytes=B seconds=S deliveries_per_s=D p50_us=P p99_us=Q`.
pub fn main(
    name: &str,
    direct: &str,
    default_port: u16,
    run_direct: impl FnOnce(&tokio::runtime::Runtime, &Args) -> Result<Report, String>,
    client_setup: impl FnOnce(&Args) -> ClientSetup,
) -> ExitCode {
    let args = match parse_args(default_port, direct) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{name}: {e}\nusage: {name} --port P [--host H] [--publishers N] [--messages M] [--payload-bytes B] [--via {direct}|client|client-caller] [--tls-ca PATH]");
            return ExitCode::from(2);
        }
    };
    let result = if args.via != Via::Broker {
        run_client(&args, client_setup(&args))
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| run_direct(&rt, &args))
    };
    match result {
        Ok(report) => {
            println!(
                "{name} via={} publishers={} messages={} payload_bytes={} seconds={:.3} deliveries_per_s={:.0} p50_us={} p99_us={}",
                match args.via {
                    Via::Broker => direct,
                    Via::Client => "client",
                    Via::ClientCaller => "client-caller",
                },
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
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
