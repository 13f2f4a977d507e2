//! `Client`: the shared machinery every broker runs on.
//!
//! A client has up to two tasks on the shared runtime, each started on first
//! use and ended after `idle_timeout` of not being needed: the listener
//! (one subscribing session, its topics and their recipients) and the
//! publisher (one publishing connection, the requests waiting for it and
//! those in flight). Commands reach them through tokio mpsc channels (the
//! async side awaits them in a `select!`); events leave through the
//! caller's [`EventSink`], usually a `crossbeam_channel::Sender` because
//! the receiving side is a plain thread (the NIF's delivery thread), not a
//! task.
//!
//! Each task body runs under `catch_unwind`: a panic in a broker module or
//! here ends the session (its confirmed topics' recipients get
//! `Disconnected`, in-flight publishes get their error reply), and the loop
//! starts again from the state kept outside the panicking frame.
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::Sender;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use crate::backoff::Backoff;
use crate::broker::{Broker, ListenError, PublishError};
use crate::{
    runtime, ClientStats, Config, Delivery, Error, Event, Metadata, Properties, Recipient, Topic,
};

/// A connect or a control call (listen/unlisten) taking longer than this
/// is treated as a lost connection: a broker that accepts TCP but never
/// answers must not stall the listener forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A subscribing session quiet for this long is pinged, and lost if the
/// ping is not answered within the same time: a broker that vanished
/// without closing the socket is noticed within ~2 × KEEPALIVE.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(5);

/// One broker + namespace: a fixed small set of connections (redis: one
/// subscribing + one publishing) shared by all its topics and publishers.
pub struct Client<R: Recipient> {
    driver: Arc<dyn Driver<R>>,
    shared: Arc<Shared<R>>,
}

impl<R: Recipient> Client<R> {
    /// Never blocks, never connects: connections open on first subscribe or
    /// publish, reconnect by themselves with bounded exponential backoff and
    /// jitter, replay every subscription after each reconnect, and close
    /// once unused for `idle_timeout` (reopening on next use).
    ///
    /// `events` receives every event of this client: usually an unbounded
    /// `crossbeam_channel::Sender` (a full bounded one would stall the
    /// runtime thread), or any [`EventSink`].
    pub fn open(config: Config, owner: R, events: impl EventSink<R>) -> Result<Self, Error> {
        runtime::ensure()?;
        let common = config.common().clone();
        let driver: Arc<dyn Driver<R>> = match config {
            #[cfg(feature = "redis")]
            Config::Redis(c) => Arc::new(Erased(Arc::new(crate::redis::Redis::new(c)?))),
            #[cfg(feature = "postgres")]
            Config::Postgres(c) => Arc::new(Erased(Arc::new(crate::postgres::Postgres::new(c)?))),
            #[cfg(feature = "rabbitmq")]
            Config::RabbitMq(c) => Arc::new(Erased(Arc::new(crate::rabbitmq::RabbitMq::new(c)?))),
        };
        let shared = Arc::new(Shared {
            owner,
            events: Arc::new(events),
            publish_timeout: common.publish_timeout,
            listener: Slot::default(),
            publisher: Slot::default(),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
        });
        Ok(Client { driver, shared })
    }

    /// Returns at once; `Connected{topic}` goes to `to` when the broker
    /// confirmed. The same (topic, to) twice is one subscription. Many
    /// recipients share one broker-level subscription per topic.
    pub fn subscribe(&self, topic: Topic, to: R) -> Result<(), Error> {
        self.driver.check_topic(&topic)?;
        self.send_listener(ListenCmd::Subscribe(topic, to))
    }

    /// Returns at once; no event. The broker-level subscription goes with
    /// the topic's last recipient.
    pub fn unsubscribe(&self, topic: Topic, to: R) -> Result<(), Error> {
        self.driver.check_topic(&topic)?;
        self.send_listener(ListenCmd::Unsubscribe(topic, to))
    }

