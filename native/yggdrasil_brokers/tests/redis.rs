//! The `:redis` broker against real private redis-server instances, with
//! `redis-cli` as the independent client.
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    csv_fields, eventually, free_port, int, next_tag, open_at, open_client, skip, text,
    unquote_redis, Inbox, Server, ServerCert, Tls, WAIT,
};
use yggdrasil_brokers::{
    Client, ClientStats, Common, Data, Delivery, Event, EventSink, Given, Name, Raw,
};

const OWNER: u64 = 0;

/// A private redis-server, or None when broker tests are skipped.
fn start_redis() -> Option<Server> {
    (!skip("redis-server")).then(|| Server::start("redis"))
}

fn common() -> Common {
    Common {
        publish_timeout: Duration::from_secs(10),
        backoff_max: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(30),
    }
}

fn open(port: u16, common: Common) -> (Client<u64>, Inbox) {
    open_at("redis", "127.0.0.1", port, &common, &[], OWNER)
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

/// (subscribed name, payload, `metadata.channel`); the metadata holds the
/// channel and nothing else.
fn message_parts(event: Event) -> (Name, Vec<u8>, Vec<u8>) {
    match event {
        Event::Message {
            name,
            payload,
            metadata,
        } => {
            let Some(Data::Bytes(channel)) = metadata.field("channel") else {
                panic!("no binary metadata.channel: {metadata:?}");
            };
            let channel = channel.clone();
            assert_eq!(
                metadata,
                Data::fields([("channel", Data::Bytes(channel.clone()))]),
                "redis metadata is %{{channel: ...}}"
            );
            (name, payload, channel)
        }
        other => panic!("not a redis message: {other:?}"),
    }
}

/// Payloads that break naive framing: spaces, newlines, NUL, quotes, UTF-8.
fn awkward_payloads() -> Vec<Vec<u8>> {
    vec![
        b"plain".to_vec(),
        b"with spaces  and\ttabs".to_vec(),
        b"line one\nline two\r\n".to_vec(),
        b"nul\0in\0the middle\0".to_vec(),
        "utf-8: h\u{e9}llo w\u{f6}rld \u{1f333} \u{4e16}\u{754c}"
            .as_bytes()
            .to_vec(),
        b"quotes \" and \\ backslash".to_vec(),
        (0u8..=255).collect(),
        Vec::new(),
    ]
}

#[test]
fn connected_then_events_with_channel_metadata() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("news"), 1).expect("subscribe");
    let connected = inbox.connected(1);
    assert_eq!(
        connected.event,
        Event::Connected {
            name: topic("news")
        }
    );

    assert_eq!(server.redis_cli_text(&["PUBLISH", "news", "hello"]), "1");
    let (t, payload, channel) = message_parts(inbox.message(1));
    assert_eq!(
        (t, payload, channel),
        (topic("news"), b"hello".to_vec(), b"news".to_vec())
    );
}

#[test]
fn payloads_from_redis_cli_arrive_byte_for_byte() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("bytes"), 1).expect("subscribe");
    inbox.connected(1);

    for payload in awkward_payloads() {
        // `-x` takes the last argument from stdin, unmodified.
        server.redis_cli_with_input(&["-x", "PUBLISH", "bytes"], &payload);
        let (_, got, _) = message_parts(inbox.message(1));
        assert_eq!(
            got,
            payload,
            "payload {:?}",
            String::from_utf8_lossy(&payload)
        );
    }
}

#[test]
fn payloads_to_redis_cli_leave_byte_for_byte() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());

    let mut cli = Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "--csv", "SUBSCRIBE", "out"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli runs");
    let (lines_tx, lines) = crossbeam_channel::unbounded();
    let stdout = cli.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |prefix: &str| loop {
        let line = lines.recv_timeout(WAIT).expect("redis-cli output");
        if line.starts_with(prefix) {
            return line;
        }
    };
    next_line("\"subscribe\"");

    for payload in awkward_payloads() {
        assert_eq!(publish(&client, &mut inbox, "out", &payload), Ok(()));
        let fields = csv_fields(&next_line("\"message\""));
        assert_eq!(fields.len(), 3, "{fields:?}");
        assert_eq!(unquote_redis(&fields[1]), b"out");
        assert_eq!(unquote_redis(&fields[2]), payload);
    }
    cli.kill().expect("stop redis-cli");
    let _ = cli.wait();
    let _ = reader.join();
}

#[test]
fn a_pattern_receives_every_matching_channel_with_its_name() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("orders.*"), 1).expect("subscribe");
    inbox.connected(1);

    for channel in ["orders.eu", "other", "orders.us", "orders.end"] {
        assert_eq!(
            publish(&client, &mut inbox, channel, channel.as_bytes()),
            Ok(())
        );
    }
    let mut channels = Vec::new();
    for _ in 0..3 {
        let (t, payload, channel) = message_parts(inbox.message(1));
        assert_eq!(t, topic("orders.*"));
        assert_eq!(payload, channel);
        channels.push(String::from_utf8(channel).expect("utf-8"));
    }
    assert_eq!(channels, ["orders.eu", "orders.us", "orders.end"]);
}

