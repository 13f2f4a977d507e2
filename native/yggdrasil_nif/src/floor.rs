//! BENCH HOOKS, never called by the library: the floor under a publish.
//! `bench/fixed_cost.exs` times them beside `publish/2`, so that what a
//! publish costs beyond the NIF call and the `enif_send` itself (the table
//! lookup) is measured, not assumed.

use crate::fanout;
use crate::pid::Pid;
use rustler::{Atom, Env, LocalPid, Term};

mod atoms {
    rustler::atoms! { ok }
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
    fanout::send(env, Pid::of(&pid), message);
    atoms::ok()
}
