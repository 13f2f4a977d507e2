//! What `Yggdrasil.info/0` reports: the table's sizes, the bytes this
//! library holds, and the counters, all read in one call.
//!
//! Every counter is one field of [`Counters`], declared once in the
//! `counters!` list below: that gives it its atomic, its key in the
//! `info/0` map and its place in `reset_counters/0`.

use crate::alloc;
use crate::state::table;
use rustler::NifMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A counter updated from any scheduler without a lock.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Keeps the largest value seen.
    pub fn max(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }

    fn read(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)+) => {
        pub struct Counters {
            $($(#[$doc])* pub $name: Counter,)+
        }

        pub static COUNTERS: Counters = Counters { $($name: Counter::new(),)+ };

        /// The `info/0` map.
        #[derive(NifMap)]
        #[rustler(encode)]
        struct Info {
            channels: u64,
            subscribers: u64,
            subscriptions: u64,
            /// Heap bytes this library holds (see `alloc`).
            memory_bytes: u64,
            $($name: u64,)+
        }

        #[rustler::nif]
        fn info() -> Info {
            let counts = table().counts();
            Info {
                channels: counts.channels as u64,
                subscribers: counts.subscribers as u64,
                subscriptions: counts.subscriptions as u64,
                memory_bytes: alloc::allocated() as u64,
                $($name: COUNTERS.$name.read(),)+
            }
        }

        /// Zeroes every counter, so a measurement can read what happened
        /// in its own window (the soak's and the bench's scheduler checks).
        #[rustler::nif]
        fn reset_counters() -> rustler::Atom {
            $(COUNTERS.$name.reset();)+
            rustler::types::atom::ok()
        }
    };
}

counters! {
    /// Messages sent to subscribers.
    deliveries,
    /// Fan-out calls that took more than one batch: the ones timed below.
    fanout_calls,
    /// The longest of those calls, wall time (includes the time the OS
    /// gave the scheduler thread's core to someone else).
    fanout_max_wall_us,
    /// The longest of those calls, CPU time of the calling thread.
    fanout_max_cpu_us,
    /// The longest single batch of sends in those calls, wall time: where
    /// a long call spent its time (a batch normally takes a few µs).
    fanout_max_batch_us,
    /// Calls of 1 ms or more, by wall time and by CPU time.
    fanout_over_1ms_wall,
    fanout_over_1ms_cpu,
}

/// Times one fan-out call from the inside, by wall and thread CPU time.
pub struct CallTimer {
    started: Instant,
    cpu_started: u64,
    longest_batch: Duration,
}

impl CallTimer {
    pub fn start() -> Self {
        CallTimer {
            started: Instant::now(),
            cpu_started: thread_cpu_us(),
            longest_batch: Duration::ZERO,
        }
    }

    /// Notes how long one batch of sends took.
    pub fn batch(&mut self, took: Duration) {
        self.longest_batch = self.longest_batch.max(took);
    }

    pub fn stop(self) {
        let wall = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let cpu = thread_cpu_us().saturating_sub(self.cpu_started);
        COUNTERS.fanout_calls.add(1);
        COUNTERS.fanout_max_wall_us.max(wall);
        COUNTERS.fanout_max_cpu_us.max(cpu);
        COUNTERS
            .fanout_max_batch_us
            .max(u64::try_from(self.longest_batch.as_micros()).unwrap_or(u64::MAX));
        if wall >= 1_000 {
            COUNTERS.fanout_over_1ms_wall.add(1);
        }
        if cpu >= 1_000 {
            COUNTERS.fanout_over_1ms_cpu.add(1);
        }
    }
}

/// CPU time of the calling thread, in µs (0 if the clock is unavailable).
pub fn thread_cpu_us() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable `timespec` of the platform's own
    // layout (from the libc crate), and the clock id is libc's constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0 {
        return 0;
    }
    u64::try_from(time.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(time.tv_nsec).unwrap_or(0) / 1_000)
}
