//! The listener task: one subscribing session and the bookkeeping of its
//! topics (topic → recipients, confirmed or not), replayed after every
//! reconnect.
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, timeout, Instant};

use super::slot::{Counted, Counters};
use super::{panic_text, Shared, CALL_TIMEOUT, KEEPALIVE};
use crate::backoff::Backoff;
use crate::broker::{Behind, Broker, Incoming, ListenError};
use crate::outbox::Flow;
use crate::{Event, Name, Recipient};

/// Subscribe commands that may wait for the listener task at once (it takes
/// up to `COMMANDS_AT_ONCE` once the broker answered what it asked for
/// before); one more is refused at once, `Err("... overloaded ...")`.
pub(super) const MAX_WAITING_SUBSCRIBES: usize = 65_536;

/// Unsubscribe commands may wait beyond the subscriptions held or waiting
/// by this many. A refused unsubscribe would leave a subscription behind, so
/// a caller that unsubscribes only what it subscribed (the NIF) must never
/// be refused: the counts are read without a common lock and lag by up to
/// one batch (`COMMANDS_AT_ONCE`), far below this. Only unsubscribes that
/// undo nothing reach it, and the next one is refused: the command channel
/// stays bounded whatever a caller does.
pub(super) const UNSUBSCRIBE_SLACK: usize = 65_536;

/// Commands applied in one go, before the topics are reviewed.
const COMMANDS_AT_ONCE: usize = 1_024;

/// Counts a subscribe or unsubscribe command from its admission until it
/// is applied, or dropped unapplied (a task gone with its queue): the count
/// cannot leak.
pub(super) struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    /// `None` while `limit` already wait.
    pub(super) fn admit(count: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        if count.fetch_add(1, Ordering::SeqCst) >= limit {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Waiting(count.clone()))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) enum ListenCmd<T, R> {
    /// The topic, and the name it came from (what events carry).
    Subscribe(T, Name, R, Waiting),
    Unsubscribe(T, R, Waiting),
    #[cfg(feature = "test-hooks")]
    Panic,
    /// Reads nothing for this long (a listener slower than its broker).
    #[cfg(feature = "test-hooks")]
    Stall(std::time::Duration),
}

struct TopicState<R: Recipient> {
    /// The channel name the topic was made from, as events carry it.
    name: Name,
    /// One flow per recipient: its events go out through it.
    flows: Vec<Arc<Flow<R>>>,
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
struct Topics<T, R: Recipient> {
    map: HashMap<T, TopicState<R>>,
    /// The next `TopicState::order`.
    next_order: u64,
}

impl<T: Clone + Eq + std::hash::Hash, R: Recipient> Topics<T, R> {
    fn publish_counts(&self, counters: &Counters) {
        counters.topics.store(self.map.len(), Ordering::SeqCst);
        let subs = self.map.values().map(|t| t.flows.len()).sum();
        counters.subscriptions.store(subs, Ordering::SeqCst);
    }

    /// The session is gone: every confirmed topic's recipients are told,
    /// and every topic is due for replay on the next session.
    fn disconnect_all<B: Broker<Topic = T>>(&mut self, shared: &Shared<B, R>) {
        for state in self.map.values_mut() {
            if state.confirmed {
                for flow in &state.flows {
                    let name = state.name.clone();
                    shared.events.flow_event(flow, Event::Disconnected { name });
                }
            }
            state.confirmed = false;
            state.retry_at = None;
            state.backoff = None;
        }
    }

