// Tests may unwrap: a panic here is a failed test, not a crashed VM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::inspect::Removed;
use super::*;
use std::collections::{BTreeMap, BTreeSet};

type TestEngine = Engine<String, u32, &'static str>;

fn ok(_: ()) -> Result<&'static str, ()> {
    Ok("monitor")
}

fn subscribe(engine: &mut TestEngine, key: &str, sub: u32) -> Subscribed {
    engine
        .subscribe(key, || key.to_string(), sub, || ok(()))
        .expect("subscribe")
}

fn sorted(snapshot: Snapshot<u32>) -> Vec<u32> {
    let mut members = snapshot.to_vec();
    members.sort_unstable();
    members
}

#[test]
fn subscribe_publish_unsubscribe() {
    let mut engine = TestEngine::new();
    assert_eq!(
        subscribe(&mut engine, "a", 1),
        Subscribed {
            added: true,
            connected: false
        }
    );
    subscribe(&mut engine, "a", 2);
    assert_eq!(sorted(engine.snapshot("a").unwrap()), vec![1, 2]);
    assert!(engine.snapshot("b").is_none());

    let gone = engine.unsubscribe("a", 1).unwrap();
    assert_eq!(gone.released, Some("monitor"));
    assert_eq!(gone.emptied, None);
    assert_eq!(sorted(engine.snapshot("a").unwrap()), vec![2]);
    assert!(engine.unsubscribe("a", 1).is_none());
    assert!(engine.unsubscribe("zzz", 2).is_none());
    assert_eq!(engine.counts().subscriptions, 1);
}

#[test]
fn subscribing_twice_is_idempotent() {
    let mut engine = TestEngine::new();
    assert!(subscribe(&mut engine, "a", 1).added);
    assert!(!subscribe(&mut engine, "a", 1).added);
    assert_eq!(engine.subscriber_count("a"), 1);
    assert_eq!(engine.counts().subscriptions, 1);
    assert!(engine.unsubscribe("a", 1).is_some());
    assert_eq!(engine.counts(), Counts::default());
}

#[test]
fn register_runs_once_per_subscriber_and_data_comes_back_last() {
    let mut engine: Engine<String, u32, u32> = Engine::new();
    let mut calls = 0;
    for key in ["a", "b", "c"] {
        engine
            .subscribe(
                key,
                || key.to_string(),
                7,
                || {
                    calls += 1;
                    Ok::<_, ()>(99)
                },
            )
            .unwrap();
    }
    assert_eq!(calls, 1);
    assert_eq!(engine.channel_count_of(7), 3);
    assert_eq!(engine.unsubscribe("a", 7).unwrap().released, None);
    assert_eq!(engine.unsubscribe("b", 7).unwrap().released, None);
    assert_eq!(engine.unsubscribe("c", 7).unwrap().released, Some(99));
    assert_eq!(engine.subscriber_data(7), None);
}

#[test]
fn failed_register_leaves_no_trace() {
    let mut engine: Engine<String, u32, u32> = Engine::new();
    let result = engine.subscribe("a", || "a".to_string(), 1, || Err("dead"));
    assert_eq!(result, Err(SubscribeError::Register("dead")));
    assert_eq!(engine.counts(), Counts::default());
    assert!(engine.snapshot("a").is_none());
}

#[test]
fn make_key_runs_only_for_new_channels() {
    let mut engine = TestEngine::new();
    let mut made = 0;
    for sub in 0..10 {
        engine
            .subscribe(
                "a",
                || {
                    made += 1;
                    "a".to_string()
                },
                sub,
                || ok(()),
            )
            .unwrap();
    }
    assert_eq!(made, 1);
}

#[test]
fn remove_subscriber_drops_it_everywhere() {
    let mut engine = TestEngine::new();
    for key in ["a", "b", "c"] {
        subscribe(&mut engine, key, 1);
    }
    subscribe(&mut engine, "a", 2);
    engine.set_watched("a", true);
    engine.set_watched("b", true);
    let removed = engine.remove_subscriber(1).unwrap();
    assert_eq!(removed.data, "monitor");
    assert_eq!(removed.subscriptions, 3);
    // "a" still has subscriber 2; "c" emptied but was not watched.
    assert_eq!(removed.emptied, vec!["b".to_string()]);
    assert_eq!(engine.counts().channels, 1);
    assert_eq!(engine.counts().subscriptions, 1);
    assert!(engine.remove_subscriber(1).is_none());
}

