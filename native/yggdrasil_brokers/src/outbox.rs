//! Where the events of every client wait for the one thread that delivers
//! them, bounded, and what happens when that side cannot keep up.
//!
//! A broker's socket is always read at the broker's pace: waiting for a slow
//! delivery side would leave the backlog in the broker (Redis's pub/sub
//! output buffer, PostgreSQL's NOTIFY queue, which every session of that
//! server shares) and make subscribers receive ever older events. So the
//! load is shed here, per *flow* (one recipient's stream of one topic), and
//! every gap is told where it is:
//!
//! - **Full**: a client's queued messages are capped in number and bytes
//!   ([`Limits`]). At the cap, what the client has queued is dropped in
//!   favour of what comes next (fresh events win over a backlog; at most
//!   once per quarter of `max_lag` below twice the cap, at every message
//!   above it): the consumer drops it as it comes out, and new messages are
//!   queued beyond the cap. Past four times the cap a new message is
//!   dropped too, and a *gap* is queued in its place (one for a run of
//!   drops).
//! - **Late**: a message that waited longer than [`Limits::max_lag`] when
//!   its turn comes is dropped (half of it when more of its flow is queued
//!   behind it: the consumer catches up with the newest); the gap is told
//!   before the flow's next delivery, or at once when nothing of the flow
//!   is queued behind it.
//! - **Told**: a gap reaches the recipient as `Disconnected` followed by
//!   `Connected` (the latter only while the broker subscription is
//!   confirmed), exactly where the messages are missing. So a recipient
//!   never misses a message without a `Disconnected` before the gap and a
//!   `Connected` after it, as for a lost connection, and what it gets is
//!   never older than `max_lag`: a message published after a flood is not
//!   lost with the flood's backlog, it waits at most that long.
//!
//! Connection notices, warnings and publish replies are never dropped: the
//! listener sends at most one notice per flow per state change, warnings and
//! replies are bounded by the callers and reconnect attempts, and gaps
//! alternate with messages.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::{Delivery, Event, EventSink, Name, Recipient};

/// Purged messages wait to be dropped by the consumer (quickly, they are
/// not delivered): the queue holds at most this many times the caps.
const HARD_CAP: usize = 4;

/// Counted for each queued message besides its payload: the queue entry,
/// the name and metadata (small terms).
const ENTRY_BYTES: usize = 256;

/// How much a client may have waiting, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Messages queued per client before its backlog is purged (the queue
    /// holds up to [`HARD_CAP`] times this while purged messages drain).
    pub max_events: usize,
    /// Bytes queued per client (payloads plus [`ENTRY_BYTES`] each), as
    /// `max_events`.
    pub max_bytes: usize,
    /// A message older than this when its turn comes is dropped: a
    /// subscriber gets fresh events or a notice, never a stale backlog.
    pub max_lag: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 16_384,
            max_bytes: 16 * 1024 * 1024,
            max_lag: Duration::from_secs(2),
        }
    }
}

/// What one client has queued and what it shed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Messages waiting for the delivery thread.
    pub queued: usize,
    /// Their bytes, as counted against [`Limits::max_bytes`].
    pub queued_bytes: usize,
    /// Messages dropped because the delivery side could not keep up.
    pub dropped: u64,
    /// Gaps told (each a `Disconnected` then `Connected` to a recipient).
    pub shed: u64,
}

/// A client's counters, shared by its producer side and the consumer.
#[derive(Default)]
struct Load {
    queued: AtomicUsize,
    bytes: AtomicUsize,
    dropped: AtomicU64,
    shed: AtomicU64,
    /// Messages queued before this (ns since `EPOCH`) are dropped.
    purged_before: AtomicU64,
    /// Items of every kind queued and not yet finished: in the queue, or
    /// taken by the consumer and not yet handed on.
    unfinished: AtomicUsize,
}

/// What queue times are counted from.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX)
}