    /// Unconfirmed topics whose (re)try time has come, oldest subscription
    /// first (a hash map's order would make replays vary from run to run).
    fn due(&self, now: Instant) -> Vec<T> {
        let mut due: Vec<(u64, T)> = self
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
    fn subscribe<B: Broker<Topic = T>>(
        &mut self,
        shared: &Shared<B, R>,
        topic: T,
        name: Name,
        to: R,
    ) {
        let order = self.next_order;
        let state = self.map.entry(topic).or_insert_with(|| TopicState {
            name,
            flows: Vec::new(),
            confirmed: false,
            retry_at: None,
            backoff: None,
            order,
        });
        if state.order == order {
            self.next_order += 1;
        }
        if !state.flows.iter().any(|flow| *flow.to() == to) {
            let flow = shared.events.flow(to, state.name.clone());
            if state.confirmed {
                let name = state.name.clone();
                shared.events.flow_event(&flow, Event::Connected { name });
            }
            state.flows.push(flow);
        }
    }

    /// Removes a recipient; true if the topic went with it and the broker
    /// holds a subscription to drop.
    fn unsubscribe(&mut self, topic: &T, to: &R) -> bool {
        let Some(state) = self.map.get_mut(topic) else {
            return false;
        };
        state.flows.retain(|flow| flow.to() != to);
        if state.flows.is_empty() {
            let confirmed = state.confirmed;
            self.map.remove(topic);
            confirmed
        } else {
            false
        }
    }

    fn confirm<B: Broker<Topic = T>>(&mut self, shared: &Shared<B, R>, topic: &T) {
        if let Some(state) = self.map.get_mut(topic) {
            state.confirmed = true;
            state.retry_at = None;
            state.backoff = None;
            for flow in &state.flows {
                let name = state.name.clone();
                shared.events.flow_event(flow, Event::Connected { name });
            }
        }
    }

    fn refused(&mut self, topic: &T, backoff_max: Duration) {
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

pub(super) async fn run<B: Broker, R: Recipient>(
    broker: Arc<B>,
    shared: Arc<Shared<B, R>>,
    mut rx: UnboundedReceiver<ListenCmd<B::Topic, R>>,
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
                    B::NAME,
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
    shared: &Shared<B, R>,
    topics: &mut Topics<B::Topic, R>,
    rx: &mut UnboundedReceiver<ListenCmd<B::Topic, R>>,
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
        behind_since: None,
        backlog_at: Instant::now(),
    };
    loop {
        if topics.map.is_empty() {
            // Nothing to listen to: wait for work, or end after idle_timeout
            // (which also closes the session, if one is open).
            match timeout(idle_timeout, rx.recv()).await {
                Ok(Some(cmd)) => l.apply(topics, backoff, cmd, rx).await,
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
                        Some(cmd) => l.apply(topics, backoff, cmd, rx).await,
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
                        Some(cmd) => l.apply(topics, backoff, cmd, rx).await,
                        None => return,
                    },
                    connected = &mut connect => break connected,
                }
            };
            match connected {
                Ok(Ok((control, messages))) => {
                    warn_if_unverified(broker, shared);
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
                    shared.warn(format!("cannot connect to {}: {reason}", B::NAME));
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
                let listen = timeout(CALL_TIMEOUT, broker.listen(&mut open.control, &topic));
                let Some(answer) =
                    reading(broker, shared, topics, &mut open.messages, listen).await
                else {
                    lost = Some(SessionEnd::MessagesEnded);
                    break;
                };
                match answer {
                    Ok(Ok(())) => topics.confirm(shared, &topic),
                    Ok(Err(ListenError::Topic(reason))) => {
                        shared.warn(format!(
                            "{} refused the subscription to {topic}: {reason}",
                            B::NAME
                        ));
                        topics.refused(&topic, broker.common().backoff_max);
                    }
                    Ok(Err(ListenError::Connection(reason))) => {
                        lost = Some(SessionEnd::Failed(reason));
                        break;
                    }
                    Err(_) => {
                        let reason = format!("no subscribe confirmation within {CALL_TIMEOUT:?}");
                        lost = Some(SessionEnd::Failed(reason));
                        break;
                    }
                }
            }
            match lost {
                Some(end) => l.end(topics, backoff, end),
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
                Some(cmd) => l.apply(topics, backoff, cmd, rx).await,
                None => return,
            },
            (incoming, waited) = Waited::new(broker.next_message(&mut open.messages)) => match incoming {
                Some(incoming) => {
                    let now = Instant::now();
                    l.ping_at = now + KEEPALIVE;
                    fan_out(broker, shared, topics, incoming).await;
                    // Messages always there when asked for: the broker sends
                    // faster than this task takes them, and the backlog grows
                    // where it cannot be shed (the client crate's own buffer,
                    // the broker's output buffer). Cut it with the session.
                    let behind_since = if waited { None } else { l.behind_since.or(Some(now)) };
                    l.behind_since = behind_since;
                    let behind = match B::WHEN_BEHIND {
                        Behind::Read => false,
                        Behind::Cut => behind_since.is_some_and(|since| now - since > MAX_BEHIND),
                        Behind::Purge if now >= l.backlog_at => {
                            l.backlog_at = now + BACKLOG_EVERY;
                            matches!(
                                timeout(CALL_TIMEOUT, broker.backlog(&mut open.control)).await,
                                Ok(Ok(ready)) if ready > MAX_BACKLOG
                            )
                        }
                        Behind::Purge => false,
                    };
                    if behind {
                        l.behind_since = None;
                        l.fall_behind(topics, backoff).await;
                    }
                }
                None => l.end(topics, backoff, SessionEnd::MessagesEnded),
            },
            _ = sleep_until_some(l.retry_at) => l.review = true,
            _ = sleep_until(l.ping_at) => {
                l.ping_at = Instant::now() + KEEPALIVE;
                let ping = broker.ping(&mut open.control);
                if let Err(reason) = session_call(KEEPALIVE, "answer to a ping", ping).await {
                    l.lose(topics, backoff, reason);
                }
            },
        }
    }
}

/// Why a session goes (`Listener::end`).
enum SessionEnd {
    /// Its messages ended: the connection closed, or the broker module
    /// ended it (`Broker::overrun`).
    MessagesEnded,
    /// A call on it failed.
    Failed(String),
}

/// The listener's per-run state (what a panic may throw away).
struct Listener<'a, B: Broker, R: Recipient> {
    broker: &'a B,
    shared: &'a Shared<B, R>,
    session: Option<Session<'a, B>>,
    reconnect_at: Option<Instant>,
    /// Topics may need (re)subscribing: after a command, a new session, or
    /// when a refused topic's retry time comes (`retry_at`).
    review: bool,
    retry_at: Option<Instant>,
    /// When to check that the session is alive, if no message came by then.
    ping_at: Instant,
    /// Since when every message was there without waiting (see `MAX_BEHIND`).
    behind_since: Option<Instant>,
    /// When to look at the broker's backlog next (`Behind::Purge`).
    backlog_at: Instant,
}

impl<B: Broker, R: Recipient> Listener<'_, B, R> {
    /// Applies `cmd`, then up to `COMMANDS_AT_ONCE` more already queued:
    /// the review that follows (a pass over every topic) runs once for
    /// them all, not once per command. The broker's subscriptions are
    /// dropped after the batch's bookkeeping: a message read while waiting
    /// for one of those answers reaches only recipients still subscribed.
    async fn apply(
        &mut self,
        topics: &mut Topics<B::Topic, R>,
        backoff: &mut Backoff,
        cmd: ListenCmd<B::Topic, R>,
        rx: &mut UnboundedReceiver<ListenCmd<B::Topic, R>>,
    ) {
        let mut unlisten = Vec::new();
        let mut next = Some(cmd);
        let mut applied = 0;
        while let Some(cmd) = next.take() {
            unlisten.extend(apply(self.shared, topics, cmd).await);
            applied += 1;
            if applied < COMMANDS_AT_ONCE {
                next = rx.try_recv().ok();
            }
        }
        topics.publish_counts(&self.shared.counters);
        self.review = true;
        let (broker, shared) = (self.broker, self.shared);
        let Some(open) = self.session.as_mut() else {
            return;
        };
        for topic in unlisten {
            let call = session_call(
                CALL_TIMEOUT,
                "unsubscribe confirmation",
                broker.unlisten(&mut open.control, &topic),
            );
            let answer = reading(broker, shared, topics, &mut open.messages, call).await;
            let end = match answer {
                Some(Ok(())) => continue,
                Some(Err(reason)) => SessionEnd::Failed(reason),
                None => SessionEnd::MessagesEnded,
            };
            return self.end(topics, backoff, end);
        }
    }

