//! How long fan-out NIF calls hold their scheduler, measured by the calls
//! themselves: the soak's check that none reaches 1 ms, independent of how
//! loaded the machine is (see `call_stats/1`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static CALLS: AtomicU64 = AtomicU64::new(0);
static MAX_WALL_US: AtomicU64 = AtomicU64::new(0);
static MAX_CPU_US: AtomicU64 = AtomicU64::new(0);
static OVER_WALL: AtomicU64 = AtomicU64::new(0);
static OVER_CPU: AtomicU64 = AtomicU64::new(0);

/// CPU time of the calling thread, in µs (0 where unsupported).
#[cfg(target_os = "linux")]
pub fn thread_cpu_us() -> u64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut time = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec (two 64-bit fields on
    // 64-bit Linux) and the clock id is a constant Linux defines.
    if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0 {
        return 0;
    }
    (time.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(time.tv_nsec as u64 / 1_000)
}

#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_us() -> u64 {
    0
}

pub fn record(started: Instant, cpu_started: u64) {
    let wall = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let cpu = thread_cpu_us().saturating_sub(cpu_started);
    CALLS.fetch_add(1, Ordering::Relaxed);
    MAX_WALL_US.fetch_max(wall, Ordering::Relaxed);
    MAX_CPU_US.fetch_max(cpu, Ordering::Relaxed);
    if wall >= 1_000 {
        OVER_WALL.fetch_add(1, Ordering::Relaxed);
    }
    if cpu >= 1_000 {
        OVER_CPU.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn stats(reset: bool) -> (u64, u64, u64, u64, u64) {
    let all = [&CALLS, &MAX_WALL_US, &MAX_CPU_US, &OVER_WALL, &OVER_CPU];
    let [calls, wall, cpu, over_wall, over_cpu] = all.map(|counter| {
        if reset {
            counter.swap(0, Ordering::Relaxed)
        } else {
            counter.load(Ordering::Relaxed)
        }
    });
    (calls, wall, cpu, over_wall, over_cpu)
}