    /// Returns at once; exactly one `Published{tag, result}` goes to
    /// `reply_to`: `Ok` once the broker accepted the message, `Err(reason)`
    /// when it refused it or no connection was up within `publish_timeout`
    /// (the request waits for a reconnect up to that deadline).
    pub fn publish(
        &self,
        topic: Topic,
        payload: Vec<u8>,
        props: Properties,
        reply_to: R,
        tag: u64,
    ) -> Result<(), Error> {
        self.driver.check_topic(&topic)?;
        self.driver.check_payload(&payload)?;
        let request = PublishRequest {
            topic,
            payload,
            props,
            deadline: Instant::now() + self.shared.publish_timeout,
            reply: Reply {
                to: reply_to,
                tag,
                events: self.shared.events.clone(),
                sent: false,
            },
        };
        self.send_publisher(PublishCmd::Publish(Box::new(request)))
    }

    /// Stops the tasks and closes the broker connections (also on drop).
    /// Publishes not answered yet get `Err`; no other event follows.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Dropping the senders ends the tasks: their `recv()` returns None.
        self.shared.listener.take();
        self.shared.publisher.take();
    }

    pub fn stats(&self) -> ClientStats {
        self.shared.counters.snapshot()
    }

    /// Test hook: makes the listener and publisher tasks panic once, to
    /// check that supervision restarts them. Not part of the API.
    #[doc(hidden)]
    pub fn debug_inject_panic(&self) -> Result<(), Error> {
        self.send_listener(ListenCmd::Panic)?;
        self.send_publisher(PublishCmd::Panic)
    }

    fn send_listener(&self, cmd: ListenCmd<R>) -> Result<(), Error> {
        let (driver, shared) = (&self.driver, &self.shared);
        shared
            .listener
            .send(&shared.closed, cmd, |rx| {
                driver.spawn_listener(shared.clone(), rx)
            })
            .map_err(|not_sent| self.refusal(not_sent.reason))
    }

    fn send_publisher(&self, cmd: PublishCmd<R>) -> Result<(), Error> {
        let (driver, shared) = (&self.driver, &self.shared);
        shared
            .publisher
            .send(&shared.closed, cmd, |rx| {
                driver.spawn_publisher(shared.clone(), rx)
            })
            .map_err(|not_sent| {
                // The caller gets this error instead of a `Published` event.
                if let PublishCmd::Publish(mut request) = not_sent.cmd {
                    request.reply.disarm();
                }
                self.refusal(not_sent.reason)
            })
    }

    fn refusal(&self, reason: Option<Error>) -> Error {
        reason.unwrap_or_else(|| Error::new(format!("the {} client is closed", self.driver.name())))
    }
}

impl<R: Recipient> Drop for Client<R> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Where a client's events go. Called on the broker runtime's thread, in
/// the order of the events: it must not block, since every client's I/O
/// waits while it runs.
///
/// A `crossbeam_channel::Sender` is one: the design's delivery thread reads
/// the other end. A sink that hands events on directly (e.g. `enif_send`
/// from an owned environment, which any non-scheduler thread may do) saves
/// that thread's wake-up per event.
pub trait EventSink<R>: Send + Sync + 'static {
    fn deliver(&self, delivery: Delivery<R>);
}

impl<R: Send + 'static> EventSink<R> for Sender<Delivery<R>> {
    fn deliver(&self, delivery: Delivery<R>) {
        // A dropped receiver means nobody listens any more: nothing to do.
        let _ = self.send(delivery);
    }
}

/// What the tasks and the client share.
struct Shared<R: Recipient> {
    owner: R,
    events: Arc<dyn EventSink<R>>,
    publish_timeout: Duration,
    listener: Slot<ListenCmd<R>>,
    publisher: Slot<PublishCmd<R>>,
    counters: Counters,
    closed: AtomicBool,
}

impl<R: Recipient> Shared<R> {
    fn send(&self, to: &R, event: Event) {
        self.events.deliver(Delivery {
            to: to.clone(),
            event,
        });
    }

    fn warn(&self, message: String) {
        self.send(&self.owner, Event::Warning { message });
    }
}

/// The sending end of a task's command channel, or nothing while the task
/// is not running. The lock makes "start on first use" and "end when idle"
/// exclusive: a task ends only if its queue is empty under the lock, so no
/// command is ever sent to a task that is leaving.
struct Slot<C>(Mutex<Option<UnboundedSender<C>>>);

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot(Mutex::new(None))
    }
}

