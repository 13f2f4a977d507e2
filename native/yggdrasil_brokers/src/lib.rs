//! Broker I/O for native Yggdrasil: Redis, PostgreSQL and RabbitMQ (each
//! behind its cargo feature) driven by one shared tokio runtime.
//!
//! Pure Rust, no rustler types: the NIF wraps a [`Client`] per broker and
//! namespace, and the [`EventSink`] it hands to [`Client::open`] feeds an
//! [`Outbox`] (`outbox`: bounded, sheds load with notice) that its own
//! delivery thread drains (publish replies it sends at once).
//!
//! Layout — the generic layer names no broker:
//! - `settings`: a broker's keys, typed and checked; errors name the key.
//! - `url`: broker URLs, parsed in one place.
//! - `tls`: the one TLS stack of every broker.
//! - `data`: channel names, event metadata and publish options as terms.
//! - `client`: [`Client`], its listener and publisher tasks, reconnects,
//!   replay, publish deadlines, idle close and panic supervision.
//! - `broker`: the `Broker` trait a broker module implements (its protocol,
//!   its settings schema, its names).
//! - `bounded`: a stream wrapper that checks what a peer's bytes size
//!   before a client crate trusts them.
//! - `runtime`, `backoff`, `secret`: the runtime, reconnect delays, a
//!   string that never prints.
//!
//! Each broker is one module, listed once below (`brokers!`).
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
// Not every broker uses every part of it.
#[cfg(feature = "net")]
#[allow(dead_code)]
mod bounded;
mod broker;
mod client;
mod data;
pub mod outbox;
mod runtime;
mod secret;
pub mod settings;
#[cfg(feature = "net")]
mod tls;
mod types;
mod url;

pub use client::{Client, EventSink};
pub use data::{Data, Name};
pub use outbox::{Deliveries, Flow, Limits, LoadStats, Outbox};
pub use runtime::{runtime_stats, RuntimeStats};
pub use secret::Secret;
pub use settings::{Given, Raw, Settings};
pub use types::*;

/// Declares the broker modules and the registry over them: the one list of
/// brokers in Rust. Each entry is its cargo feature, its module and the
/// type implementing `Broker` (whose `NAME` is the feature's name).
macro_rules! brokers {
    ($($feature:literal => $module:ident :: $broker:ident),* $(,)?) => {
        $(
            #[cfg(feature = $feature)]
            mod $module;
        )*

        mod registry {
            use std::sync::Arc;

            #[allow(unused_imports)]
            use crate::broker::Broker;
            use crate::settings::{Schema, Settings};
            use crate::{Client, Error, EventSink, Recipient};

            /// Every broker this crate knows, compiled in or not.
            pub(crate) const ALL: &[&str] = &[$($feature),*];

            /// The brokers compiled into this build.
            pub(crate) const COMPILED: &[&str] = &[$(#[cfg(feature = $feature)] $feature),*];

            pub(crate) fn schema(name: &str) -> Option<&'static Schema> {
                $(
                    #[cfg(feature = $feature)]
                    if name == $feature {
                        return Some(&<crate::$module::$broker as Broker>::SCHEMA);
                    }
                )*
                None
            }

            pub(crate) fn open<R: Recipient>(
                name: &str,
                settings: &Settings,
                owner: R,
                events: Arc<dyn EventSink<R>>,
            ) -> Result<Client<R>, Error> {
                $(
                    #[cfg(feature = $feature)]
                    if name == $feature {
                        return crate::client::open::<crate::$module::$broker, R>(settings, owner, events);
                    }
                )*
                Err(crate::unknown(name))
            }
        }
    };
}

brokers! {
    "redis" => redis::Redis,
    "postgres" => postgres::Postgres,
    "rabbitmq" => rabbitmq::RabbitMq,
}

/// The brokers compiled in (cargo features), e.g. `["redis", "postgres"]`.
pub fn brokers() -> &'static [&'static str] {
    registry::COMPILED
}

/// The keys of `broker`'s settings (its own, then the common ones), as
/// [`Given`] names them.
pub fn keys(broker: &str) -> Result<Vec<&'static str>, Error> {
    let schema = registry::schema(broker).ok_or_else(|| unknown(broker))?;
    Ok(schema.all_keys().map(|key| key.name).collect())
}

/// `broker`'s settings from `given`: checked, defaults filled in, a `url`
/// applied. An error names the key and where it was set.
pub fn settings(broker: &str, given: &[Given]) -> Result<Settings, Error> {
    let schema = registry::schema(broker).ok_or_else(|| unknown(broker))?;
    settings::resolve(schema, given)
}

/// Why `broker` cannot be used: not compiled in, or no broker at all.
fn unknown(broker: &str) -> Error {
    if registry::ALL.contains(&broker) {
        Error::new(format!(
            "yggdrasil was built without :{broker} (enable it with `config :yggdrasil, brokers: [...]` \
             or YGGDRASIL_BROKERS, including {broker}, and rebuild)"
        ))
    } else {
        Error::new(format!(
            "unknown broker :{broker} (known: :{})",
            registry::ALL.join(", :")
        ))
    }
}