#[test]
fn recipients_of_one_topic_share_one_subscription() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("shared"), 1).expect("subscribe");
    client.subscribe(topic("shared"), 2).expect("subscribe");
    client
        .subscribe(topic("shared"), 1)
        .expect("subscribing twice is fine");
    inbox.connected(1);
    inbox.connected(2);
    assert_eq!(server.redis_cli_text(&["PUBSUB", "NUMPAT"]), "1");
    assert_eq!(
        client.stats(),
        ClientStats {
            connections: 1,
            tasks: 1,
            topics: 1,
            subscriptions: 2,
            cuts: 0
        }
    );

    for payload in ["m1", "m2"] {
        server.redis_cli_text(&["PUBLISH", "shared", payload]);
    }
    for to in [1, 2] {
        // m1 then m2, once each: the second subscribe of 1 added nothing.
        assert_eq!(message_parts(inbox.message(to)).1, b"m1");
        assert_eq!(message_parts(inbox.message(to)).1, b"m2");
    }
    inbox.assert_none_within(Duration::from_millis(300), |d| {
        matches!(d.event, Event::Message { .. } | Event::Connected { .. })
    });
}

#[test]
fn unsubscribe_stops_delivery_and_the_last_one_drops_the_pattern() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("leave"), 1).expect("subscribe");
    client.subscribe(topic("leave"), 2).expect("subscribe");
    inbox.connected(1);
    inbox.connected(2);

    client.unsubscribe(topic("leave"), 2).expect("unsubscribe");
    // Commands are applied before later messages are read, so m1 already
    // finds 2 gone.
    assert_eq!(publish(&client, &mut inbox, "leave", b"m1"), Ok(()));
    assert_eq!(message_parts(inbox.message(1)).1, b"m1");
    client.unsubscribe(topic("leave"), 1).expect("unsubscribe");
    assert!(eventually(
        || server.redis_cli_text(&["PUBSUB", "NUMPAT"]) == "0"
    ));
    assert_eq!(publish(&client, &mut inbox, "leave", b"m2"), Ok(()));
    inbox.assert_none_within(Duration::from_millis(300), |d| {
        matches!(d.event, Event::Message { .. })
    });
    assert_eq!(client.stats().topics, 0);
}

#[test]
fn a_killed_server_disconnects_everyone_and_its_restart_reconnects_them() {
    let Some(mut server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("a"), 1).expect("subscribe");
    client.subscribe(topic("a"), 2).expect("subscribe");
    client.subscribe(topic("b"), 3).expect("subscribe");
    for to in [1, 2, 3] {
        inbox.connected(to);
    }
    assert_eq!(publish(&client, &mut inbox, "b", b"before"), Ok(()));
    assert_eq!(message_parts(inbox.message(3)).1, b"before");

    server.kill();
    for (to, name) in [(1, "a"), (2, "a"), (3, "b")] {
        assert_eq!(
            inbox.disconnected(to).event,
            Event::Disconnected { name: topic(name) }
        );
    }

    server.restart();
    for (to, name) in [(1, "a"), (2, "a"), (3, "b")] {
        assert_eq!(
            inbox.connected(to).event,
            Event::Connected { name: topic(name) }
        );
    }
    server.redis_cli_text(&["PUBLISH", "a", "after"]);
    assert_eq!(message_parts(inbox.message(1)).1, b"after");
    assert_eq!(message_parts(inbox.message(2)).1, b"after");
    // The publishing connection died too and comes back by itself.
    assert_eq!(publish(&client, &mut inbox, "b", b"after"), Ok(()));
    assert_eq!(message_parts(inbox.message(3)).1, b"after");
}

