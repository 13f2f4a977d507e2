//! `Client`: the shared machinery every broker runs on.
//!
//! A client has up to two tasks on the shared runtime, each started on first
//! use and ended after `idle_timeout` of not being needed: the listener
//! (`listener.rs`: one subscribing session, its topics and their
//! recipients) and the publisher (`publisher.rs`: one publishing
//! connection, the requests waiting for it and those in flight). Commands
//! reach them through tokio mpsc channels (`slot.rs`); events leave through
//! the caller's [`EventSink`].
//!
//! Each task body runs under `catch_unwind`: a panic in a broker module or
//! here ends the session (its confirmed topics' recipients get
//! `Disconnected`, in-flight publishes get their error reply), and the loop
//! starts again from the state kept outside the panicking frame.
mod listener;
mod publisher;
mod slot;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use tokio::time::Instant;

use crate::broker::Broker;
use crate::outbox::Flow;
use crate::settings::{Given, Settings};
use crate::{runtime, ClientStats, Common, Data, Delivery, Error, Event, Name, Recipient};
use listener::{ListenCmd, Waiting};
use publisher::{PublishCmd, PublishRequest, Replies, Reply};
use slot::{Counters, Slot};

/// A connect or a control call (listen/unlisten) taking longer than this
/// is treated as a lost connection: a broker that accepts TCP but never
/// answers must not stall the listener forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A subscribing session quiet for this long is pinged, and lost if the
/// ping is not answered within the same time: a broker that vanished
/// without closing the socket is noticed within ~2 × KEEPALIVE.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(5);

/// One broker + namespace: a fixed small set of connections (e.g. one
/// subscribing + one publishing) shared by all its topics and publishers.
pub struct Client<R: Recipient> {
    driver: Arc<dyn Driver<R>>,
}

impl<R: Recipient> Client<R> {
    /// Opens a client of the broker called `broker` (its `Broker::NAME`) with the
    /// settings `given` (checked against the broker's schema: an error names
    /// the key). Never blocks, never connects: connections open on first
    /// subscribe or publish, reconnect by themselves with bounded
    /// exponential backoff and jitter, replay every subscription after each
    /// reconnect, and close once unused for `idle_timeout` (reopening on
    /// next use).
    ///
    /// `events` receives every event of this client: usually an
    /// [`Outbox`](crate::Outbox) (bounded, sheds what its consumer cannot
    /// take), or any [`EventSink`] (a `crossbeam_channel::Sender` in tests).
    pub fn open(
        broker: &str,
        given: &[Given],
        owner: R,
        events: impl EventSink<R>,
    ) -> Result<Self, Error> {
        let settings = crate::settings(broker, given)?;
        crate::registry::open(broker, &settings, owner, Arc::new(Guarded(events)))
    }

    /// Returns at once; `Connected` goes to `to` when the broker confirmed.
    /// The same (name, to) twice is one subscription. Many recipients share
    /// one broker-level subscription per topic. Refused (the client is
    /// overloaded) while `listener::MAX_WAITING_SUBSCRIBES` subscribes wait
    /// for the listener task to take them.
    pub fn subscribe(&self, name: Name, to: R) -> Result<(), Error> {
        self.driver.subscribe(name, to)
    }

    /// Returns at once; no event. The broker-level subscription goes with
    /// the topic's last recipient. A caller that unsubscribes only what it
    /// subscribed, as the NIF does, is never refused while the client is
    /// open. Unsubscribes that undo nothing are refused (`Err("... not
    /// subscribed")`) once the unsubscribes waiting for the listener task
    /// would outnumber the subscriptions it holds or has waiting by 65,536:
    /// the command channel stays bounded.
    pub fn unsubscribe(&self, name: Name, to: R) -> Result<(), Error> {
        self.driver.unsubscribe(name, to)
    }

    /// `Ok` when `name` is a channel name this broker takes.
    pub fn check_name(&self, name: &Name) -> Result<(), Error> {
        self.driver.check_name(name)
    }

