//! The NIF behind `Yggdrasil.Native` (which only `Yggdrasil.Engine` and,
//! for the brokers, `Yggdrasil.Broker.Client` call): converts terms, owns the one global subscription table, monitors
//! subscribers and delivers messages with `enif_send` from the publisher's
//! own process. This file only wires the concerns to rustler:
//!
//! - [`table`]: the subscription table and the NIFs that change or read
//!   membership;
//! - [`monitor`]: subscriber monitors, the reaper thread, the janitor;
//! - [`fanout`]: sending to a channel's subscribers in bounded calls, and
//!   the cursor that resumes them;
//! - [`listing`]: a channel's subscribers, a bounded page per call;
//! - [`stats`]: the counters and `info/0`;
//! - [`key`], [`pid`]: channel terms and pids as the engine stores them;
//! - [`json`]: the `:json` transformer; [`alloc`]: the counting allocator;
//! - `hooks`: test and bench hooks, only with the `test-hooks` feature;
//! - [`broker`]: the broker clients (`yggdrasil_brokers`) and their
//!   delivery thread.
//!
//! Nothing a caller passes can panic here: bad terms raise `ArgumentError`
//! through rustler's decoding, and engine failures come back as
//! `{:error, reason}`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod alloc;
mod broker;
mod fanout;
#[cfg(feature = "test-hooks")]
mod hooks;
mod json;
mod key;
mod listing;
mod monitor;
mod pid;
mod stats;
mod table;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

rustler::init!("Elixir.Yggdrasil.Native");
