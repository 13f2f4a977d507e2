//! The NIF behind `Yggdrasil.Native` (which only `Yggdrasil.Engine` and,
//! for the brokers, `Yggdrasil.Broker.Client` call): converts terms, owns
//! the one global subscription table, monitors subscribers and delivers
//! messages with `enif_send` from the publisher's own process. This file only wires the concerns to rustler:
//!
//! - [`state`]: the one subscription table;
//! - [`membership`]: the NIFs that change or read membership;
//! - [`monitor`]: subscriber monitors and the reaper thread;
//! - [`fanout`]: sending to a channel's subscribers in bounded calls;
//! - [`listing`]: a channel's subscribers, a bounded page per call;
//! - [`cursor`]: what resumes a fan-out or a listing that yielded;
//! - [`stats`]: the counters and `info/0`;
//! - [`key`], [`pid`]: channel terms and pids as the engine stores them,
//!   and `send` to one pid;
//! - [`json`]: the `:json` transformer; [`alloc`]: the counting allocator;
//! - `hooks`: test and bench hooks, only with the `test-hooks` feature;
//! - [`broker`]: the broker clients (`yggdrasil_brokers`) and their
//!   delivery thread.
//!
//! The modules form layers, each importing only from the layers under it,
//! so no two of them import each other: `alloc`, `key`, `pid`, `json` at the
//! bottom; `state` and `cursor` over them; `stats` and `monitor` over those;
//! on top the NIFs nothing else calls, `membership`, `fanout`, `listing`,
//! `broker` and `hooks`.
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
mod cursor;
mod fanout;
#[cfg(feature = "test-hooks")]
mod hooks;
mod json;
mod key;
mod listing;
mod membership;
mod monitor;
mod pid;
mod state;
mod stats;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

rustler::init!("Elixir.Yggdrasil.Native");
