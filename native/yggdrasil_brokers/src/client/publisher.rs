//! The publisher task: one publishing connection, the requests waiting
//! for it and those in flight, each answered exactly once.
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, timeout_at, Instant};

use super::listener::{sleep_until_some, warn_if_unverified};
use super::slot::Counted;
use super::{panic_text, Shared, CALL_TIMEOUT};
use crate::backoff::Backoff;
use crate::broker::{Broker, PublishError};
use crate::{Delivery, Event, EventSink, Recipient};

pub(super) enum PublishCmd<B: Broker, R: Recipient> {
    // Boxed: a request is large (properties) and the channel holds many.
    Publish(Box<PublishRequest<B, R>>),
    #[cfg(feature = "test-hooks")]
    Panic,
}

pub(super) struct PublishRequest<B: Broker, R: Recipient> {
    pub(super) topic: B::Topic,
    pub(super) payload: Vec<u8>,
    pub(super) properties: B::Properties,
    pub(super) deadline: Instant,
    pub(super) reply: Reply<R>,
}

/// A client's publishes not answered yet (queued, waiting for a connection
/// or in flight) are at most this many; one more is refused at once with
/// `Err("... overloaded ...")`. This bounds the publisher task's command
/// channel and its queues together, whatever the callers do.
pub(super) const MAX_UNANSWERED: usize = 65_536;

/// Where a client's replies go, and how many are still owed.
pub(super) struct Replies<R> {
    events: Arc<dyn EventSink<R>>,
    unanswered: AtomicUsize,
}

impl<R> Replies<R> {
    pub(super) fn new(events: Arc<dyn EventSink<R>>) -> Self {
        Replies {
            events,
            unanswered: AtomicUsize::new(0),
        }
    }
}

/// The one `Published` event a publish owes its caller. Sent by `send`, or
/// by `drop` if the request is abandoned (client closed, task panicked), so
/// that no caller ever waits past its timeout for nothing. Counted in
/// `Replies::unanswered` while it lives.
pub(super) struct Reply<R: Recipient> {
    to: R,
    tag: u64,
    replies: Arc<Replies<R>>,
    sent: bool,
}

impl<R: Recipient> Reply<R> {
    /// The reply of a new publish, or `None` when `MAX_UNANSWERED` are owed.
    pub(super) fn admit(to: R, tag: u64, replies: &Arc<Replies<R>>) -> Option<Self> {
        let owed = replies.unanswered.fetch_add(1, Ordering::Relaxed);
        if owed >= MAX_UNANSWERED {
            replies.unanswered.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Reply {
            to,
            tag,
            replies: replies.clone(),
            sent: false,
        })
    }

    fn send(mut self, result: Result<(), String>) {
        self.deliver(result);
    }

    /// The caller learns the outcome otherwise (an error from `publish`).
    pub(super) fn disarm(&mut self) {
        self.sent = true;
    }

    fn deliver(&mut self, result: Result<(), String>) {
        if !self.sent {
            self.sent = true;
            self.replies.events.deliver(Delivery {
                to: self.to.clone(),
                event: Event::Published {
                    tag: self.tag,
                    result,
                },
            });
        }
    }
}