    /// The session is behind its broker: what `B::WHEN_BEHIND` says.
    async fn fall_behind(&mut self, topics: &mut Topics<B::Topic, R>, backoff: &mut Backoff) {
        let shared = self.shared;
        match B::WHEN_BEHIND {
            Behind::Read => {}
            Behind::Cut => self.cut(
                topics,
                backoff,
                format!(
                    "messages came faster than this client takes them for {MAX_BEHIND:?}: \
                     the session is cut (its backlog dropped) and opened again"
                ),
            ),
            Behind::Purge => {
                let Some(open) = self.session.as_mut() else {
                    return;
                };
                shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
                let broker = self.broker;
                // A topic's refusal here would leave the session half paused
                // (some topics without a consumer): it is lost instead.
                let purge = broker.purge(&mut open.control).map(every_topic);
                if let Err(reason) = session_call(CALL_TIMEOUT, "purge confirmation", purge).await {
                    return self.lose(topics, backoff, reason);
                }
                // What the broker sent before the purge is all waiting: it
                // goes first (`unconstrained`: tokio's budget must not end
                // the loop while messages wait), then the gap, in every topic.
                loop {
                    let next = tokio::task::unconstrained(broker.next_message(&mut open.messages));
                    match next.now_or_never() {
                        Some(Some(incoming)) => fan_out(broker, shared, topics, incoming).await,
                        Some(None) => return self.end(topics, backoff, SessionEnd::MessagesEnded),
                        None => break,
                    }
                }
                for state in topics.map.values().filter(|s| s.confirmed) {
                    for flow in &state.flows {
                        shared.events.flow_gap(flow);
                    }
                }
                let resume = broker.resume(&mut open.control).map(every_topic);
                if let Err(reason) =
                    session_call(CALL_TIMEOUT, "consume confirmation", resume).await
                {
                    self.lose(topics, backoff, reason);
                }
            }
        }
    }