impl<C> Slot<C> {
    fn lock(&self) -> MutexGuard<'_, Option<UnboundedSender<C>>> {
        // Nothing that can panic runs under this lock; recover anyway.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `cmd` for the task, starting the task if none runs; gives the
    /// command back if it could not be queued.
    fn send(
        &self,
        closed: &AtomicBool,
        cmd: C,
        start: impl FnOnce(UnboundedReceiver<C>) -> Result<(), Error>,
    ) -> Result<(), NotSent<C>> {
        let mut slot = self.lock();
        // Checked under the lock: once `close` took the sender, no call
        // racing with it can start a new task.
        if closed.load(Ordering::SeqCst) {
            return Err(NotSent { cmd, reason: None });
        }
        let cmd = match slot.as_ref() {
            Some(tx) => match tx.send(cmd) {
                Ok(()) => return Ok(()),
                // The task is gone without retiring (runtime shut down).
                Err(mpsc::error::SendError(cmd)) => cmd,
            },
            None => cmd,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if let Err(e) = start(rx) {
            return Err(NotSent {
                cmd,
                reason: Some(e),
            });
        }
        match tx.send(cmd) {
            Ok(()) => {
                *slot = Some(tx);
                Ok(())
            }
            Err(mpsc::error::SendError(cmd)) => Err(NotSent {
                cmd,
                reason: Some(Error::new("the broker task ended at once")),
            }),
        }
    }

    /// Called by an idle task: true if it may end (nothing queued for it).
    fn retire_if_idle(&self, rx: &UnboundedReceiver<C>) -> bool {
        let mut slot = self.lock();
        if rx.is_empty() {
            *slot = None;
            true
        } else {
            false
        }
    }

    fn take(&self) {
        self.lock().take();
    }
}

/// A command that could not be queued; `reason` None: the client is closed.
struct NotSent<C> {
    cmd: C,
    reason: Option<Error>,
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    tasks: AtomicUsize,
    topics: AtomicUsize,
    subscriptions: AtomicUsize,
}

impl Counters {
    fn snapshot(&self) -> ClientStats {
        ClientStats {
            connections: self.connections.load(Ordering::SeqCst),
            tasks: self.tasks.load(Ordering::SeqCst),
            topics: self.topics.load(Ordering::SeqCst),
            subscriptions: self.subscriptions.load(Ordering::SeqCst),
        }
    }
}

/// Counts one thing (a connection, a task) in a counter while alive.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The broker type erased, so that `Client<R>` is one type for every broker.
trait Driver<R: Recipient>: Send + Sync {
    fn name(&self) -> &'static str;
    fn check_topic(&self, topic: &Topic) -> Result<(), Error>;
    fn check_payload(&self, payload: &[u8]) -> Result<(), Error>;
    fn spawn_listener(
        &self,
        shared: Arc<Shared<R>>,
        rx: UnboundedReceiver<ListenCmd<R>>,
    ) -> Result<(), Error>;
    fn spawn_publisher(
        &self,
        shared: Arc<Shared<R>>,
        rx: UnboundedReceiver<PublishCmd<R>>,
    ) -> Result<(), Error>;
}

struct Erased<B>(Arc<B>);

impl<B: Broker, R: Recipient> Driver<R> for Erased<B> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn check_topic(&self, topic: &Topic) -> Result<(), Error> {
        self.0.check_topic(topic).map_err(Error)
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), Error> {
        self.0.check_payload(payload).map_err(Error)
    }

    fn spawn_listener(
        &self,
        shared: Arc<Shared<R>>,
        rx: UnboundedReceiver<ListenCmd<R>>,
    ) -> Result<(), Error> {
        runtime::spawn(listener_task(self.0.clone(), shared, rx))
    }

    fn spawn_publisher(
        &self,
        shared: Arc<Shared<R>>,
        rx: UnboundedReceiver<PublishCmd<R>>,
    ) -> Result<(), Error> {
        runtime::spawn(publisher_task(self.0.clone(), shared, rx))
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "a non-string panic"
    }
}

// ---------------------------------------------------------------------------
// Listener: one subscribing session and the bookkeeping of its topics.

enum ListenCmd<R> {
    Subscribe(Topic, R),
    Unsubscribe(Topic, R),
    Panic,
}

struct TopicState<R> {
    recipients: Vec<R>,
    /// The broker confirmed it on the current session.
    confirmed: bool,
    /// After a topic-only refusal: when to try again, and how long after that.
    retry_at: Option<Instant>,
    backoff: Option<Backoff>,
    /// Subscription order: topics are (re)subscribed, and so confirmed, in it.
    order: u64,
}

