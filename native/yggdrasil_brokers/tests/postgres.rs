//! The `:postgres` broker against real private PostgreSQL clusters (ctl.sh), with `psql` as the
//! independent client: NOTIFY from it to us, LISTEN in it to see what we publish.
#![cfg(feature = "postgres")]
mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use support::{eventually, free_port, next_tag, open_at, skip, Inbox, Server, WAIT};
use yggdrasil_brokers::{Client, ClientStats, Common, Data, Event, Given, Name};

const OWNER: u64 = 0;

/// psql, and the server binaries ctl.sh runs (Debian keeps those off PATH, in
/// /usr/lib/postgresql/*/bin). Missing ones fail the test unless YGG_SKIP_BROKERS=1.
fn skip_postgres() -> bool {
    let packaged = std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| {
            versions
                .flatten()
                .any(|v| v.path().join("bin/postgres").exists())
        })
        .unwrap_or(false);
    (!packaged && skip("postgres")) || skip("psql")
}

fn common() -> Common {
    Common {
        publish_timeout: Duration::from_secs(10),
        backoff_max: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(30),
    }
}

fn open_with(hostname: &str, port: u16, common: Common, extra: &[Given]) -> (Client<u64>, Inbox) {
    open_at("postgres", hostname, port, &common, extra, OWNER)
}

fn open(port: u16, common: Common) -> (Client<u64>, Inbox) {
    open_with("127.0.0.1", port, common, &[])
}

fn topic(name: &str) -> Name {
    Name::from(name)
}

/// Publishes through the client and waits for its reply.
fn publish(
    client: &Client<u64>,
    inbox: &mut Inbox,
    name: &str,
    payload: &[u8],
) -> Result<(), String> {
    support::publish_and_wait(client, inbox, topic(name), payload)
}

/// The next message to `to`: (name, payload), its metadata checked against the name.
fn message(inbox: &mut Inbox, to: u64) -> (Name, Vec<u8>) {
    match inbox.message(to) {
        Event::Message {
            name,
            payload,
            metadata,
        } => {
            let channel = name.text().expect("a postgres name is UTF-8 text");
            assert_eq!(
                metadata,
                Data::fields([("channel", Data::text(channel))]),
                "metadata.channel is the channel"
            );
            (name, payload)
        }
        other => panic!("not a postgres message: {other:?}"),
    }
}

fn payload(inbox: &mut Inbox, to: u64) -> Vec<u8> {
    message(inbox, to).1
}

// ---------------------------------------------------------------------- psql --

fn psql_command(port: u16) -> Command {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "postgres"]);
    command
}