    /// The session goes: cut if its broker module ended it for falling
    /// behind (`Broker::overrun`), lost otherwise.
    fn end(&mut self, topics: &mut Topics<B::Topic, R>, backoff: &mut Backoff, end: SessionEnd) {
        let reason = match end {
            SessionEnd::Failed(reason) => reason,
            SessionEnd::MessagesEnded => {
                let open = self.session.as_ref();
                match open.and_then(|open| self.broker.overrun(&open.messages)) {
                    Some(reason) => return self.cut(topics, backoff, reason),
                    None => "connection closed".to_string(),
                }
            }
        };
        self.lose(topics, backoff, reason);
    }

    /// The session is behind its broker and goes (`Behind::Cut`, `Broker::overrun`): counted in
    /// `cuts`, then lost as any other.
    fn cut(&mut self, topics: &mut Topics<B::Topic, R>, backoff: &mut Backoff, reason: String) {
        self.shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
        self.lose(topics, backoff, reason);
    }

    /// The session broke: close it, tell everyone, reconnect after a pause.
    fn lose(&mut self, topics: &mut Topics<B::Topic, R>, backoff: &mut Backoff, reason: String) {
        // Dropping the session closes its connection before anyone is told.
        self.behind_since = None;
        if self.session.take().is_some() {
            self.shared
                .warn(format!("lost the {} connection: {reason}", B::NAME));
        }
        topics.disconnect_all(self.shared);
        self.reconnect_at = Some(Instant::now() + backoff.next_delay());
    }
}

/// Section 10.1: TLS without server authentication is said once per connection.
pub(super) fn warn_if_unverified<B: Broker, R: Recipient>(broker: &B, shared: &Shared<B, R>) {
    if broker.tls_unverified() {
        shared.warn(format!(
            "TLS to {} {} with tls_verify: :verify_none: encrypted, but the server is not authenticated",
            B::NAME,
            broker.endpoint()
        ));
    }
}

/// A session whose messages were all there without waiting for this long is
/// cut: it is behind the broker, and what it has not read yet would reach
/// subscribers later and later.
const MAX_BEHIND: Duration = Duration::from_secs(1);

/// Messages a broker may hold for a session, not sent yet, before they are
/// purged (`Behind::Purge`), looked at every `BACKLOG_EVERY` while messages
/// flow: twice RabbitMQ's prefetch of a topic, so that a flood's backlog
/// is gone within a fraction of a second of the flood.
const MAX_BACKLOG: u64 = 2_000;
const BACKLOG_EVERY: Duration = Duration::from_millis(250);

pin_project_lite::pin_project! {
    /// A future's output, and whether it had to wait for it (returned
    /// `Pending` at least once).
    struct Waited<F> {
        #[pin]
        future: F,
        waited: bool,
    }
}

