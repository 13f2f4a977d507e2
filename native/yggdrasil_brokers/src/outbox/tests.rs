use std::thread;
use std::time::{Duration, Instant};

use super::*;

fn message(n: u32) -> Event {
    Event::Message {
        name: Name::from("t"),
        payload: n.to_be_bytes().to_vec(),
        metadata: crate::Data::Nil,
    }
}

fn number(event: &Event) -> Option<u32> {
    match event {
        Event::Message { payload, .. } => {
            Some(u32::from_be_bytes(payload[..4].try_into().unwrap()))
        }
        _ => None,
    }
}

/// Events as a recipient would tell them apart: "down" (Disconnected), "up"
/// (Connected), a message's number.
fn shapes(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| match event {
            Event::Disconnected { .. } => "down".to_string(),
            Event::Connected { .. } => "up".to_string(),
            other => number(other).map_or_else(|| format!("{other:?}"), |n| n.to_string()),
        })
        .collect()
}

/// The next `n` deliveries' events.
fn take(deliveries: &mut Deliveries<u64>, n: usize) -> Vec<Event> {
    (0..n).map(|_| deliveries.next().unwrap().event).collect()
}

fn limits(max_events: usize, max_lag_ms: u64) -> Limits {
    Limits {
        max_events,
        max_bytes: usize::MAX,
        max_lag: Duration::from_millis(max_lag_ms),
    }
}

/// Everything left to deliver, once every producer is gone.
fn rest(deliveries: Deliveries<u64>) -> Vec<Event> {
    deliveries.map(|d| d.event).collect()
}

#[test]
fn in_order_when_the_consumer_keeps_up() {
    let (outbox, mut deliveries) = channel::<u64>(limits(10, 60_000));
    let client = outbox.for_client();
    let flow = client.flow(7, Name::from("t"));
    flow.assume_connected();
    client.flow_event(
        &flow,
        Event::Connected {
            name: Name::from("t"),
        },
    );
    for n in 0..5 {
        client.flow_event(&flow, message(n));
        let delivery = deliveries.next().unwrap();
        assert_eq!(delivery.to, 7);
        if n == 0 {
            assert!(matches!(delivery.event, Event::Connected { .. }));
            assert_eq!(number(&deliveries.next().unwrap().event), Some(0));
        } else {
            assert_eq!(number(&delivery.event), Some(n));
        }
    }
    assert_eq!(client.load(), LoadStats::default());
}

#[test]
fn at_the_cap_the_backlog_goes_and_fresh_messages_stay() {
    let (outbox, mut deliveries) = channel::<u64>(limits(2, 60_000));
    let client = outbox.for_client();
    let flow = client.flow(1, Name::from("t"));
    flow.assume_connected();
    for n in 0..12 {
        client.flow_event(&flow, message(n));
    }
    // 0 and 1 filled the cap; 2 purged them; 3 did not (one purge per
    // quarter of max_lag below twice the cap); 4..7 each purged what was
    // before them (twice the cap); 8..11 did not fit four times the cap.
    let load = client.load();
    assert_eq!((load.queued, load.dropped), (8, 4));
    assert_eq!(
        shapes(&take(&mut deliveries, 5)),
        ["down", "up", "7", "down", "up"]
    );
    // Room again: the next message flows.
    client.flow_event(&flow, message(42));
    assert_eq!(number(&deliveries.next().unwrap().event), Some(42));
    let load = client.load();
    assert_eq!(
        (load.queued, load.queued_bytes, load.dropped, load.shed),
        (0, 0, 11, 2)
    );
}

#[test]
fn late_messages_are_dropped_and_the_gap_told_before_the_next() {
    let (outbox, mut deliveries) = channel::<u64>(limits(1000, 50));
    let client = outbox.for_client();
    let flow = client.flow(1, Name::from("t"));
    flow.assume_connected();
    for n in 0..3 {
        client.flow_event(&flow, message(n));
    }
    thread::sleep(Duration::from_millis(80));
    client.flow_event(&flow, message(3));
    assert_eq!(shapes(&take(&mut deliveries, 3)), ["down", "up", "3"]);
    assert_eq!(client.load().dropped, 3);
}

#[test]
fn a_late_last_message_is_told_at_once() {
    let (outbox, mut deliveries) = channel::<u64>(limits(1000, 50));
    let client = outbox.for_client();
    let flow = client.flow(1, Name::from("t"));
    flow.assume_connected();
    client.flow_event(&flow, message(0));
    thread::sleep(Duration::from_millis(80));
    assert_eq!(shapes(&take(&mut deliveries, 2)), ["down", "up"]);
}

#[test]
fn an_unconfirmed_flow_is_told_disconnected_only() {
    let (outbox, deliveries) = channel::<u64>(limits(1, 60_000));
    let client = outbox.for_client();
    let flow = client.flow(1, Name::from("t"));
    client.flow_event(&flow, message(0));
    client.flow_event(&flow, message(1));
    drop((outbox, client));
    assert_eq!(shapes(&rest(deliveries)), ["down", "1"]);
}