/// Runs SQL in a fresh psql session; its output.
fn psql(server: &Server, sql: &str) -> String {
    let out = psql_command(server.port)
        .arg("-c")
        .arg(sql)
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql -c {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// How many of our connections the server has (they name themselves "yggdrasil ...").
fn our_backends(server: &Server) -> usize {
    psql(
        server,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'yggdrasil%'",
    )
    .parse()
    .expect("a count")
}

/// An interactive psql session: LISTEN on the other side, or a transaction kept open.
struct Psql {
    child: Child,
    stdin: ChildStdin,
    output: Receiver<Vec<u8>>,
    seen: Vec<u8>,
    commands: usize,
}

impl Psql {
    fn open(server: &Server) -> Psql {
        let mut child = psql_command(server.port)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("psql runs");
        let stdin = child.stdin.take().expect("psql stdin");
        let mut stdout = child.stdout.take().expect("psql stdout");
        let (tx, output) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
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
            commands: 0,
        }
    }

    /// Sends SQL (psql runs each statement on its own) and waits until psql has run it.
    fn run(&mut self, sql: &str) {
        self.commands += 1;
        let marker = format!("-- done {} --", self.commands);
        writeln!(self.stdin, "{sql}\n\\echo {marker}").expect("write to psql");
        self.stdin.flush().expect("flush psql");
        let until = Instant::now() + WAIT;
        while !self.text().contains(&marker) {
            match self.output.recv_deadline(until) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => panic!("psql did not run {sql:?}; its output: {:?}", self.text()),
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits until psql has printed `count` notifications: (channel, payload) in arrival order.
    /// psql prints them after a command, so it is given trivial ones meanwhile.
    fn notifications(&mut self, count: usize) -> Vec<(String, String)> {
        let until = Instant::now() + WAIT;
        loop {
            let found = parse_notifications(&self.text());
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < until,
                "psql saw {} of {count} notifications: {found:?}",
                found.len()
            );
            std::thread::sleep(Duration::from_millis(20));
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

/// psql's `Asynchronous notification "CHANNEL" with payload "PAYLOAD" received from server
/// process with PID N.` (channel and payload printed raw, newlines included).
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
            rest[..middle].to_string(),
            rest[middle + MIDDLE.len()..end].to_string(),
        ));
        rest = &rest[end + END.len()..];
    }
    found
}

// --------------------------------------------------------------------- tests --

#[test]
fn connected_then_notifications_from_psql_byte_for_byte() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("orders"), 1).expect("subscribe");
    assert_eq!(
        inbox.connected(1).event,
        Event::Connected {
            name: topic("orders")
        }
    );

    psql(&server, "NOTIFY orders, 'plain'");
    // Dollar quoting keeps spaces, the newline and the tab exactly as written.
    psql(
        &server,
        "SELECT pg_notify('orders', $$  two  spaces\nnew line\ttab é ü 日本 🎉 $$)",
    );
    psql(&server, "NOTIFY orders");
    assert_eq!(message(&mut inbox, 1), (topic("orders"), b"plain".to_vec()));
    assert_eq!(
        payload(&mut inbox, 1),
        "  two  spaces\nnew line\ttab é ü 日本 🎉 ".as_bytes()
    );
    assert_eq!(payload(&mut inbox, 1), b"", "an empty payload is a payload");

    // PostgreSQL folds identical notifications of one transaction into one; each publish is its
    // own transaction, so each one arrives.
    for _ in 0..3 {
        assert_eq!(publish(&client, &mut inbox, "orders", b"same"), Ok(()));
    }
    for _ in 0..3 {
        assert_eq!(payload(&mut inbox, 1), b"same");
    }
    inbox.assert_none_within(Duration::from_millis(300), |d| d.to == 1);
}

#[test]
fn published_payloads_reach_psql_byte_for_byte() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let mut listener = Psql::open(&server);
    listener.run("LISTEN \"Orders Feed\";");
    let (client, mut inbox) = open(server.port, common());
    let payloads = [
        "plain".to_string(),
        "  two  spaces\nnew line\r\nand é ü 日本 🎉 ".to_string(),
        "'quotes' \"and\" $$dollars$$ \\backslash".to_string(),
        "x".repeat(7999),
    ];
    for p in &payloads {
        assert_eq!(
            publish(&client, &mut inbox, "Orders Feed", p.as_bytes()),
            Ok(())
        );
    }
    let expected: Vec<_> = payloads
        .iter()
        .map(|p| ("Orders Feed".to_string(), p.clone()))
        .collect();
    assert_eq!(listener.notifications(payloads.len()), expected);
}

