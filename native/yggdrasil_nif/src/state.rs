//! The one subscription table of this VM. Every module that reads or
//! changes membership goes through [`table`]; this one imports only the key
//! and pid types, so it sits below every module that uses it.

use crate::key::ChannelKey;
use crate::pid::Pid;
use rustler::Monitor;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use yggdrasil_engine::Engine;

pub type Table = Engine<ChannelKey, Pid, Monitor>;

/// A plain mutex: every critical section is a few hash-map operations
/// (bounded, see the engine: tables grow shard by shard, big removals
/// happen in steps) and at most a few sends (a publish to a channel of up
/// to `fanout::SEND_UNDER_LOCK` subscribers); bigger fan-outs send after
/// the lock is released, from a snapshot.
///
/// Not sharded, on purpose: a publish holds the lock for one hash lookup and
/// a reference-count increment, and publishers on their own channels were
/// measured to scale with the schedulers (`docs/performance.md`), so the lock
/// is not the bottleneck. Sharding would split the per-process monitor and
/// reverse index across shards and cost every subscribe more. Revisit if a
/// many-core measurement shows contention.
static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| Mutex::new(Engine::new()));

pub fn table() -> MutexGuard<'static, Table> {
    // Engine operations do not panic on any input; if one ever did, its
    // state is still structurally sound (no unsafe inside), so recovering
    // the guard beats refusing service for the rest of the VM's life.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}