/// Topic → recipients, kept across sessions (and across a panic) so that
/// every reconnect replays them.
struct Topics<R> {
    map: HashMap<Topic, TopicState<R>>,
    /// The next `TopicState::order`.
    next_order: u64,
}

impl<R: Recipient> Topics<R> {
    fn publish_counts(&self, counters: &Counters) {
        counters.topics.store(self.map.len(), Ordering::SeqCst);
        let subs = self.map.values().map(|t| t.recipients.len()).sum();
        counters.subscriptions.store(subs, Ordering::SeqCst);
    }

    /// The session is gone: every confirmed topic's recipients are told,
    /// and every topic is due for replay on the next session.
    fn disconnect_all(&mut self, shared: &Shared<R>) {
        for (topic, state) in self.map.iter_mut() {
            if state.confirmed {
                for to in &state.recipients {
                    shared.send(
                        to,
                        Event::Disconnected {
                            topic: topic.clone(),
                        },
                    );
                }
            }
            state.confirmed = false;
            state.retry_at = None;
            state.backoff = None;
        }
    }

    /// Unconfirmed topics whose (re)try time has come, oldest subscription
    /// first (a hash map's order would make replays vary from run to run).
    fn due(&self, now: Instant) -> Vec<Topic> {
        let mut due: Vec<(u64, Topic)> = self
            .map
            .iter()
            .filter(|(_, s)| !s.confirmed && s.retry_at.is_none_or(|at| at <= now))
            .map(|(t, s)| (s.order, t.clone()))
            .collect();
        due.sort_unstable_by_key(|(order, _)| *order);
        due.into_iter().map(|(_, t)| t).collect()
    }

    fn next_retry(&self) -> Option<Instant> {
        self.map
            .values()
            .filter(|s| !s.confirmed)
            .filter_map(|s| s.retry_at)
            .min()
    }

    /// Bookkeeping of a subscribe; the broker-level work happens in the loop.
    fn subscribe(&mut self, shared: &Shared<R>, topic: Topic, to: R) {
        let order = self.next_order;
        let state = self.map.entry(topic.clone()).or_insert_with(|| TopicState {
            recipients: Vec::new(),
            confirmed: false,
            retry_at: None,
            backoff: None,
            order,
        });
        if state.order == order {
            self.next_order += 1;
        }
        if !state.recipients.contains(&to) {
            if state.confirmed {
                shared.send(&to, Event::Connected { topic });
            }
            state.recipients.push(to);
        }
    }

    /// Removes a recipient; true if the topic went with it and the broker
    /// holds a subscription to drop.
    fn unsubscribe(&mut self, topic: &Topic, to: &R) -> bool {
        let Some(state) = self.map.get_mut(topic) else {
            return false;
        };
        state.recipients.retain(|r| r != to);
        if state.recipients.is_empty() {
            let confirmed = state.confirmed;
            self.map.remove(topic);
            confirmed
        } else {
            false
        }
    }

    fn confirm(&mut self, shared: &Shared<R>, topic: &Topic) {
        if let Some(state) = self.map.get_mut(topic) {
            state.confirmed = true;
            state.retry_at = None;
            state.backoff = None;
            for to in &state.recipients {
                shared.send(
                    to,
                    Event::Connected {
                        topic: topic.clone(),
                    },
                );
            }
        }
    }

    fn refused(&mut self, topic: &Topic, backoff_max: Duration) {
        if let Some(state) = self.map.get_mut(topic) {
            let backoff = state
                .backoff
                .get_or_insert_with(|| Backoff::new(backoff_max));
            state.retry_at = Some(Instant::now() + backoff.next_delay());
        }
    }
}

struct Session<'a, B: Broker> {
    control: B::Control,
    messages: B::Messages,
    _counted: Counted<'a>,
}