#[test]
fn names_keep_their_case_spaces_and_quotes() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    let longest = "n".repeat(63);
    // (our name, the same channel quoted by hand for psql)
    let names = [
        ("Orders", "\"Orders\"".to_string()),
        ("orders", "orders".to_string()),
        ("with space", "\"with space\"".to_string()),
        ("say \"hi\"", "\"say \"\"hi\"\"\"".to_string()),
        (
            "semi; DROP TABLE x; --",
            "\"semi; DROP TABLE x; --\"".to_string(),
        ),
        ("ünïcødé 日本", "\"ünïcødé 日本\"".to_string()),
        (&longest, format!("\"{longest}\"")),
    ];
    let to = |i: usize| i as u64 + 1;
    for (i, (name, _)) in names.iter().enumerate() {
        client.subscribe(topic(name), to(i)).expect("subscribe");
    }
    for (i, (name, _)) in names.iter().enumerate() {
        assert_eq!(
            inbox.connected(to(i)).event,
            Event::Connected { name: topic(name) }
        );
    }
    for (i, (_, quoted)) in names.iter().enumerate() {
        psql(&server, &format!("NOTIFY {quoted}, 'to {i}'"));
    }
    // Each channel got its own notification, and nothing else came first.
    for (i, (name, _)) in names.iter().enumerate() {
        assert_eq!(
            message(&mut inbox, to(i)),
            (topic(name), format!("to {i}").into_bytes())
        );
    }
    // What we publish reaches the same channels (pg_notify takes the name as text).
    for (i, (name, _)) in names.iter().enumerate() {
        assert_eq!(publish(&client, &mut inbox, name, b"ours"), Ok(()));
        assert_eq!(message(&mut inbox, to(i)), (topic(name), b"ours".to_vec()));
    }
    inbox.assert_none_within(Duration::from_millis(300), |d| {
        matches!(d.event, Event::Message { .. })
    });
}

#[test]
fn bad_names_and_payloads_are_refused_before_anything_is_sent() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    let long = "n".repeat(64);
    assert_eq!(client.check_name(&topic(&"n".repeat(63))), Ok(()));
    let refused_names = [
        topic(&long),
        // 62 ASCII bytes and one two-byte character: 64 bytes.
        topic(&format!("{}é", "n".repeat(62))),
        topic(""),
        topic("a\0b"),
        // Not UTF-8 text, and not a binary at all.
        Name::Bytes(vec![b'a', 0xff]),
        Name::pair("a", "b"),
    ];
    for name in refused_names {
        assert!(client.check_name(&name).is_err(), "{name:?}");
        assert!(client.subscribe(name.clone(), 1).is_err(), "{name:?}");
        assert!(
            client
                .publish(name.clone(), b"x".to_vec(), &[], 1, 1)
                .is_err(),
            "{name:?}"
        );
    }
    let refused = |payload: Vec<u8>| {
        client
            .publish(topic("fine"), payload, &[], 1, next_tag())
            .expect_err("refused payload")
            .to_string()
    };
    let too_long = refused(vec![b'x'; 8000]);
    assert!(too_long.contains("8000"), "{too_long}");
    let not_utf8 = refused(vec![b'a', 0xc3, 0x28]);
    assert!(not_utf8.contains("UTF-8"), "{not_utf8}");
    let nul = refused(b"a\0b".to_vec());
    assert!(nul.contains("NUL"), "{nul}");
    // Nothing was started for them and no reply is owed.
    assert_eq!(client.stats(), ClientStats::default());
    assert_eq!(our_backends(&server), 0);
    inbox.assert_none_within(Duration::from_millis(200), |_| true);

    // The largest payload PostgreSQL takes goes through, multi-byte characters and all.
    client.subscribe(topic("fine"), 2).expect("subscribe");
    inbox.connected(2);
    let largest = "é".repeat(3999) + "x";
    assert_eq!(largest.len(), 7999);
    assert_eq!(
        publish(&client, &mut inbox, "fine", largest.as_bytes()),
        Ok(())
    );
    assert_eq!(payload(&mut inbox, 2), largest.as_bytes());
}

