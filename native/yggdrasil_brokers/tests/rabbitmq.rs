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
use support::{free_port, skip, Inbox, Server, WAIT};
use yggdrasil_brokers::{
    rabbitmq, runtime_stats, Client, Config, Delivery, Event, HeaderValue, Metadata, Properties,
    Topic,
};

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
        ("virtual_host_per_client", virtual_host),
        (
            "connection_closed_by_the_broker_reconnects",
            connection_closed_by_the_broker,
        ),
        ("idle_client_closes_its_connection", idle_close),
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
    assert!(Topic::rabbitmq("", "key").is_err(), "empty exchange");
    assert!(
        Topic::rabbitmq("x".repeat(256), "key").is_err(),
        "long exchange"
    );
    assert!(
        Topic::rabbitmq("amq.topic", "k".repeat(256)).is_err(),
        "long key"
    );
    assert!(Topic::rabbitmq("x".repeat(255), "k".repeat(255)).is_ok());
    let (client, _events) = node.client(|_| {});
    let not_ours = Topic::redis("orders").expect("a redis topic");
    assert!(client.subscribe(not_ours.clone(), 1).is_err());
    assert!(client
        .publish(not_ours, b"x".to_vec(), Properties::default(), 1, 1)
        .is_err());
    // The public fields allow what the constructor refuses: still refused.
    let forged = Topic::RabbitMq {
        exchange: "x".repeat(300),
        routing_key: "k".into(),
    };
    assert!(client.subscribe(forged, 1).is_err());
    assert_eq!(client.stats().connections, 0, "nothing started");
}

