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

/// Which members of a snapshot a fan-out sends to: all of them, or one
/// broker sender's share of a wide channel (`broker::senders`). A member's
/// share depends on its pid alone, so each subscriber always gets a
/// channel's events from the same sender, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    index: usize,
    of: usize,
}

impl Share {
    pub const ALL: Share = Share { index: 0, of: 1 };

    /// Share `index` of `of` (`index < of`), or `None`.
    pub fn new(index: usize, of: usize) -> Option<Share> {
        (index < of).then_some(Share { index, of })
    }

    #[inline]
    pub fn owns(&self, member: &Pid) -> bool {
        self.of == 1 || member.spread(self.of) == self.index
    }

    /// `send`s to the members of this share among `members[from..to]` (one
    /// batch, under the snapshot's fence: `Members::deliver`); returns how
    /// many.
    pub fn deliver(
        &self,
        members: &Snapshot<Pid>,
        from: usize,
        to: usize,
        mut send: impl FnMut(Pid),
    ) -> usize {
        let mut sent = 0;
        members.deliver(from, to, |&pid| {
            if self.owns(&pid) {
                send(pid);
                sent += 1;
            }
        });
        sent
    }
}

/// The rest of a subscriber snapshot that a call left for the next one.
/// Usable once: the first call to resume it takes it.
pub struct Cursor {
    purpose: Purpose,
    members: Snapshot<Pid>,
    share: Share,
    next: AtomicUsize,
}

#[rustler::resource_impl]
impl Resource for Cursor {}

impl Cursor {
    pub fn new(purpose: Purpose, members: Snapshot<Pid>, next: usize) -> ResourceArc<Cursor> {
        Cursor::shared(purpose, members, Share::ALL, next)
    }

    pub fn shared(
        purpose: Purpose,
        members: Snapshot<Pid>,
        share: Share,
        next: usize,
    ) -> ResourceArc<Cursor> {
        ResourceArc::new(Cursor {
            purpose,
            members,
            share,
            next: AtomicUsize::new(next),
        })
    }

    /// The snapshot, the share of it and where to go on from; `None` when
    /// an earlier call already took it.
    pub fn take(&self, purpose: Purpose) -> NifResult<Option<(Snapshot<Pid>, Share, usize)>> {
        if self.purpose != purpose {
            return Err(rustler::Error::BadArg);
        }
        let next = self.next.swap(usize::MAX, Ordering::AcqRel);
        Ok((next != usize::MAX).then(|| (self.members.clone(), self.share, next)))
    }
}