#[test]
fn an_unreachable_server_warns_per_attempt_and_publish_times_out() {
    if skip("redis-server") {
        return;
    }
    let port = free_port();
    let (client, mut inbox) = open(
        port,
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
                && matches!(&d.event, Event::Warning { message } if message.contains("cannot connect"))
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
        } => {
            assert!(reason.contains("publish_timeout"), "{reason}")
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    inbox.assert_none_within(Duration::from_millis(500), |d| {
        matches!(d.event, Event::Connected { .. })
    });

    // A publish still waiting when the client closes gets its reply at once.
    let tag = next_tag();
    client
        .publish(topic("nowhere"), b"x".to_vec(), &[], 7, tag)
        .expect("publish accepted");
    client.close();
    assert!(inbox.published(tag).is_err());
    assert!(client.subscribe(topic("nowhere"), 1).is_err());
}

#[test]
fn publishes_beyond_the_unanswered_bound_are_refused_at_once() {
    if skip("redis-server") {
        return;
    }
    // Nothing listens there: every publish waits for its deadline.
    let (client, mut inbox) = open(
        free_port(),
        Common {
            publish_timeout: Duration::from_secs(2),
            backoff_max: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(30),
        },
    );
    const BOUND: u64 = 65_536;
    for tag in 0..BOUND {
        client
            .publish(topic("nowhere"), b"x".to_vec(), &[], 7, tag)
            .expect("accepted below the bound");
    }
    let refused = client
        .publish(topic("nowhere"), b"x".to_vec(), &[], 7, BOUND)
        .expect_err("one more is refused at once");
    assert!(refused.to_string().contains("overloaded"), "{refused}");
    for _ in 0..BOUND {
        inbox.wait("a timed-out reply", |d| {
            matches!(d.event, Event::Published { result: Err(_), .. })
        });
    }
    // Answered publishes no longer count.
    client
        .publish(topic("nowhere"), b"x".to_vec(), &[], 7, BOUND + 1)
        .expect("accepted again");
    assert!(inbox.published(BOUND + 1).is_err());
}

/// Subscribes waiting for a listener that does not take them (stalled here; a slow server in
/// life) are bounded: one more is refused at once. Unsubscribes are never refused, and once the
/// listener goes on, every waiting command is applied and subscribes are accepted again.
#[test]
fn subscribes_beyond_the_waiting_bound_are_refused_at_once() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("first"), 1).expect("subscribe");
    inbox.connected(1);
    client
        .debug_stall_listener(Duration::from_secs(5))
        .expect("stalls");
    // Recipients of one topic: applying them is bookkeeping, not a broker round trip each.
    const BOUND: u64 = 65_536;
    for to in 10..10 + BOUND {
        client
            .subscribe(topic("shared"), to)
            .expect("accepted below the bound");
    }
    let refused = client
        .subscribe(topic("one-too-many"), 2)
        .expect_err("one more is refused at once");
    assert!(refused.to_string().contains("overloaded"), "{refused}");
    client
        .unsubscribe(topic("shared"), 10)
        .expect("an unsubscribe is never refused");
    assert!(eventually(|| client.subscribe(topic("later"), 3).is_ok()));
    inbox.connected(3);
    let stats = client.stats();
    assert_eq!((stats.topics, stats.subscriptions), (3, BOUND as usize + 1));
    assert_eq!(publish(&client, &mut inbox, "shared", b"applied"), Ok(()));
    for to in [11, 9 + BOUND] {
        inbox.connected(to);
        assert_eq!(message_parts(inbox.next(to)).1, b"applied");
    }
}

/// Nothing reaches a recipient once its unsubscribe returned, even a message the listener reads
/// while it waits for the broker's answer to an earlier unsubscribe.
#[test]
fn an_unsubscribe_holds_while_an_earlier_one_waits_for_its_answer() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    for (name, to) in [("a", 1), ("b", 2), ("c", 3)] {
        client.subscribe(topic(name), to).expect("subscribe");
        inbox.connected(to);
    }
    // The listener takes both unsubscribes after `b`'s message is in its socket.
    client
        .debug_stall_listener(Duration::from_secs(2))
        .expect("stalls");
    client.unsubscribe(topic("a"), 1).expect("unsubscribe");
    client.unsubscribe(topic("b"), 2).expect("unsubscribe");
    server.redis_cli_text(&["PUBLISH", "b", "after its unsubscribe"]);
    server.redis_cli_text(&["PUBLISH", "c", "marker"]);
    assert_eq!(message_parts(inbox.next(3)).1, b"marker");
    inbox.assert_none_within(Duration::from_millis(300), |d| d.to == 1 || d.to == 2);
}

/// Unsubscribes that undo nothing are refused once 65,536 more of them wait than the client has
/// subscriptions held or waiting, so its command channel stays bounded; a subscribe made meanwhile
/// makes room for one more, and the paired unsubscribe waiting with them is applied.
#[test]
fn unsubscribes_that_undo_nothing_are_bounded() {
    const SLACK: usize = 65_536;
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    for (name, to) in [("held", 1), ("kept", 2)] {
        client.subscribe(topic(name), to).expect("subscribe");
        inbox.connected(to);
    }
    // Nothing is taken from the command channel while the listener stalls.
    client
        .debug_stall_listener(Duration::from_secs(3))
        .expect("stalls");
    client
        .unsubscribe(topic("held"), 1)
        .expect("a paired unsubscribe");
    // Two subscriptions held, one unsubscribe waiting: room for SLACK + 1 more.
    for i in 0..=SLACK {
        client
            .unsubscribe(topic(&format!("never-{i}")), 9)
            .unwrap_or_else(|e| panic!("unsubscribe {i} of {SLACK} refused: {e}"));
    }
    let refused = client
        .unsubscribe(topic("never-one-more"), 9)
        .expect_err("one past the bound");
    assert!(
        refused.to_string().contains("refuses the unsubscribe"),
        "{refused}"
    );
    client
        .subscribe(topic("late"), 3)
        .expect("subscribes are counted apart");
    client
        .unsubscribe(topic("late"), 3)
        .expect("a waiting subscribe makes room");
    assert!(client.unsubscribe(topic("late-again"), 3).is_err());

    // Once the listener took them, the paired unsubscribe took effect, the other subscription
    // holds, and unsubscribes are taken again.
    assert!(eventually(|| client.unsubscribe(topic("x"), 9).is_ok()));
    server.redis_cli_text(&["PUBLISH", "held", "after its unsubscribe"]);
    server.redis_cli_text(&["PUBLISH", "kept", "marker"]);
    assert_eq!(message_parts(inbox.next(2)).1, b"marker");
    server.redis_cli_text(&["PUBLISH", "late", "after its unsubscribe"]);
    inbox.assert_none_within(Duration::from_millis(300), |d| {
        matches!(d.event, Event::Message { .. }) && (d.to == 1 || d.to == 3)
    });
}