#[test]
fn a_notify_in_a_transaction_arrives_after_commit_and_never_after_rollback() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("tx"), 1).expect("subscribe");
    inbox.connected(1);

    let mut session = Psql::open(&server);
    session.run("BEGIN; NOTIFY tx, 'committed';");
    // Sent and committed while that transaction is open: it must come first.
    psql(&server, "NOTIFY tx, 'outside'");
    assert_eq!(payload(&mut inbox, 1), b"outside");
    session.run("COMMIT;");
    assert_eq!(payload(&mut inbox, 1), b"committed");

    session.run("BEGIN; NOTIFY tx, 'rolled back'; ROLLBACK;");
    psql(&server, "NOTIFY tx, 'after rollback'");
    // The next message is the later one: the rolled-back one never came.
    assert_eq!(payload(&mut inbox, 1), b"after rollback");
}

#[test]
fn a_stopped_server_disconnects_everyone_and_its_restart_relistens_by_itself() {
    if skip_postgres() {
        return;
    }
    let mut server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    let subscribers = [(1, "restart A"), (2, "restart A"), (3, "restart_b")];
    for (to, name) in subscribers {
        client.subscribe(topic(name), to).expect("subscribe");
    }
    for (to, _) in subscribers {
        inbox.connected(to);
    }
    assert_eq!(publish(&client, &mut inbox, "restart A", b"before"), Ok(()));
    assert_eq!(payload(&mut inbox, 1), b"before");
    assert_eq!(payload(&mut inbox, 2), b"before");

    server.stop();
    for (to, name) in subscribers {
        assert_eq!(
            inbox.disconnected(to).event,
            Event::Disconnected { name: topic(name) }
        );
    }
    server.restart();
    // No new subscribe: the client reconnects and LISTENs again by itself.
    for (to, name) in subscribers {
        assert_eq!(
            inbox.connected(to).event,
            Event::Connected { name: topic(name) }
        );
    }
    psql(&server, "NOTIFY \"restart A\", 'from psql'");
    psql(&server, "NOTIFY restart_b, 'to b'");
    assert_eq!(payload(&mut inbox, 1), b"from psql");
    assert_eq!(payload(&mut inbox, 2), b"from psql");
    assert_eq!(payload(&mut inbox, 3), b"to b");
    // The publishing connection died too and comes back on the next publish.
    assert_eq!(publish(&client, &mut inbox, "restart_b", b"after"), Ok(()));
    assert_eq!(payload(&mut inbox, 3), b"after");
}

#[test]
fn a_killed_server_disconnects_and_comes_back() {
    if skip_postgres() {
        return;
    }
    let mut server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("crash"), 1).expect("subscribe");
    inbox.connected(1);
    // SIGKILL of the postmaster: its backends see their parent die and exit.
    let postmaster = server.pid;
    server.kill();
    inbox.disconnected(1);
    // PostgreSQL refuses to start while the old postmaster's pid exists, and an unreaped zombie
    // does (ctl.sh counts it as gone): wait until init has reaped it.
    assert!(eventually(
        || !Path::new(&format!("/proc/{postmaster}")).exists()
    ));
    server.restart();
    inbox.connected(1);
    psql(&server, "NOTIFY crash, 'after'");
    assert_eq!(payload(&mut inbox, 1), b"after");
}

#[test]
fn an_unreachable_server_warns_per_attempt_and_publish_times_out() {
    if skip_postgres() {
        return;
    }
    let (client, mut inbox) = open(
        free_port(),
        Common {
            publish_timeout: Duration::from_millis(1000),
            backoff_max: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(30),
        },
    );
    client
        .subscribe(topic("nowhere"), 1)
        .expect("subscribe still succeeds");
    for _ in 0..3 {
        inbox.wait("a connect warning", |d| {
            d.to == OWNER
                && matches!(&d.event, Event::Warning { message }
                    if message.contains("cannot connect to postgres"))
        });
    }
    let tag = next_tag();
    client
        .publish(topic("nowhere"), b"x".to_vec(), &[], 7, tag)
        .expect("publish accepted");
    let reply = inbox.wait(
        "the publish reply",
        |d| matches!(d.event, Event::Published { tag: t, .. } if t == tag),
    );
    assert_eq!(reply.to, 7);
    match reply.event {
        Event::Published {
            result: Err(reason),
            ..
        } => assert!(reason.contains("publish_timeout"), "{reason}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    inbox.assert_none_within(Duration::from_millis(500), |d| {
        matches!(d.event, Event::Connected { .. })
    });
}

