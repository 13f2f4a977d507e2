//! The one trait a broker module implements: its protocol, nothing else.
//!
//! Everything around the protocol is shared code in `client/`, written
//! once for all brokers: the tasks, the reconnect loops with backoff, the
//! subscription bookkeeping (topic → recipients, confirmed or not), replay
//! after every reconnect, `Connected`/`Disconnected` fan-out, publish
//! deadlines and their single reply, idle close, `Warning`s to the owner
//! and panic supervision. A broker module must not retry, sleep, count or
//! send events itself; it reports what happened and the shared code decides.
//!
//! # How the shared code drives a `Broker`
//!
//! Each [`crate::Client`] runs up to two tasks on the shared runtime, both
//! generic over `B: Broker`:
//!
//! **The listener task** owns one subscribing session:
//! 1. [`Broker::connect_listener`] opens it and returns its two halves. On
//!    `Err(reason)` the owner gets one `Warning` and the task retries after
//!    the backoff (first retry within ~100 ms, doubling to `backoff_max`).
//! 2. For every subscribed topic, [`Broker::listen`] (awaited one topic at a
//!    time, in the task's loop) must return once the broker *confirmed* the
//!    subscription; the task then sends `Connected` to its recipients.
//!    - `Err(ListenError::Topic(reason))`: only this topic failed (e.g. what
//!      it names does not exist on the broker, which refused it alone). The
//!      owner gets one `Warning`, the topic is retried with its own backoff,
//!      the session stays up. The broker module must leave the session usable.
//!    - `Err(ListenError::Connection(reason))`: the session is broken; the task
//!      drops both halves (which must close the connection) and reconnects.
//! 3. Between commands the task polls [`Broker::next_message`]. `Some` is
//!    fanned out to the topic's recipients in order, then `Broker::ack`
//!    is awaited with the message's `ack` (if any). `None` means the session
//!    is lost: every confirmed topic's recipients get `Disconnected`, the
//!    task reconnects and replays every topic with `listen` again.
//! 4. [`Broker::unlisten`] when a topic's last recipient leaves; errors are
//!    treated as in `listen`, except that a topic error is just dropped.
//! 5. [`Broker::ping`] after `KEEPALIVE` (5 s) without a message; no answer
//!    within `KEEPALIVE` or a connection error ends the session as in 3.
//!
//! Because `listen` is awaited while `next_message` is not being polled,
//! **`Messages` must buffer on its own** (the client crate's own stream, or
//! a background task feeding a tokio mpsc). A `Control` future must never need `Messages` polled to complete.
//! Each call is wrapped in a timeout by the shared code (a hung broker ends
//! the session like a lost one), so a broker module needs no timeouts.
//!
//! **The publisher task** owns one [`Broker::Publisher`], made by
//! [`Broker::connect_publisher`] when a publish needs it (with the same
//! `Warning`-per-failed-attempt and backoff). Many [`Broker::publish`] calls
//! run concurrently on clones of it, each under its request's deadline.
//! - `Ok(())`: the broker accepted it (its reply, or its publisher confirm).
//! - `Err(PublishError::Refused(reason))`: the broker said no; the caller gets
//!   `Err(reason)` and the publisher stays.
//! - `Err(PublishError::Connection(reason))`: the publisher is broken; the
//!   shared code drops it, reconnects and sends the request again if its
//!   deadline allows (so a message in flight when a connection dies may
//!   reach the broker twice; brokers without confirms lose it instead).
//!
//! A broker that needs a background task (a client crate's connection
//! driver, its consumers) spawns it with `tokio::spawn` from inside these
//! methods (they run on the shared runtime), ties its life to the values it
//! returns (dropping `Control`/`Messages`/`Publisher` must end it, e.g. by
//! closing a channel it selects on), and feeds `Messages` through a tokio
//! mpsc whose end makes `next_message` return `None`.
//!
//! A broker may use one socket for everything (channels multiplexed on one
//! connection for control, consuming and publishing) or several (one
//! subscribing, one publishing). `ClientStats::connections`
//! counts open listener sessions plus open publishers.
//!
//! # Adding a broker
//! See `docs/writing-a-broker.md`: a module `src/<broker>.rs` behind its
//! cargo feature with a type implementing `Broker`, and one line in the
//! list of `lib.rs`.
use std::future::Future;

use std::fmt::Display;
use std::hash::Hash;

use crate::settings::{Schema, Settings};
use crate::{Common, Data, Error, Name};

/// What a session behind its broker does ([`Broker::WHEN_BEHIND`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behind {
    /// Keep reading: the outbox sheds what is late, and reading is cheap.
    Read,
    /// Cut the session: what it has not read piles up in our memory without
    /// bound (a client crate's unbounded buffer).
    Cut,
    /// Purge the broker's backlog (`Broker::purge`) when it holds more than
    /// `MAX_BACKLOG` (`Broker::backlog`), and tell every topic's
    /// recipients, after what came before the purge: the broker holds it,
    /// and reading it would take long.
    Purge,
}

/// Why a `listen`/`unlisten` failed.
#[derive(Debug)]
pub(crate) enum ListenError {
    /// This topic only; the session is still usable.
    Topic(String),
    /// The session is broken and must be reopened.
    Connection(String),
}

/// Why a `publish` failed.
#[derive(Debug)]
pub(crate) enum PublishError {
    /// The broker (or the broker module's own check) refused this message.
    Refused(String),
    /// The publisher is broken; retried on a new one within the deadline.
    Connection(String),
}

/// One message from a subscribing session.
pub(crate) struct Incoming<T, A> {
    /// The subscribed topic it matched, exactly as passed to `listen`
    /// (a pattern, say, not the channel it was published on).
    pub topic: T,
    pub payload: Vec<u8>,
    /// What the subscriber sees in its channel's `metadata`.
    pub metadata: Data,
    /// Handed to `Broker::ack` after the events left for the recipients.
    pub ack: Option<A>,
}