#[test]
fn watched_channel_reports_emptying_on_unsubscribe() {
    let mut engine = TestEngine::new();
    subscribe(&mut engine, "a", 1);
    subscribe(&mut engine, "a", 2);
    assert!(engine.set_watched("a", true));
    assert!(!engine.set_watched("nope", true));
    assert_eq!(engine.unsubscribe("a", 1).unwrap().emptied, None);
    assert_eq!(
        engine.unsubscribe("a", 2).unwrap().emptied,
        Some("a".to_string())
    );
    // A channel that comes back starts unwatched and disconnected.
    assert!(!subscribe(&mut engine, "a", 1).connected);
    assert_eq!(engine.unsubscribe("a", 1).unwrap().emptied, None);
}

#[test]
fn connection_state_is_per_channel_and_reported_on_subscribe() {
    let mut engine = TestEngine::new();
    subscribe(&mut engine, "a", 1);
    assert!(engine.set_connected("zzz", true).is_none());
    let told = engine.set_connected("a", true).unwrap();
    assert_eq!(told.to_vec(), vec![1]);
    assert!(engine.is_connected("a"));
    assert!(subscribe(&mut engine, "a", 2).connected);
    assert!(!subscribe(&mut engine, "b", 2).connected);
    // Only a change of state is reported.
    assert!(engine.set_connected("a", true).is_none());
    assert_eq!(engine.set_connected("a", false).unwrap().len(), 2);
    assert!(engine.set_connected("a", false).is_none());
    assert!(!subscribe(&mut engine, "a", 3).connected);
}

#[test]
fn snapshot_is_cached_until_membership_changes() {
    let mut engine = TestEngine::new();
    subscribe(&mut engine, "a", 1);
    let first = engine.snapshot("a").unwrap();
    let second = engine.snapshot("a").unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    subscribe(&mut engine, "a", 2);
    let third = engine.snapshot("a").unwrap();
    assert!(!Arc::ptr_eq(&first, &third));
    // The old snapshot is untouched by the change.
    assert_eq!(first.to_vec(), vec![1]);
    assert_eq!(sorted(third), vec![1, 2]);
}

#[test]
fn channel_ids_are_reused_without_mixing_channels() {
    let mut engine = TestEngine::new();
    subscribe(&mut engine, "a", 1);
    engine.unsubscribe("a", 1);
    subscribe(&mut engine, "b", 2);
    subscribe(&mut engine, "c", 3);
    assert_eq!(engine.snapshot("b").unwrap().to_vec(), vec![2]);
    assert_eq!(engine.snapshot("c").unwrap().to_vec(), vec![3]);
    assert!(engine.snapshot("a").is_none());
}

#[test]
fn many_channels_per_subscriber_switch_to_a_set() {
    let mut engine = TestEngine::new();
    let keys: Vec<String> = (0..100).map(|i| format!("ch{i}")).collect();
    for key in &keys {
        subscribe(&mut engine, key, 1);
    }
    assert_eq!(engine.channel_count_of(1), 100);
    for key in keys.iter().step_by(2) {
        assert!(engine.unsubscribe(key.as_str(), 1).is_some());
    }
    assert_eq!(engine.channel_count_of(1), 50);
    let removed = engine.remove_subscriber(1).unwrap();
    assert_eq!(removed.subscriptions, 50);
    assert_eq!(engine.counts().channels, 0);
}

#[test]
fn big_channel_churn_and_memory_returns() {
    let mut engine = TestEngine::new();
    let baseline = engine.heap_bytes();
    for sub in 0..100_000 {
        subscribe(&mut engine, "big", sub);
    }
    assert_eq!(engine.counts().subscriptions, 100_000);
    assert!(engine.heap_bytes() > 100_000 * 8);
    // Remove from the middle and the ends; membership stays exact.
    for sub in (0..100_000).step_by(3) {
        assert!(engine.unsubscribe("big", sub).is_some());
    }
    let members = sorted(engine.snapshot("big").unwrap());
    let expected: Vec<u32> = (0..100_000).filter(|s| s % 3 != 0).collect();
    assert_eq!(members, expected);
    for sub in expected {
        engine.remove_subscriber(sub);
    }
    assert_eq!(engine.counts().subscriptions, 0);
    assert_eq!(engine.counts().channels, 0);
    assert_eq!(engine.heap_bytes(), baseline);
}

/// Small deterministic generator so the randomized test needs no crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The reference model: plain ordered maps, obviously right.
#[derive(Default)]
struct Model {
    channels: BTreeMap<u8, BTreeSet<u8>>,
    connected: BTreeSet<u8>,
    watched: BTreeSet<u8>,
}