/// A recipient that unsubscribes and subscribes again hears `Connected` before any message of
/// the new subscription, even when a message of the old one is read while it is dropped.
#[test]
fn subscribing_again_hears_connected_before_any_message() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("again"), 1).expect("subscribe");
    inbox.connected(1);
    // Both commands are taken in one go, after the message is in the listener's socket.
    client
        .debug_stall_listener(Duration::from_secs(2))
        .expect("stalls");
    client.unsubscribe(topic("again"), 1).expect("unsubscribe");
    client.subscribe(topic("again"), 1).expect("subscribe");
    server.redis_cli_text(&["PUBLISH", "again", "between"]);
    let next = inbox.next(1);
    assert!(matches!(next, Event::Connected { .. }), "{next:?}");
    server.redis_cli_text(&["PUBLISH", "again", "after"]);
    assert_eq!(message_parts(inbox.next(1)).1, b"after");
}

#[test]
fn concurrent_publishers_reach_every_recipient_once_in_order() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    support::concurrent_publishers_reach_every_recipient_once_in_order(
        &client,
        &mut inbox,
        topic("load"),
    );
}

#[test]
fn an_idle_client_closes_its_connections_and_tasks_and_reopens_on_use() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(
        server.port,
        Common {
            idle_timeout: Duration::from_millis(300),
            ..common()
        },
    );
    let clients_on_server = || server.redis_cli_text(&["CLIENT", "LIST"]).lines().count();
    client.subscribe(topic("idle"), 1).expect("subscribe");
    inbox.connected(1);
    assert_eq!(publish(&client, &mut inbox, "idle", b"x"), Ok(()));
    assert_eq!(message_parts(inbox.message(1)).1, b"x");
    assert_eq!(client.stats().connections, 2);
    assert_eq!(client.stats().tasks, 2);
    // Ours two plus the redis-cli asking.
    assert_eq!(clients_on_server(), 3);

    client.unsubscribe(topic("idle"), 1).expect("unsubscribe");
    assert!(
        eventually(|| client.stats() == ClientStats::default()),
        "{:?}",
        client.stats()
    );
    assert!(eventually(|| clients_on_server() == 1));

    client.subscribe(topic("idle"), 1).expect("subscribe again");
    inbox.connected(1);
    assert_eq!(publish(&client, &mut inbox, "idle", b"y"), Ok(()));
    assert_eq!(message_parts(inbox.message(1)).1, b"y");
}

#[test]
fn a_panic_in_the_tasks_is_survived() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("sturdy"), 1).expect("subscribe");
    client.subscribe(topic("sturdy"), 2).expect("subscribe");
    inbox.connected(1);
    inbox.connected(2);
    assert_eq!(publish(&client, &mut inbox, "sturdy", b"before"), Ok(()));

    eprintln!("note: two panics 'injected by debug_inject_panic' are expected below");
    client.debug_inject_panic().expect("inject");
    for task in ["listener", "publisher"] {
        inbox.wait("a panic warning", |d| {
            matches!(&d.event, Event::Warning { message } if message.contains(task) && message.contains("panicked"))
        });
    }
    for to in [1, 2] {
        inbox.disconnected(to);
        inbox.connected(to);
    }
    server.redis_cli_text(&["PUBLISH", "sturdy", "after"]);
    for to in [1, 2] {
        // Messages published before the panic arrive before it: skip them.
        loop {
            if message_parts(inbox.message(to)).1 == b"after" {
                break;
            }
        }
    }
    assert_eq!(publish(&client, &mut inbox, "sturdy", b"again"), Ok(()));
    assert_eq!(client.stats().tasks, 2);
}

/// A sink that panics on every `Disconnected` of recipient 1.
struct PanicsOnDisconnect(crossbeam_channel::Sender<Delivery<u64>>);

