//! `:rabbitmq` against a real RabbitMQ: one private node for the whole
//! binary (it takes seconds to boot), started through `test/brokers/ctl.sh`
//! and stopped by pid at the end, whatever happened. The scenarios run one
//! after the other (one of them restarts the node), so this binary has its
//! own small harness (`harness = false`) that prints libtest's lines.
//!
//! The independent side is amqp-tools (`amqp-publish`, `amqp-get`,
//! `amqp-consume`); for what they cannot do (declare an exchange, set a
//! message id, read properties) a plain lapin connection of the test's own.
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use support::{free_port, int, millis, skip, text, Inbox, Server, WAIT};
use yggdrasil_brokers::{runtime_stats, Client, Data, Delivery, Event, Given, Name};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

type Scenario = fn(&mut Node);

fn main() {
    let scenarios: &[(&str, Scenario)] = &[
        ("bad_names_are_refused_before_anything_starts", bad_names),
        ("connected_then_events", connected_then_events),
        ("payloads_byte_for_byte_both_ways", payloads_both_ways),
        ("topic_patterns_on_a_topic_exchange", topic_patterns),
        ("properties_and_metadata_both_ways", properties_both_ways),
        (
            "missing_exchange_is_a_topic_error_retried",
            missing_exchange,
        ),
        (
            "unreachable_broker_publish_fails_after_timeout",
            unreachable,
        ),
        (
            "four_publishers_twenty_recipients_exactly_once_in_order",
            fan_out,
        ),
        (
            "topics_past_the_channel_limit_wait_the_others_go_on",
            too_many_topics,
        ),
        ("virtual_host_per_client", virtual_host),
        (
            "connection_closed_by_the_broker_reconnects",
            connection_closed_by_the_broker,
        ),
        ("idle_client_closes_its_connection", idle_close),
        (
            "an_unsubscribed_topic_leaves_no_queue_behind",
            unsubscribed_queue,
        ),
        (
            "a_session_lost_while_its_connection_stays_leaves_no_queue_behind",
            lost_session_queues,
        ),
        (
            "a_purged_backlog_is_told_after_what_came_before_it",
            purged_backlog,
        ),
        (
            "broker_restart_disconnected_then_connected_again",
            broker_restart,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen: Vec<_> = scenarios
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if ["rabbitmq-server", "amqp-publish"].into_iter().any(skip) {
        println!(
            "\ntest result: ok. 0 passed; 0 failed; {} ignored",
            chosen.len()
        );
        return;
    }
    println!("\nrunning {} tests", chosen.len());
    let mut node = Node::start();
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, scenario) in &chosen {
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| scenario(&mut node)));
        match outcome {
            Ok(()) => {
                passed += 1;
                println!(
                    "test {name} ... ok ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(_) => {
                failed.push(*name);
                println!("test {name} ... FAILED");
            }
        }
        let _ = std::io::stdout().flush();
    }
    drop(node); // stops the node by pid
    if failed.is_empty() {
        println!("\ntest result: ok. {passed} passed; 0 failed");
    } else {
        println!("\nfailures: {failed:?}");
        println!(
            "\ntest result: FAILED. {passed} passed; {} failed",
            failed.len()
        );
        std::process::exit(101);
    }
}

// ------------------------------------------------------------ scenarios ----

fn bad_names(node: &mut Node) {
    let (client, events) = node.client(&[]);
    let check = |name: Name| client.check_name(&name);
    assert!(check(Name::pair("", "key")).is_err(), "empty exchange");
    assert!(
        check(Name::pair("x".repeat(256), "key")).is_err(),
        "long exchange"
    );
    assert!(
        check(Name::pair("amq.topic", "k".repeat(256))).is_err(),
        "long key"
    );
    assert_eq!(check(Name::pair("x".repeat(255), "k".repeat(255))), Ok(()));
    assert_eq!(
        check(Name::pair("amq.topic", "")),
        Ok(()),
        "an empty routing key"
    );
    let refused = [
        // A redis or postgres name: a binary.
        Name::from("orders"),
        Name::Tuple(vec![Name::from("amq.topic")]),
        Name::Tuple(vec![
            Name::from("amq.topic"),
            Name::from("k"),
            Name::from("k"),
        ]),
        Name::Tuple(vec![Name::pair("a", "b"), Name::from("k")]),
        Name::Tuple(vec![Name::Bytes(vec![0xff]), Name::from("k")]),
        Name::Tuple(vec![Name::from("amq.topic"), Name::Bytes(vec![b'k', 0xc3])]),
        Name::pair("x".repeat(300), "k"),
    ];
    for name in refused {
        assert!(client.check_name(&name).is_err(), "{name:?}");
        assert!(client.subscribe(name.clone(), 1).is_err(), "{name:?}");
        assert!(client.unsubscribe(name.clone(), 1).is_err(), "{name:?}");
        assert!(
            client
                .publish(name.clone(), b"x".to_vec(), &[], 1, 1)
                .is_err(),
            "{name:?}"
        );
    }
    // Options that are no AMQP property, or one out of its range, are
    // refused by publish itself.
    let topic = Name::pair("amq.topic", "k");
    let refused_options: [(&str, Data); 6] = [
        ("bogus", Data::text("x")),
        ("priority", Data::Int(256)),
        ("priority", Data::text("high")),
        ("persistent", Data::text("yes")),
        ("content_type", Data::Int(1)),
        ("headers", Data::Int(1)),
    ];
    for (key, value) in refused_options {
        let options = [(key.to_string(), value)];
        let error = client
            .publish(topic.clone(), b"x".to_vec(), &options, 1, 1)
            .expect_err("a refused option");
        assert!(error.message().contains(key), "{options:?}: {error}");
    }
    assert_eq!(client.stats().connections, 0, "nothing started");
    assert_eq!(client.stats().tasks, 0, "nothing started");
    // Refused by an error from the call: no event owed.
    assert_quiet(&events);
}