#[test]
fn clients_have_their_own_caps_and_counts() {
    let (outbox, mut deliveries) = channel::<u64>(limits(2, 60_000));
    let (a, b) = (outbox.for_client(), outbox.for_client());
    let flow_a = a.flow(1, Name::from("a"));
    let flow_b = b.flow(2, Name::from("b"));
    for n in 0..3 {
        a.flow_event(&flow_a, message(n));
    }
    b.flow_event(&flow_b, message(100));
    assert_eq!(a.load().queued, 3);
    let only_b = LoadStats {
        queued: 1,
        queued_bytes: 4 + ENTRY_BYTES,
        dropped: 0,
        shed: 0,
    };
    assert_eq!(b.load(), only_b);
    // a's third message purged its first two (a's cap); b's was not touched.
    assert_eq!(shapes(&take(&mut deliveries, 3)), ["down", "2", "100"]);
    assert_eq!((a.load().dropped, a.load().queued), (2, 0));
}

#[test]
fn warnings_and_notices_are_never_dropped() {
    let (outbox, deliveries) = channel::<u64>(limits(0, 60_000));
    let client = outbox.for_client();
    let flow = client.flow(1, Name::from("t"));
    for _ in 0..100 {
        client.deliver(Delivery {
            to: 0,
            event: Event::Warning {
                message: "w".into(),
            },
        });
    }
    flow.assume_connected();
    client.flow_event(
        &flow,
        Event::Connected {
            name: Name::from("t"),
        },
    );
    drop((outbox, client));
    let events = rest(deliveries);
    assert_eq!(events.len(), 101);
    assert!(matches!(events[100], Event::Connected { .. }));
}

#[test]
fn a_flood_stays_within_the_caps() {
    let (outbox, deliveries) = channel::<u64>(Limits {
        max_events: 1000,
        max_bytes: 1 << 20,
        max_lag: Duration::from_millis(100),
    });
    let client = outbox.for_client();
    let flow = client.flow(1, Name::from("t"));
    flow.assume_connected();
    let producer = {
        let (client, flow) = (client.clone(), flow.clone());
        thread::spawn(move || {
            let until = Instant::now() + Duration::from_millis(500);
            let mut n = 0;
            let mut max_queued = 0;
            while Instant::now() < until {
                client.flow_event(&flow, message(n));
                n += 1;
                max_queued = max_queued.max(client.load().queued);
            }
            (n, max_queued)
        })
    };
    // A slow consumer: 1 ms per message.
    let consumer = thread::spawn(move || {
        let mut seen = Vec::new();
        for delivery in deliveries {
            seen.push(delivery.event);
            thread::sleep(Duration::from_millis(1));
        }
        seen
    });
    let (published, max_queued) = producer.join().unwrap();
    let load = client.load();
    drop((outbox, client));
    let seen = consumer.join().unwrap();
    // Four times the cap at most: fresh messages beyond it while a purged
    // backlog drains.
    assert!(max_queued <= 4000, "{max_queued}");
    // Every gap in the numbers is inside a Disconnected..Connected pair.
    let mut connected = true;
    let mut last: Option<u32> = None;
    for event in &seen {
        match event {
            Event::Disconnected { .. } => connected = false,
            Event::Connected { .. } => connected = true,
            _ => {
                let n = number(event).unwrap();
                assert!(connected, "a message while disconnected: {n}");
                if let Some(last) = last {
                    assert!(n > last, "out of order: {last} then {n}");
                }
                last = Some(n);
            }
        }
    }
    assert!(load.shed > 0 && load.dropped > 0, "{load:?} of {published}");
}

#[test]
fn a_flow_is_idle_only_once_all_its_client_queued_was_handed_on() {
    let (outbox, mut deliveries) = channel::<u64>(limits(10, 60_000));
    let (client, other_client) = (outbox.for_client(), outbox.for_client());
    let (flow, sibling) = (
        client.flow(1, Name::from("t")),
        client.flow(2, Name::from("u")),
    );
    let elsewhere = other_client.flow(3, Name::from("t"));
    assert!(flow.is_idle());
    client.flow_event(&flow, message(1));
    client.flow_event(&sibling, message(2));
    assert!(!flow.is_idle() && !sibling.is_idle(), "queued");
    assert_eq!(number(&deliveries.next().unwrap().event), Some(1));
    assert!(!flow.is_idle(), "its client's 2 is still queued");
    assert_eq!(number(&deliveries.next().unwrap().event), Some(2));
    // Out of the queue, but the consumer may still be handing 2 on.
    assert!(!flow.is_idle(), "in the consumer's hands");
    other_client.flow_event(&elsewhere, message(3));
    assert!(!elsewhere.is_idle());
    assert_eq!(number(&deliveries.next().unwrap().event), Some(3));
    assert!(
        flow.is_idle(),
        "the consumer asked for more: 2 was handed on"
    );
    assert!(!elsewhere.is_idle(), "another client's count");

    // A warning to the owner is the client's too.
    client.deliver(Delivery {
        to: 0,
        event: Event::Warning {
            message: "w".into(),
        },
    });
    assert!(!flow.is_idle());
    assert!(matches!(
        deliveries.next().unwrap().event,
        Event::Warning { .. }
    ));
    // A gap counts as what it will be told as: two notices.
    client.flow_gap(&flow);
    assert_eq!(shapes(&take(&mut deliveries, 1)), ["down"]);
    assert!(!flow.is_idle());
    other_client.flow_event(&elsewhere, message(4));
    assert_eq!(number(&deliveries.next().unwrap().event), Some(4));
    assert!(flow.is_idle());
}