impl EventSink<u64> for PanicsOnDisconnect {
    fn deliver(&self, delivery: Delivery<u64>) {
        if delivery.to == 1 && matches!(delivery.event, Event::Disconnected { .. }) {
            panic!("the test's sink refuses a Disconnected");
        }
        let _ = self.0.send(delivery);
    }
}

/// The listener calls its sink while it recovers from a panic of its own
/// (everyone is told `Disconnected`): a sink that panics there loses that
/// event, and the listener still starts again.
#[test]
fn a_sink_that_panics_while_a_task_recovers_ends_no_task() {
    let Some(server) = start_redis() else {
        return;
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let given = support::settings_at("127.0.0.1", server.port, &common(), &[]);
    let client = Client::open("redis", &given, OWNER, PanicsOnDisconnect(tx)).expect("opens");
    let mut inbox = Inbox::new(rx);
    client.subscribe(topic("fragile"), 1).expect("subscribe");
    client.subscribe(topic("fragile"), 2).expect("subscribe");
    inbox.connected(1);
    inbox.connected(2);
    assert_eq!(publish(&client, &mut inbox, "fragile", b"before"), Ok(()));

    eprintln!(
        "note: panics 'injected by debug_inject_panic' and by the test's sink are expected below"
    );
    client.debug_inject_panic().expect("inject");
    for task in ["listener", "publisher"] {
        inbox.wait("a panic warning", |d| {
            matches!(&d.event, Event::Warning { message } if message.contains(task) && message.contains("panicked"))
        });
    }
    inbox.disconnected(2);
    inbox.connected(1);
    inbox.connected(2);
    server.redis_cli_text(&["PUBLISH", "fragile", "after"]);
    for to in [1, 2] {
        // Messages published before the panic arrive before it: skip them.
        while message_parts(inbox.message(to)).1 != b"after" {}
    }
    assert_eq!(publish(&client, &mut inbox, "fragile", b"again"), Ok(()));
    assert_eq!(client.stats().tasks, 2);
}

#[test]
fn close_ends_tasks_and_connections() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(server.port, common());
    client.subscribe(topic("bye"), 1).expect("subscribe");
    inbox.connected(1);
    assert_eq!(publish(&client, &mut inbox, "bye", b"x"), Ok(()));
    client.close();
    assert!(eventually(
        || client.stats().connections == 0 && client.stats().tasks == 0
    ));
    assert!(eventually(|| server
        .redis_cli_text(&["CLIENT", "LIST"])
        .lines()
        .count()
        == 1));
    assert!(client.subscribe(topic("bye"), 1).is_err());
    assert!(client
        .publish(topic("bye"), b"x".to_vec(), &[], 1, u64::MAX)
        .is_err());
    // Refused by an error from publish: no Published event besides.
    inbox.assert_none_within(Duration::from_millis(300), |d| {
        matches!(d.event, Event::Published { tag: u64::MAX, .. })
    });
}

#[test]
fn foreign_names_and_bad_urls_are_refused() {
    let open_with = |given: &[Given]| {
        let (tx, _rx) = crossbeam_channel::unbounded();
        Client::<u64>::open("redis", given, OWNER, tx).map(drop)
    };
    let bad = open_with(&[text("url", "not a url")]).expect_err("a bad url");
    assert!(bad.message().contains("url"), "{bad}");
    let wrong_scheme = open_with(&[text("url", "postgres://u:hush@127.0.0.1/x")])
        .expect_err("another broker's url");
    assert!(!wrong_scheme.message().contains("hush"), "{wrong_scheme}");
    let bad_port = open_with(&[int("port", 0)]).expect_err("port 0");
    assert!(bad_port.message().contains("port"), "{bad_port}");

    // Refused before anything connects: no server needed.
    let (client, mut inbox) = open(free_port(), common());
    assert_eq!(client.check_name(&topic("orders.*")), Ok(()));
    let foreign = [
        // A rabbitmq {exchange, routing_key}.
        Name::pair("amq.topic", "x"),
        Name::Tuple(vec![topic("x")]),
        topic(""),
    ];
    for name in foreign {
        assert!(client.check_name(&name).is_err(), "{name:?}");
        assert!(client.subscribe(name.clone(), 1).is_err(), "{name:?}");
        assert!(client.unsubscribe(name.clone(), 1).is_err(), "{name:?}");
        assert!(
            client.publish(name.clone(), Vec::new(), &[], 1, 1).is_err(),
            "{name:?}"
        );
    }
    // Any bytes are a channel name, not only UTF-8.
    assert_eq!(client.check_name(&Name::Bytes(vec![0xff, 0])), Ok(()));
    assert_eq!(client.stats(), ClientStats::default());
    // Refused by an error from publish: no Published event besides.
    inbox.assert_none_within(Duration::from_millis(200), |_| true);
}