fn connected_then_events(node: &mut Node) {
    let (client, events) = node.client(&[]);
    let topic = Name::pair("amq.topic", "hello");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);
    client
        .publish(topic.clone(), b"one".to_vec(), &[], 9, 1)
        .expect("publish");
    let mut got = collect(&events, 2);
    got.sort_by_key(|d| d.to);
    assert_eq!(got[0].to, 1);
    assert!(matches!(&got[0].event, Event::Message { payload, .. } if payload == b"one"));
    assert_eq!(
        got[1].event,
        Event::Published {
            tag: 1,
            result: Ok(())
        }
    );
    // Subscribing twice is one subscription: still one message each.
    client.subscribe(topic.clone(), 1).expect("subscribe again");
    client
        .publish(topic, b"two".to_vec(), &[], 9, 2)
        .expect("publish");
    let got = collect(&events, 2);
    assert_eq!(
        got.iter()
            .filter(|d| matches!(d.event, Event::Message { .. }))
            .count(),
        1,
        "{got:?}"
    );
    assert_quiet(&events);
}

fn payloads_both_ways(node: &mut Node) {
    let payloads: Vec<Vec<u8>> = vec![
        b"with spaces and\nnewlines\r\n".to_vec(),
        b"nul\0in\0the\0middle\0".to_vec(),
        "utf-8: \u{e9}t\u{e9} \u{1F333} \u{4e16}\u{754c}"
            .as_bytes()
            .to_vec(),
        (0u8..=255).collect(),
        Vec::new(),
    ];
    let (client, events) = node.client(&[]);
    let topic = Name::pair("amq.topic", "bytes.in");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);
    // In: amqp-publish reads the body from stdin, byte for byte.
    for payload in &payloads {
        node.amqp_publish(&["-e", "amq.topic", "-r", "bytes.in"], payload);
        assert_eq!(expect_message(&events, 1).0, *payload);
    }
    // Out: into a queue bound by the test, read back with amqp-get/amqp-consume.
    let queue = node.bound_queue("amq.topic", "bytes.out");
    let out = Name::pair("amq.topic", "bytes.out");
    for (i, payload) in payloads.iter().enumerate() {
        client
            .publish(out.clone(), payload.clone(), &[], 9, i as u64)
            .expect("publish");
        assert_eq!(expect_published(&events, 9), Ok(()));
        let read = if i % 2 == 0 {
            node.amqp(&["amqp-get", "-q", &queue], &[])
        } else {
            node.amqp(&["amqp-consume", "-q", &queue, "-c", "1", "--", "cat"], &[])
        };
        assert_eq!(read, *payload, "payload {i}");
    }
}