impl<R: Recipient> Drop for Reply<R> {
    fn drop(&mut self) {
        self.deliver(Err(
            "publish abandoned: the client was closed or its task failed".to_string(),
        ));
        self.replies.unanswered.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `rx` is unbounded, but what it holds is bounded by `MAX_UNANSWERED`:
/// every publish in it owes a counted `Reply`.
pub(super) async fn run<B: Broker, R: Recipient>(
    broker: Arc<B>,
    shared: Arc<Shared<B, R>>,
    mut rx: UnboundedReceiver<PublishCmd<B, R>>,
) {
    let _task = Counted::new(&shared.counters.tasks);
    let mut backoff = Backoff::new(broker.common().backoff_max);
    loop {
        let run = publish_loop(&broker, &shared, &mut rx, &mut backoff);
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(()) => break,
            Err(panic) => {
                shared.warn(format!(
                    "{} publisher task panicked ({}); restarting it",
                    B::NAME,
                    panic_text(&*panic)
                ));
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Commands taken from the channel per wake-up: concurrent callers' publishes
/// go to the broker together, without a turn of the loop each.
const COMMAND_BATCH: usize = 64;

enum Outcome {
    Done(Result<(), PublishError>),
    TimedOut,
}

/// One publish on one publisher; `generation` says which connection it used.
async fn publish_one<B: Broker, R: Recipient>(
    broker: Arc<B>,
    publisher: B::Publisher,
    generation: u64,
    request: PublishRequest<B, R>,
) -> (PublishRequest<B, R>, Outcome, u64) {
    let sent = broker.publish(
        &publisher,
        &request.topic,
        &request.payload,
        &request.properties,
    );
    let outcome = match timeout_at(request.deadline, sent).await {
        Ok(result) => Outcome::Done(result),
        Err(_) => Outcome::TimedOut,
    };
    (request, outcome, generation)
}

async fn connect_publisher<B: Broker>(broker: Arc<B>) -> Result<B::Publisher, String> {
    match timeout(CALL_TIMEOUT, broker.connect_publisher()).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// The requests of a publisher task that are not in flight.
///
/// One request per caller (`reply_to`) is active at a time, the next ones
/// queue behind it: concurrent publishes on a multiplexed connection may
/// reach the wire in any order (measured: they did), and a caller's
/// messages must arrive in the order it published them. BEAM callers wait
/// for each reply anyway, so this costs them nothing.
struct Pending<B: Broker, R: Recipient> {
    /// Active requests waiting for a connection, by deadline. All requests
    /// of a client share one `publish_timeout`, so the earliest is in front.
    waiting: VecDeque<PublishRequest<B, R>>,
    /// Callers with an active request → their requests queued behind it.
    behind: HashMap<R, VecDeque<PublishRequest<B, R>>>,
}

impl<B: Broker, R: Recipient> Pending<B, R> {
    fn admit(&mut self, request: PublishRequest<B, R>) {
        match self.behind.get_mut(&request.reply.to) {
            Some(queue) => queue.push_back(request),
            None => {
                self.behind
                    .insert(request.reply.to.clone(), VecDeque::new());
                self.wait(request);
            }
        }
    }

    /// Puts an active request (new, or back from a broken connection) in line.
    fn wait(&mut self, request: PublishRequest<B, R>) {
        let at = self
            .waiting
            .partition_point(|r| r.deadline <= request.deadline);
        self.waiting.insert(at, request);
    }

    /// Replies to an active request and activates its caller's next one.
    fn finish(&mut self, request: PublishRequest<B, R>, result: Result<(), String>) {
        let to = request.reply.to.clone();
        request.reply.send(result);
        match self.behind.get_mut(&to).and_then(VecDeque::pop_front) {
            Some(next) => self.wait(next),
            None => {
                self.behind.remove(&to);
            }
        }
    }

    /// Fails the waiting requests whose deadline passed.
    fn expire(&mut self, now: Instant, reason: impl Fn() -> String) {
        while self.waiting.front().is_some_and(|r| r.deadline <= now) {
            if let Some(request) = self.waiting.pop_front() {
                self.finish(request, Err(reason()));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.behind.is_empty()
    }
}

async fn publish_loop<B: Broker, R: Recipient>(
    broker: &Arc<B>,
    shared: &Shared<B, R>,
    rx: &mut UnboundedReceiver<PublishCmd<B, R>>,
    backoff: &mut Backoff,
) {
    let common = broker.common().clone();
    let timeout_ms = common.publish_timeout.as_millis();
    let mut publisher: Option<(B::Publisher, Counted<'_>)> = None;
    let mut generation: u64 = 0;
    let mut pending = Pending {
        waiting: VecDeque::new(),
        behind: HashMap::new(),
    };
    let mut in_flight = FuturesUnordered::new();
    let mut commands = Vec::with_capacity(COMMAND_BATCH);
    let mut connecting = None;
    let mut reconnect_at: Option<Instant> = None;
    let mut last_error = String::from("not connected yet");
    let mut last_use = Instant::now();

    loop {
        let now = Instant::now();
        pending.expire(now, || {
            format!(
                "no {} connection within publish_timeout ({timeout_ms} ms): {last_error}",
                B::NAME
            )
        });
        if let Some((p, _)) = publisher.as_ref() {
            for request in pending.waiting.drain(..) {
                in_flight.push(publish_one(broker.clone(), p.clone(), generation, request));
            }
        } else if !pending.waiting.is_empty()
            && connecting.is_none()
            && reconnect_at.is_none_or(|at| at <= now)
        {
            connecting = Some(Box::pin(connect_publisher(broker.clone())));
        }

        let busy = !pending.is_empty() || !in_flight.is_empty() || connecting.is_some();
        let idle_at = (!busy).then(|| last_use + common.idle_timeout);
        let wake_at = [
            pending.waiting.front().map(|r| r.deadline),
            reconnect_at.filter(|_| !pending.waiting.is_empty()),
            idle_at,
        ]
        .into_iter()
        .flatten()
        .min();

        tokio::select! {
            received = rx.recv_many(&mut commands, COMMAND_BATCH) => {
                if received == 0 {
                    return;
                }
                last_use = Instant::now();
                for cmd in commands.drain(..) {
                    match cmd {
                        PublishCmd::Publish(request) => pending.admit(*request),
                        #[cfg(feature = "test-hooks")]
                        PublishCmd::Panic => panic!("injected by debug_inject_panic"),
                    }
                }
            },
            Some((request, outcome, used)) = in_flight.next(), if !in_flight.is_empty() => {
                last_use = Instant::now();
                match outcome {
                    Outcome::Done(Ok(())) => pending.finish(request, Ok(())),
                    Outcome::Done(Err(PublishError::Refused(reason))) => pending.finish(request, Err(reason)),
                    Outcome::TimedOut => {
                        // No answer at all: the connection may be dead without
                        // having been closed. Later publishes use a new one.
                        if used == generation && publisher.take().is_some() {
                            shared.warn(format!("dropped the {} publishing connection: no answer within publish_timeout", B::NAME));
                        }
                        pending.finish(request, Err(format!(
                            "{} did not accept the message within publish_timeout ({timeout_ms} ms)",
                            B::NAME
                        )))
                    }
                    Outcome::Done(Err(PublishError::Connection(reason))) => {
                        if used == generation && publisher.take().is_some() {
                            shared.warn(format!("lost the {} publishing connection: {reason}", B::NAME));
                        }
                        last_error = reason;
                        // Sent again on the next connection if the deadline allows.
                        pending.wait(request);
                    }
                }
            },
            result = async {
                match connecting.as_mut() {
                    Some(connect) => connect.await,
                    None => std::future::pending().await,
                }
            }, if connecting.is_some() => {
                connecting = None;
                match result {
                    Ok(p) => {
                        warn_if_unverified(&**broker, shared);
                        generation += 1;
                        publisher = Some((p, Counted::new(&shared.counters.connections)));
                        reconnect_at = None;
                        backoff.reset();
                    }
                    Err(reason) => {
                        shared.warn(format!("cannot connect to {}: {reason}", B::NAME));
                        last_error = reason;
                        reconnect_at = Some(Instant::now() + backoff.next_delay());
                    }
                }
            },
            _ = sleep_until_some(wake_at) => {
                // Unused for idle_timeout: end the task, closing the connection.
                if idle_at.is_some_and(|at| at <= Instant::now()) && shared.publisher.retire_if_idle(rx) {
                    return;
                }
            },
        }
    }
}