#[test]
fn concurrent_publishers_reach_every_recipient_once_in_order() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    support::concurrent_publishers_reach_every_recipient_once_in_order(
        &client,
        &mut inbox,
        topic("load"),
    );
}

#[test]
fn unlisten_idle_close_and_close_leave_no_backend() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(
        server.port,
        Common {
            idle_timeout: Duration::from_millis(300),
            ..common()
        },
    );
    client.subscribe(topic("keep"), 1).expect("subscribe");
    client.subscribe(topic("gone"), 2).expect("subscribe");
    inbox.connected(1);
    inbox.connected(2);
    assert_eq!(publish(&client, &mut inbox, "keep", b"x"), Ok(()));
    assert_eq!(payload(&mut inbox, 1), b"x");
    assert_eq!(client.stats().connections, 2);
    assert_eq!(our_backends(&server), 2, "one listening, one publishing");

    // UNLISTEN of one channel; the other keeps its subscription.
    client.unsubscribe(topic("gone"), 2).expect("unsubscribe");
    psql(&server, "NOTIFY gone, 'not for 2'; NOTIFY keep, 'for 1'");
    assert_eq!(payload(&mut inbox, 1), b"for 1");
    inbox.assert_none_within(Duration::from_millis(200), |d| d.to == 2);

    // The idle publisher closes; the listener stays while a channel is subscribed.
    assert!(eventually(|| client.stats().connections == 1));
    assert!(eventually(|| our_backends(&server) == 1));
    client.unsubscribe(topic("keep"), 1).expect("unsubscribe");
    assert!(
        eventually(|| client.stats() == ClientStats::default()),
        "{:?}",
        client.stats()
    );
    assert!(eventually(|| our_backends(&server) == 0));

    // Next use opens them again; close ends them at once.
    client.subscribe(topic("keep"), 1).expect("subscribe again");
    inbox.connected(1);
    assert_eq!(publish(&client, &mut inbox, "keep", b"y"), Ok(()));
    assert_eq!(payload(&mut inbox, 1), b"y");
    assert_eq!(our_backends(&server), 2);
    client.close();
    assert!(eventually(
        || client.stats().connections == 0 && client.stats().tasks == 0
    ));
    assert!(eventually(|| our_backends(&server) == 0));
}

#[test]
fn a_panic_in_the_tasks_is_survived_and_relistens() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("sturdy"), 1).expect("subscribe");
    inbox.connected(1);
    assert_eq!(publish(&client, &mut inbox, "sturdy", b"before"), Ok(()));
    assert_eq!(payload(&mut inbox, 1), b"before");

    eprintln!("note: two panics 'injected by debug_inject_panic' are expected below");
    client.debug_inject_panic().expect("inject");
    for task in ["listener", "publisher"] {
        inbox.wait("a panic warning", |d| {
            matches!(&d.event, Event::Warning { message }
                if message.contains(task) && message.contains("panicked"))
        });
    }
    inbox.disconnected(1);
    inbox.connected(1);
    psql(&server, "NOTIFY sturdy, 'after'");
    assert_eq!(payload(&mut inbox, 1), b"after");
    assert_eq!(publish(&client, &mut inbox, "sturdy", b"again"), Ok(()));
    assert_eq!(payload(&mut inbox, 1), b"again");
    // The panicked session's connections were closed, not leaked.
    assert!(eventually(|| our_backends(&server) == 2));
}