impl Model {
    fn channels_of(&self, sub: u8) -> usize {
        self.channels.values().filter(|s| s.contains(&sub)).count()
    }

    fn drop_if_empty(&mut self, ch: u8) -> Option<u8> {
        if self.channels.get(&ch).is_some_and(|s| s.is_empty()) {
            self.channels.remove(&ch);
            self.connected.remove(&ch);
            return self.watched.remove(&ch).then_some(ch);
        }
        None
    }
}

#[test]
fn randomized_against_reference_model() {
    for seed in 1..=20u64 {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut engine: Engine<u8, u8, u8> = Engine::new();
        let mut model = Model::default();
        for _ in 0..5_000 {
            let ch = rng.below(12) as u8;
            let sub = rng.below(24) as u8;
            match rng.below(7) {
                0 | 1 => {
                    let was_known = model.channels_of(sub) > 0;
                    let result = engine
                        .subscribe(&ch, || ch, sub, || Ok::<_, ()>(sub))
                        .unwrap();
                    let members = model.channels.entry(ch).or_default();
                    assert_eq!(result.added, members.insert(sub));
                    assert_eq!(result.connected, model.connected.contains(&ch));
                    assert_eq!(engine.subscriber_data(sub), Some(&sub));
                    let _ = was_known;
                }
                2 => {
                    let result = engine.unsubscribe(&ch, sub);
                    let was = model
                        .channels
                        .get_mut(&ch)
                        .is_some_and(|members| members.remove(&sub));
                    assert_eq!(result.is_some(), was);
                    if let Some(gone) = result {
                        let last = model.channels_of(sub) == 0;
                        assert_eq!(gone.released, last.then_some(sub));
                        assert_eq!(gone.emptied, model.drop_if_empty(ch));
                    }
                }
                3 => {
                    let expected = model.channels_of(sub);
                    let result = if rng.below(2) == 0 {
                        engine.remove_subscriber(sub)
                    } else {
                        // The stepwise path: detach, then remove in chunks.
                        engine.detach_subscriber(sub).map(|detached| {
                            let (data, channels) = detached.into_channels();
                            let step = 1 + rng.below(3) as usize;
                            let mut emptied = Vec::new();
                            for chunk in channels.chunks(step) {
                                emptied.extend(engine.remove_memberships(sub, chunk));
                            }
                            Removed {
                                data,
                                subscriptions: channels.len(),
                                emptied,
                            }
                        })
                    };
                    if expected == 0 {
                        assert!(result.is_none());
                    } else {
                        let removed = result.unwrap();
                        assert_eq!(removed.subscriptions, expected);
                        let mut emptied = Vec::new();
                        let chans: Vec<u8> = model.channels.keys().copied().collect();
                        for c in chans {
                            if model.channels.get_mut(&c).unwrap().remove(&sub) {
                                emptied.extend(model.drop_if_empty(c));
                            }
                        }
                        let mut got = removed.emptied.clone();
                        got.sort_unstable();
                        assert_eq!(got, emptied);
                    }
                }
                4 => {
                    let flag = rng.below(2) == 0;
                    let told = engine.set_connected(&ch, flag);
                    let changed = model.connected.contains(&ch) != flag;
                    match model.channels.get(&ch) {
                        Some(_) if !changed => assert!(told.is_none()),
                        Some(members) => {
                            let mut got = told.unwrap().to_vec();
                            got.sort_unstable();
                            assert_eq!(got, members.iter().copied().collect::<Vec<_>>());
                            if flag {
                                model.connected.insert(ch);
                            } else {
                                model.connected.remove(&ch);
                            }
                        }
                        None => assert!(told.is_none()),
                    }
                }
                5 => {
                    let known = engine.set_watched(&ch, true);
                    assert_eq!(known, model.channels.contains_key(&ch));
                    if known {
                        model.watched.insert(ch);
                    }
                }
                _ => {
                    let snapshot = engine.snapshot(&ch);
                    match model.channels.get(&ch) {
                        Some(members) => {
                            let mut got = snapshot.unwrap().to_vec();
                            got.sort_unstable();
                            assert_eq!(got, members.iter().copied().collect::<Vec<_>>());
                        }
                        None => assert!(snapshot.is_none()),
                    }
                }
            }
            // Whole-table invariants after every step.
            let stats = engine.counts();
            assert_eq!(stats.channels, model.channels.len());
            let total: usize = model.channels.values().map(BTreeSet::len).sum();
            assert_eq!(stats.subscriptions, total);
            let subs: BTreeSet<u8> = model.channels.values().flatten().copied().collect();
            assert_eq!(stats.subscribers, subs.len());
            assert_eq!(
                engine.is_subscribed(&ch, sub),
                model.channels.get(&ch).is_some_and(|m| m.contains(&sub))
            );
            assert_eq!(
                engine.subscriber_count(&ch),
                model.channels.get(&ch).map_or(0, BTreeSet::len)
            );
            assert_eq!(engine.channel_count_of(sub), model.channels_of(sub));
        }
    }
}

