//! Test helpers: private broker instances through `test/brokers/ctl.sh`
//! (plaintext, or TLS with certificates made per server by `ctl.sh certs`)
//! and an inbox over a client's event channel.
#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use yggdrasil_brokers::{Client, Common, Delivery, Event, Given, Name, Raw};

/// How long a test waits for something that should happen. Generous: the
/// machine is shared and loaded; a passing run never waits this long.
pub const WAIT: Duration = Duration::from_secs(30);

const CTL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test/brokers/ctl.sh");

/// Whether broker tests must be skipped: only when asked to
/// (`YGG_SKIP_BROKERS=1`) and the server binary is missing. A missing binary
/// without that variable is a failure: CI installs the brokers.
pub fn skip(binary: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        return false;
    }
    if std::env::var("YGG_SKIP_BROKERS").as_deref() == Ok("1") {
        eprintln!("note: {binary} not installed, skipped (YGG_SKIP_BROKERS=1)");
        return true;
    }
    panic!("{binary} not installed: install it (make setup-brokers) or set YGG_SKIP_BROKERS=1");
}

/// A private instance in its own temp dir, stopped by pid when dropped.
pub struct Server {
    kind: &'static str,
    dir: PathBuf,
    pub port: u16,
    pub pid: u32,
    /// The TLS mode of the running server and of the next `restart`.
    tls: Option<Tls>,
}

/// Which certificate a TLS server shows (ctl.sh's `CTL_TLS_CERT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCert {
    /// Signed by the test CA, for `localhost` and 127.0.0.1.
    Trusted,
    /// Signed by another CA (`TlsFiles::untrusted_ca`), same names.
    Untrusted,
    /// Signed by the test CA, for `other.example` only.
    WrongName,
}

/// The TLS mode of a server: its certificate, and whether it demands a
/// client certificate signed by the test CA (`TlsFiles::cert`/`key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tls {
    pub cert: ServerCert,
    pub client_cert_required: bool,
}

impl Default for Tls {
    fn default() -> Tls {
        Tls {
            cert: ServerCert::Trusted,
            client_cert_required: false,
        }
    }
}

/// The certificate files of a TLS server's test CA (see test/brokers/certs.sh).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub dir: PathBuf,
    /// The CA that signs the trusted and wrong-name server certs and the client cert.
    pub ca: PathBuf,
    /// The client certificate and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA of the untrusted server cert.
    pub untrusted_ca: PathBuf,
}

fn ctl(args: &[&str]) -> String {
    ctl_env(args, None)
}