    /// Returns at once; exactly one `Published{tag, result}` goes to
    /// `reply_to`: `Ok` once the broker accepted the message, `Err(reason)`
    /// when it refused it or no connection was up within `publish_timeout`
    /// (the request waits for a reconnect up to that deadline). With 65,536
    /// publishes of this client not answered yet it returns `Err` instead
    /// (the client is overloaded), and no event follows.
    pub fn publish(
        &self,
        name: Name,
        payload: Vec<u8>,
        options: &[(String, Data)],
        reply_to: R,
        tag: u64,
    ) -> Result<(), Error> {
        self.driver.publish(name, payload, options, reply_to, tag)
    }

    /// Stops the tasks and closes the broker connections (also on drop).
    /// Publishes not answered yet get `Err`; no other event follows.
    pub fn close(&self) {
        self.driver.close();
    }

    pub fn stats(&self) -> ClientStats {
        self.driver.stats()
    }

    /// The broker's settings this client was opened with.
    pub fn common(&self) -> &Common {
        self.driver.common()
    }

    /// Where it connects: "host:port" (never a secret).
    pub fn endpoint(&self) -> String {
        self.driver.endpoint()
    }

    /// Test hook: makes the listener and publisher tasks panic once, to
    /// check that supervision restarts them.
    #[cfg(feature = "test-hooks")]
    pub fn debug_inject_panic(&self) -> Result<(), Error> {
        self.driver.inject_panic()
    }

    /// Test hook: the listener reads nothing for `pause`, so that a broker
    /// builds a backlog for it whatever the machine's speed.
    #[cfg(feature = "test-hooks")]
    pub fn debug_stall_listener(&self, pause: std::time::Duration) -> Result<(), Error> {
        self.driver.stall_listener(pause)
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
/// An [`Outbox`](crate::Outbox) is the one the NIF uses: its delivery
/// thread reads the other end. A sink may also hand some events on directly
/// (the NIF sends publish replies with `enif_send` from the runtime thread,
/// which saves that thread's wake-up).
///
/// Subscriber events go through [`EventSink::flow_event`], on the [`Flow`]
/// of their recipient and topic: an [`Outbox`](crate::Outbox) bounds and
/// sheds them there. The defaults deliver everything, unbounded (tests).
///
/// A panic in a sink is caught, and loses the event it was handed: the
/// client's tasks call their sink while they recover from a panic of their
/// own, and a reply owed by an abandoned publish is sent while unwinding.
pub trait EventSink<R>: Send + Sync + 'static {
    /// Warnings to the owner and publish replies.
    fn deliver(&self, delivery: Delivery<R>);

    /// The flow of `to` on the topic `name`, made when `to` joins it.
    fn flow(&self, to: R, name: Name) -> Arc<Flow<R>>
    where
        R: Recipient,
    {
        Flow::detached(to, name)
    }

    /// Messages of one flow were dropped before reaching the sink (a
    /// broker's backlog purged): the recipient is told, in order.
    fn flow_gap(&self, flow: &Arc<Flow<R>>)
    where
        R: Recipient,
    {
        let name = flow.name().clone();
        self.flow_event(flow, Event::Disconnected { name });
        let name = flow.name().clone();
        self.flow_event(flow, Event::Connected { name });
    }

    /// `Connected`, `Disconnected` and `Message` events of one flow, in order.
    fn flow_event(&self, flow: &Arc<Flow<R>>, event: Event)
    where
        R: Recipient,
    {
        self.deliver(Delivery {
            to: flow.to().clone(),
            event,
        })
    }
}

/// The caller's sink with its panics caught (see [`EventSink`]).
struct Guarded<S>(S);

impl<R, S: EventSink<R>> EventSink<R> for Guarded<S> {
    fn deliver(&self, delivery: Delivery<R>) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.0.deliver(delivery)));
    }

    fn flow(&self, to: R, name: Name) -> Arc<Flow<R>>
    where
        R: Recipient,
    {
        let (to_again, name_again) = (to.clone(), name.clone());
        catch_unwind(AssertUnwindSafe(|| self.0.flow(to, name)))
            .unwrap_or_else(|_| Flow::detached(to_again, name_again))
    }

    fn flow_gap(&self, flow: &Arc<Flow<R>>)
    where
        R: Recipient,
    {
        let _ = catch_unwind(AssertUnwindSafe(|| self.0.flow_gap(flow)));
    }

    fn flow_event(&self, flow: &Arc<Flow<R>>, event: Event)
    where
        R: Recipient,
    {
        let _ = catch_unwind(AssertUnwindSafe(|| self.0.flow_event(flow, event)));
    }
}