#[test]
fn no_snapshot_in_flight_means_nothing_to_fence() {
    let mut engine = TestEngine::new();
    subscribe(&mut engine, "a", 1);
    subscribe(&mut engine, "a", 2);
    // A snapshot taken and released again (a finished delivery).
    drop(engine.snapshot("a").unwrap());
    let gone = engine.unsubscribe("a", 1).unwrap();
    assert!(gone.in_flight.is_empty());
}

#[test]
fn unsubscribe_during_a_delivery_fences_the_snapshots_it_uses() {
    let mut engine = TestEngine::new();
    for sub in 1..=4 {
        subscribe(&mut engine, "a", sub);
    }
    // Two deliveries in flight on two different snapshots of "a".
    let first = engine.snapshot("a").unwrap();
    subscribe(&mut engine, "a", 5);
    let second = engine.snapshot("a").unwrap();
    let gone = engine.unsubscribe("a", 3).unwrap();
    assert_eq!(gone.in_flight.len(), 2);
    for snapshot in &gone.in_flight {
        snapshot.fence(3);
    }
    let mut sent = Vec::new();
    assert_eq!(first.deliver(0, usize::MAX, |&s| sent.push(s)), 3);
    sent.sort_unstable();
    assert_eq!(sent, vec![1, 2, 4]);
    sent.clear();
    second.deliver(0, 10, |&s| sent.push(s));
    sent.sort_unstable();
    assert_eq!(sent, vec![1, 2, 4, 5]);
    // The snapshot itself still lists who was there when it was taken.
    assert_eq!(first.len(), 4);
    // A new delivery does not list 3 at all; re-subscribing puts it back in
    // new snapshots only (the fenced ones stay fenced: exactly once).
    assert_eq!(sorted(engine.snapshot("a").unwrap()), vec![1, 2, 4, 5]);
    subscribe(&mut engine, "a", 3);
    assert_eq!(sorted(engine.snapshot("a").unwrap()), vec![1, 2, 3, 4, 5]);
    let mut again = Vec::new();
    first.deliver(0, 4, |&s| again.push(s));
    assert!(!again.contains(&3));
}

#[test]
fn finished_deliveries_are_forgotten() {
    let mut engine = TestEngine::new();
    subscribe(&mut engine, "a", 1);
    let held = engine.snapshot("a").unwrap();
    subscribe(&mut engine, "a", 2);
    drop(held);
    subscribe(&mut engine, "a", 3);
    let gone = engine.unsubscribe("a", 1).unwrap();
    assert!(gone.in_flight.is_empty());
}

#[test]
fn deliver_clamps_its_range() {
    let mut engine = TestEngine::new();
    subscribe(&mut engine, "a", 1);
    let snapshot = engine.snapshot("a").unwrap();
    let mut calls = 0;
    assert_eq!(snapshot.deliver(0, usize::MAX, |_| calls += 1), 1);
    assert_eq!(snapshot.deliver(5, 2, |_| calls += 1), 0);
    assert_eq!(snapshot.deliver(1, 1, |_| calls += 1), 0);
    assert_eq!(calls, 1);
}

/// The guarantee the fence exists for, with real threads: once `fence`
/// returned, no delivery thread sends to the fenced subscriber again.
#[test]
fn nothing_is_sent_after_the_fence_returned() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::thread;

    for round in 0..50u32 {
        let engine = Mutex::new(Engine::<&str, u32, ()>::new());
        for sub in 0..2_000 {
            engine
                .lock()
                .unwrap()
                .subscribe("a", || "a", sub, || Ok::<_, ()>(()))
                .unwrap();
        }
        let leaver = 1_999 - round;
        let fenced = AtomicBool::new(false);
        let late = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    while !stop.load(Ordering::Acquire) {
                        let Some(snapshot) = engine.lock().unwrap().snapshot("a") else {
                            break;
                        };
                        let mut next = 0;
                        while next < snapshot.len() {
                            snapshot.deliver(next, next + 64, |&s| {
                                if s == leaver && fenced.load(Ordering::SeqCst) {
                                    late.fetch_add(1, Ordering::SeqCst);
                                }
                            });
                            next += 64;
                            thread::yield_now();
                        }
                    }
                });
            }
            thread::sleep(std::time::Duration::from_millis(2));
            let gone = engine.lock().unwrap().unsubscribe("a", leaver).unwrap();
            for snapshot in &gone.in_flight {
                snapshot.fence(leaver);
            }
            fenced.store(true, Ordering::SeqCst);
            thread::sleep(std::time::Duration::from_millis(2));
            stop.store(true, Ordering::Release);
        });
        assert_eq!(late.load(Ordering::SeqCst), 0, "round {round}");
    }
}