fn open_as(port: u16, username: &str, password: &str) -> (Client<u64>, Inbox) {
    let login = [text("username", username), text("password", password)];
    open_at("redis", "127.0.0.1", port, &common(), &login, OWNER)
}

#[test]
fn a_refused_pattern_is_retried_while_the_others_flow() {
    let Some(server) = start_redis() else {
        return;
    };
    // ACL channel rules match a PSUBSCRIBE pattern literally: ok.1 only.
    let acl = [
        "ACL",
        "SETUSER",
        "limited",
        "on",
        ">secret",
        "resetchannels",
        "&ok.1",
        "+@all",
    ];
    assert_eq!(server.redis_cli_text(&acl), "OK");
    let (client, mut inbox) = open_as(server.port, "limited", "secret");
    client.subscribe(topic("ok.1"), 1).expect("subscribe");
    client.subscribe(topic("no.*"), 2).expect("subscribe");
    inbox.connected(1);
    inbox.wait(
        "a refusal warning",
        |d| matches!(&d.event, Event::Warning { message } if message.contains("refused")),
    );
    // The session stays up for the other topic.
    server.redis_cli_text(&["PUBLISH", "ok.1", "flows"]);
    assert_eq!(message_parts(inbox.message(1)).1, b"flows");

    assert_eq!(
        server.redis_cli_text(&["ACL", "SETUSER", "limited", "&no.*"]),
        "OK"
    );
    assert_eq!(
        inbox.connected(2).event,
        Event::Connected {
            name: topic("no.*")
        }
    );
    server.redis_cli_text(&["PUBLISH", "no.1", "now"]);
    let (t, payload, channel) = message_parts(inbox.message(2));
    assert_eq!(
        (t, payload, channel),
        (topic("no.*"), b"now".to_vec(), b"no.1".to_vec())
    );
}

#[test]
fn a_wrong_password_is_a_warning_per_attempt() {
    let Some(server) = start_redis() else {
        return;
    };
    let acl = [
        "ACL",
        "SETUSER",
        "someone",
        "on",
        ">right",
        "allchannels",
        "+@all",
    ];
    assert_eq!(server.redis_cli_text(&acl), "OK");
    let (client, mut inbox) = open_as(server.port, "someone", "wrong");
    client.subscribe(topic("secret"), 1).expect("subscribe");
    for _ in 0..2 {
        inbox.wait("an auth warning", |d| {
            matches!(&d.event, Event::Warning { message } if message.contains("cannot connect"))
        });
    }
    inbox.assert_none_within(Duration::from_millis(300), |d| {
        matches!(d.event, Event::Connected { .. })
    });
}

#[test]
fn a_server_that_stops_answering_is_a_lost_connection() {
    let Some(server) = start_redis() else {
        return;
    };
    let (client, mut inbox) = open(
        server.port,
        Common {
            publish_timeout: Duration::from_secs(2),
            ..common()
        },
    );
    client.subscribe(topic("hang"), 1).expect("subscribe");
    inbox.connected(1);
    assert_eq!(publish(&client, &mut inbox, "hang", b"before"), Ok(()));
    assert_eq!(message_parts(inbox.message(1)).1, b"before");

    // The socket stays open; only the keepalive ping can tell.
    server.pause();
    inbox.disconnected(1);
    assert!(publish(&client, &mut inbox, "hang", b"lost").is_err());

    server.resume();
    inbox.connected(1);
    assert_eq!(publish(&client, &mut inbox, "hang", b"after"), Ok(()));
    // "lost" may or may not have been delivered late: the server got it.
    loop {
        if message_parts(inbox.message(1)).1 == b"after" {
            break;
        }
    }
}

#[test]
fn a_url_overrides_the_other_keys_and_clients_keep_to_their_server() {
    let (Some(one), Some(two)) = (start_redis(), start_redis()) else {
        return;
    };
    // Given before the keys it overrides: the url wins wherever it is.
    let mut by_url = vec![Given::new(
        "url",
        Raw::Text(format!("redis://127.0.0.1:{}/0", two.port)),
    )];
    // Would not resolve: the url must win.
    by_url.extend([text("hostname", "nowhere.invalid"), int("port", 1)]);
    by_url.extend(support::common_settings(&common()));
    let (client_two, mut inbox_two) = open_client("redis", &by_url, OWNER);
    let (client_one, mut inbox_one) = open(one.port, common());
    client_one.subscribe(topic("where"), 1).expect("subscribe");
    client_two.subscribe(topic("where"), 2).expect("subscribe");
    inbox_one.connected(1);
    inbox_two.connected(2);

    one.redis_cli_text(&["PUBLISH", "where", "one"]);
    two.redis_cli_text(&["PUBLISH", "where", "two"]);
    assert_eq!(message_parts(inbox_one.message(1)).1, b"one");
    assert_eq!(message_parts(inbox_two.message(2)).1, b"two");
    inbox_one.assert_none_within(Duration::from_millis(300), |d| {
        matches!(d.event, Event::Message { .. })
    });
    inbox_two.assert_none_within(Duration::from_millis(300), |d| {
        matches!(d.event, Event::Message { .. })
    });
}