impl Load {
    /// Takes room for one message of `bytes` within `times` the caps, or
    /// says there is none.
    fn reserve(&self, bytes: usize, limits: &Limits, times: usize) -> bool {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if queued < limits.max_events.saturating_mul(times)
            && total <= limits.max_bytes.saturating_mul(times)
        {
            return true;
        }
        self.release(bytes);
        false
    }

    /// Whether a message queued at `at` was dropped by a purge since.
    fn purged(&self, at: Instant) -> bool {
        nanos_since_epoch(at) < self.purged_before.load(Ordering::SeqCst)
    }

    fn release(&self, bytes: usize) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// One recipient's stream of one topic: what shedding and recovery act on.
/// Made by the sink ([`EventSink::flow`]) when a recipient joins a topic.
pub struct Flow<R> {
    to: R,
    name: Name,
    load: Arc<Load>,
    /// The consumer's: what the recipient was last told (`Connected` or
    /// `Disconnected`, in queue order): a gap ends with `Connected` only if
    /// it was connected there.
    told_connected: AtomicBool,
    /// The producer's: the last thing queued for this flow is a gap.
    gap_queued: AtomicBool,
    /// The consumer's: late messages of this flow were dropped, and the
    /// recipient is not told yet.
    gap_owed: AtomicBool,
    /// This flow's entries in the queue (messages, notices, gaps).
    queued: AtomicUsize,
}

impl<R: Recipient> Flow<R> {
    /// A flow outside any [`Outbox`]: nothing bounds or sheds it.
    pub fn detached(to: R, name: Name) -> Arc<Flow<R>> {
        Self::new(to, name, Arc::default())
    }

    fn new(to: R, name: Name, load: Arc<Load>) -> Arc<Flow<R>> {
        Arc::new(Flow {
            to,
            name,
            load,
            told_connected: AtomicBool::new(false),
            gap_queued: AtomicBool::new(false),
            gap_owed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
        })
    }

    pub fn to(&self) -> &R {
        &self.to
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Nothing of this flow's client (its messages, notices, gaps, warnings)
    /// is queued or in the consumer's hands, and the flow owes no gap:
    /// whatever the client's producer hands on now, by its own means, comes
    /// after all it queued before. A sink may then deliver a message itself
    /// instead of queueing it (the NIF does, saving the delivery thread's
    /// wake-up); it stays bounded since the producer waits for it.
    pub fn is_idle(&self) -> bool {
        self.load.unfinished.load(Ordering::SeqCst) == 0 && !self.gap_owed.load(Ordering::SeqCst)
    }

    /// As if the recipient had been told `Connected` (tests).
    #[cfg(test)]
    fn assume_connected(&self) {
        self.told_connected.store(true, Ordering::SeqCst);
    }

    fn delivery(&self, event: Event) -> Delivery<R> {
        Delivery {
            to: self.to.clone(),
            event,
        }
    }
}

enum Item<R> {
    /// Warnings and replies: delivered as they come.
    Plain(Delivery<R>, Arc<Load>),
    /// A flow's message or notice.
    Flow {
        flow: Arc<Flow<R>>,
        event: Event,
        at: Instant,
        bytes: usize,
    },
    /// Where a flow's messages were dropped for want of room.
    Gap(Arc<Flow<R>>),
}

/// The producer side: one per client (see [`Outbox::for_client`]), an
/// [`EventSink`]. Never blocks.
pub struct Outbox<R> {
    items: Sender<Item<R>>,
    limits: Limits,
    load: Arc<Load>,
}

impl<R> Clone for Outbox<R> {
    fn clone(&self) -> Self {
        Outbox {
            items: self.items.clone(),
            limits: self.limits,
            load: self.load.clone(),
        }
    }
}

/// The consumer side, for the one delivery thread.
pub struct Deliveries<R> {
    items: Receiver<Item<R>>,
    limits: Limits,
    /// What one item turned into (a gap's notices, then a message).
    ready: VecDeque<Delivery<R>>,
    /// The clients of the items taken since `ready` was last empty: those
    /// are finished once the consumer asks for more with `ready` empty.
    taken: Vec<Arc<Load>>,
}

/// The queue every client's events go through, both ends. The queue itself
/// is a crossbeam list channel: its length is bounded by the per-client
/// caps (messages), the gaps between them, and the listener's
/// one-notice-per-change (notices).
pub fn channel<R: Recipient>(limits: Limits) -> (Outbox<R>, Deliveries<R>) {
    let (items_tx, items_rx) = crossbeam_channel::unbounded();
    let outbox = Outbox {
        items: items_tx,
        limits,
        load: Arc::default(),
    };
    let deliveries = Deliveries {
        items: items_rx,
        limits,
        ready: VecDeque::new(),
        taken: Vec::new(),
    };
    (outbox, deliveries)
}

impl<R: Recipient> Outbox<R> {
    /// A producer handle with its own counters and caps, for one client.
    pub fn for_client(&self) -> Outbox<R> {
        Outbox {
            load: Arc::default(),
            ..self.clone()
        }
    }

