//! Where the events of every client wait for the one thread that delivers
//! them, bounded, and what happens when that side cannot keep up.
//!
//! A broker's socket is always read at the broker's pace: waiting for a slow
//! delivery side would leave the backlog in the broker (Redis's pub/sub
//! output buffer, PostgreSQL's NOTIFY queue, which every session of that
//! server shares) and make subscribers receive ever older events. So the
//! load is shed here, with notice, per *flow* (one recipient's stream of one
//! topic):
//!
//! - **Full**: a client's queued events are capped in number and bytes
//!   ([`Limits`]). A message that does not fit is dropped, and its flow is
//!   *shed* at once: the consumer is nudged on a side lane, ahead of the
//!   backlog.
//! - **Late**: a message that waited longer than [`Limits::max_lag`] is
//!   dropped when it comes out, and its flow is shed.
//! - **Shed**: the flow's recipient gets `Disconnected` right away; the
//!   flow's messages still queued are dropped as they come out, and new ones
//!   are dropped as they come in. Once none of its messages is queued any
//!   more, the recipient gets `Connected` (if the broker subscription is
//!   confirmed) and messages flow again. A recipient therefore never misses
//!   a message without a `Disconnected` before the gap and a `Connected`
//!   after it, exactly as for a lost connection.
//!
//! Connection notices, warnings and publish replies are never dropped: the
//! listener sends at most one notice per flow per state change, and
//! warnings and replies are bounded by the callers and reconnect attempts.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select_biased, Receiver, Sender, TryRecvError};

use crate::{Delivery, Event, EventSink, Name, Recipient};

/// Counted for each queued message besides its payload: the queue entry,
/// the name and metadata (small terms).
const ENTRY_BYTES: usize = 256;

/// How much a client may have waiting, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Messages queued per client.
    pub max_events: usize,
    /// Bytes queued per client (payloads plus [`ENTRY_BYTES`] each).
    pub max_bytes: usize,
    /// A message older than this when its turn comes is dropped: a
    /// subscriber gets fresh events or a notice, never a stale backlog.
    pub max_lag: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 65_536,
            max_bytes: 64 * 1024 * 1024,
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
    /// Times a flow was shed (each one a `Disconnected` to its recipient).
    pub shed: u64,
}

/// A client's counters, shared by its producer side and the consumer.
#[derive(Default)]
struct Load {
    queued: AtomicUsize,
    bytes: AtomicUsize,
    dropped: AtomicU64,
    shed: AtomicU64,
}