/// The TLS mode of the test servers (support::Server::start_tls), checked
/// with redis-cli alone: the client's TLS is tested against the same servers.
#[test]
fn the_tls_test_server_speaks_tls_only_with_the_chosen_cert() {
    if skip("redis-server") {
        return;
    }
    let mut server = Server::start_tls("redis", Tls::default());
    let files = server.tls_files().expect("certs made");
    assert_eq!(server.redis_cli_text(&["ping"]), "PONG");

    // Plaintext on the TLS port: no answer.
    let plain = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "ping"])
        .output()
        .expect("redis-cli runs");
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("PONG"));

    // Another CA's cert on the same port: refused by a client trusting the test CA.
    server.stop();
    server.set_tls(Some(Tls {
        cert: ServerCert::Untrusted,
        ..Tls::default()
    }));
    server.restart();
    let refused = server.redis_cli(&["ping"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate verify failed"),
        "{refused:?}"
    );
    assert!(files.untrusted_ca.exists());

    // Client certs required: refused without one, served with one.
    server.stop();
    server.set_tls(Some(Tls {
        client_cert_required: true,
        ..Tls::default()
    }));
    server.restart();
    assert_eq!(server.redis_cli_text(&["ping"]), "PONG");
    let without = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args([
            "--tls",
            "--cacert",
            files.ca.to_str().expect("utf-8"),
            "ping",
        ])
        .output()
        .expect("redis-cli runs");
    assert!(!String::from_utf8_lossy(&without.stdout).contains("PONG"));
}

/// A flood faster than the consumer: the client reads Redis at Redis's pace,
/// the outbox stays within its caps, the recipient hears `Disconnected`
/// before every gap and `Connected` after it, and once the flood is over a
/// marker arrives at once (nothing stale left in the queue).
#[test]
fn a_flood_is_shed_with_notice_and_nothing_stale_is_left() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    use yggdrasil_brokers::outbox::{self, Limits};

    let Some(server) = start_redis() else {
        return;
    };
    const MAX_EVENTS: usize = 2_000;
    let (outbox, deliveries) = outbox::channel::<u64>(Limits {
        max_events: MAX_EVENTS,
        max_bytes: 1 << 20,
        max_lag: Duration::from_millis(300),
    });
    let sink = outbox.for_client();
    let given = support::settings_at("127.0.0.1", server.port, &common(), &[]);
    let client = Client::open("redis", &given, OWNER, sink.clone()).expect("opens");

    // The recipient: 50 µs per message, far slower than Redis sends.
    let (seen_tx, seen) = crossbeam_channel::unbounded();
    let consumer = std::thread::spawn(move || {
        for delivery in deliveries {
            // The owner's warnings (a session cut for being behind) aside.
            if delivery.to != 1 {
                continue;
            }
            if matches!(delivery.event, Event::Message { .. }) {
                std::thread::sleep(Duration::from_micros(50));
            }
            if seen_tx.send(delivery.event).is_err() {
                break;
            }
        }
    });
    client.subscribe(topic("flood"), 1).expect("subscribes");
    let first = seen.recv_timeout(WAIT).expect("an event");
    assert!(matches!(first, Event::Connected { .. }), "{first:?}");

    // The most the outbox held, sampled while the flood runs.
    let flooding = Arc::new(AtomicBool::new(true));
    let max_queued = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (flooding, max_queued, sink) = (flooding.clone(), max_queued.clone(), sink.clone());
        std::thread::spawn(move || {
            while flooding.load(Ordering::SeqCst) {
                max_queued.fetch_max(sink.load().queued, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // 100,000 numbered messages, pipelined by redis-cli.
    let script: String = (1..=100_000)
        .map(|n| format!("PUBLISH flood {n}\r\n"))
        .collect();
    server.redis_cli_with_input(&["--pipe"], script.as_bytes());
    flooding.store(false, Ordering::SeqCst);
    sampler.join().expect("sampler");

    // Once the client has taken all Redis sent (nothing new queued for a
    // while), a marker: nothing stale is left ahead of it.
    let mut quiet_since = Instant::now();
    let mut last_dropped = u64::MAX;
    while quiet_since.elapsed() < Duration::from_millis(300) {
        let load = sink.load();
        if load.queued > 0 || load.dropped != last_dropped {
            quiet_since = Instant::now();
        }
        last_dropped = load.dropped;
        std::thread::sleep(Duration::from_millis(10));
    }
    server.redis_cli_text(&["PUBLISH", "flood", "marker"]);
    let published = Instant::now();

    let support::Flood { received, notices } = support::check_flood(&seen, b"marker", || {
        format!("{:?}, {:?}", sink.load(), client.stats())
    });
    let latency = published.elapsed();
    let load = sink.load();
    // Beyond the cap only while a purged backlog drains, up to 4 times it.
    assert!(
        max_queued.load(Ordering::SeqCst) <= 4 * MAX_EVENTS,
        "{load:?}"
    );
    // Shed here (the outbox at its cap), or with the session cut for being
    // behind Redis: what a slower listener (a debug build) meets first.
    let cuts = client.stats().cuts;
    assert!(
        notices > 0 && (load.shed > 0 || cuts > 0),
        "never shed: {load:?}, {cuts} cuts, {received} received"
    );
    // Delivered, dropped here, or dropped with a session cut for being behind.
    assert!(
        load.dropped + received == 100_000 || cuts > 0,
        "{load:?}, {received} received"
    );
    assert!(latency < Duration::from_secs(2), "marker after {latency:?}");
    drop(client);
    drop((outbox, sink));
    consumer.join().expect("consumer");
}

/// The commands a client sent, each as its arguments, once complete in `buffer` (which keeps
/// the rest).
fn take_commands(buffer: &mut Vec<u8>) -> Vec<Vec<Vec<u8>>> {
    fn line(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&bytes[at..end], end + 2))
    }
    let number = |text: &[u8]| -> usize { std::str::from_utf8(text).unwrap().parse().unwrap() };
    let mut commands = Vec::new();
    let mut at = 0;
    'next: while let Some((header, mut next)) = line(buffer, at) {
        let mut args = Vec::new();
        for _ in 0..number(&header[1..]) {
            let Some((size, body)) = line(buffer, next) else {
                break 'next;
            };
            let end = body + number(&size[1..]);
            if buffer.len() < end + 2 {
                break 'next;
            }
            args.push(buffer[body..end].to_vec());
            next = end + 2;
        }
        commands.push(args);
        at = next;
    }
    buffer.drain(..at);
    commands
}