/// ctl.sh with its TLS mode set (`Some`) or unset (`None`) in its environment.
fn ctl_env(args: &[&str], tls: Option<(PathBuf, Tls)>) -> String {
    let mut command = Command::new(CTL);
    command.args(args).stderr(Stdio::inherit());
    for var in ["CTL_TLS", "CTL_TLS_CERT", "CTL_TLS_CLIENT_CERT"] {
        command.env_remove(var);
    }
    if let Some((certs, tls)) = tls {
        let cert = match tls.cert {
            ServerCert::Trusted => "server",
            ServerCert::Untrusted => "untrusted",
            ServerCert::WrongName => "wrong-name",
        };
        command.env("CTL_TLS", &certs).env("CTL_TLS_CERT", cert);
        if tls.client_cert_required {
            command.env("CTL_TLS_CLIENT_CERT", "required");
        }
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {CTL}: {e}"));
    assert!(out.status.success(), "ctl.sh {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fresh_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ygg-brokers-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
    dir
}

/// A loopback port nothing listens on (reserved by ctl.sh for a while).
pub fn free_port() -> u16 {
    ctl(&["free-port"])
        .parse()
        .expect("free-port prints a port")
}

impl Server {
    /// A plaintext server on a free port.
    pub fn start(kind: &'static str) -> Server {
        Self::start_in(kind, None)
    }

    /// A server that speaks TLS only, on a free port, with certificates made
    /// for it in its directory (`tls_files`).
    pub fn start_tls(kind: &'static str, tls: Tls) -> Server {
        Self::start_in(kind, Some(tls))
    }

    fn start_in(kind: &'static str, tls: Option<Tls>) -> Server {
        let mut server = Server {
            kind,
            dir: fresh_dir(),
            port: 0,
            pid: 0,
            tls,
        };
        let dir = server.dir_str().to_string();
        let line = ctl_env(&["start", kind, &dir], server.ctl_tls());
        (server.port, server.pid) = Self::parse(&line);
        server
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().expect("utf-8 dir")
    }

    fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// The TLS mode for ctl.sh, making the certificates on first use.
    fn ctl_tls(&self) -> Option<(PathBuf, Tls)> {
        let tls = self.tls?;
        let certs = self.certs_dir();
        if !certs.join("ca.pem").exists() {
            ctl(&["certs", certs.to_str().expect("utf-8 dir")]);
        }
        Some((certs, tls))
    }

    /// The TLS mode of the server (None: plaintext).
    pub fn tls(&self) -> Option<Tls> {
        self.tls
    }

    /// The TLS mode of the next `restart` (e.g. the trusted cert after the
    /// untrusted one; None: plaintext).
    pub fn set_tls(&mut self, tls: Option<Tls>) {
        self.tls = tls;
    }

    /// The certificate files, once the server has run in TLS mode.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        let dir = self.certs_dir();
        dir.join("ca.pem").exists().then(|| TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
            untrusted_ca: dir.join("untrusted-ca.pem"),
            dir,
        })
    }

    fn parse(line: &str) -> (u16, u32) {
        let mut parts = line.split_whitespace();
        let port = parts.next().and_then(|p| p.parse().ok());
        let pid = parts.next().and_then(|p| p.parse().ok());
        match (port, pid) {
            (Some(port), Some(pid)) => (port, pid),
            _ => panic!("ctl.sh start printed {line:?}, not \"PORT PID\""),
        }
    }

    /// The instance's directory (data, logs, sockets, as ctl.sh lays them out).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A crash: SIGKILL to the server process, then wait until it is gone.
    pub fn kill(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -KILL {} failed", self.pid);
        // ctl.sh stop cleans up after a dead server too.
        self.stop();
    }

    /// A hang without a closed socket: SIGSTOP (undone by `resume`).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {} failed", self.pid);
    }

    pub fn stop(&mut self) {
        ctl(&["stop", self.dir.to_str().expect("utf-8 dir")]);
    }

    /// Starts it again on the same port (after `kill` or `stop`), in its
    /// TLS mode (`set_tls`).
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let line = ctl_env(&["start", self.kind, self.dir_str(), &port], self.ctl_tls());
        let (port, pid) = Self::parse(&line);
        assert_eq!(port, self.port, "restarted on another port");
        self.pid = pid;
    }

    /// `rabbitmqctl ARGS...` against this node (its own environment), its output.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let mut all = vec!["rabbitmqctl", self.dir.to_str().expect("utf-8 dir")];
        all.extend_from_slice(args);
        ctl(&all)
    }

    /// The arguments that point `redis-cli` at this server: `-h 127.0.0.1
    /// -p PORT`, plus `--tls --cacert CA` (and the client cert when
    /// required) on a TLS server.
    pub fn redis_cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "-h".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            self.port.to_string(),
        ];
        if let (Some(tls), Some(files)) = (self.tls, self.tls_files()) {
            args.extend(["--tls".to_string(), "--cacert".to_string()]);
            args.push(files.ca.display().to_string());
            if tls.client_cert_required {
                args.extend(["--cert".to_string(), files.cert.display().to_string()]);
                args.extend(["--key".to_string(), files.key.display().to_string()]);
            }
        }
        args
    }

    /// `redis-cli ARGS...` against this server (over TLS on a TLS server), its output.
    pub fn redis_cli(&self, args: &[&str]) -> Output {
        Command::new("redis-cli")
            .args(self.redis_cli_args())
            .args(args)
            .output()
            .expect("redis-cli runs")
    }

    /// `redis-cli ARGS...` with `input` on its stdin (its output discarded);
    /// asserts it succeeded.
    pub fn redis_cli_with_input(&self, args: &[&str], input: &[u8]) {
        let mut cli = Command::new("redis-cli")
            .args(self.redis_cli_args())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli runs");
        cli.stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("input sent");
        assert!(
            cli.wait().expect("redis-cli ends").success(),
            "redis-cli {args:?} failed"
        );
    }

    pub fn redis_cli_text(&self, args: &[&str]) -> String {
        let out = self.redis_cli(args);
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Never leave a broker running, even when the test failed.
        if let Some(dir) = self.dir.to_str() {
            // A paused server would not act on the stop signal.
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new(CTL).args(["stop", dir]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A text setting, as code gives it.
pub fn text(key: &str, value: &str) -> Given {
    Given::new(key, Raw::Text(value.to_string()))
}

/// An integer setting.
pub fn int(key: &str, value: i64) -> Given {
    Given::new(key, Raw::Int(value))
}

/// A duration setting, in milliseconds as the schema takes it.
pub fn millis(key: &str, value: Duration) -> Given {
    let ms = i64::try_from(value.as_millis()).expect("a duration in range");
    Given::new(key, Raw::Int(ms))
}

/// The common keys of `common`, as settings.
pub fn common_settings(common: &Common) -> Vec<Given> {
    vec![
        millis("publish_timeout", common.publish_timeout),
        millis("backoff_max", common.backoff_max),
        millis("idle_timeout", common.idle_timeout),
    ]
}

/// Opens a client of `broker` with `given`, its events into an [`Inbox`].
pub fn open_client(broker: &str, given: &[Given], owner: u64) -> (Client<u64>, Inbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let client = Client::open(broker, given, owner, tx)
        .unwrap_or_else(|e| panic!("open {broker} with {given:?}: {e}"));
    (client, Inbox::new(rx))
}

/// The settings of a client at `hostname` and `port` with `common` and then
/// `extra` (later settings win).
pub fn settings_at(hostname: &str, port: u16, common: &Common, extra: &[Given]) -> Vec<Given> {
    let mut given = vec![text("hostname", hostname), int("port", port.into())];
    given.extend(common_settings(common));
    given.extend_from_slice(extra);
    given
}

/// Opens a client of `broker` at `hostname` and `port` with `common` and
/// then `extra` (later settings win); checks that the common keys it was
/// given are the ones it runs with.
pub fn open_at(
    broker: &str,
    hostname: &str,
    port: u16,
    common: &Common,
    extra: &[Given],
    owner: u64,
) -> (Client<u64>, Inbox) {
    let given = settings_at(hostname, port, common, extra);
    let (client, inbox) = open_client(broker, &given, owner);
    assert_eq!(client.common(), common, "the common settings given");
    (client, inbox)
}

/// Polls `f` until it is true or WAIT passed; false if it never became true.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// The events of one client; `wait` picks matching ones in arrival order
/// and keeps the others for later waits.
pub struct Inbox {
    rx: Receiver<Delivery<u64>>,
    kept: Vec<Delivery<u64>>,
}

impl Inbox {
    pub fn new(rx: Receiver<Delivery<u64>>) -> Inbox {
        Inbox {
            rx,
            kept: Vec::new(),
        }
    }

    /// The first event (already kept or arriving within WAIT) matching `pred`.
    pub fn wait(&mut self, what: &str, pred: impl Fn(&Delivery<u64>) -> bool) -> Delivery<u64> {
        if let Some(pos) = self.kept.iter().position(&pred) {
            return self.kept.remove(pos);
        }
        let until = Instant::now() + WAIT;
        loop {
            match self.rx.recv_deadline(until) {
                Ok(d) if pred(&d) => return d,
                Ok(d) => self.kept.push(d),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {what} within {WAIT:?}; other events: {:?}", self.kept)
                }
                Err(RecvTimeoutError::Disconnected) => panic!("event channel closed"),
            }
        }
    }

    /// Everything that arrives within `span` (plus what was kept).
    pub fn drain_for(&mut self, span: Duration) -> Vec<Delivery<u64>> {
        let until = Instant::now() + span;
        let mut all = std::mem::take(&mut self.kept);
        while let Ok(d) = self.rx.recv_deadline(until) {
            all.push(d);
        }
        all
    }

    /// Fails if an event matching `pred` is kept or arrives within `span`.
    pub fn assert_none_within(&mut self, span: Duration, pred: impl Fn(&Delivery<u64>) -> bool) {
        let all = self.drain_for(span);
        assert!(!all.iter().any(pred), "unexpected event among {all:?}");
    }

    pub fn connected(&mut self, to: u64) -> Delivery<u64> {
        self.wait(&format!("Connected to {to}"), |d| {
            d.to == to && matches!(d.event, Event::Connected { .. })
        })
    }

    pub fn disconnected(&mut self, to: u64) -> Delivery<u64> {
        self.wait(&format!("Disconnected to {to}"), |d| {
            d.to == to && matches!(d.event, Event::Disconnected { .. })
        })
    }

    /// The next event for `to`, whatever it is: to check an exact sequence.
    pub fn next(&mut self, to: u64) -> Event {
        self.wait(&format!("an event to {to}"), |d| d.to == to)
            .event
    }

    /// The next message for `to`: (payload, metadata).
    pub fn message(&mut self, to: u64) -> Event {
        self.wait(&format!("a message to {to}"), |d| {
            d.to == to && matches!(d.event, Event::Message { .. })
        })
        .event
    }

    pub fn published(&mut self, tag: u64) -> Result<(), String> {
        match self
            .wait(
                &format!("Published {tag}"),
                |d| matches!(d.event, Event::Published { tag: t, .. } if t == tag),
            )
            .event
        {
            Event::Published { result, .. } => result,
            _ => unreachable!(),
        }
    }
}

/// Decodes one string as `redis-cli --csv` prints it (sdscatrepr quoting).
pub fn unquote_redis(quoted: &str) -> Vec<u8> {
    let bytes = quoted.as_bytes();
    assert!(
        bytes.len() >= 2 && bytes[0] == b'"' && bytes[bytes.len() - 1] == b'"',
        "not a quoted redis string: {quoted:?}"
    );
    let inner = &bytes[1..bytes.len() - 1];
    let mut out = Vec::new();
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' {
            out.push(inner[i]);
            i += 1;
            continue;
        }
        let c = inner[i + 1];
        i += 2;
        out.push(match c {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'a' => 7,
            b'b' => 8,
            b'x' => {
                let hex = std::str::from_utf8(&inner[i..i + 2]).expect("hex digits");
                i += 2;
                u8::from_str_radix(hex, 16).expect("hex byte")
            }
            other => other, // \" and \\
        });
    }
    out
}

