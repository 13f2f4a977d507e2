//! A channel's subscribers, one bounded page per call so that a channel
//! with millions of subscribers never holds a scheduler. The pages come
//! from one snapshot, so together they are the membership at the instant
//! of the first call.

use crate::cursor::{Cursor, Purpose};
use crate::key::TermKey;
use crate::pid::Pid;
use crate::state::table;
use rustler::{Encoder, Env, NifResult, NifTuple, ResourceArc, Term};
use yggdrasil_engine::Snapshot;

/// Pids per call: building a list of this many takes well under 100 µs.
const PAGE: usize = 4096;

/// `{pids, nil}` when that is all, `{pids, cursor}` when more follow.
#[derive(NifTuple)]
#[rustler(encode)]
struct Page<'a> {
    pids: &'a [Pid],
    rest: Option<ResourceArc<Cursor>>,
}

#[rustler::nif]
fn subscribers_page<'a>(env: Env<'a>, channel: Term<'a>) -> Term<'a> {
    let members = table().snapshot(&TermKey::new(channel));
    match members {
        Some(members) => page(env, members, 0),
        None => LAST_EMPTY.encode(env),
    }
}

#[rustler::nif]
fn subscribers_more<'a>(env: Env<'a>, cursor: ResourceArc<Cursor>) -> NifResult<Term<'a>> {
    Ok(match cursor.take(Purpose::Listing)? {
        Some((members, _all, from)) => page(env, members, from),
        None => LAST_EMPTY.encode(env),
    })
}

const LAST_EMPTY: Page<'static> = Page {
    pids: &[],
    rest: None,
};

fn page(env: Env<'_>, members: Snapshot<Pid>, from: usize) -> Term<'_> {
    let end = from.saturating_add(PAGE).min(members.len());
    let pids = members.as_slice().get(from..end).unwrap_or_default();
    let rest = (end < members.len()).then(|| Cursor::new(Purpose::Listing, members.clone(), end));
    Page { pids, rest }.encode(env)
}