async fn listener_task<B: Broker, R: Recipient>(
    broker: Arc<B>,
    shared: Arc<Shared<R>>,
    mut rx: UnboundedReceiver<ListenCmd<R>>,
) {
    let _task = Counted::new(&shared.counters.tasks);
    let mut topics = Topics {
        map: HashMap::new(),
        next_order: 0,
    };
    let mut backoff = Backoff::new(broker.common().backoff_max);
    loop {
        let run = listen_loop(&*broker, &shared, &mut topics, &mut rx, &mut backoff);
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(()) => break,
            Err(panic) => {
                topics.disconnect_all(&shared);
                shared.warn(format!(
                    "{} listener task panicked ({}); restarting it",
                    broker.name(),
                    panic_text(&*panic)
                ));
                // A panic that repeats must not spin the runtime thread.
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    topics.map.clear();
    topics.publish_counts(&shared.counters);
}

/// Runs sessions until the client closes or the listener is idle long
/// enough to end. Returns normally only to end the task.
async fn listen_loop<B: Broker, R: Recipient>(
    broker: &B,
    shared: &Shared<R>,
    topics: &mut Topics<R>,
    rx: &mut UnboundedReceiver<ListenCmd<R>>,
    backoff: &mut Backoff,
) {
    let idle_timeout = broker.common().idle_timeout;
    let mut l = Listener {
        broker,
        shared,
        session: None,
        reconnect_at: None,
        review: true,
        retry_at: None,
        ping_at: Instant::now() + KEEPALIVE,
    };
    loop {
        if topics.map.is_empty() {
            // Nothing to listen to: wait for work, or end after idle_timeout
            // (which also closes the session, if one is open).
            match timeout(idle_timeout, rx.recv()).await {
                Ok(Some(cmd)) => l.apply(topics, backoff, cmd).await,
                Ok(None) => return,
                Err(_) if shared.listener.retire_if_idle(rx) => return,
                Err(_) => {}
            }
            continue;
        }

        let Some(open) = l.session.as_mut() else {
            if let Some(at) = l.reconnect_at.filter(|at| *at > Instant::now()) {
                // Waiting to reconnect: keep the bookkeeping current.
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => l.apply(topics, backoff, cmd).await,
                        None => return,
                    },
                    _ = sleep_until(at) => {}
                }
                continue;
            }
            // Connecting may take long (an unroutable host): keep taking
            // commands meanwhile, so a close is not held up by it.
            let connect = timeout(CALL_TIMEOUT, broker.connect_listener());
            tokio::pin!(connect);
            let connected = loop {
                tokio::select! {
                    biased;
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => l.apply(topics, backoff, cmd).await,
                        None => return,
                    },
                    connected = &mut connect => break connected,
                }
            };
            match connected {
                Ok(Ok((control, messages))) => {
                    l.session = Some(Session {
                        control,
                        messages,
                        _counted: Counted::new(&shared.counters.connections),
                    });
                    l.reconnect_at = None;
                    l.review = true;
                    l.ping_at = Instant::now() + KEEPALIVE;
                }
                failed => {
                    let reason = match failed {
                        Ok(Err(reason)) => reason,
                        _ => format!("no answer within {CALL_TIMEOUT:?}"),
                    };
                    shared.warn(format!("cannot connect to {}: {reason}", broker.name()));
                    l.reconnect_at = Some(Instant::now() + backoff.next_delay());
                }
            }
            continue;
        };

        if l.review {
            // (Re)subscribe what is due, one topic at a time. Only after
            // something changed: not once per message.
            l.review = false;
            let mut lost = None;
            for topic in topics.due(Instant::now()) {
                match timeout(CALL_TIMEOUT, broker.listen(&mut open.control, &topic)).await {
                    Ok(Ok(())) => topics.confirm(shared, &topic),
                    Ok(Err(ListenError::Topic(reason))) => {
                        shared.warn(format!(
                            "{} refused the subscription to {topic}: {reason}",
                            broker.name()
                        ));
                        topics.refused(&topic, broker.common().backoff_max);
                    }
                    Ok(Err(ListenError::Connection(reason))) => {
                        lost = Some(reason);
                        break;
                    }
                    Err(_) => {
                        lost = Some(format!("no subscribe confirmation within {CALL_TIMEOUT:?}"));
                        break;
                    }
                }
            }
            match lost {
                Some(reason) => l.lose(topics, backoff, reason),
                None => {
                    backoff.reset();
                    l.retry_at = topics.next_retry();
                }
            }
            continue;
        }

        tokio::select! {
            // Commands first: an unsubscribe sent before a publish is applied
            // before that publish's message can be read.
            biased;
            cmd = rx.recv() => match cmd {
                Some(cmd) => l.apply(topics, backoff, cmd).await,
                None => return,
            },
            incoming = broker.next_message(&mut open.messages) => match incoming {
                Some(incoming) => {
                    l.ping_at = Instant::now() + KEEPALIVE;
                    if let Some(state) = topics.map.get(&incoming.topic) {
                        fan_out(shared, &state.recipients, incoming.topic, incoming.payload, incoming.metadata);
                    }
                    if let Some(ack) = incoming.ack {
                        broker.ack(ack).await;
                    }
                }
                None => l.lose(topics, backoff, "connection closed".to_string()),
            },
            _ = sleep_until_some(l.retry_at) => l.review = true,
            _ = sleep_until(l.ping_at) => {
                l.ping_at = Instant::now() + KEEPALIVE;
                match timeout(KEEPALIVE, broker.ping(&mut open.control)).await {
                    Ok(Ok(())) | Ok(Err(ListenError::Topic(_))) => {}
                    Ok(Err(ListenError::Connection(reason))) => l.lose(topics, backoff, reason),
                    Err(_) => l.lose(topics, backoff, format!("no answer to a ping within {KEEPALIVE:?}")),
                }
            },
        }
    }
}