    /// This client's queue and what it shed so far.
    pub fn load(&self) -> LoadStats {
        LoadStats {
            queued: self.load.queued.load(Ordering::Relaxed),
            queued_bytes: self.load.bytes.load(Ordering::Relaxed),
            dropped: self.load.dropped.load(Ordering::Relaxed),
            shed: self.load.shed.load(Ordering::Relaxed),
        }
    }

    /// Counts a shedding done past the outbox (a recipient process that
    /// dropped `dropped` events waiting in its mailbox).
    pub fn count_shed(&self, dropped: u64) {
        self.load.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.load.shed.fetch_add(1, Ordering::Relaxed);
    }

    fn push(&self, flow: &Arc<Flow<R>>, event: Event, bytes: usize) {
        flow.gap_queued.store(false, Ordering::SeqCst);
        flow.load.unfinished.fetch_add(1, Ordering::SeqCst);
        flow.queued.fetch_add(1, Ordering::SeqCst);
        let item = Item::Flow {
            flow: flow.clone(),
            event,
            at: Instant::now(),
            bytes,
        };
        // A dropped consumer means nobody delivers any more: nothing to do.
        let _ = self.items.send(item);
    }
}

impl<R: Recipient> EventSink<R> for Outbox<R> {
    fn deliver(&self, delivery: Delivery<R>) {
        self.load.unfinished.fetch_add(1, Ordering::SeqCst);
        let _ = self.items.send(Item::Plain(delivery, self.load.clone()));
    }

    fn flow(&self, to: R, name: Name) -> Arc<Flow<R>> {
        Flow::new(to, name, self.load.clone())
    }

    fn flow_gap(&self, flow: &Arc<Flow<R>>) {
        flow.gap_queued.store(true, Ordering::SeqCst);
        flow.load.unfinished.fetch_add(1, Ordering::SeqCst);
        flow.queued.fetch_add(1, Ordering::SeqCst);
        let _ = self.items.send(Item::Gap(flow.clone()));
    }

