//! `:postgres` against a real PostgreSQL: a private cluster per test, started and stopped by pid
//! through `test/brokers/ctl.sh`, with `psql` as the independent client on the other side.
//!
//! A missing server or `psql` is a failure, unless `YGG_SKIP_BROKERS=1`.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use yggdrasil_brokers::{
    postgres, Client, Common, Config, Delivery, Event, Metadata, Properties, Topic,
};

/// Far above anything a healthy run needs; only a broken run waits this long.
const WITHIN: Duration = Duration::from_secs(20);
const OWNER: u64 = 0;

// ------------------------------------------------------------------ server --

/// A private PostgreSQL cluster in its own temp dir; stopped (by pid) and removed on drop,
/// also when the test fails.
struct Server {
    dir: PathBuf,
    port: u16,
    running: bool,
}

fn ctl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test/brokers/ctl.sh")
}

fn skipped() -> bool {
    if std::env::var("YGG_SKIP_BROKERS").as_deref() == Ok("1") {
        eprintln!("YGG_SKIP_BROKERS=1: PostgreSQL test skipped");
        true
    } else {
        false
    }
}

impl Server {
    fn start() -> Server {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ygg-pg-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server's temp dir");
        let mut server = Server {
            dir,
            port: 0,
            running: false,
        };
        server.port = server.run_start(None);
        server
    }

    /// Starts it again on the same port, with the same data.
    fn restart(&mut self) {
        let port = self.run_start(Some(self.port));
        assert_eq!(port, self.port);
    }

    fn run_start(&mut self, port: Option<u16>) -> u16 {
        let mut command = Command::new(ctl());
        command.arg("start").arg("postgres").arg(&self.dir);
        if let Some(port) = port {
            command.arg(port.to_string());
        }
        let out = command.output().expect("run test/brokers/ctl.sh");
        assert!(
            out.status.success(),
            "ctl.sh start postgres failed (set YGG_SKIP_BROKERS=1 to skip broker tests): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = true;
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("ctl.sh printed no port: {stdout:?}"))
    }

    fn stop(&mut self) {
        let status = Command::new(ctl())
            .arg("stop")
            .arg(&self.dir)
            .status()
            .expect("run ctl.sh stop");
        assert!(status.success(), "ctl.sh stop failed");
        self.running = false;
    }

    fn config(&self) -> postgres::Config {
        postgres::Config {
            hostname: "127.0.0.1".to_owned(),
            port: self.port,
            common: Common {
                publish_timeout: Duration::from_secs(10),
                backoff_max: Duration::from_millis(500),
                ..Common::default()
            },
            ..postgres::Config::default()
        }
    }

    fn psql_command(&self) -> Command {
        let mut command = Command::new("psql");
        command
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"]);
        command
    }