/// The listener's per-run state (what a panic may throw away).
struct Listener<'a, B: Broker, R: Recipient> {
    broker: &'a B,
    shared: &'a Shared<R>,
    session: Option<Session<'a, B>>,
    reconnect_at: Option<Instant>,
    /// Topics may need (re)subscribing: after a command, a new session, or
    /// when a refused topic's retry time comes (`retry_at`).
    review: bool,
    retry_at: Option<Instant>,
    /// When to check that the session is alive, if no message came by then.
    ping_at: Instant,
}

impl<B: Broker, R: Recipient> Listener<'_, B, R> {
    async fn apply(&mut self, topics: &mut Topics<R>, backoff: &mut Backoff, cmd: ListenCmd<R>) {
        let result = apply(self.broker, self.shared, topics, &mut self.session, cmd).await;
        topics.publish_counts(&self.shared.counters);
        self.review = true;
        if let Err(reason) = result {
            self.lose(topics, backoff, reason);
        }
    }

    /// The session broke: close it, tell everyone, reconnect after a pause.
    fn lose(&mut self, topics: &mut Topics<R>, backoff: &mut Backoff, reason: String) {
        // Dropping the session closes its connection before anyone is told.
        if self.session.take().is_some() {
            self.shared.warn(format!(
                "lost the {} connection: {reason}",
                self.broker.name()
            ));
        }
        topics.disconnect_all(self.shared);
        self.reconnect_at = Some(Instant::now() + backoff.next_delay());
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Applies a command; `Err(reason)` if the session broke doing it.
async fn apply<B: Broker, R: Recipient>(
    broker: &B,
    shared: &Shared<R>,
    topics: &mut Topics<R>,
    session: &mut Option<Session<'_, B>>,
    cmd: ListenCmd<R>,
) -> Result<(), String> {
    match cmd {
        ListenCmd::Subscribe(topic, to) => topics.subscribe(shared, topic, to),
        ListenCmd::Unsubscribe(topic, to) => {
            if topics.unsubscribe(&topic, &to) {
                if let Some(open) = session.as_mut() {
                    match timeout(CALL_TIMEOUT, broker.unlisten(&mut open.control, &topic)).await {
                        Ok(Ok(())) | Ok(Err(ListenError::Topic(_))) => {}
                        Ok(Err(ListenError::Connection(reason))) => return Err(reason),
                        Err(_) => {
                            return Err(format!(
                                "no unsubscribe confirmation within {CALL_TIMEOUT:?}"
                            ))
                        }
                    }
                }
            }
        }
        ListenCmd::Panic => panic!("injected by debug_inject_panic"),
    }
    Ok(())
}

fn fan_out<R: Recipient>(
    shared: &Shared<R>,
    recipients: &[R],
    topic: Topic,
    payload: Vec<u8>,
    metadata: Metadata,
) {
    let Some((last, rest)) = recipients.split_last() else {
        return;
    };
    for to in rest {
        shared.send(
            to,
            Event::Message {
                topic: topic.clone(),
                payload: payload.clone(),
                metadata: metadata.clone(),
            },
        );
    }
    shared.send(
        last,
        Event::Message {
            topic,
            payload,
            metadata,
        },
    );
}

// ---------------------------------------------------------------------------
// Publisher: one publishing connection and the requests waiting for it.

enum PublishCmd<R: Recipient> {
    // Boxed: a request is large (properties) and the channel holds many.
    Publish(Box<PublishRequest<R>>),
    Panic,
}

struct PublishRequest<R: Recipient> {
    topic: Topic,
    payload: Vec<u8>,
    props: Properties,
    deadline: Instant,
    reply: Reply<R>,
}

/// The one `Published` event a publish owes its caller. Sent by `send`, or
/// by `drop` if the request is abandoned (client closed, task panicked), so
/// that no caller ever waits past its timeout for nothing.
struct Reply<R: Recipient> {
    to: R,
    tag: u64,
    events: Arc<dyn EventSink<R>>,
    sent: bool,
}

impl<R: Recipient> Reply<R> {
    fn send(mut self, result: Result<(), String>) {
        self.deliver(result);
    }

    /// The caller learns the outcome otherwise (an error from `publish`).
    fn disarm(&mut self) {
        self.sent = true;
    }

    fn deliver(&mut self, result: Result<(), String>) {
        if !self.sent {
            self.sent = true;
            self.events.deliver(Delivery {
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
    }
}

async fn publisher_task<B: Broker, R: Recipient>(
    broker: Arc<B>,
    shared: Arc<Shared<R>>,
    mut rx: UnboundedReceiver<PublishCmd<R>>,
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
                    broker.name(),
                    panic_text(&*panic)
                ));
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

enum Outcome {
    Done(Result<(), PublishError>),
    TimedOut,
}

/// One publish on one publisher; `generation` says which connection it used.
async fn publish_one<B: Broker, R: Recipient>(
    broker: Arc<B>,
    publisher: B::Publisher,
    generation: u64,
    request: PublishRequest<R>,
) -> (PublishRequest<R>, Outcome, u64) {
    let sent = broker.publish(&publisher, &request.topic, &request.payload, &request.props);
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
struct Pending<R: Recipient> {
    /// Active requests waiting for a connection, by deadline. All requests
    /// of a client share one `publish_timeout`, so the earliest is in front.
    waiting: VecDeque<PublishRequest<R>>,
    /// Callers with an active request → their requests queued behind it.
    behind: HashMap<R, VecDeque<PublishRequest<R>>>,
}

impl<R: Recipient> Pending<R> {
    fn admit(&mut self, request: PublishRequest<R>) {
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
    fn wait(&mut self, request: PublishRequest<R>) {
        let at = self
            .waiting
            .partition_point(|r| r.deadline <= request.deadline);
        self.waiting.insert(at, request);
    }

    /// Replies to an active request and activates its caller's next one.
    fn finish(&mut self, request: PublishRequest<R>, result: Result<(), String>) {
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
    shared: &Shared<R>,
    rx: &mut UnboundedReceiver<PublishCmd<R>>,
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
    let mut connecting = None;
    let mut reconnect_at: Option<Instant> = None;
    let mut last_error = String::from("not connected yet");
    let mut last_use = Instant::now();

    loop {
        let now = Instant::now();
        pending.expire(now, || {
            format!(
                "no {} connection within publish_timeout ({timeout_ms} ms): {last_error}",
                broker.name()
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
            cmd = rx.recv() => match cmd {
                Some(PublishCmd::Publish(request)) => {
                    last_use = Instant::now();
                    pending.admit(*request);
                }
                Some(PublishCmd::Panic) => panic!("injected by debug_inject_panic"),
                None => return,
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
                            shared.warn(format!("dropped the {} publishing connection: no answer within publish_timeout", broker.name()));
                        }
                        pending.finish(request, Err(format!(
                            "{} did not accept the message within publish_timeout ({timeout_ms} ms)",
                            broker.name()
                        )))
                    }
                    Outcome::Done(Err(PublishError::Connection(reason))) => {
                        if used == generation && publisher.take().is_some() {
                            shared.warn(format!("lost the {} publishing connection: {reason}", broker.name()));
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
                        generation += 1;
                        publisher = Some((p, Counted::new(&shared.counters.connections)));
                        reconnect_at = None;
                        backoff.reset();
                    }
                    Err(reason) => {
                        shared.warn(format!("cannot connect to {}: {reason}", broker.name()));
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