/// A fake redis for one pub/sub session: it confirms `PSUBSCRIBE fast` at once, and when
/// `PSUBSCRIBE slow` comes it sends 100 messages of `fast` and confirms `slow` only 3 s later.
fn serve_a_slow_confirmation(listener: std::net::TcpListener) {
    use std::io::{Read, Write};
    let Ok((mut socket, _)) = listener.accept() else {
        return;
    };
    let bulk = |b: &[u8]| [format!("${}\r\n", b.len()).as_bytes(), b, b"\r\n"].concat();
    let confirm = |pattern: &[u8], n: u8| {
        [
            &b"*3\r\n"[..],
            &bulk(b"psubscribe"),
            &bulk(pattern),
            format!(":{n}\r\n").as_bytes(),
        ]
        .concat()
    };
    let (mut buffer, mut chunk) = (Vec::new(), [0u8; 4096]);
    while let Ok(read @ 1..) = socket.read(&mut chunk) {
        buffer.extend_from_slice(&chunk[..read]);
        for command in take_commands(&mut buffer) {
            let reply = match command.iter().map(Vec::as_slice).collect::<Vec<_>>()[..] {
                [b"PSUBSCRIBE", b"fast"] => confirm(b"fast", 1),
                [b"PSUBSCRIBE", b"slow"] => {
                    for n in 0..100 {
                        let message = [&b"*4\r\n"[..], &bulk(b"pmessage"), &bulk(b"fast")].concat();
                        let message = [message, bulk(b"fast"), bulk(format!("{n}").as_bytes())];
                        if socket.write_all(&message.concat()).is_err() {
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_secs(3));
                    confirm(b"slow", 2)
                }
                [b"PING", ..] => [&b"*2\r\n"[..], &bulk(b"pong"), &bulk(b"")].concat(),
                _ => b"+OK\r\n".to_vec(),
            };
            if socket.write_all(&reply).is_err() {
                return;
            }
        }
    }
}

/// While the listener waits for a subscription's confirmation, the messages of the topics it
/// already has keep reaching their recipients: they do not wait in the client crate's buffer,
/// which has no bound, until the answer comes.
#[test]
fn messages_keep_flowing_while_a_subscription_waits_for_its_confirmation() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("port").port();
    let server = std::thread::spawn(move || serve_a_slow_confirmation(listener));
    let (client, mut inbox) = open(port, common());
    client.subscribe(topic("fast"), 1).expect("subscribe");
    inbox.connected(1);
    client.subscribe(topic("slow"), 2).expect("subscribe");
    for n in 0..100 {
        let (name, payload, channel) = message_parts(inbox.message(1));
        assert_eq!(
            (name, payload, channel),
            (topic("fast"), n.to_string().into_bytes(), b"fast".to_vec())
        );
    }
    // All of them before `slow` was confirmed.
    inbox.assert_none_within(Duration::ZERO, |d| d.to == 2);
    inbox.connected(2);
    client.close();
    let _ = server.join();
}