fn connected_then_events(node: &mut Node) {
    let (client, events) = node.client(|_| {});
    let topic = Topic::rabbitmq("amq.topic", "hello").expect("topic");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);
    client
        .publish(topic.clone(), b"one".to_vec(), Properties::default(), 9, 1)
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
        .publish(topic, b"two".to_vec(), Properties::default(), 9, 2)
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
    let (client, events) = node.client(|_| {});
    let topic = Topic::rabbitmq("amq.topic", "bytes.in").expect("topic");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);
    // In: amqp-publish reads the body from stdin, byte for byte.
    for payload in &payloads {
        node.amqp_publish(&["-e", "amq.topic", "-r", "bytes.in"], payload);
        assert_eq!(expect_message(&events, 1).0, *payload);
    }
    // Out: into a queue bound by the test, read back with amqp-get/amqp-consume.
    let queue = node.bound_queue("amq.topic", "bytes.out");
    let out = Topic::rabbitmq("amq.topic", "bytes.out").expect("topic");
    for (i, payload) in payloads.iter().enumerate() {
        client
            .publish(
                out.clone(),
                payload.clone(),
                Properties::default(),
                9,
                i as u64,
            )
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
    let (client, events) = node.client(|_| {});
    let star = Topic::rabbitmq("amq.topic", "orders.*").expect("topic");
    let hash = Topic::rabbitmq("amq.topic", "orders.#").expect("topic");
    client.subscribe(star.clone(), 1).expect("subscribe");
    client.subscribe(hash.clone(), 2).expect("subscribe");
    expect_connected(&events, 1, &star);
    expect_connected(&events, 2, &hash);
    for key in ["orders.new", "orders.eu.new", "orders", "invoices.new"] {
        node.amqp_publish(&["-e", "amq.topic", "-r", key], key.as_bytes());
    }
    let mut got: HashMap<u64, Vec<(Vec<u8>, String)>> = HashMap::new();
    for delivery in collect(&events, 4) {
        if let Event::Message {
            payload,
            metadata: Metadata::RabbitMq { routing_key, .. },
            ..
        } = delivery.event
        {
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
    let (client, events) = node.client(|_| {});
    let topic = Topic::rabbitmq("amq.topic", "props.in").expect("topic");
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
    let Metadata::RabbitMq {
        routing_key,
        message_id,
        headers,
    } = metadata
    else {
        panic!("not rabbitmq metadata: {metadata:?}")
    };
    assert_eq!(routing_key, "props.in");
    assert_eq!(message_id, None);
    let mut headers = headers.expect("headers");
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        headers,
        [
            ("tenant".to_string(), HeaderValue::Binary(b"acme".to_vec())),
            ("x-n".to_string(), HeaderValue::Binary(b"42".to_vec())),
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
    node.lapin(|channel| async move {
        channel
            .basic_publish(
                "amq.topic".into(),
                "props.in".into(),
                BasicPublishOptions::default(),
                b"p2",
                properties,
            )
            .await?
            .await?;
        Ok(())
    });
    let (payload, metadata) = expect_message(&events, 1);
    assert_eq!(payload, b"p2");
    let Metadata::RabbitMq {
        message_id,
        headers,
        ..
    } = metadata
    else {
        panic!("not rabbitmq metadata: {metadata:?}")
    };
    assert_eq!(message_id.as_deref(), Some("id-1"));
    let mut headers = headers.expect("headers");
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        headers,
        [
            ("n".to_string(), HeaderValue::Int(-7)),
            ("ok".to_string(), HeaderValue::Bool(true)),
            ("pi".to_string(), HeaderValue::Float(3.5)),
        ]
    );

    // Out: what our publish put on the wire, read by a plain lapin basic.get.
    let queue = node.bound_queue("amq.topic", "props.out");
    let props = Properties {
        content_type: Some("application/json".into()),
        message_id: Some("m-42".into()),
        persistent: true,
        headers: vec![
            ("bin".into(), HeaderValue::Binary(b"v\0w".to_vec())),
            ("int".into(), HeaderValue::Int(1 << 40)),
            ("float".into(), HeaderValue::Float(-0.25)),
            ("bool".into(), HeaderValue::Bool(false)),
        ],
        correlation_id: Some("c-1".into()),
        priority: Some(3),
        ..Properties::default()
    };
    let out = Topic::rabbitmq("amq.topic", "props.out").expect("topic");
    client
        .publish(out.clone(), b"{}".to_vec(), props, 9, 1)
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

    // A property the AMQP wire cannot carry is refused, not truncated.
    let long = Properties {
        message_id: Some("m".repeat(256)),
        ..Properties::default()
    };
    client
        .publish(out, b"x".to_vec(), long, 9, 2)
        .expect("publish");
    assert!(expect_published(&events, 9).is_err());
}

fn missing_exchange(node: &mut Node) {
    let (client, events) = node.client(|c| c.common.backoff_max = Duration::from_millis(500));
    let late = Topic::rabbitmq("ygg.late", "k").expect("topic");
    let fine = Topic::rabbitmq("amq.topic", "fine").expect("topic");
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
            Event::Connected { topic } if topic == fine && delivery.to == 2 => {
                fine_connected = true
            }
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
            Event::Connected { topic } if topic == late && delivery.to == 1 => break,
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
    let (client, events) = node.client(|c| {
        c.port = port;
        c.common.publish_timeout = Duration::from_millis(1500);
    });
    let topic = Topic::rabbitmq("amq.topic", "nowhere").expect("topic");
    client
        .subscribe(topic.clone(), 1)
        .expect("subscribe returns ok");
    let started = Instant::now();
    client
        .publish(topic, b"x".to_vec(), Properties::default(), 9, 1)
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
    const PUBLISHERS: usize = 4;
    const RECIPIENTS: u64 = 20;
    const EACH: usize = 50;
    let (client, events) = node.client(|_| {});
    let topic = Topic::rabbitmq("amq.topic", "fan.out").expect("topic");
    for to in 1..=RECIPIENTS {
        client.subscribe(topic.clone(), to).expect("subscribe");
    }
    for _ in 1..=RECIPIENTS {
        match events.recv_timeout(WAIT).expect("Connected").event {
            Event::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(client.stats().topics, 1, "one broker-level subscription");
    std::thread::scope(|s| {
        for p in 0..PUBLISHERS {
            let (client, topic) = (&client, &topic);
            s.spawn(move || {
                for i in 0..EACH {
                    let payload = format!("{p}:{i}").into_bytes();
                    let reply_to = 1000 + p as u64;
                    client
                        .publish(
                            topic.clone(),
                            payload,
                            Properties::default(),
                            reply_to,
                            i as u64,
                        )
                        .expect("publish");
                }
            });
        }
    });
    let expected = PUBLISHERS * EACH * (RECIPIENTS as usize + 1);
    let mut next: HashMap<(u64, usize), usize> = HashMap::new();
    let mut acks = 0;
    for delivery in collect(&events, expected) {
        match delivery.event {
            Event::Message { payload, .. } => {
                let text = String::from_utf8(payload).expect("utf-8");
                let (p, i) = text.split_once(':').expect("p:i");
                let (p, i): (usize, usize) = (p.parse().expect("p"), i.parse().expect("i"));
                let seen = next.entry((delivery.to, p)).or_insert(0);
                assert_eq!(
                    i, *seen,
                    "recipient {} publisher {p}: in order, once",
                    delivery.to
                );
                *seen += 1;
            }
            Event::Published { result: Ok(()), .. } => acks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acks, PUBLISHERS * EACH);
    assert_eq!(next.len(), PUBLISHERS * RECIPIENTS as usize);
    assert!(next.values().all(|&n| n == EACH));
    assert_quiet(&events);
    // Every delivery was acknowledged once handed on.
    let unacked = node.rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ]);
    for line in unacked.lines().filter(|l| l.starts_with("yggdrasil.")) {
        assert!(
            line.trim_end().ends_with("\t0"),
            "unacknowledged left: {line}"
        );
    }
}

fn virtual_host(node: &mut Node) {
    node.rabbitmqctl(&["add_vhost", "ygg-vh"]);
    node.rabbitmqctl(&["set_permissions", "-p", "ygg-vh", "guest", ".*", ".*", ".*"]);
    let (vh_client, vh_events) = node.client(|c| c.virtual_host = "ygg-vh".into());
    let (root_client, root_events) = node.client(|_| {});
    let topic = Topic::rabbitmq("amq.topic", "vh").expect("topic");
    vh_client.subscribe(topic.clone(), 1).expect("subscribe");
    root_client.subscribe(topic.clone(), 2).expect("subscribe");
    expect_connected(&vh_events, 1, &topic);
    expect_connected(&root_events, 2, &topic);
    let publish = ["amqp-publish", "-e", "amq.topic", "-r", "vh"];
    node.amqp_on_vhost("ygg-vh", &publish, b"to ygg-vh");
    assert_eq!(expect_message(&vh_events, 1).0, b"to ygg-vh");
    root_client
        .publish(topic.clone(), b"to /".to_vec(), Properties::default(), 9, 1)
        .expect("publish");
    let got = collect(&root_events, 2);
    assert_has_message(&got, 2, b"to /");
    assert_has_published_ok(&got, 1);
    assert_quiet(&vh_events);
    // A virtual host that does not exist: a warning per attempt, no Connected.
    let (client, events) = node.client(|c| c.virtual_host = "no-such-vh".into());
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
    let (client, events) = node.client(|c| c.common.idle_timeout = idle);
    let topic = Topic::rabbitmq("amq.topic", "idle").expect("topic");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);
    client
        .publish(topic.clone(), b"x".to_vec(), Properties::default(), 9, 1)
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
        let queues = node.rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name"]);
        let ours = queues
            .lines()
            .filter(|l| l.starts_with("yggdrasil."))
            .count();
        if connections.trim().is_empty() && ours == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left: {connections:?} {queues:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(client.stats().tasks, 0, "{:?}", client.stats());
    assert_nothing_left();
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
    let (client, events) = node.client(|c| c.common.backoff_max = Duration::from_millis(500));
    let topic = Topic::rabbitmq("amq.topic", "forced").expect("topic");
    client.subscribe(topic.clone(), 1).expect("subscribe");
    expect_connected(&events, 1, &topic);
    client
        .publish(
            topic.clone(),
            b"before".to_vec(),
            Properties::default(),
            9,
            1,
        )
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
            Event::Disconnected { topic: t } if t == topic => disconnected = true,
            Event::Connected { topic: t } if t == topic => {
                assert!(disconnected, "Disconnected first");
                connected = true;
            }
            Event::Warning { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    client
        .publish(topic, b"after".to_vec(), Properties::default(), 9, 2)
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

fn broker_restart(node: &mut Node) {
    let (client, events) = node.client(|c| c.common.backoff_max = Duration::from_millis(500));
    let a = Topic::rabbitmq("amq.topic", "restart.a").expect("topic");
    let b = Topic::rabbitmq("amq.topic", "restart.b").expect("topic");
    client.subscribe(a.clone(), 1).expect("subscribe");
    client.subscribe(b.clone(), 2).expect("subscribe");
    expect_connected(&events, 1, &a);
    expect_connected(&events, 2, &b);
    node.restart(|| {
        let mut disconnected = Vec::new();
        let deadline = Instant::now() + WAIT;
        while disconnected.len() < 2 {
            let delivery = recv_until(&events, deadline).expect("Disconnected");
            match delivery.event {
                Event::Disconnected { topic } => disconnected.push((delivery.to, topic)),
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
            Event::Connected { topic } => connected.push((delivery.to, topic)),
            Event::Warning { .. } | Event::Disconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    connected.sort_by_key(|d| d.0);
    assert_eq!(connected, [(1, a.clone()), (2, b.clone())]);
    node.amqp_publish(&["-e", "amq.topic", "-r", "restart.a"], b"after");
    assert_eq!(expect_message(&events, 1).0, b"after");
    client
        .publish(b, b"ours after".to_vec(), Properties::default(), 9, 1)
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

fn expect_connected(events: &Receiver<Delivery<u64>>, to: u64, topic: &Topic) {
    let delivery = events.recv_timeout(WAIT).expect("Connected");
    assert_eq!(
        delivery,
        Delivery {
            to,
            event: Event::Connected {
                topic: topic.clone()
            }
        }
    );
}

fn expect_message(events: &Receiver<Delivery<u64>>, to: u64) -> (Vec<u8>, Metadata) {
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

    fn config(&self) -> rabbitmq::Config {
        rabbitmq::Config {
            hostname: "127.0.0.1".into(),
            port: self.port,
            ..Default::default()
        }
    }

    fn client(
        &self,
        adjust: impl FnOnce(&mut rabbitmq::Config),
    ) -> (Client<u64>, Receiver<Delivery<u64>>) {
        let mut config = self.config();
        adjust(&mut config);
        let (tx, rx) = crossbeam_channel::unbounded();
        let client = Client::open(Config::RabbitMq(config), 0u64, tx).expect("open");
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