/// A listener behind its server: the notifications read and not taken fill their queue, and the
/// session is cut rather than left to the server's NOTIFY queue. What was queued comes first, in
/// order, then the gap (`Disconnected`, `Connected` on the new session), counted in `cuts` and
/// warned with its reason; a notification sent after it arrives.
#[test]
fn a_listener_behind_the_server_is_cut_after_what_it_had_read() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("flood"), 1).expect("subscribe");
    inbox.connected(1);
    client
        .debug_stall_listener(Duration::from_secs(10))
        .expect("stalls");
    // One transaction: the server sends all 50,000 at its commit, while the listener sleeps
    // (long enough for a slow machine: the test takes what psql takes, plus the cut).
    psql(
        &server,
        "SELECT count(pg_notify('flood', i::text)) FROM generate_series(1, 50000) i",
    );
    // The queue's 16,384 (`NOTIFICATIONS_QUEUED`) in order, then the gap, nothing between.
    for n in 1..=16_384 {
        match inbox.next(1) {
            Event::Message { payload, .. } => assert_eq!(payload, n.to_string().as_bytes()),
            other => panic!("notification {n} expected, got {other:?}"),
        }
    }
    let gap = (inbox.next(1), inbox.next(1));
    assert!(
        matches!(gap, (Event::Disconnected { .. }, Event::Connected { .. })),
        "{gap:?}"
    );
    inbox.wait("the cut's warning", |d| {
        matches!(&d.event, Event::Warning { message }
            if message.contains("fell behind the server") && message.contains("cut"))
    });
    assert_eq!(client.stats().cuts, 1);
    psql(&server, "NOTIFY flood, 'marker'");
    assert_eq!(payload(&mut inbox, 1), b"marker");
    assert!(eventually(|| our_backends(&server) == 1));
}

#[test]
fn a_unix_socket_directory_works_as_hostname() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    // ctl.sh puts the cluster's socket in DIR/postgres.
    let socket_dir = server.dir().join("postgres");
    assert!(Path::new(&socket_dir)
        .join(format!(".s.PGSQL.{}", server.port))
        .exists());
    let (client, mut inbox) = open_with(&socket_dir.to_string_lossy(), server.port, common(), &[]);
    client.subscribe(topic("local"), 1).expect("subscribe");
    inbox.connected(1);
    assert_eq!(
        publish(&client, &mut inbox, "local", b"over a socket"),
        Ok(())
    );
    assert_eq!(payload(&mut inbox, 1), b"over a socket");
}

/// The pid of our listening connection's backend process.
fn listening_backend(server: &Server) -> u32 {
    psql(
        server,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'yggdrasil listen'",
    )
    .parse()
    .expect("one listening backend")
}

#[test]
fn a_terminated_backend_is_replaced_and_relistened() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("admin"), 1).expect("subscribe");
    inbox.connected(1);
    let old = listening_backend(&server);
    // What an operator (or a pooler) does: the server closes that connection only.
    assert_eq!(
        psql(&server, &format!("SELECT pg_terminate_backend({old})")),
        "t"
    );
    inbox.disconnected(1);
    inbox.connected(1);
    assert_ne!(listening_backend(&server), old);
    psql(&server, "NOTIFY admin, 'after'");
    assert_eq!(payload(&mut inbox, 1), b"after");
}

/// SIGCONTs a stopped process when dropped, so that a failing test leaves nothing stopped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        let status = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -STOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[test]
fn a_backend_that_stops_answering_is_noticed_by_the_keepalive() {
    if skip_postgres() {
        return;
    }
    let server = Server::start("postgres");
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("hung"), 1).expect("subscribe");
    inbox.connected(1);
    // The backend hangs with its socket open: only a ping that gets no answer can tell.
    let hung = Stopped::new(listening_backend(&server));
    inbox.disconnected(1);
    inbox.connected(1);
    psql(&server, "NOTIFY hung, 'on the new connection'");
    assert_eq!(payload(&mut inbox, 1), b"on the new connection");
    drop(hung);
}
