//! Broker I/O for native Yggdrasil: Redis (and, behind their features,
//! PostgreSQL and RabbitMQ) driven by one shared tokio runtime.
//!
//! Pure Rust, no rustler types: the NIF wraps a [`Client`] per broker and
//! namespace, and the [`EventSink`] it hands to [`Client::open`] feeds a
//! `crossbeam_channel` that its own delivery thread drains (publish replies
//! it sends at once).
//!
//! Layout:
//! - `runtime`: the process-wide tokio runtime (`LazyLock`, one worker).
//! - `client`: [`Client`], task slots, the shared reconnect loops, subscription
//!   bookkeeping, publish deadlines, idle close and panic supervision.
//! - `broker`: the `Broker` trait each broker module implements (its protocol only).
//! - `backoff`: bounded exponential backoff with jitter.
//! - `redis`: the `:redis` broker.
//! - `postgres`: the `:postgres` broker (LISTEN/NOTIFY).
//! - `rabbitmq`: the `:rabbitmq` broker (AMQP 0-9-1).
//! - `url`: broker URLs taken apart (one parser for all schemes).
//! - `tls`: the one TLS stack (rustls + ring) and each broker crate's glue.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
// Built with no broker at all (an application that uses none): the shared
// machinery is there but nothing drives it, and `Client::open` has nothing
// to open.
#![cfg_attr(
    not(any(feature = "redis", feature = "postgres", feature = "rabbitmq")),
    allow(dead_code, unused_imports, unused_variables, unreachable_code)
)]

mod backoff;
mod broker;
mod client;
mod runtime;
mod secret;
// URL parsing and the TLS stack, shared by the brokers (section 10.1); not
// wired into them yet, hence `dead_code` (until the brokers call them).
#[cfg(feature = "net")]
#[allow(dead_code)]
pub(crate) mod tls;
mod types;
#[cfg(feature = "net")]
#[allow(dead_code)]
pub(crate) mod url;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;

pub use client::{Client, EventSink};
pub use runtime::{runtime_stats, RuntimeStats};
pub use secret::Secret;
pub use types::*;

/// The brokers compiled in (cargo features), e.g. `["redis", "postgres"]`:
/// an adapter left out answers "built without :redis" instead of failing.
pub fn features() -> &'static [&'static str] {
    &[
        #[cfg(feature = "redis")]
        "redis",
        #[cfg(feature = "postgres")]
        "postgres",
        #[cfg(feature = "rabbitmq")]
        "rabbitmq",
    ]
}