    /// Runs SQL in a fresh psql session; its output.
    fn psql(&self, sql: &str) -> String {
        let out = self
            .psql_command()
            .arg("-c")
            .arg(sql)
            .output()
            .expect("run psql (apt-get install postgresql-client)");
        assert!(
            out.status.success(),
            "psql -c {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many of our connections the server sees.
    fn our_backends(&self) -> usize {
        let count = self
            .psql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'yggdrasil%'");
        count.trim().parse().expect("a count from psql")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new(ctl()).arg("stop").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An interactive psql session, for LISTEN on the other side and for transactions.
struct Psql {
    child: Child,
    stdin: ChildStdin,
    output: Receiver<Vec<u8>>,
    seen: Vec<u8>,
    marker: usize,
}

impl Psql {
    fn open(server: &Server) -> Psql {
        let mut child = server
            .psql_command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run psql");
        let stdin = child.stdin.take().expect("psql stdin");
        let mut stdout = child.stdout.take().expect("psql stdout");
        let (tx, output) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Psql {
            child,
            stdin,
            output,
            seen: Vec::new(),
            marker: 0,
        }
    }

    /// Sends SQL and waits until psql has run it.
    fn run(&mut self, sql: &str) {
        self.marker += 1;
        let marker = format!("--done {}--", self.marker);
        writeln!(self.stdin, "{sql}\n\\echo {marker}").expect("write to psql");
        self.stdin.flush().expect("flush psql");
        let deadline = Instant::now() + WITHIN;
        while !contains(&self.seen, marker.as_bytes()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "psql did not finish {sql:?}; output so far: {:?}",
                    self.text()
                ),
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits until psql has printed `count` notifications; (channel, payload) in arrival order.
    /// psql prints notifications after a command, so it is given trivial ones meanwhile.
    fn notifications(&mut self, count: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let found = parse_notifications(&self.text());
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "psql saw {} of {count} notifications: {found:?}",
                found.len()
            );
            thread::sleep(Duration::from_millis(20));
            self.run("SELECT 1;");
        }
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// psql's `Asynchronous notification "CHANNEL" with payload "PAYLOAD" received from server
/// process with PID N.` lines (the payload printed raw, newlines included).
fn parse_notifications(text: &str) -> Vec<(String, String)> {
    const START: &str = "Asynchronous notification \"";
    const MIDDLE: &str = "\" with payload \"";
    const END: &str = "\" received from server process with PID ";
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(START) {
        rest = &rest[at + START.len()..];
        let (Some(middle), Some(end)) = (rest.find(MIDDLE), rest.find(END)) else {
            break;
        };
        found.push((
            rest[..middle].to_owned(),
            rest[middle + MIDDLE.len()..end].to_owned(),
        ));
        rest = &rest[end + END.len()..];
    }
    found
}

// ------------------------------------------------------------------ events --

/// Every event of one client, queued per recipient so each test reads the ones it cares about
/// in the order they left.
struct Inbox {
    rx: Receiver<Delivery<u64>>,
    pending: HashMap<u64, Vec<Event>>,
}

fn open(config: postgres::Config) -> (Client<u64>, Inbox) {
    let (tx, rx): (Sender<Delivery<u64>>, _) = crossbeam_channel::unbounded();
    let client = Client::open(Config::Postgres(config), OWNER, tx).expect("open a client");
    let inbox = Inbox {
        rx,
        pending: HashMap::new(),
    };
    (client, inbox)
}

impl Inbox {
    /// The next event for `to`, if one comes within `wait`.
    fn next_within(&mut self, to: u64, wait: Duration) -> Option<Event> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(queue) = self.pending.get_mut(&to) {
                if !queue.is_empty() {
                    return Some(queue.remove(0));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let delivery = self.rx.recv_timeout(left).ok()?;
            self.pending
                .entry(delivery.to)
                .or_default()
                .push(delivery.event);
        }
    }

    fn next(&mut self, to: u64) -> Event {
        self.next_within(to, WITHIN)
            .unwrap_or_else(|| panic!("no event for {to} within {WITHIN:?}"))
    }

    fn expect_connected(&mut self, to: u64, topic: &Topic) {
        assert_eq!(
            self.next(to),
            Event::Connected {
                topic: topic.clone()
            }
        );
    }

    /// The next message for `to`: (topic, payload), its metadata checked against the topic.
    fn message(&mut self, to: u64) -> (Topic, Vec<u8>) {
        match self.next(to) {
            Event::Message {
                topic,
                payload,
                metadata,
            } => {
                let Topic::Postgres(name) = &topic else {
                    panic!("not a postgres topic: {topic:?}");
                };
                assert_eq!(
                    metadata,
                    Metadata::Postgres {
                        channel: name.clone()
                    }
                );
                (topic, payload)
            }
            other => panic!("expected a message for {to}, got {other:?}"),
        }
    }

    fn published(&mut self, to: u64, tag: u64) -> Result<(), String> {
        match self.next(to) {
            Event::Published { tag: got, result } => {
                assert_eq!(got, tag);
                result
            }
            other => panic!("expected Published for {to}, got {other:?}"),
        }
    }
}

fn topic(name: &str) -> Topic {
    Topic::postgres(name).expect("a valid channel name")
}

fn publish(client: &Client<u64>, topic: &Topic, payload: &[u8], reply_to: u64, tag: u64) {
    client
        .publish(
            topic.clone(),
            payload.to_vec(),
            Properties::default(),
            reply_to,
            tag,
        )
        .expect("publish accepted");
}

/// Waits for a condition that the system reaches by itself (a connection closing).
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WITHIN:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------- tests --

#[test]
fn notify_from_psql_arrives_byte_exact() {
    if skipped() {
        return;
    }
    let server = Server::start();
    let (client, mut inbox) = open(server.config());
    let orders = topic("orders");
    client.subscribe(orders.clone(), 1).expect("subscribe");
    inbox.expect_connected(1, &orders);

    // Dollar quoting keeps the newline and the spaces exactly as written.
    server.psql("NOTIFY orders, 'plain'");
    server.psql("SELECT pg_notify('orders', $$  two  spaces\nnew line\ttab é ü 日本 🎉 $$)");
    assert_eq!(inbox.message(1), (orders.clone(), b"plain".to_vec()));
    assert_eq!(
        inbox.message(1).1,
        "  two  spaces\nnew line\ttab é ü 日本 🎉 ".as_bytes()
    );
    // An empty payload is a payload too.
    server.psql("NOTIFY orders");
    assert_eq!(inbox.message(1).1, b"");
}

#[test]
fn published_payloads_reach_psql_byte_exact() {
    if skipped() {
        return;
    }
    let server = Server::start();
    let mut listener = Psql::open(&server);
    listener.run("LISTEN \"Orders Feed\";");
    let (client, mut inbox) = open(server.config());
    let feed = topic("Orders Feed");
    let payloads = [
        "plain".to_owned(),
        "  two  spaces\nnew line\r\nand é ü 日本 🎉 ".to_owned(),
        "'quotes' \"and\" $$dollars$$ \\backslash".to_owned(),
        "x".repeat(7999),
    ];
    for (tag, payload) in payloads.iter().enumerate() {
        publish(&client, &feed, payload.as_bytes(), 7, tag as u64);
        assert_eq!(inbox.published(7, tag as u64), Ok(()));
    }
    let seen = listener.notifications(payloads.len());
    let expected: Vec<_> = payloads
        .iter()
        .map(|p| ("Orders Feed".to_owned(), p.clone()))
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn names_keep_case_spaces_and_quotes() {
    if skipped() {
        return;
    }
    let server = Server::start();
    let (client, mut inbox) = open(server.config());
    // (our name, the same channel written by hand as a quoted identifier for psql)
    let names = [
        ("Orders", "\"Orders\""),
        ("orders", "orders"),
        ("with space", "\"with space\""),
        ("say \"hi\"", "\"say \"\"hi\"\"\""),
        ("semi; DROP TABLE x; --", "\"semi; DROP TABLE x; --\""),
        ("ünïcødé 日本", "\"ünïcødé 日本\""),
        (&*"n".repeat(63), &*format!("\"{}\"", "n".repeat(63))),
    ];
    for (i, (name, _)) in names.iter().enumerate() {
        client
            .subscribe(topic(name), i as u64 + 1)
            .expect("subscribe");
        inbox.expect_connected(i as u64 + 1, &topic(name));
    }
    for (i, (_, quoted)) in names.iter().enumerate() {
        server.psql(&format!("NOTIFY {quoted}, 'to {i}'"));
    }
    // Each channel got its own notification and no other (the next one proves none was extra).
    for (i, (name, quoted)) in names.iter().enumerate() {
        assert_eq!(
            inbox.message(i as u64 + 1),
            (topic(name), format!("to {i}").into_bytes())
        );
        server.psql(&format!("NOTIFY {quoted}, 'again'"));
        assert_eq!(inbox.message(i as u64 + 1).1, b"again");
    }
    // And what we publish reaches the same channels (pg_notify takes the name as text).
    for (i, (name, _)) in names.iter().enumerate() {
        publish(&client, &topic(name), b"ours", 100, i as u64);
        assert_eq!(inbox.published(100, i as u64), Ok(()));
        assert_eq!(inbox.message(i as u64 + 1), (topic(name), b"ours".to_vec()));
    }
}

#[test]
fn bad_names_and_payloads_are_refused_before_anything_starts() {
    if skipped() {
        return;
    }
    let server = Server::start();
    let (client, mut inbox) = open(server.config());
    let long = "n".repeat(64);
    assert!(Topic::postgres(long.as_str()).is_err());
    assert!(Topic::postgres("").is_err());
    assert!(Topic::postgres("a\0b").is_err());
    // A variant built by hand is checked the same way.
    let by_hand = Topic::Postgres(long);
    assert!(client.subscribe(by_hand.clone(), 1).is_err());
    assert!(client
        .publish(by_hand, b"x".to_vec(), Properties::default(), 1, 1)
        .is_err());
    let fine = topic("fine");
    let too_long = client
        .publish(fine.clone(), vec![b'x'; 8000], Properties::default(), 1, 2)
        .expect_err("an 8000-byte payload");
    assert!(too_long.to_string().contains("8000"), "{too_long}");
    let not_utf8 = client
        .publish(
            fine.clone(),
            vec![b'a', 0xc3, 0x28],
            Properties::default(),
            1,
            3,
        )
        .expect_err("invalid UTF-8");
    assert!(not_utf8.to_string().contains("UTF-8"), "{not_utf8}");
    assert!(client
        .publish(fine.clone(), b"a\0b".to_vec(), Properties::default(), 1, 4)
        .is_err());
    assert!(client
        .publish(
            Topic::Redis(b"fine".to_vec()),
            b"x".to_vec(),
            Properties::default(),
            1,
            5
        )
        .is_err());
    // Nothing was started for them, and no reply is owed.
    assert_eq!(client.stats().tasks, 0);
    assert_eq!(client.stats().connections, 0);
    assert_eq!(inbox.next_within(1, Duration::from_millis(200)), None);
    assert_eq!(server.our_backends(), 0);

    // The largest payload PostgreSQL takes goes through.
    client.subscribe(fine.clone(), 2).expect("subscribe");
    inbox.expect_connected(2, &fine);
    let largest = "é".repeat(3999) + "x"; // 7999 bytes, multi-byte characters
    assert_eq!(largest.len(), 7999);
    publish(&client, &fine, largest.as_bytes(), 1, 6);
    assert_eq!(inbox.published(1, 6), Ok(()));
    assert_eq!(inbox.message(2).1, largest.as_bytes());
}

#[test]
fn notify_in_a_transaction_arrives_after_commit_and_never_after_rollback() {
    if skipped() {
        return;
    }
    let server = Server::start();
    let (client, mut inbox) = open(server.config());
    let tx = topic("tx");
    client.subscribe(tx.clone(), 1).expect("subscribe");
    inbox.expect_connected(1, &tx);

    let mut session = Psql::open(&server);
    session.run("BEGIN; NOTIFY tx, 'committed';");
    // Sent and committed while the transaction is open: it must arrive first.
    server.psql("NOTIFY tx, 'outside'");
    assert_eq!(inbox.message(1).1, b"outside");
    session.run("COMMIT;");
    assert_eq!(inbox.message(1).1, b"committed");

    session.run("BEGIN; NOTIFY tx, 'rolled back'; ROLLBACK;");
    server.psql("NOTIFY tx, 'after rollback'");
    // The next message is the one after the rollback: the rolled-back one never came.
    assert_eq!(inbox.message(1).1, b"after rollback");
}

#[test]
fn server_restart_reconnects_and_relistens_by_itself() {
    if skipped() {
        return;
    }
    let mut server = Server::start();
    let (client, mut inbox) = open(server.config());
    let a = topic("restart A");
    let b = topic("restart_b");
    client.subscribe(a.clone(), 1).expect("subscribe");
    client.subscribe(a.clone(), 2).expect("subscribe");
    client.subscribe(b.clone(), 3).expect("subscribe");
    inbox.expect_connected(1, &a);
    inbox.expect_connected(2, &a);
    inbox.expect_connected(3, &b);
    publish(&client, &a, b"before", 9, 1);
    assert_eq!(inbox.published(9, 1), Ok(()));
    assert_eq!(inbox.message(1).1, b"before");
    assert_eq!(inbox.message(2).1, b"before");

    server.stop();
    for (to, topic) in [(1, &a), (2, &a), (3, &b)] {
        assert_eq!(
            inbox.next(to),
            Event::Disconnected {
                topic: topic.clone()
            }
        );
    }
    server.restart();
    // No new subscribe: the client listens again by itself.
    for (to, topic) in [(1, &a), (2, &a), (3, &b)] {
        inbox.expect_connected(to, topic);
    }
    server.psql("NOTIFY \"restart A\", 'from psql'");
    server.psql("NOTIFY restart_b, 'to b'");
    assert_eq!(inbox.message(1).1, b"from psql");
    assert_eq!(inbox.message(2).1, b"from psql");
    assert_eq!(inbox.message(3).1, b"to b");
    // The publishing connection died with the server too; the next publish reconnects.
    publish(&client, &b, b"after", 9, 2);
    assert_eq!(inbox.published(9, 2), Ok(()));
    assert_eq!(inbox.message(3).1, b"after");
    // One Warning per lost connection or failed attempt went to the owner, nothing else.
    while let Some(event) = inbox.next_within(OWNER, Duration::from_millis(100)) {
        assert!(matches!(event, Event::Warning { .. }), "{event:?}");
    }
}

#[test]
fn unreachable_server_warns_per_attempt_and_fails_publishes_in_time() {
    if skipped() {
        return;
    }
    // A port where nothing listens: start a cluster to own a free port, then stop it.
    let mut server = Server::start();
    server.stop();
    let mut config = server.config();
    config.common.publish_timeout = Duration::from_millis(1500);
    let (client, mut inbox) = open(config);
    let t = topic("nowhere");
    client
        .subscribe(t.clone(), 1)
        .expect("subscribe is accepted");
    publish(&client, &t, b"lost", 2, 1);
    let reason = inbox
        .published(2, 1)
        .expect_err("no server: the publish fails");
    assert!(reason.contains("publish_timeout"), "{reason}");
    // Several failed attempts, each one warning to the owner (listener and publisher both try).
    for _ in 0..3 {
        match inbox.next(OWNER) {
            Event::Warning { message } => assert!(message.contains("postgres"), "{message}"),
            other => panic!("expected a warning, got {other:?}"),
        }
    }
    // Never Connected.
    assert_eq!(inbox.next_within(1, Duration::from_millis(500)), None);
}

#[test]
fn four_publishers_to_twenty_recipients_exactly_once_in_order() {
    if skipped() {
        return;
    }
    const PUBLISHERS: u64 = 4;
    const RECIPIENTS: u64 = 20;
    const EACH: u64 = 50;
    let server = Server::start();
    let (tx, rx) = crossbeam_channel::unbounded();
    let client = Client::open(Config::Postgres(server.config()), OWNER, tx).expect("open");
    let fan = topic("fan out");
    let recipients: Vec<u64> = (1..=RECIPIENTS).collect();
    for &to in &recipients {
        client.subscribe(fan.clone(), to).expect("subscribe");
    }

    // One thread reads the client's events: Published replies go to the publisher that waits for
    // them (as a BEAM caller does), everything else is kept for the checks.
    let publishers: Vec<u64> = (1000..1000 + PUBLISHERS).collect();
    let mut replies = HashMap::new();
    let mut reply_rx = HashMap::new();
    for &p in &publishers {
        let (s, r) = crossbeam_channel::unbounded();
        replies.insert(p, s);
        reply_rx.insert(p, r);
    }
    let (others_tx, others) = crossbeam_channel::unbounded();
    let router = thread::spawn(move || {
        for delivery in rx {
            match (&delivery.event, replies.get(&delivery.to)) {
                (Event::Published { .. }, Some(reply)) => {
                    let _ = reply.send(delivery.event);
                }
                _ => {
                    if others_tx.send(delivery).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut inbox = Inbox {
        rx: others,
        pending: HashMap::new(),
    };
    for &to in &recipients {
        inbox.expect_connected(to, &fan);
    }

    let client = std::sync::Arc::new(client);
    let threads: Vec<_> = publishers
        .iter()
        .map(|&p| {
            let client = client.clone();
            let fan = fan.clone();
            let replies = reply_rx.remove(&p).expect("a reply channel");
            thread::spawn(move || {
                for seq in 0..EACH {
                    let payload = format!("{p}:{seq}").into_bytes();
                    client
                        .publish(fan.clone(), payload, Properties::default(), p, seq)
                        .expect("publish");
                    match replies.recv_timeout(WITHIN) {
                        Ok(Event::Published { tag, result }) => {
                            assert_eq!((tag, result), (seq, Ok(())));
                        }
                        other => panic!("publisher {p}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a publisher");
    }

    for &to in &recipients {
        let mut next_seq: HashMap<u64, u64> = HashMap::new();
        for _ in 0..PUBLISHERS * EACH {
            let (_, payload) = inbox.message(to);
            let text = String::from_utf8(payload).expect("UTF-8");
            let (p, seq) = text.split_once(':').expect("p:seq");
            let (p, seq): (u64, u64) = (p.parse().expect("p"), seq.parse().expect("seq"));
            let expected = next_seq.entry(p).or_insert(0);
            assert_eq!(seq, *expected, "recipient {to}: publisher {p} out of order");
            *expected += 1;
        }
        assert!(next_seq.values().all(|&n| n == EACH));
        // Exactly once: nothing more for this recipient.
        assert_eq!(inbox.next_within(to, Duration::from_millis(100)), None);
    }
    drop(client);
    router.join().expect("the router");
}

#[test]
fn idle_client_closes_its_connections() {
    if skipped() {
        return;
    }
    let server = Server::start();
    let mut config = server.config();
    config.common.idle_timeout = Duration::from_millis(500);
    let (client, mut inbox) = open(config);
    let keep = topic("keep");
    let gone = topic("gone");
    client.subscribe(keep.clone(), 1).expect("subscribe");
    client.subscribe(gone.clone(), 2).expect("subscribe");
    inbox.expect_connected(1, &keep);
    inbox.expect_connected(2, &gone);
    publish(&client, &keep, b"x", 3, 1);
    assert_eq!(inbox.published(3, 1), Ok(()));
    assert_eq!(inbox.message(1).1, b"x");
    assert_eq!(
        server.our_backends(),
        2,
        "one listening, one publishing connection"
    );

    // UNLISTEN: the other channel keeps its subscription.
    client.unsubscribe(gone.clone(), 2).expect("unsubscribe");
    server.psql("NOTIFY gone, 'not for 2'; NOTIFY keep, 'for 1'");
    assert_eq!(inbox.message(1).1, b"for 1");
    assert_eq!(inbox.next_within(2, Duration::from_millis(200)), None);

    // Idle publisher closes; the listener stays while a channel is subscribed.
    eventually("the publisher closing", || client.stats().connections == 1);
    eventually("its backend leaving", || server.our_backends() == 1);
    client.unsubscribe(keep.clone(), 1).expect("unsubscribe");
    eventually("every task ending", || client.stats().tasks == 0);
    assert_eq!(client.stats().connections, 0);
    eventually("every backend leaving", || server.our_backends() == 0);

    // Next use opens them again.
    client.subscribe(keep.clone(), 1).expect("subscribe");
    inbox.expect_connected(1, &keep);
    server.psql("NOTIFY keep, 'back'");
    assert_eq!(inbox.message(1).1, b"back");
    drop(client);
    eventually("close leaving no backend", || server.our_backends() == 0);
}

#[test]
fn a_panicking_task_is_restarted_and_relistens() {
    if skipped() {
        return;
    }
    let server = Server::start();
    let (client, mut inbox) = open(server.config());
    let t = topic("supervised");
    client.subscribe(t.clone(), 1).expect("subscribe");
    inbox.expect_connected(1, &t);
    client.debug_inject_panic().expect("inject");
    assert_eq!(inbox.next(1), Event::Disconnected { topic: t.clone() });
    inbox.expect_connected(1, &t);
    server.psql("NOTIFY supervised, 'still here'");
    assert_eq!(inbox.message(1).1, b"still here");
    match inbox.next(OWNER) {
        Event::Warning { message } => assert!(message.contains("panicked"), "{message}"),
        other => panic!("expected a warning, got {other:?}"),
    }
}