pub(crate) trait Broker: Send + Sync + Sized + 'static {
    /// The broker's name: its adapter's, its cargo feature's, and the one
    /// in warnings and errors.
    const NAME: &'static str;

    /// Its keys and URL form (section 10); the common keys are added.
    const SCHEMA: Schema;

    /// What to do with a subscribing session that is behind the broker (its
    /// messages all there without waiting for a second).
    const WHEN_BEHIND: Behind = Behind::Read;

    /// Where a subscription listens and a publish goes, checked.
    type Topic: Clone + Eq + Hash + Display + Send + Sync + 'static;
    /// Control half of a subscribing session: issues LISTEN/PSUBSCRIBE/bind+consume.
    type Control: Send;
    /// Message half of the same session, polled in the listener task's loop.
    type Messages: Send;
    /// Shared by concurrent publishes (cheap `Clone`): a multiplexed connection,
    /// an `Arc<Client>`, a lapin `Channel`.
    type Publisher: Clone + Send + Sync;
    /// What `ack` needs to acknowledge one message (`()` when nothing is acked).
    type Ack: Send;
    /// What `publish` takes besides the payload (`()` for none).
    type Properties: Send + Sync + 'static;

    /// Checks the settings (files included) and prepares; connects nothing.
    fn new(settings: &Settings, common: Common) -> Result<Self, Error>;

    /// The settings shared by every broker (timeouts, backoff, idle close).
    fn common(&self) -> &Common;

    /// Where it connects, for log lines: "host:port" (never a secret).
    fn endpoint(&self) -> String;

    /// True when its connections use TLS without authenticating the server
    /// (`tls_verify: :verify_none`): the shared code warns once per connection.
    fn tls_unverified(&self) -> bool {
        false
    }

    /// A channel name as this broker's topic, or why the broker would
    /// refuse it. Called in the caller's thread before anything is queued:
    /// must not block.
    fn topic(&self, name: &Name) -> Result<Self::Topic, String>;

    /// Whether a payload is acceptable (some brokers carry text only, or
    /// bounded sizes).
    /// Called in the caller's thread before anything is queued: must not block.
    fn check_payload(&self, _payload: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// Opens a subscribing session (with nothing subscribed yet).
    fn connect_listener(
        &self,
    ) -> impl Future<Output = Result<(Self::Control, Self::Messages), String>> + Send;

    /// Subscribes `topic`; returns once the broker confirmed it.
    fn listen(
        &self,
        control: &mut Self::Control,
        topic: &Self::Topic,
    ) -> impl Future<Output = Result<(), ListenError>> + Send;

    /// Drops the broker-level subscription of `topic`.
    fn unlisten(
        &self,
        control: &mut Self::Control,
        topic: &Self::Topic,
    ) -> impl Future<Output = Result<(), ListenError>> + Send;

    /// The next message of any topic of this session; `None` = session lost.
    fn next_message(
        &self,
        messages: &mut Self::Messages,
    ) -> impl Future<Output = Option<Incoming<Self::Topic, Self::Ack>>> + Send;

    /// Why `next_message` returned `None` when the broker module ended the
    /// session itself, this side having fallen behind the broker: a cut,
    /// warned with this reason and counted as the shared code's own
    /// ([`Behind::Cut`]). `None`: the connection closed.
    fn overrun(&self, _messages: &Self::Messages) -> Option<String> {
        None
    }

    /// Checks that a quiet session is still alive (a protocol ping); called
    /// after `KEEPALIVE` without a message and bounded by the same time, so
    /// a broker that stopped answering (host gone, process stopped, no RST)
    /// ends the session like a closed one. `Err(ListenError::Topic)` is
    /// ignored. The default does nothing, for brokers whose own heartbeat
    /// does the same.
    fn ping(
        &self,
        _control: &mut Self::Control,
    ) -> impl Future<Output = Result<(), ListenError>> + Send {
        async { Ok(()) }
    }

    /// How many messages the broker holds for this session and has not sent
    /// yet (`Behind::Purge`: polled every second while messages flow).
    fn backlog(
        &self,
        _control: &mut Self::Control,
    ) -> impl Future<Output = Result<u64, ListenError>> + Send {
        async { Ok(0) }
    }

    /// Drops what the broker holds for this session and has not sent yet
    /// (`Behind::Purge`, past `MAX_BACKLOG`), and stops receiving until
    /// `resume`: every message the broker sent before the purge is then
    /// waiting in `Messages`, none after it. The shared code delivers
    /// those, tells every topic's recipients of the gap, then resumes.
    fn purge(
        &self,
        _control: &mut Self::Control,
    ) -> impl Future<Output = Result<(), ListenError>> + Send {
        async { Ok(()) }
    }

    /// Receives again after `purge`.
    fn resume(
        &self,
        _control: &mut Self::Control,
    ) -> impl Future<Output = Result<(), ListenError>> + Send {
        async { Ok(()) }
    }

    /// Acknowledges a message whose events were handed to the recipients.
    fn ack(&self, _ack: Self::Ack) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// `publish/3` options, checked before anything is queued (message
    /// properties, for brokers that have them; others ignore them).
    fn properties(&self, options: &[(String, Data)]) -> Result<Self::Properties, String>;

    /// Opens a publisher.
    fn connect_publisher(&self) -> impl Future<Output = Result<Self::Publisher, String>> + Send;

    /// Publishes one message; `Ok` once the broker accepted it.
    fn publish(
        &self,
        publisher: &Self::Publisher,
        topic: &Self::Topic,
        payload: &[u8],
        properties: &Self::Properties,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}
