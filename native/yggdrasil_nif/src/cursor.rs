//! What resumes a call that stopped before the end of a subscriber
//! snapshot: a fan-out (`fanout`) or a listing (`listing`).

use crate::pid::Pid;
use rustler::{NifResult, Resource, ResourceArc};
use std::sync::atomic::{AtomicUsize, Ordering};
use yggdrasil_engine::Snapshot;

/// What a cursor resumes: a cursor of one kind handed to the other's NIF
/// is an `ArgumentError`, not a listing that sends or a fan-out that lists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    FanOut,
    Listing,
}

/// The rest of a subscriber snapshot that a call left for the next one.
/// Usable once: the first call to resume it takes it.
pub struct Cursor {
    purpose: Purpose,
    members: Snapshot<Pid>,
    next: AtomicUsize,
}

#[rustler::resource_impl]
impl Resource for Cursor {}

impl Cursor {
    pub fn new(purpose: Purpose, members: Snapshot<Pid>, next: usize) -> ResourceArc<Cursor> {
        ResourceArc::new(Cursor {
            purpose,
            members,
            next: AtomicUsize::new(next),
        })
    }

    /// The snapshot and where to go on from; `None` when an earlier call
    /// already took it.
    pub fn take(&self, purpose: Purpose) -> NifResult<Option<(Snapshot<Pid>, usize)>> {
        if self.purpose != purpose {
            return Err(rustler::Error::BadArg);
        }
        let next = self.next.swap(usize::MAX, Ordering::AcqRel);
        Ok((next != usize::MAX).then(|| (self.members.clone(), next)))
    }
}