impl<R: Send + 'static> EventSink<R> for Sender<Delivery<R>> {
    fn deliver(&self, delivery: Delivery<R>) {
        // A dropped receiver means nobody listens any more: nothing to do.
        let _ = self.send(delivery);
    }
}

/// Opens a client of broker `B` (called by the registry, which knows `B`).
pub(crate) fn open<B: Broker, R: Recipient>(
    settings: &Settings,
    owner: R,
    events: Arc<dyn EventSink<R>>,
) -> Result<Client<R>, Error> {
    runtime::ensure()?;
    let common = Common::from_settings(settings)?;
    let broker = Arc::new(B::new(settings, common)?);
    let shared = Arc::new(Shared {
        owner,
        replies: Arc::new(Replies::new(events.clone())),
        events,
        listener: Slot::default(),
        publisher: Slot::default(),
        counters: Counters::default(),
        waiting_subscribes: Arc::new(AtomicUsize::new(0)),
        waiting_unsubscribes: Arc::new(AtomicUsize::new(0)),
        closed: AtomicBool::new(false),
    });
    Ok(Client {
        driver: Arc::new(Erased { broker, shared }),
    })
}

/// What the tasks and the client share.
struct Shared<B: Broker, R: Recipient> {
    owner: R,
    events: Arc<dyn EventSink<R>>,
    /// The same sink for `Published` replies, with their count.
    replies: Arc<Replies<R>>,
    listener: Slot<ListenCmd<B::Topic, R>>,
    publisher: Slot<PublishCmd<B, R>>,
    counters: Counters,
    /// Subscribe and unsubscribe commands sent and not taken by the
    /// listener task yet.
    waiting_subscribes: Arc<AtomicUsize>,
    waiting_unsubscribes: Arc<AtomicUsize>,
    closed: AtomicBool,
}

impl<B: Broker, R: Recipient> Shared<B, R> {
    fn warn(&self, message: String) {
        self.events.deliver(Delivery {
            to: self.owner.clone(),
            event: Event::Warning { message },
        });
    }
}

/// The broker type erased, so that `Client<R>` is one type for every broker.
trait Driver<R: Recipient>: Send + Sync {
    fn check_name(&self, name: &Name) -> Result<(), Error>;
    fn subscribe(&self, name: Name, to: R) -> Result<(), Error>;
    fn unsubscribe(&self, name: Name, to: R) -> Result<(), Error>;
    fn publish(
        &self,
        name: Name,
        payload: Vec<u8>,
        options: &[(String, Data)],
        reply_to: R,
        tag: u64,
    ) -> Result<(), Error>;
    fn close(&self);
    fn stats(&self) -> ClientStats;
    fn common(&self) -> &Common;
    fn endpoint(&self) -> String;
    #[cfg(feature = "test-hooks")]
    fn inject_panic(&self) -> Result<(), Error>;
    #[cfg(feature = "test-hooks")]
    fn stall_listener(&self, pause: std::time::Duration) -> Result<(), Error>;
}

struct Erased<B: Broker, R: Recipient> {
    broker: Arc<B>,
    shared: Arc<Shared<B, R>>,
}

impl<B: Broker, R: Recipient> Erased<B, R> {
    fn topic(&self, name: &Name) -> Result<B::Topic, Error> {
        self.broker.topic(name).map_err(Error)
    }

    fn send_listener(&self, cmd: ListenCmd<B::Topic, R>) -> Result<(), Error> {
        let (broker, shared) = (&self.broker, &self.shared);
        shared
            .listener
            .send(&shared.closed, cmd, |rx| {
                runtime::spawn(listener::run(broker.clone(), shared.clone(), rx))
            })
            .map_err(|not_sent| self.refusal(not_sent.reason))
    }