fn topic_patterns(node: &mut Node) {
    let (client, events) = node.client(&[]);
    let star = Name::pair("amq.topic", "orders.*");
    let hash = Name::pair("amq.topic", "orders.#");
    client.subscribe(star.clone(), 1).expect("subscribe");
    client.subscribe(hash.clone(), 2).expect("subscribe");
    expect_all_connected(&events, &[(1, &star), (2, &hash)]);
    for key in ["orders.new", "orders.eu.new", "orders", "invoices.new"] {
        node.amqp_publish(&["-e", "amq.topic", "-r", key], key.as_bytes());
    }
    let mut got: HashMap<u64, Vec<(Vec<u8>, String)>> = HashMap::new();
    for delivery in collect(&events, 4) {
        if let Event::Message {
            payload, metadata, ..
        } = delivery.event
        {
            let routing_key = rabbit_metadata(&metadata).routing_key;
            got.entry(delivery.to)
                .or_default()
                .push((payload, routing_key));
        }
    }
    let keys = |to: u64| -> Vec<String> {
        got.get(&to)
            .map(|v| v.iter().map(|(_, k)| k.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(1), ["orders.new"]);
    assert_eq!(keys(2), ["orders.new", "orders.eu.new", "orders"]);
    for (payload, key) in got.values().flatten() {
        assert_eq!(
            payload,
            key.as_bytes(),
            "metadata.routing_key is the one published with"
        );
    }
    assert_quiet(&events);
}

fn properties_both_ways(node: &mut Node) {
    let (client, events) = node.client(&[]);
    let topic = Name::pair("amq.topic", "props.in");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);

    // In, from amqp-publish: headers (string values) and no message id.
    node.amqp_publish(
        &[
            "-e",
            "amq.topic",
            "-r",
            "props.in",
            "-H",
            "tenant: acme",
            "-H",
            "x-n: 42",
            "-C",
            "text/plain",
        ],
        b"p1",
    );
    let (payload, metadata) = expect_message(&events, 1);
    assert_eq!(payload, b"p1");
    let RabbitMetadata {
        routing_key,
        message_id,
        headers,
    } = rabbit_metadata(&metadata);
    assert_eq!(routing_key, "props.in");
    assert_eq!(message_id, None);
    assert_eq!(
        headers.expect("headers"),
        [
            ("tenant".to_string(), Data::Bytes(b"acme".to_vec())),
            ("x-n".to_string(), Data::Bytes(b"42".to_vec())),
        ]
    );
    // amqp-tools cannot set a message id or typed headers: a plain lapin publish.
    let mut table = FieldTable::default();
    table.insert("n".into(), AMQPValue::LongInt(-7));
    table.insert("ok".into(), AMQPValue::Boolean(true));
    table.insert("pi".into(), AMQPValue::Double(3.5));
    let properties = lapin::BasicProperties::default()
        .with_message_id("id-1".into())
        .with_headers(table);
    node.lapin_publish("amq.topic", "props.in", b"p2", properties);
    let (payload, metadata) = expect_message(&events, 1);
    assert_eq!(payload, b"p2");
    let RabbitMetadata {
        routing_key,
        message_id,
        headers,
    } = rabbit_metadata(&metadata);
    assert_eq!(routing_key, "props.in");
    assert_eq!(message_id.as_deref(), Some("id-1"));
    assert_eq!(
        headers.expect("headers"),
        [
            ("n".to_string(), Data::Int(-7)),
            ("ok".to_string(), Data::Bool(true)),
            ("pi".to_string(), Data::Float(3.5)),
        ]
    );
    // A header whose bytes look like 300 nested tables to a byte scan
    // ('F' and a length that fits, every 5 bytes): one string to lapin.
    let trap = [b'F', 0, 0, 0x03, 0xE8].repeat(300);
    let mut table = FieldTable::default();
    table.insert("trap".into(), AMQPValue::LongString(trap.clone().into()));
    let properties = lapin::BasicProperties::default().with_headers(table);
    node.lapin_publish("amq.topic", "props.in", b"p3", properties);
    let (payload, metadata) = expect_message(&events, 1);
    assert_eq!(payload, b"p3");
    assert_eq!(
        rabbit_metadata(&metadata).headers.expect("headers"),
        [("trap".to_string(), Data::Bytes(trap))]
    );

    // Out: what our publish put on the wire, read by a plain lapin basic.get.
    let queue = node.bound_queue("amq.topic", "props.out");
    let queue_again = queue.clone();
    let props = [
        option("content_type", Data::text("application/json")),
        option("message_id", Data::text("m-42")),
        option("persistent", Data::Bool(true)),
        option(
            "headers",
            Data::Map(vec![
                (Data::text("bin"), Data::Bytes(b"v\0w".to_vec())),
                (Data::text("int"), Data::Int(1 << 40)),
                (Data::text("float"), Data::Float(-0.25)),
                (Data::text("bool"), Data::Bool(false)),
            ]),
        ),
        option("correlation_id", Data::text("c-1")),
        option("priority", Data::Int(3)),
    ];
    let out = Name::pair("amq.topic", "props.out");
    client
        .publish(out.clone(), b"{}".to_vec(), &props, 9, 1)
        .expect("publish");
    assert_eq!(expect_published(&events, 9), Ok(()));
    let got = node.lapin(move |channel| async move {
        let message = channel
            .basic_get(
                ShortString::from(queue.as_str()),
                BasicGetOptions { no_ack: true },
            )
            .await?;
        Ok(message.map(|m| (m.delivery.data.clone(), m.delivery.properties.clone())))
    });
    let (data, p) = got.expect("a message in the bound queue");
    assert_eq!(data, b"{}");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m-42"));
    assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(*p.priority(), Some(3));
    let headers = p.headers().clone().expect("headers");
    let h = headers.inner();
    assert_eq!(
        h.get("bin"),
        Some(&AMQPValue::LongString(b"v\0w".to_vec().into()))
    );
    assert_eq!(h.get("int"), Some(&AMQPValue::LongLongInt(1 << 40)));
    assert_eq!(h.get("float"), Some(&AMQPValue::Double(-0.25)));
    assert_eq!(h.get("bool"), Some(&AMQPValue::Boolean(false)));

    // A property the AMQP wire cannot carry is refused, not truncated:
    // by publish itself, before anything is sent, and no reply is owed.
    let long = [option("message_id", Data::text("m".repeat(256)))];
    let error = client
        .publish(out.clone(), b"x".to_vec(), &long, 9, 2)
        .expect_err("a message id longer than an AMQP short string");
    assert!(error.message().contains("short string"), "{error}");
    assert_quiet(&events);

    // Headers also come as a keyword list of atom keys.
    let keyword = [option(
        "headers",
        Data::List(vec![Data::Tuple(vec![
            Data::Atom("tenant".into()),
            Data::text("acme"),
        ])]),
    )];
    client
        .publish(out, b"kw".to_vec(), &keyword, 9, 3)
        .expect("publish");
    assert_eq!(expect_published(&events, 9), Ok(()));
    let got = node.lapin(move |channel| async move {
        let message = channel
            .basic_get(
                ShortString::from(queue_again.as_str()),
                BasicGetOptions { no_ack: true },
            )
            .await?;
        Ok(message.map(|m| (m.delivery.data.clone(), m.delivery.properties.clone())))
    });
    let (data, p) = got.expect("a message in the bound queue");
    assert_eq!(data, b"kw");
    let headers = p.headers().clone().expect("headers");
    assert_eq!(
        headers.inner().get("tenant"),
        Some(&AMQPValue::LongString(b"acme".to_vec().into()))
    );
}

fn missing_exchange(node: &mut Node) {
    let (client, events) = node.client(&[millis("backoff_max", Duration::from_millis(500))]);
    let late = Name::pair("ygg.late", "k");
    let fine = Name::pair("amq.topic", "fine");
    client
        .subscribe(late.clone(), 1)
        .expect("subscribe to a missing exchange is accepted");
    client.subscribe(fine.clone(), 2).expect("subscribe");
    let mut warnings = Vec::new();
    let mut fine_connected = false;
    let deadline = Instant::now() + WAIT;
    while !fine_connected || warnings.is_empty() {
        let delivery =
            recv_until(&events, deadline).expect("a warning and Connected for the other topic");
        match delivery.event {
            Event::Warning { message } => warnings.push(message),
            Event::Connected { name } if name == fine && delivery.to == 2 => fine_connected = true,
            other => panic!("unexpected {other:?} to {:?}", delivery.to),
        }
    }
    assert!(
        warnings[0].contains("NOT_FOUND") && warnings[0].contains("ygg.late"),
        "the broker's reason: {warnings:?}"
    );
    // The connection and the other topic go on.
    node.amqp_publish(&["-e", "amq.topic", "-r", "fine"], b"still here");
    let deadline = Instant::now() + WAIT;
    loop {
        let delivery = recv_until(&events, deadline).expect("the other topic's event");
        match delivery.event {
            Event::Message { payload, .. } => {
                assert_eq!((delivery.to, payload.as_slice()), (2, &b"still here"[..]));
                break;
            }
            Event::Warning { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Once the exchange exists, the retry succeeds: Connected, then events.
    node.lapin(|channel| async move {
        channel
            .exchange_declare(
                "ygg.late".into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let delivery = recv_until(&events, deadline).expect("Connected after the retry");
        match delivery.event {
            Event::Connected { name } if name == late && delivery.to == 1 => break,
            Event::Warning { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    node.amqp_publish(&["-e", "ygg.late", "-r", "k"], b"late");
    assert_eq!(expect_message(&events, 1).0, b"late");
    node.lapin(|channel| async move {
        channel
            .exchange_delete("ygg.late".into(), Default::default())
            .await
    });
}

fn unreachable(node: &mut Node) {
    let port = free_port();
    let (client, events) = node.client(&[
        int("port", port.into()),
        millis("publish_timeout", Duration::from_millis(1500)),
    ]);
    let topic = Name::pair("amq.topic", "nowhere");
    client
        .subscribe(topic.clone(), 1)
        .expect("subscribe returns ok");
    let started = Instant::now();
    client
        .publish(topic, b"x".to_vec(), &[], 9, 1)
        .expect("publish");
    let result = loop {
        let delivery = events.recv_timeout(WAIT).expect("a Published reply");
        match delivery.event {
            Event::Published { tag: 1, result } => break result,
            Event::Warning { message } => assert!(message.contains("rabbitmq"), "{message}"),
            other => panic!("no {other:?} while unreachable"),
        }
    };
    let waited = started.elapsed();
    assert!(result.is_err(), "{result:?}");
    assert!(
        waited >= Duration::from_millis(1300),
        "waited for a connection: {waited:?}"
    );
    assert!(waited < Duration::from_millis(1500) + WAIT, "{waited:?}");
    client.close();
}

fn fan_out(node: &mut Node) {
    let (client, events) = node.client(&[]);
    let topic = Name::pair("amq.topic", "fan.out");
    let mut inbox = Inbox::new(events);
    support::concurrent_publishers_reach_every_recipient_once_in_order(&client, &mut inbox, topic);
    assert_eq!(client.stats().topics, 1, "one broker-level subscription");
    // Every delivery was acknowledged once handed on.
    let unacked = node.rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ]);
    let ours: Vec<&str> = unacked
        .lines()
        .filter(|l| l.starts_with("yggdrasil."))
        .collect();
    assert_eq!(ours.len(), 1, "the topic's one queue: {unacked:?}");
    assert!(
        ours[0].trim_end().ends_with("\t0"),
        "unacknowledged left: {ours:?}"
    );
}

fn virtual_host(node: &mut Node) {
    node.rabbitmqctl(&["add_vhost", "ygg-vh"]);
    node.rabbitmqctl(&["set_permissions", "-p", "ygg-vh", "guest", ".*", ".*", ".*"]);
    let (vh_client, vh_events) = node.client(&[text("virtual_host", "ygg-vh")]);
    let (root_client, root_events) = node.client(&[]);
    let topic = Name::pair("amq.topic", "vh");
    vh_client.subscribe(topic.clone(), 1).expect("subscribe");
    root_client.subscribe(topic.clone(), 2).expect("subscribe");
    expect_connected(&vh_events, 1, &topic);
    expect_connected(&root_events, 2, &topic);
    let publish = ["amqp-publish", "-e", "amq.topic", "-r", "vh"];
    node.amqp_on_vhost("ygg-vh", &publish, b"to ygg-vh");
    assert_eq!(expect_message(&vh_events, 1).0, b"to ygg-vh");
    root_client
        .publish(topic.clone(), b"to /".to_vec(), &[], 9, 1)
        .expect("publish");
    let got = collect(&root_events, 2);
    assert_has_message(&got, 2, b"to /");
    assert_has_published_ok(&got, 1);
    assert_quiet(&vh_events);
    // A virtual host that does not exist: a warning per attempt, no Connected.
    let (client, events) = node.client(&[text("virtual_host", "no-such-vh")]);
    client.subscribe(topic, 1).expect("subscribe");
    match events.recv_timeout(WAIT).expect("a warning").event {
        Event::Warning { message } => assert!(message.contains("no-such-vh"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    drop((vh_client, root_client, client));
    node.rabbitmqctl(&["delete_vhost", "ygg-vh"]);
}

fn idle_close(node: &mut Node) {
    let idle = Duration::from_millis(800);
    let (client, events) = node.client(&[millis("idle_timeout", idle)]);
    let topic = Name::pair("amq.topic", "idle");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);
    client
        .publish(topic.clone(), b"x".to_vec(), &[], 9, 1)
        .expect("publish");
    assert_eq!(collect(&events, 2).len(), 2);
    client.unsubscribe(topic, 1).expect("unsubscribe");
    let deadline = Instant::now() + WAIT;
    while client.stats().connections > 0 {
        assert!(
            Instant::now() < deadline,
            "still open: {:?}",
            client.stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And the broker agrees: no connection and no queue of ours is left.
    let deadline = Instant::now() + WAIT;
    loop {
        let connections =
            node.rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "name"]);
        let ours = our_queues(node);
        if connections.trim().is_empty() && ours == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "left: {connections:?} {ours}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(client.stats().tasks, 0, "{:?}", client.stats());
    assert_nothing_left();
}

/// The queues of this process's clients on the broker.
fn our_queues(node: &Node) -> usize {
    our_queue_names(node).len()
}

fn our_queue_names(node: &Node) -> Vec<String> {
    let queues = node.rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name"]);
    queues
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("yggdrasil."))
        .map(String::from)
        .collect()
}

fn wait_for_our_queues(node: &Node, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ours = our_queues(node);
        if ours == n {
            return;
        }
        assert!(Instant::now() < deadline, "{ours} queues, not {n}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Unsubscribing deletes the topic's queue while the connection goes on
/// (the queues are exclusive, not auto-delete: see `rabbitmq/session.rs`).
/// A session consumes at most 2,000 topics, one AMQP channel each, on a connection of 2,047
/// channels. Past it, topics are refused as a missing exchange is (a warning each, retried), the
/// session and its topics go on (the connection used to refuse the channel, and the whole
/// session was lost and replayed, over and over), and a waiting topic is consumed once another
/// goes.
fn too_many_topics(node: &mut Node) {
    const MAX_TOPICS: u64 = 2_000;
    const MORE: u64 = 60;
    let (client, events) = node.client(&[millis("backoff_max", Duration::from_millis(500))]);
    let topic = |i: u64| Name::pair("amq.topic", format!("many.{i}"));
    for i in 0..MAX_TOPICS + MORE {
        client.subscribe(topic(i), i).expect("subscribe");
    }
    let mut connected = 0;
    let mut refused = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected < MAX_TOPICS || refused.len() < MORE as usize {
        let delivery = recv_until(&events, deadline)
            .unwrap_or_else(|| panic!("{connected} topics connected, {} refused", refused.len()));
        match delivery.event {
            Event::Connected { .. } if delivery.to < MAX_TOPICS => connected += 1,
            Event::Warning { message } if message.contains("consumes at most 2000 topics") => {
                refused.insert(message);
            }
            other => panic!("unexpected {other:?} to {}", delivery.to),
        }
    }
    // The session goes on: a message reaches a topic it holds.
    client
        .publish(topic(7), b"still here".to_vec(), &[], u64::MAX, 1)
        .expect("publish");
    let deadline = Instant::now() + WAIT;
    loop {
        let delivery = recv_until(&events, deadline).expect("the message");
        match delivery.event {
            Event::Message { payload, .. } if delivery.to == 7 => {
                assert_eq!(payload, b"still here");
                break;
            }
            Event::Published { result, .. } => result.expect("published"),
            Event::Warning { message } if message.contains("at most") => {}
            other => panic!("unexpected {other:?} to {}", delivery.to),
        }
    }
    // A topic gone makes room: a waiting one is consumed at its next retry.
    client.unsubscribe(topic(0), 0).expect("unsubscribe");
    let deadline = Instant::now() + WAIT;
    loop {
        let delivery = recv_until(&events, deadline).expect("Connected for a waiting topic");
        match delivery.event {
            Event::Connected { .. } if delivery.to >= MAX_TOPICS => break,
            Event::Warning { message } if message.contains("at most") => {}
            Event::Published { .. } => {}
            other => panic!("unexpected {other:?} to {}", delivery.to),
        }
    }
    // Its connection closes and its queues go with it (RabbitMQ takes seconds for 2,000), before
    // the next scenario counts connections.
    drop(client);
    wait_for_our_queues(node, 0);
    let deadline = Instant::now() + WAIT;
    while !node
        .rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid"])
        .trim()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the connection stays");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unsubscribed_queue(node: &mut Node) {
    let (client, events) = node.client(&[]);
    let a = Name::pair("amq.topic", "queue.a");
    let b = Name::pair("amq.topic", "queue.b");
    client.subscribe(a.clone(), 1).expect("subscribe");
    client.subscribe(b.clone(), 2).expect("subscribe");
    expect_all_connected(&events, &[(1, &a), (2, &b)]);
    wait_for_our_queues(node, 2);
    client.unsubscribe(a, 1).expect("unsubscribe");
    wait_for_our_queues(node, 1);
    assert_eq!(client.stats().connections, 1, "{:?}", client.stats());
    // The topic still held is still consumed.
    client
        .publish(b.clone(), b"still here".to_vec(), &[], 9, 1)
        .expect("publish");
    assert_has_message(&collect(&events, 2), 2, b"still here");
    client.unsubscribe(b, 2).expect("unsubscribe");
    drop(client);
}

/// The broker deletes one topic's queue: that consumer's end loses the
/// session, while the connection stays (the publisher holds it). The other
/// topic's queue goes with the session, and the new session has its own.
fn lost_session_queues(node: &mut Node) {
    let (client, events) = node.client(&[]);
    let a = Name::pair("amq.topic", "lost.a");
    let b = Name::pair("amq.topic", "lost.b");
    client.subscribe(a.clone(), 1).expect("subscribe");
    client.subscribe(b.clone(), 2).expect("subscribe");
    expect_all_connected(&events, &[(1, &a), (2, &b)]);
    client
        .publish(b.clone(), b"before".to_vec(), &[], 9, 1)
        .expect("publish");
    assert_has_message(&collect(&events, 2), 2, b"before");
    wait_for_our_queues(node, 2);
    let first = our_queue_names(node);
    node.rabbitmqctl(&["delete_queue", &first[0]]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 4 {
        let delivery = recv_until(&events, deadline).expect("Disconnected, then Connected");
        match delivery.event {
            Event::Disconnected { .. } => seen.push((delivery.to, false)),
            Event::Connected { .. } => seen.push((delivery.to, true)),
            Event::Warning { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, [(1, false), (1, true), (2, false), (2, true)]);
    wait_for_our_queues(node, 2);
    let now = our_queue_names(node);
    assert!(
        now.iter().all(|q| !first.contains(q)),
        "{first:?} then {now:?}"
    );
    client
        .publish(a.clone(), b"after".to_vec(), &[], 9, 2)
        .expect("publish");
    assert_has_message(&collect(&events, 2), 1, b"after");
    drop(client);
}

/// Nothing of lapin's is left: its tasks on the shared runtime and the I/O
/// thread it runs per connection (every client of this binary is closed by
/// then, and so are the test's own connections).
fn assert_nothing_left() {
    let deadline = Instant::now() + WAIT;
    loop {
        let (tasks, threads) = (runtime_stats().runtime_tasks, lapin_threads());
        if tasks == 0 && threads == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left: {tasks} tasks, {threads} lapin threads"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connection_closed_by_the_broker(node: &mut Node) {
    let (client, events) = node.client(&[millis("backoff_max", Duration::from_millis(500))]);
    let topic = Name::pair("amq.topic", "forced");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);
    client
        .publish(topic.clone(), b"before".to_vec(), &[], 9, 1)
        .expect("publish");
    assert_has_message(&collect(&events, 2), 1, b"before");
    // An operator closes our one connection (listener and publisher alike).
    let pids = node.rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid"]);
    let pids: Vec<&str> = pids
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(pids.len(), 1, "one AMQP connection per client: {pids:?}");
    node.rabbitmqctl(&["close_connection", pids[0], "closed by the test"]);
    let deadline = Instant::now() + WAIT;
    let (mut disconnected, mut connected) = (false, false);
    while !connected {
        let delivery = recv_until(&events, deadline).expect("Disconnected, then Connected");
        match delivery.event {
            Event::Disconnected { name } if name == topic => disconnected = true,
            Event::Connected { name } if name == topic => {
                assert!(disconnected, "Disconnected first");
                connected = true;
            }
            Event::Warning { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    client
        .publish(topic, b"after".to_vec(), &[], 9, 2)
        .expect("publish");
    // The publisher learns of the loss when it publishes: a warning comes too.
    let mut inbox = Inbox::new(events);
    assert_eq!(inbox.published(2), Ok(()));
    match inbox.message(1) {
        Event::Message { payload, .. } => assert_eq!(payload, b"after"),
        other => panic!("not a message: {other:?}"),
    }
}

/// Threads of this process that lapin started for its connections.
fn lapin_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.trim() == "lapin-io-loop")
        .count()
}

/// `amqp-publish` floods while the listener reads nothing (a test hook, so
/// that a backlog builds however fast this machine reads): RabbitMQ queues
/// it for the session, and it is purged (`cuts`). Every message the
/// broker sent before a purge reaches the recipient before the gap's
/// Disconnected, never after it (`support::check_flood`), and a marker
/// published once the flood is over arrives. The purge keeps the session:
/// the queues outlive their cancelled consumers, so no connection is lost.
fn purged_backlog(node: &mut Node) {
    use yggdrasil_brokers::outbox::{self, Limits};
    let (outbox, deliveries) = outbox::channel::<u64>(Limits {
        max_events: 2_000,
        max_bytes: 1 << 20,
        max_lag: Duration::from_millis(300),
    });
    let sink = outbox.for_client();
    let given = [text("hostname", "127.0.0.1"), int("port", node.port.into())];
    let client = Client::open("rabbitmq", &given, 0u64, sink.clone()).expect("opens");
    let (seen_tx, seen) = crossbeam_channel::unbounded();
    let (warnings_tx, warnings) = crossbeam_channel::unbounded();
    let consumer = std::thread::spawn(move || {
        for delivery in deliveries {
            let sent = match delivery.event {
                Event::Warning { message } => warnings_tx.send(message).is_ok(),
                event if delivery.to == 1 => seen_tx.send(event).is_ok(),
                _ => true,
            };
            if !sent {
                break;
            }
        }
    });
    let topic = Name::pair("amq.topic", "flood");
    client.subscribe(topic, 1).expect("subscribes");
    let first = seen.recv_timeout(WAIT).expect("an event");
    assert!(matches!(first, Event::Connected { .. }), "{first:?}");

    let lines: String = (1..=300_000).map(|n| format!("{n}\n")).collect();
    let flood = ["-l", "-e", "amq.topic", "-r", "flood"];
    client
        .debug_stall_listener(Duration::from_secs(4))
        .expect("stalls");
    node.amqp_publish(&flood, lines.as_bytes());
    // RabbitMQ goes on routing what amqp-publish wrote after it exited:
    // the marker goes once the client has seen nothing new for a second.
    let mut quiet_since = Instant::now();
    let mut last = (u64::MAX, 0);
    while quiet_since.elapsed() < Duration::from_secs(1) {
        let load = sink.load();
        let now = (load.dropped, seen.len());
        if load.queued > 0 || now != last {
            quiet_since = Instant::now();
        }
        last = now;
        std::thread::sleep(Duration::from_millis(20));
    }
    node.amqp_publish(&["-e", "amq.topic", "-r", "flood"], b"marker");
    let flood = support::check_flood(&seen, b"marker", || {
        format!("{:?}, {:?}", sink.load(), client.stats())
    });
    let cuts = client.stats().cuts;
    assert!(cuts > 0, "never purged: {flood:?}, {:?}", sink.load());
    assert!(flood.notices > 0, "{flood:?}");
    let lost: Vec<String> = warnings.try_iter().filter(|w| w.contains("lost")).collect();
    assert!(lost.is_empty(), "purged {cuts} times: {lost:?}");
    drop(client);
    drop((outbox, sink));
    consumer.join().expect("consumer");
}

fn broker_restart(node: &mut Node) {
    let (client, events) = node.client(&[millis("backoff_max", Duration::from_millis(500))]);
    let a = Name::pair("amq.topic", "restart.a");
    let b = Name::pair("amq.topic", "restart.b");
    client.subscribe(a.clone(), 1).expect("subscribe");
    client.subscribe(b.clone(), 2).expect("subscribe");
    expect_all_connected(&events, &[(1, &a), (2, &b)]);
    node.restart(|| {
        let mut disconnected = Vec::new();
        let deadline = Instant::now() + WAIT;
        while disconnected.len() < 2 {
            let delivery = recv_until(&events, deadline).expect("Disconnected");
            match delivery.event {
                Event::Disconnected { name } => disconnected.push((delivery.to, name)),
                Event::Warning { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        disconnected.sort_by_key(|d| d.0);
        assert_eq!(disconnected, [(1, a.clone()), (2, b.clone())]);
    });
    // Back on the same port: Connected again with no new subscribe.
    let mut connected = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.len() < 2 {
        let delivery = recv_until(&events, deadline).expect("Connected again");
        match delivery.event {
            Event::Connected { name } => connected.push((delivery.to, name)),
            Event::Warning { .. } | Event::Disconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    connected.sort_by_key(|d| d.0);
    assert_eq!(connected, [(1, a.clone()), (2, b.clone())]);
    node.amqp_publish(&["-e", "amq.topic", "-r", "restart.a"], b"after");
    assert_eq!(expect_message(&events, 1).0, b"after");
    client
        .publish(b, b"ours after".to_vec(), &[], 9, 1)
        .expect("publish");
    let got = collect(&events, 2);
    assert_has_message(&got, 2, b"ours after");
    assert_has_published_ok(&got, 1);
    // Failed reconnect attempts while the node was down left nothing behind.
    drop(client);
    assert_nothing_left();
}

// -------------------------------------------------------------- helpers ----

fn recv_until(events: &Receiver<Delivery<u64>>, deadline: Instant) -> Option<Delivery<u64>> {
    let left = deadline.saturating_duration_since(Instant::now());
    events.recv_timeout(left).ok()
}

fn collect(events: &Receiver<Delivery<u64>>, n: usize) -> Vec<Delivery<u64>> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match recv_until(events, deadline) {
            Some(delivery) => got.push(delivery),
            None => panic!("{} of {n} events within {WAIT:?}: {got:?}", got.len()),
        }
    }
    got
}

/// Connected for each (recipient, topic), in any order: topics are
/// confirmed one at a time, in no particular order.
fn expect_all_connected(events: &Receiver<Delivery<u64>>, expected: &[(u64, &Name)]) {
    let mut got: Vec<(u64, Name)> = collect(events, expected.len())
        .into_iter()
        .map(|d| match d.event {
            Event::Connected { name } => (d.to, name),
            other => panic!("not Connected: {other:?}"),
        })
        .collect();
    got.sort_by_key(|(to, _)| *to);
    let mut expected: Vec<(u64, Name)> =
        expected.iter().map(|(to, t)| (*to, (*t).clone())).collect();
    expected.sort_by_key(|(to, _)| *to);
    assert_eq!(got, expected);
}

fn expect_connected(events: &Receiver<Delivery<u64>>, to: u64, topic: &Name) {
    let delivery = events.recv_timeout(WAIT).expect("Connected");
    assert_eq!(
        delivery,
        Delivery {
            to,
            event: Event::Connected {
                name: topic.clone()
            }
        }
    );
}

/// A `publish/3` option.
fn option(key: &str, value: Data) -> (String, Data) {
    (key.to_string(), value)
}

/// A rabbitmq message's metadata, read as the subscriber's map.
struct RabbitMetadata {
    routing_key: String,
    message_id: Option<String>,
    /// Sorted by key; `None` when the message had no headers.
    headers: Option<Vec<(String, Data)>>,
}

/// Reads `%{routing_key: binary, message_id: binary | nil, headers: map | nil}`,
/// failing on any other shape or any other key.
fn rabbit_metadata(metadata: &Data) -> RabbitMetadata {
    let Data::Map(pairs) = metadata else {
        panic!("rabbitmq metadata is not a map: {metadata:?}");
    };
    let mut keys: Vec<String> = pairs
        .iter()
        .map(|(key, _)| match key {
            Data::Atom(atom) => atom.to_string(),
            other => panic!("a metadata key that is not an atom: {other:?}"),
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["headers", "message_id", "routing_key"],
        "{metadata:?}"
    );
    let utf8 = |data: &Data| match data {
        Data::Bytes(bytes) => String::from_utf8(bytes.clone()).expect("UTF-8 text"),
        other => panic!("not a binary: {other:?}"),
    };
    let field = |key: &str| metadata.field(key).expect("the key is there");
    let routing_key = utf8(field("routing_key"));
    let message_id = match field("message_id") {
        Data::Nil => None,
        id => Some(utf8(id)),
    };
    let headers = match field("headers") {
        Data::Nil => None,
        Data::Map(pairs) => {
            let mut headers: Vec<(String, Data)> = pairs
                .iter()
                .map(|(key, value)| (utf8(key), value.clone()))
                .collect();
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            Some(headers)
        }
        other => panic!("headers neither a map nor nil: {other:?}"),
    };
    RabbitMetadata {
        routing_key,
        message_id,
        headers,
    }
}

fn expect_message(events: &Receiver<Delivery<u64>>, to: u64) -> (Vec<u8>, Data) {
    let delivery = events.recv_timeout(WAIT).expect("a message");
    assert_eq!(delivery.to, to, "{delivery:?}");
    match delivery.event {
        Event::Message {
            payload, metadata, ..
        } => (payload, metadata),
        other => panic!("not a message: {other:?}"),
    }
}

fn expect_published(events: &Receiver<Delivery<u64>>, to: u64) -> Result<(), String> {
    let delivery = events.recv_timeout(WAIT).expect("Published");
    assert_eq!(delivery.to, to, "{delivery:?}");
    match delivery.event {
        Event::Published { result, .. } => result,
        other => panic!("not Published: {other:?}"),
    }
}

/// For events of two sources (a message and a publish reply), whose
/// relative order is not defined.
fn assert_has_message(got: &[Delivery<u64>], to: u64, expected: &[u8]) {
    let found = got.iter().any(|d| {
        d.to == to && matches!(&d.event, Event::Message { payload, .. } if payload == expected)
    });
    assert!(found, "no message {expected:?} to {to} in {got:?}");
}

fn assert_has_published_ok(got: &[Delivery<u64>], tag: u64) {
    let ok = Event::Published {
        tag,
        result: Ok(()),
    };
    assert!(
        got.iter().any(|d| d.event == ok),
        "no Published {tag} Ok in {got:?}"
    );
}

fn assert_quiet(events: &Receiver<Delivery<u64>>) {
    if let Ok(extra) = events.recv_timeout(QUIET) {
        panic!("unexpected event: {extra:?}");
    }
}

/// The private RabbitMQ node of this test binary, and what talks to it
/// besides our client.
struct Node {
    server: Server,
    port: u16,
    /// For the test's own lapin connections.
    runtime: tokio::runtime::Runtime,
}

impl Node {
    fn start() -> Node {
        let server = Server::start("rabbitmq");
        // Multi-thread: lapin's I/O thread needs a runtime that drives its
        // own I/O, not one driven only from inside `block_on`.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the test's lapin");
        Node {
            port: server.port,
            server,
            runtime,
        }
    }

    /// A client of this node with `extra` settings (they win over the
    /// node's host and port).
    fn client(&self, extra: &[Given]) -> (Client<u64>, Receiver<Delivery<u64>>) {
        let mut given = vec![text("hostname", "127.0.0.1"), int("port", self.port.into())];
        given.extend_from_slice(extra);
        let (tx, rx) = crossbeam_channel::unbounded();
        let client = Client::open("rabbitmq", &given, 0u64, tx)
            .unwrap_or_else(|e| panic!("open with {given:?}: {e}"));
        (client, rx)
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}", self.port)
    }

    /// Runs an amqp-tools command against the node with `stdin`; its stdout.
    fn amqp(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        self.amqp_on_vhost("%2f", args, stdin)
    }

    /// Same, on virtual host `vhost` (URL-encoded).
    fn amqp_on_vhost(&self, vhost: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let mut child = Command::new(args[0])
            .arg("-u")
            .arg(format!("{}/{vhost}", self.url()))
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("amqp-tools");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin).expect("stdin");
        }
        let out = child.wait_with_output().expect("amqp-tools");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn amqp_publish(&self, args: &[&str], body: &[u8]) {
        let mut all = vec!["amqp-publish"];
        all.extend_from_slice(args);
        self.amqp(&all, body);
    }

    /// A queue of the test's own bound to `exchange` with `key`, so that
    /// nothing we publish is lost before the reader starts.
    fn bound_queue(&self, exchange: &str, key: &str) -> String {
        let (exchange, key) = (exchange.to_owned(), key.to_owned());
        self.lapin(move |channel| async move {
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let name = queue.name().clone();
            channel
                .queue_bind(
                    name.clone(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(name.to_string())
        })
    }

    /// A plain lapin `basic.publish`, confirmed by the broker.
    fn lapin_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &'static [u8],
        properties: lapin::BasicProperties,
    ) {
        let (exchange, routing_key) = (exchange.to_owned(), routing_key.to_owned());
        self.lapin(|channel| async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    payload,
                    properties,
                )
                .await?
                .await?;
            Ok(())
        });
    }

    /// Runs `f` on a fresh plain lapin channel (the test's own connection).
    fn lapin<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: std::future::Future<Output = lapin::Result<T>>,
    {
        let url = format!("{}/%2f", self.url());
        self.runtime
            .block_on(async move {
                let connection =
                    lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                        .await?;
                let channel = connection.create_channel().await?;
                let result = f(channel).await;
                // Dropping the channel above has begun closing it, which
                // can make an explicit close report "closing": not ours.
                let _ = connection.close(200, "done".into()).await;
                result
            })
            .expect("the test's own lapin connection")
    }

    fn rabbitmqctl(&self, args: &[&str]) -> String {
        self.server.rabbitmqctl(args)
    }

    /// Stops the node, runs `while_down`, starts it again on the same port.
    fn restart(&mut self, while_down: impl FnOnce()) {
        self.server.stop();
        let down = catch_unwind(AssertUnwindSafe(while_down));
        self.server.restart();
        if let Err(panic) = down {
            std::panic::resume_unwind(panic);
        }
    }
}
