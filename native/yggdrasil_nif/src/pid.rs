//! Local pids as the engine stores them, and sending to one from a NIF.
//!
//! rustler's `LocalPid` hashes and compares through calls into the VM
//! (`enif_hash`, `enif_compare`). A local pid is an immediate term: its bits
//! identify the process, so the engine keys on those bits directly, which
//! makes every table operation (and every rehash) a few integer
//! instructions.

use rustler::sys::{enif_send, ErlNifPid, ErlNifTerm};
use rustler::{Encoder, Env, LocalPid, Term};
use std::ptr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(ErlNifTerm);

// `ErlNifPid` is `#[repr(C)]` with the pid term as its only (private) field:
// the conversions below rely on that layout, so a rustler version that
// changes it fails to compile here instead of misbehaving.
const _: () = assert!(
    std::mem::size_of::<ErlNifPid>() == std::mem::size_of::<ErlNifTerm>()
        && std::mem::align_of::<ErlNifPid>() == std::mem::align_of::<ErlNifTerm>()
);

impl Pid {
    #[inline]
    pub fn of(pid: &LocalPid) -> Pid {
        let raw: *const ErlNifPid = pid.as_c_arg();
        // SAFETY: `ErlNifPid` is `#[repr(C)]` with the pid term as its only
        // field (size and alignment asserted above), so reading the first
        // field through the pointer is sound.
        Pid(unsafe { *raw.cast::<ErlNifTerm>() })
    }

    /// The C pid, for `enif_send` and friends.
    #[inline]
    pub fn c_pid(&self) -> ErlNifPid {
        // SAFETY: same layout as above, in the other direction.
        unsafe { std::mem::transmute::<ErlNifTerm, ErlNifPid>(self.0) }
    }

    /// A number below `of` that spreads pids evenly (a Fibonacci hash of
    /// the term's bits, whose low bits are the same tag for every pid).
    #[inline]
    pub fn spread(&self, of: usize) -> usize {
        // SAFETY: `ErlNifTerm` is a `#[repr(transparent)]` `usize`.
        let bits = unsafe { std::mem::transmute::<ErlNifTerm, usize>(self.0) } as u64;
        let mixed = bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        (mixed % of.max(1) as u64) as usize
    }

    #[inline]
    pub fn local(&self) -> LocalPid {
        LocalPid::from_c_arg(self.c_pid())
    }
}

impl Encoder for Pid {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        self.local().encode(env)
    }
}

/// `send/2` from inside a NIF call: `env` is the caller's (process-bound,
/// on a scheduler thread), so the VM copies `message` into the target's
/// heap. A dead target is not an error, as with `send/2`.
#[inline]
pub fn send(env: Env<'_>, pid: Pid, message: Term<'_>) {
    let pid = pid.c_pid();
    // SAFETY: `env` is the calling process's environment and `message`
    // belongs to it; a null message env means "copy", which is what we want.
    unsafe {
        enif_send(env.as_c_arg(), &pid, ptr::null_mut(), message.as_c_arg());
    }
}

/// `send/2` from a thread of our own (not a scheduler): the VM copies
/// `message`, which stays valid in its environment for the next target.
/// False when `pid` is not alive.
#[inline]
pub fn send_copy(pid: Pid, message: Term<'_>) -> bool {
    let pid = pid.c_pid();
    // SAFETY: `message` is alive: it belongs to an environment borrowed for
    // '_. A null caller env is what a non-VM thread must pass; a null
    // message env means "copy", which only reads `message` (erl_nif:
    // `enif_send`), so two threads may send the same term at once.
    unsafe { enif_send(ptr::null_mut(), &pid, ptr::null_mut(), message.as_c_arg()) != 0 }
}