    fn send_publisher(&self, cmd: PublishCmd<B, R>) -> Result<(), Error> {
        let (broker, shared) = (&self.broker, &self.shared);
        shared
            .publisher
            .send(&shared.closed, cmd, |rx| {
                runtime::spawn(publisher::run(broker.clone(), shared.clone(), rx))
            })
            .map_err(|not_sent| {
                // The caller gets this error instead of a `Published` event.
                #[allow(irrefutable_let_patterns)] // without the test hooks
                if let PublishCmd::Publish(mut request) = not_sent.cmd {
                    request.reply.disarm();
                }
                self.refusal(not_sent.reason)
            })
    }

    fn refusal(&self, reason: Option<Error>) -> Error {
        reason.unwrap_or_else(|| Error::new(format!("the {} client is closed", B::NAME)))
    }
}

impl<B: Broker, R: Recipient> Driver<R> for Erased<B, R> {
    fn check_name(&self, name: &Name) -> Result<(), Error> {
        self.topic(name).map(drop)
    }

    fn subscribe(&self, name: Name, to: R) -> Result<(), Error> {
        let topic = self.topic(&name)?;
        let waiting = Waiting::admit(
            &self.shared.waiting_subscribes,
            listener::MAX_WAITING_SUBSCRIBES,
        )
        .ok_or_else(|| {
            Error::new(format!(
                "the {} client is overloaded: {} subscribes wait for the broker",
                B::NAME,
                listener::MAX_WAITING_SUBSCRIBES
            ))
        })?;
        self.send_listener(ListenCmd::Subscribe(topic, name, to, waiting))
    }

    fn unsubscribe(&self, name: Name, to: R) -> Result<(), Error> {
        let topic = self.topic(&name)?;
        let shared = &self.shared;
        let undoable = shared.counters.subscriptions.load(Ordering::SeqCst)
            + shared.waiting_subscribes.load(Ordering::SeqCst);
        let limit = undoable + listener::UNSUBSCRIBE_SLACK;
        let waiting = Waiting::admit(&shared.waiting_unsubscribes, limit).ok_or_else(|| {
            Error::new(format!(
                "the {} client refuses the unsubscribe: {limit} unsubscribes already wait \
                 for {undoable} subscriptions held or waiting (unsubscribes that undo \
                 nothing: not subscribed)",
                B::NAME
            ))
        })?;
        self.send_listener(ListenCmd::Unsubscribe(topic, to, waiting))
    }

    fn publish(
        &self,
        name: Name,
        payload: Vec<u8>,
        options: &[(String, Data)],
        reply_to: R,
        tag: u64,
    ) -> Result<(), Error> {
        let topic = self.topic(&name)?;
        self.broker.check_payload(&payload).map_err(Error)?;
        let properties = self.broker.properties(options).map_err(Error)?;
        let reply = Reply::admit(reply_to, tag, &self.shared.replies).ok_or_else(|| {
            Error::new(format!(
                "the {} client is overloaded: {} publishes not answered yet",
                B::NAME,
                publisher::MAX_UNANSWERED
            ))
        })?;
        let request = PublishRequest {
            topic,
            payload,
            properties,
            deadline: Instant::now() + self.broker.common().publish_timeout,
            reply,
        };
        self.send_publisher(PublishCmd::Publish(Box::new(request)))
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Dropping the senders ends the tasks: their `recv()` returns None.
        self.shared.listener.take();
        self.shared.publisher.take();
    }

    fn stats(&self) -> ClientStats {
        self.shared.counters.snapshot()
    }

    fn common(&self) -> &Common {
        self.broker.common()
    }

    fn endpoint(&self) -> String {
        self.broker.endpoint()
    }

    #[cfg(feature = "test-hooks")]
    fn inject_panic(&self) -> Result<(), Error> {
        self.send_listener(ListenCmd::Panic)?;
        self.send_publisher(PublishCmd::Panic)
    }

    #[cfg(feature = "test-hooks")]
    fn stall_listener(&self, pause: std::time::Duration) -> Result<(), Error> {
        self.send_listener(ListenCmd::Stall(pause))
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