#[test]
fn memory_returns_to_zero_after_fenced_churn() {
    let mut engine = TestEngine::new();
    let mut held = Vec::new();
    for sub in 0..1_000 {
        subscribe(&mut engine, "a", sub);
        if sub % 100 == 0 {
            held.push(engine.snapshot("a").unwrap());
        }
    }
    for sub in 0..1_000 {
        let gone = engine.unsubscribe("a", sub).unwrap();
        for snapshot in &gone.in_flight {
            snapshot.fence(sub);
        }
    }
    drop(held);
    assert_eq!(engine.counts(), Counts::default());
}

#[test]
fn a_subscriber_on_many_channels_is_removed_in_steps() {
    let mut engine = TestEngine::new();
    let keys: Vec<String> = (0..20_000).map(|i| format!("c{i}")).collect();
    for key in &keys {
        subscribe(&mut engine, key, 1);
    }
    subscribe(&mut engine, "c0", 2);
    engine.set_watched("c1", true);
    let detached = engine.detach_subscriber(1).unwrap();
    assert_eq!(detached.len(), 20_000);
    assert!(engine.detach_subscriber(1).is_none());
    // Until its memberships are removed, its channels still list it.
    assert_eq!(engine.subscriber_count("c5"), 1);
    assert_eq!(engine.counts().subscribers, 1);
    let (data, channels) = detached.into_channels();
    assert_eq!(data, "monitor");
    let mut emptied = Vec::new();
    for chunk in channels.chunks(1_000) {
        emptied.extend(engine.remove_memberships(1, chunk));
    }
    assert_eq!(emptied, vec!["c1".to_string()]);
    assert_eq!(engine.counts().channels, 1);
    assert_eq!(engine.counts().subscriptions, 1);
    assert_eq!(engine.counts().subscriptions, 1);
    assert_eq!(sorted(engine.snapshot("c0").unwrap()), vec![2]);
    engine.remove_subscriber(2);
    assert_eq!(engine.counts(), Counts::default());
}

#[test]
fn large_tables_split_and_come_back() {
    // Past the split threshold every map is sharded; emptied, all memory
    // is given back.
    let mut engine = TestEngine::new();
    for sub in 0..20_000 {
        subscribe(&mut engine, "big", sub);
        subscribe(&mut engine, &format!("own{sub}"), sub);
    }
    assert_eq!(engine.counts().channels, 20_001);
    assert_eq!(engine.subscriber_count("big"), 20_000);
    for sub in 0..20_000 {
        assert!(engine.is_subscribed("big", sub));
        assert_eq!(engine.channel_count_of(sub), 2);
    }
    for sub in 0..20_000 {
        assert_eq!(engine.remove_subscriber(sub).unwrap().subscriptions, 2);
    }
    assert_eq!(engine.counts(), Counts::default());
}

#[test]
fn watched_pages_list_each_watched_channel_once() {
    let mut engine = TestEngine::new();
    for n in 0..10 {
        subscribe(&mut engine, &format!("c{n}"), 1);
    }
    for n in [1, 4, 5, 9] {
        assert!(engine.set_watched(format!("c{n}").as_str(), true));
    }
    // c4 empties and is dropped; its slot is reused by a new channel.
    engine.unsubscribe("c4", 1);
    subscribe(&mut engine, "new", 2);

    let mut listed = Vec::new();
    let mut from = Some(0);
    while let Some(start) = from {
        let (keys, next) = engine.watched_page(start, 3);
        assert!(keys.len() <= 3);
        listed.extend(keys);
        from = next;
    }
    listed.sort();
    assert_eq!(listed, ["c1", "c5", "c9"]);
    assert_eq!(engine.watched_page(1_000, 3), (Vec::new(), None));
    assert_eq!(TestEngine::new().watched_page(0, 3), (Vec::new(), None));
}
