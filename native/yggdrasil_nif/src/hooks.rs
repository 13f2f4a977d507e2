//! TEST AND BENCH HOOKS, never called by the library and compiled only with
//! the `test-hooks` cargo feature, which the shipped library does not have
//! (`mix compile` turns it on for `MIX_ENV=test` and `bench` only).
//!
//! - [`debug_panic`] proves that a Rust panic comes back to the caller as an
//!   Erlang error instead of taking the VM down;
//! - the floors under a publish: `bench/fixed_cost.exs` times
//!   [`floor_call`] and [`floor_send`] beside `publish/2`, so that what a
//!   publish costs beyond the NIF call and the `enif_send` itself (the table
//!   lookup) is measured, not assumed; the crowd soak runs
//!   [`floor_cpu_stalls`] beside its fan-outs, so that what the machine does
//!   to any computation is measured beside what it does to them.

use crate::pid::{self, Pid};
use crate::state::table;
use crate::stats;
use rustler::{Atom, Env, LocalPid, NifMap, NifResult, Term};
use std::time::{Duration, Instant};
use std::{hint, thread};

mod atoms {
    rustler::atoms! { ok, table }
}

/// Panics on purpose (rustler catches it and raises `:nif_panicked`).
/// `:table` panics while holding the subscription table's lock, which
/// poisons it; every later call must keep working (see `table()`).
#[rustler::nif]
#[allow(clippy::panic)]
fn debug_panic(mode: Atom) -> Atom {
    if mode == atoms::table() {
        let _held = table();
        panic!("yggdrasil: debug_panic(:table) test hook, panicking with the table locked");
    }
    panic!("yggdrasil: debug_panic test hook");
}

/// A NIF call that does nothing: the cost of calling into the NIF at all.
#[rustler::nif]
fn floor_call(_target: Term<'_>, _message: Term<'_>) -> Atom {
    atoms::ok()
}

/// One `enif_send` to `pid`, exactly as a publish sends: the floor of a
/// one-subscriber publish.
#[rustler::nif]
fn floor_send<'a>(env: Env<'a>, pid: LocalPid, message: Term<'a>) -> Atom {
    pid::send(env, Pid::of(&pid), message);
    atoms::ok()
}

/// What [`floor_cpu_stalls`] saw.
#[derive(NifMap)]
struct CpuStalls {
    /// Units of computation run.
    units: u64,
    /// Units that took 1 ms of CPU time or more.
    over_1ms: u64,
    /// The longest unit, in µs of CPU time.
    longest_us: u64,
}

/// Iterations between clock reads while calibrating.
const CALIBRATION_STEP: u64 = 10_000;

/// The machine's own floor under "no call holds its scheduler for 1 ms":
/// runs pieces of pure computation (no lock, no allocation, no VM call)
/// that take `unit_us` when undisturbed, `pause_us` apart, for
/// `duration_ms`, timing each by the thread's CPU time exactly as a fan-out
/// call times itself. A unit that takes far longer than `unit_us` was
/// slowed by the machine (interrupts charged to the thread, the
/// hypervisor), not by its own work. On a dirty I/O scheduler, since it
/// sleeps between units.
#[rustler::nif(schedule = "DirtyIo")]
fn floor_cpu_stalls(duration_ms: u64, unit_us: u64, pause_us: u64) -> NifResult<CpuStalls> {
    if duration_ms > 600_000 || !(1..=100_000).contains(&unit_us) || pause_us > 1_000_000 {
        return Err(rustler::Error::BadArg);
    }
    // The fastest of several runs is the undisturbed speed.
    let fastest = (0..50)
        .map(|_| {
            let started = Instant::now();
            compute(CALIBRATION_STEP);
            started.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_micros(1))
        .max(Duration::from_nanos(1));
    let per_unit =
        (u128::from(unit_us) * 1_000 * u128::from(CALIBRATION_STEP)) / fastest.as_nanos().max(1);
    let per_unit = u64::try_from(per_unit).unwrap_or(u64::MAX);
    let deadline = Instant::now() + Duration::from_millis(duration_ms);
    let mut stalls = CpuStalls {
        units: 0,
        over_1ms: 0,
        longest_us: 0,
    };
    while Instant::now() < deadline {
        let cpu_started = stats::thread_cpu_us();
        compute(per_unit);
        let cpu = stats::thread_cpu_us().saturating_sub(cpu_started);
        stalls.units += 1;
        stalls.over_1ms += u64::from(cpu >= 1_000);
        stalls.longest_us = stalls.longest_us.max(cpu);
        thread::sleep(Duration::from_micros(pause_us));
    }
    Ok(stalls)
}

/// `iterations` steps of a linear congruential generator, kept from being
/// optimized away.
fn compute(iterations: u64) -> u64 {
    (0..iterations).fold(1u64, |x, i| {
        hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i))
    })
}
