//! The data the public API speaks: events, errors, the common settings.
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use crate::settings::Settings;
use crate::{Data, Name};

/// Anything that identifies where an event goes (the NIF uses rustler's
/// `LocalPid`; tests use `u64`). No `Debug` needed: `LocalPid` has none.
pub trait Recipient: Clone + Send + Sync + Eq + Hash + 'static {}
impl<T: Clone + Send + Sync + Eq + Hash + 'static> Recipient for T {}

/// Why a call was refused. Its text is meant for `{:error, reason}` as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Keys every broker takes (section 10, "Common to all three").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Common {
    /// How long a publish may wait for a connection and the broker's answer.
    pub publish_timeout: Duration,
    /// Upper bound of the reconnect backoff (attempts start within ~100 ms).
    pub backoff_max: Duration,
    /// A connection with nothing subscribed and no publish for this long is closed.
    pub idle_timeout: Duration,
}

impl Common {
    pub(crate) fn from_settings(settings: &Settings) -> Result<Common, Error> {
        Ok(Common {
            publish_timeout: settings.millis("publish_timeout")?,
            backoff_max: settings.millis("backoff_max")?,
            idle_timeout: settings.millis("idle_timeout")?,
        })
    }
}

/// One event for one recipient, as a sink gets it.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery<R> {
    pub to: R,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The broker confirmed the subscription (again after every reconnect).
    Connected { name: Name },
    /// The connection carrying a confirmed subscription was lost.
    Disconnected { name: Name },
    Message {
        name: Name,
        payload: Vec<u8>,
        /// The broker's metadata, for the channel's `metadata` (a map).
        metadata: Data,
    },
    /// Exactly one per `publish()`, within its `publish_timeout`.
    Published {
        tag: u64,
        result: Result<(), String>,
    },
    /// To the client's owner: one per failed connect attempt (not per topic),
    /// a refused subscription, or a restarted task.
    Warning { message: String },
}

/// What a client holds right now; tests count leaks with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Broker connections currently open.
    pub connections: usize,
    /// This client's tasks alive on the runtime.
    pub tasks: usize,
    /// Broker-level subscriptions (distinct topics).
    pub topics: usize,
    /// (topic, recipient) pairs.
    pub subscriptions: usize,
    /// Subscribing sessions cut (or their broker backlog purged) because the broker sent faster than the
    /// client could read (see `client/listener.rs`, `MAX_BEHIND`, and `Broker::overrun`).
    pub cuts: usize,
}