/// Splits a `redis-cli --csv` line into its quoted fields.
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in line.chars() {
        if in_quotes {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
        } else if c == '"' {
            in_quotes = true;
            current.push(c);
        } else if c == ',' {
            fields.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    fields.push(current);
    fields
}

/// 4 publisher threads × 100 messages to 20 recipients of one topic: every
/// recipient gets every message exactly once, in each publisher's order,
/// and every publish exactly one `Ok` reply.
pub fn concurrent_publishers_reach_every_recipient_once_in_order(
    client: &Client<u64>,
    inbox: &mut Inbox,
    topic: Name,
) {
    const PUBLISHERS: u64 = 4;
    const RECIPIENTS: u64 = 20;
    const MESSAGES: u64 = 100;
    for to in 1..=RECIPIENTS {
        client.subscribe(topic.clone(), to).expect("subscribe");
    }
    for to in 1..=RECIPIENTS {
        inbox.connected(to);
    }

    std::thread::scope(|s| {
        for p in 0..PUBLISHERS {
            let topic = &topic;
            s.spawn(move || {
                for n in 0..MESSAGES {
                    let payload = format!("{p}:{n}").into_bytes();
                    let (reply_to, tag) = (1000 + p, p * MESSAGES + n);
                    client
                        .publish(topic.clone(), payload, &[], reply_to, tag)
                        .expect("publish accepted");
                }
            });
        }
    });

    let mut replies = 0;
    let mut messages = 0;
    let mut seen: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    while replies < PUBLISHERS * MESSAGES || messages < PUBLISHERS * MESSAGES * RECIPIENTS {
        let d = inbox.wait("a publish reply or message", |_| true);
        match d.event {
            Event::Published { result, .. } => {
                assert_eq!(result, Ok(()));
                replies += 1;
            }
            Event::Message { payload, .. } => {
                let text = String::from_utf8(payload).expect("utf-8");
                let (p, n) = text.split_once(':').expect("p:n");
                seen.entry(d.to)
                    .or_default()
                    .push((p.parse().expect("p"), n.parse().expect("n")));
                messages += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for to in 1..=RECIPIENTS {
        for p in 0..PUBLISHERS {
            let ns: Vec<u64> = seen[&to]
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(
                ns,
                (0..MESSAGES).collect::<Vec<_>>(),
                "recipient {to}, publisher {p}"
            );
        }
    }
    // Exactly once: nothing more arrives.
    inbox.assert_none_within(Duration::from_millis(300), |_| true);
}

/// A publish tag no other publish of this test binary uses.
pub fn next_tag() -> u64 {
    static TAG: AtomicU64 = AtomicU64::new(1);
    TAG.fetch_add(1, Ordering::Relaxed)
}

/// Publishes through the client (replies to recipient 0) and waits for the reply.
pub fn publish_and_wait(
    client: &Client<u64>,
    inbox: &mut Inbox,
    topic: Name,
    payload: &[u8],
) -> Result<(), String> {
    let tag = next_tag();
    client
        .publish(topic, payload.to_vec(), &[], 0, tag)
        .expect("publish accepted");
    inbox.published(tag)
}

/// What a recipient saw of a flood of numbered messages.
#[derive(Debug)]
pub struct Flood {
    pub received: u64,
    pub notices: u64,
}

/// Reads `seen` up to the message `marker`, checking the contract of a flood
/// (docs/guarantees.md, "Brokers under load") on the way: numbers strictly
/// increase, none arrives between Disconnected and Connected, a gap in them
/// comes only after a Disconnected, and the marker after Connected.
/// `context` says what to print when the marker does not come.
pub fn check_flood(seen: &Receiver<Event>, marker: &[u8], context: impl Fn() -> String) -> Flood {
    let (mut connected, mut told, mut last) = (true, false, 0u64);
    let mut flood = Flood {
        received: 0,
        notices: 0,
    };
    loop {
        let Ok(event) = seen.recv_timeout(WAIT) else {
            panic!("no marker: {flood:?}, last {last}, {}", context());
        };
        match event {
            Event::Disconnected { .. } => {
                assert!(connected, "Disconnected twice");
                (connected, told) = (false, true);
                flood.notices += 1;
            }
            Event::Connected { .. } => connected = true,
            Event::Message { payload, .. } if payload == marker => break,
            Event::Message { payload, .. } => {
                let n: u64 = String::from_utf8_lossy(&payload)
                    .trim_end()
                    .parse()
                    .expect("a number");
                assert!(connected, "message {n} between Disconnected and Connected");
                assert!(n > last, "{n} after {last}");
                assert!(n == last + 1 || told, "{n} after {last}, untold");
                (last, told) = (n, false);
                flood.received += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(connected, "the marker came before Connected");
    flood
}