    fn flow_event(&self, flow: &Arc<Flow<R>>, event: Event) {
        let Event::Message { payload, .. } = &event else {
            return self.push(flow, event, 0);
        };
        let bytes = payload.len().saturating_add(ENTRY_BYTES);
        if flow.load.reserve(bytes, &self.limits, 1) {
            return self.push(flow, event, bytes);
        }
        if !flow.load.reserve(bytes, &self.limits, HARD_CAP) {
            flow.load.drop_one();
            // One gap for a run of drops (a flow has one producer: its listener).
            if !flow.gap_queued.load(Ordering::SeqCst) {
                self.flow_gap(flow);
            }
            return;
        }
        // Beyond the cap: the backlog goes, this one stays. At most one purge
        // per quarter of `max_lag` (what came in since the last one is fresh
        // enough to deliver) up to twice the cap, one per message beyond.
        let now = nanos_since_epoch(Instant::now()).max(1);
        let every = u64::try_from((self.limits.max_lag / 4).as_nanos()).unwrap_or(u64::MAX);
        let last = flow.load.purged_before.load(Ordering::SeqCst);
        let over_twice = flow.load.queued.load(Ordering::Relaxed)
            > self.limits.max_events.saturating_mul(2)
            || flow.load.bytes.load(Ordering::Relaxed) > self.limits.max_bytes.saturating_mul(2);
        if over_twice || last == 0 || now.saturating_sub(last) >= every {
            flow.load.purged_before.fetch_max(now, Ordering::SeqCst);
        }
        self.push(flow, event, bytes);
    }
}

/// The events to deliver, in order, with shedding applied: `next` blocks
/// until there is one, and gives `None` once every producer is gone. The
/// consumer has finished with what `next` gave it when it calls `next`
/// again ([`Flow::is_idle`] counts on that).
impl<R: Recipient> Iterator for Deliveries<R> {
    type Item = Delivery<R>;

    fn next(&mut self) -> Option<Delivery<R>> {
        loop {
            if let Some(delivery) = self.ready.pop_front() {
                return Some(delivery);
            }
            for load in self.taken.drain(..) {
                load.unfinished.fetch_sub(1, Ordering::SeqCst);
            }
            let item = self.items.recv().ok()?;
            self.take(item);
        }
    }
}

impl<R: Recipient> Deliveries<R> {
    /// Turns an item out of the queue into what to deliver, if anything.
    fn take(&mut self, item: Item<R>) {
        let (flow, event, at, bytes) = match item {
            Item::Plain(delivery, load) => {
                self.taken.push(load);
                return self.ready.push_back(delivery);
            }
            Item::Gap(flow) => {
                flow.queued.fetch_sub(1, Ordering::SeqCst);
                self.tell_gap(&flow);
                return self.taken.push(flow.load.clone());
            }
            Item::Flow {
                flow,
                event,
                at,
                bytes,
            } => (flow, event, at, bytes),
        };
        self.taken.push(flow.load.clone());
        let left = flow.queued.fetch_sub(1, Ordering::SeqCst) - 1;
        if matches!(event, Event::Message { .. }) {
            flow.load.release(bytes);
            // Half the lag is late enough for a message with more of its
            // flow behind it: skipping it catches up with the newest, which
            // is then never older than the lag.
            let age = at.elapsed();
            let late = age > self.limits.max_lag || (left > 0 && age > self.limits.max_lag / 2);
            if late || flow.load.purged(at) {
                flow.load.drop_one();
                flow.gap_owed.store(true, Ordering::SeqCst);
                // Nothing of the flow behind it: told now, not at its next event.
                if left == 0 {
                    self.tell_gap(&flow);
                }
                return;
            }
        }
        if flow.gap_owed.load(Ordering::SeqCst) {
            self.tell_gap(&flow);
        }
        match event {
            Event::Connected { .. } => flow.told_connected.store(true, Ordering::SeqCst),
            Event::Disconnected { .. } => flow.told_connected.store(false, Ordering::SeqCst),
            _ => {}
        }
        self.ready.push_back(flow.delivery(event));
    }

    /// `Disconnected`, then `Connected` if the recipient was connected.
    fn tell_gap(&mut self, flow: &Flow<R>) {
        flow.gap_owed.store(false, Ordering::SeqCst);
        flow.load.shed.fetch_add(1, Ordering::Relaxed);
        let name = flow.name.clone();
        self.ready
            .push_back(flow.delivery(Event::Disconnected { name }));
        if flow.told_connected.load(Ordering::SeqCst) {
            let name = flow.name.clone();
            self.ready
                .push_back(flow.delivery(Event::Connected { name }));
        }
    }
}

#[cfg(test)]
mod tests;