impl Load {
    /// Takes room for one message of `bytes`, or says there is none.
    fn reserve(&self, bytes: usize, limits: &Limits) -> bool {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if queued < limits.max_events && total <= limits.max_bytes {
            return true;
        }
        self.release(bytes);
        false
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
    /// The broker confirmed the topic on the current session (set by the
    /// listener): recovery says `Connected` only then.
    confirmed: AtomicBool,
    /// Set by the consumer while the flow is shed: its messages are
    /// dropped, in the queue and at the door.
    shedding: AtomicBool,
    /// The producer found the queue full and nudged the consumer.
    overflowed: AtomicBool,
    /// This flow's entries in the queue (messages and notices).
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
            confirmed: AtomicBool::new(false),
            shedding: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
        })
    }

    pub fn to(&self) -> &R {
        &self.to
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Called by the listener as the broker confirms or loses the topic.
    pub(crate) fn set_confirmed(&self, confirmed: bool) {
        self.confirmed.store(confirmed, Ordering::SeqCst);
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
    Plain(Delivery<R>),
    /// A flow's message or notice.
    Flow {
        flow: Arc<Flow<R>>,
        event: Event,
        at: Instant,
        bytes: usize,
    },
}

/// The producer side: one per client (see [`Outbox::for_client`]), an
/// [`EventSink`]. Never blocks.
pub struct Outbox<R> {
    items: Sender<Item<R>>,
    nudges: Sender<Arc<Flow<R>>>,
    limits: Limits,
    load: Arc<Load>,
}

impl<R> Clone for Outbox<R> {
    fn clone(&self) -> Self {
        Outbox {
            items: self.items.clone(),
            nudges: self.nudges.clone(),
            limits: self.limits,
            load: self.load.clone(),
        }
    }
}

/// The consumer side, for the one delivery thread.
pub struct Deliveries<R> {
    items: Receiver<Item<R>>,
    nudges: Receiver<Arc<Flow<R>>>,
    limits: Limits,
    /// Notices made here, delivered before anything else.
    ready: VecDeque<Delivery<R>>,
    /// Flows shed and not recovered yet.
    shed: Vec<Arc<Flow<R>>>,
}

/// The queue every client's events go through, both ends. The queue itself
/// is a crossbeam list channel: its length is bounded by the per-client
/// caps (messages) and by the listener's one-notice-per-change (notices).
pub fn channel<R: Recipient>(limits: Limits) -> (Outbox<R>, Deliveries<R>) {
    let (items_tx, items_rx) = crossbeam_channel::unbounded();
    let (nudges_tx, nudges_rx) = crossbeam_channel::unbounded();
    let outbox = Outbox {
        items: items_tx,
        nudges: nudges_tx,
        limits,
        load: Arc::default(),
    };
    let deliveries = Deliveries {
        items: items_rx,
        nudges: nudges_rx,
        limits,
        ready: VecDeque::new(),
        shed: Vec::new(),
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
        let _ = self.items.send(Item::Plain(delivery));
    }

    fn flow(&self, to: R, name: Name) -> Arc<Flow<R>> {
        Flow::new(to, name, self.load.clone())
    }

    fn flow_event(&self, flow: &Arc<Flow<R>>, event: Event) {
        let Event::Message { payload, .. } = &event else {
            return self.push(flow, event, 0);
        };
        if flow.shedding.load(Ordering::SeqCst) {
            return flow.load.drop_one();
        }
        let bytes = payload.len().saturating_add(ENTRY_BYTES);
        if !flow.load.reserve(bytes, &self.limits) {
            flow.load.drop_one();
            if !flow.overflowed.swap(true, Ordering::SeqCst) {
                let _ = self.nudges.send(flow.clone());
            }
            return;
        }
        self.push(flow, event, bytes);
    }
}

/// The events to deliver, in order, with shedding applied: `next` blocks
/// until there is one, and gives `None` once every producer is gone.
impl<R: Recipient> Iterator for Deliveries<R> {
    type Item = Delivery<R>;

    fn next(&mut self) -> Option<Delivery<R>> {
        loop {
            if let Some(delivery) = self.ready.pop_front() {
                return Some(delivery);
            }
            // A full queue's notice goes before the backlog it is about.
            while let Ok(flow) = self.nudges.try_recv() {
                self.shed_flow(&flow);
            }
            self.recover();
            if !self.ready.is_empty() {
                continue;
            }
            let item = match self.items.try_recv() {
                Ok(item) => item,
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => select_biased! {
                    recv(self.nudges) -> flow => {
                        if let Ok(flow) = flow {
                            self.shed_flow(&flow);
                        }
                        continue;
                    }
                    recv(self.items) -> item => match item {
                        Ok(item) => item,
                        Err(_) => return None,
                    },
                },
            };
            if let Some(delivery) = self.take(item) {
                return Some(delivery);
            }
        }
    }
}

impl<R: Recipient> Deliveries<R> {
    /// An item out of the queue: what to deliver of it, if anything.
    fn take(&mut self, item: Item<R>) -> Option<Delivery<R>> {
        let (flow, event, at, bytes) = match item {
            Item::Plain(delivery) => return Some(delivery),
            Item::Flow {
                flow,
                event,
                at,
                bytes,
            } => (flow, event, at, bytes),
        };
        flow.queued.fetch_sub(1, Ordering::SeqCst);
        match event {
            Event::Message { .. } => {
                flow.load.release(bytes);
                // Queued before the flow was shed (or while the producer
                // raced with it): stale by definition.
                if flow.shedding.load(Ordering::SeqCst) {
                    flow.load.drop_one();
                    return None;
                }
                if at.elapsed() > self.limits.max_lag {
                    flow.load.drop_one();
                    self.shed_flow(&flow);
                    return None;
                }
                Some(flow.delivery(event))
            }
            // Said at recovery instead, once the stale messages are gone.
            Event::Connected { .. } if flow.shedding.load(Ordering::SeqCst) => None,
            event => Some(flow.delivery(event)),
        }
    }

    fn shed_flow(&mut self, flow: &Arc<Flow<R>>) {
        flow.overflowed.store(false, Ordering::SeqCst);
        if flow.shedding.swap(true, Ordering::SeqCst) {
            return;
        }
        flow.load.shed.fetch_add(1, Ordering::Relaxed);
        let name = flow.name.clone();
        self.ready
            .push_back(flow.delivery(Event::Disconnected { name }));
        self.shed.push(flow.clone());
    }

    /// Shed flows with nothing left in the queue flow again.
    fn recover(&mut self) {
        let ready = &mut self.ready;
        self.shed.retain(|flow| {
            if flow.queued.load(Ordering::SeqCst) > 0 {
                return true;
            }
            flow.shedding.store(false, Ordering::SeqCst);
            if flow.confirmed.load(Ordering::SeqCst) {
                let name = flow.name.clone();
                ready.push_back(flow.delivery(Event::Connected { name }));
            }
            false
        });
    }
}

#[cfg(test)]
mod tests;