impl<F> Waited<F> {
    fn new(future: F) -> Self {
        Waited {
            future,
            waited: false,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Waited<F> {
    type Output = (F::Output, bool);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        match this.future.poll(cx) {
            std::task::Poll::Ready(output) => std::task::Poll::Ready((output, *this.waited)),
            std::task::Poll::Pending => {
                *this.waited = true;
                std::task::Poll::Pending
            }
        }
    }
}

/// A call that concerns the whole session, awaited at most `limit`: a
/// topic's refusal changes nothing here; a lost connection, or no answer
/// (`what` names the one awaited), ends the session with that reason.
async fn session_call(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<(), ListenError>>,
) -> Result<(), String> {
    match timeout(limit, call).await {
        Ok(Ok(())) | Ok(Err(ListenError::Topic(_))) => Ok(()),
        Ok(Err(ListenError::Connection(reason))) => Err(reason),
        Err(_) => Err(format!("no {what} within {limit:?}")),
    }
}

/// The answer of a call that must hold for every topic: a topic's refusal
/// counts as the session's.
fn every_topic(answer: Result<(), ListenError>) -> Result<(), ListenError> {
    answer.map_err(|e| match e {
        ListenError::Topic(reason) => ListenError::Connection(reason),
        broken => broken,
    })
}

pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The bookkeeping of a command; `Some(topic)` when the broker holds a
/// subscription to drop (the caller does that once a batch's bookkeeping
/// is done).
async fn apply<B: Broker, R: Recipient>(
    shared: &Shared<B, R>,
    topics: &mut Topics<B::Topic, R>,
    cmd: ListenCmd<B::Topic, R>,
) -> Option<B::Topic> {
    match cmd {
        // `_waiting` leaves the count of waiting commands here.
        ListenCmd::Subscribe(topic, name, to, _waiting) => {
            topics.subscribe(shared, topic, name, to)
        }
        ListenCmd::Unsubscribe(topic, to, _waiting) => {
            return topics.unsubscribe(&topic, &to).then_some(topic);
        }
        #[cfg(feature = "test-hooks")]
        ListenCmd::Panic => panic!("injected by debug_inject_panic"),
        #[cfg(feature = "test-hooks")]
        ListenCmd::Stall(pause) => tokio::time::sleep(pause).await,
    }
    None
}

/// Awaits `call`, an answer on the session's control half, while handing on
/// the messages that arrive meanwhile: they never pile up in the client
/// crate's own buffer, which has no bound, however long the answer takes
/// (a resubscription of many topics, a slow server). `None` when the
/// session's messages ended first. An answer is taken before a message
/// that is there with it: the server sends a topic's confirmation before
/// its messages.
async fn reading<B: Broker, R: Recipient, T>(
    broker: &B,
    shared: &Shared<B, R>,
    topics: &Topics<B::Topic, R>,
    messages: &mut B::Messages,
    call: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(call);
    loop {
        tokio::select! {
            biased;
            answer = &mut call => return Some(answer),
            incoming = broker.next_message(messages) => match incoming {
                Some(incoming) => fan_out(broker, shared, topics, incoming).await,
                None => return None,
            },
        }
    }
}

/// Hands a message to its topic's recipients (in order, one event each),
/// then acknowledges it.
async fn fan_out<B: Broker, R: Recipient>(
    broker: &B,
    shared: &Shared<B, R>,
    topics: &Topics<B::Topic, R>,
    incoming: Incoming<B::Topic, B::Ack>,
) {
    let Incoming {
        topic,
        payload,
        metadata,
        ack,
    } = incoming;
    // Only once confirmed on this session: before that, a topic's messages
    // can only come from a subscription being dropped (unsubscribed and
    // subscribed again in one batch), and its recipients are not told
    // `Connected` yet.
    if let Some(state) = topics.map.get(&topic).filter(|state| state.confirmed) {
        let message = |payload, metadata| Event::Message {
            name: state.name.clone(),
            payload,
            metadata,
        };
        if let Some((last, rest)) = state.flows.split_last() {
            for flow in rest {
                let event = message(payload.clone(), metadata.clone());
                shared.events.flow_event(flow, event);
            }
            shared.events.flow_event(last, message(payload, metadata));
        }
    }
    if let Some(ack) = ack {
        broker.ack(ack).await;
    }
}
