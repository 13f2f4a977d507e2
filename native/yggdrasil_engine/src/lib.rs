//! The subscription table behind native Yggdrasil.
//!
//! It maps a channel key to the set of its subscribers, keeps each channel's
//! connection state, and keeps the reverse index (subscriber → channels) so a
//! subscriber that goes away is removed from everything in one call. It knows
//! nothing about the BEAM: channel keys (`C`), subscriber ids (`S`) and the
//! per-subscriber data (`D`, e.g. a process monitor) are type parameters, so
//! `cargo test` exercises all of it.
//!
//! The engine is single-threaded; the caller wraps it in a lock. Delivery is
//! meant to happen *outside* that lock, from a [`Snapshot`]: an immutable,
//! reference-counted copy of a channel's subscribers that is rebuilt only
//! after the membership changed. A snapshot carries a fence (see
//! [`Members::fence`]) so that a subscriber that unsubscribes while a
//! delivery from an older snapshot is still running receives nothing more
//! from it once its unsubscribe returned.
//!
//! Nothing in here panics on any input: the lints below are enforced, and
//! states that would be engine bugs (a dangling channel id) are handled as
//! "unknown channel" instead of aborting the caller.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)]

use rustc_hash::FxHashSet;
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock, Weak};

mod channel_set;
mod smooth;
use channel_set::ChannelSet;
use smooth::SmoothMap;

/// Dense id of a live channel: an index into the engine's channel slab.
type ChannelId = u32;

/// A channel's subscribers at one instant, cheap to clone and safe to read
/// without holding the engine.
pub type Snapshot<S> = Arc<Members<S>>;

/// The contents of a [`Snapshot`].
///
/// The member list never changes. What can change is the set of members
/// that left (unsubscribed) while a delivery from this snapshot was still
/// running: [`Members::fence`] adds one, and [`Members::deliver`] skips
/// them. The set sits behind a read/write lock whose read side a delivery
/// holds for one bounded batch of sends, so `fence` returns only once no
/// send to the leaving subscriber can still start from this snapshot.
pub struct Members<S> {
    members: Box<[S]>,
    left: RwLock<FxHashSet<S>>,
}

impl<S: Hash + Eq + Copy> Members<S> {
    fn new(members: &[S]) -> Self {
        Members {
            members: members.into(),
            left: RwLock::new(FxHashSet::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members at the instant the snapshot was taken (ignores
    /// departures recorded by [`Members::fence`]).
    pub fn as_slice(&self) -> &[S] {
        &self.members
    }

    /// For the tests' assertions; the library reads [`Members::as_slice`].
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<S> {
        self.members.to_vec()
    }

    /// Calls `send` for every member at positions `from..to` (clamped to the
    /// list) that has not been fenced off, and returns how many it called.
    ///
    /// The fence's read side is held for the whole call, so callers keep
    /// ranges small (a batch, not a whole big channel): a concurrent
    /// [`Members::fence`] waits for the batch to finish.
    pub fn deliver(&self, from: usize, to: usize, mut send: impl FnMut(&S)) -> usize {
        let to = to.min(self.members.len());
        let batch = self.members.get(from..to).unwrap_or_default();
        // A poisoned lock only means a `send` panicked in another batch;
        // the set itself is always consistent.
        let left = self.left.read().unwrap_or_else(PoisonError::into_inner);
        if left.is_empty() {
            batch.iter().for_each(&mut send);
            batch.len()
        } else {
            let mut sent = 0;
            for member in batch.iter().filter(|member| !left.contains(member)) {
                send(member);
                sent += 1;
            }
            sent
        }
    }

    /// Excludes `member` from every later [`Members::deliver`] on this
    /// snapshot. Blocks until the deliveries running right now finish their
    /// current batch (never for a whole fan-out: a delivery that yielded
    /// the scheduler holds no lock).
    pub fn fence(&self, member: S) {
        self.left
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(member);
    }
}

/// Whom a publish sends to (see [`Engine::targets`]).
pub enum Targets<'a, S> {
    /// A channel of at most the asked number of members: the members
    /// themselves, to send to while the caller still holds the engine (its
    /// lock then orders the sends with every membership change, so no
    /// snapshot, reference count or fence is needed).
    Few(&'a [S]),
    /// A bigger channel: a snapshot to send from after releasing the engine.
    Many(Snapshot<S>),
}

/// Result of a successful [`Engine::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// `false` when the subscriber already was on the channel (subscribing is
    /// idempotent).
    pub added: bool,
    /// The channel's connection state at the moment of subscribing.
    pub connected: bool,
}

/// Result of an [`Engine::unsubscribe`] that removed a subscription.
pub struct Unsubscribed<C, S, D> {
    /// The subscriber's data, handed back when this was its last channel (the
    /// caller should e.g. drop its monitor).
    pub released: Option<D>,
    /// The channel's key, when the channel had no subscriber left and was
    /// marked as watched (see [`Engine::set_watched`]).
    pub emptied: Option<C>,
    /// Snapshots of this channel that deliveries still hold and that may
    /// list the subscriber. Before telling the subscriber it is out, the
    /// caller must call [`Members::fence`] on each, *after* releasing the
    /// engine's lock (fencing waits for a running batch of sends). Empty,
    /// and allocation-free, when no delivery was in flight.
    pub in_flight: Vec<Snapshot<S>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError<E> {
    /// The caller's `register` callback refused the new subscriber.
    Register(E),
    /// The engine cannot hold more distinct channels (2³² − 1).
    TooManyChannels,
    /// An internal inconsistency was detected (an engine bug); nothing
    /// changed.
    Internal,
}

/// Sizes of the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub channels: usize,
    pub subscribers: usize,
    pub subscriptions: usize,
}

struct Channel<C, S> {
    key: C,
    /// Dense list of subscribers; `positions` maps each to its index so that
    /// removal is a swap-remove, O(1) on any channel size.
    members: Vec<S>,
    positions: SmoothMap<S, u32>,
    connected: bool,
    watched: bool,
    /// Cached copy of `members`; dropped on every membership change.
    snapshot: Option<Snapshot<S>>,
    /// Older snapshots that deliveries were still using when membership
    /// changed; an unsubscribe must fence them. Dead entries are pruned on
    /// every change, so the list is bounded by the number of deliveries in
    /// flight on this channel.
    retired: Vec<Weak<Members<S>>>,
}

struct Subscriber<D> {
    channels: ChannelSet,
    data: D,
}

/// The subscription table. See the crate documentation.
///
/// No operation stalls on the table's size: the maps grow shard by shard
/// (see [`SmoothMap`]), the channel slab grows in fixed-size chunks, and a
/// subscriber on very many channels can be removed in steps
/// ([`Engine::detach_subscriber`]).
pub struct Engine<C, S, D> {
    index: SmoothMap<C, ChannelId>,
    channels: Slab<Channel<C, S>>,
    free_ids: Vec<ChannelId>,
    subscribers: SmoothMap<S, Subscriber<D>>,
    subscriptions: usize,
}

/// A subscriber taken out of the table whose channel memberships are still
/// to be removed, with [`Engine::remove_memberships`], in steps of any size.
pub struct Detached<D> {
    pub data: D,
    channels: ChannelSet,
}

impl<D> Detached<D> {
    /// How many memberships are left to remove.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The channels to pass to [`Engine::remove_memberships`]. One pass
    /// over the set: do it without holding the engine's lock.
    pub fn into_channels(self) -> (D, Vec<ChannelRef>) {
        let ids = self
            .channels
            .into_ids()
            .into_iter()
            .map(ChannelRef)
            .collect();
        (self.data, ids)
    }
}

/// A channel of a detached subscriber (see [`Detached::into_channels`]).
/// Stays valid while the subscriber is still a member: a channel with a
/// member is never dropped, so its id is not reused meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRef(ChannelId);

/// Channel slots in chunks of fixed size, so growing the slab never copies
/// more than one chunk.
struct Slab<T> {
    chunks: Vec<Vec<Option<T>>>,
    len: usize,
}

const SLAB_CHUNK: usize = 1_024;

impl<T> Slab<T> {
    const fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }

    fn slot(&self, id: ChannelId) -> Option<&Option<T>> {
        let id = id as usize;
        self.chunks.get(id / SLAB_CHUNK)?.get(id % SLAB_CHUNK)
    }

    fn slot_mut(&mut self, id: ChannelId) -> Option<&mut Option<T>> {
        let id = id as usize;
        self.chunks
            .get_mut(id / SLAB_CHUNK)?
            .get_mut(id % SLAB_CHUNK)
    }

    /// Appends a slot; `None` when ids are exhausted.
    fn push(&mut self, value: T) -> Option<ChannelId> {
        let id = ChannelId::try_from(self.len)
            .ok()
            .filter(|&id| id != ChannelId::MAX)?;
        if self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.len() >= SLAB_CHUNK)
        {
            self.chunks.push(Vec::new());
        }
        self.chunks.last_mut()?.push(Some(value));
        self.len += 1;
        Some(id)
    }
}

impl<C, S, D> Default for Engine<C, S, D>
where
    C: Hash + Eq + Clone,
    S: Hash + Eq + Copy,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<C, S, D> Engine<C, S, D>
where
    C: Hash + Eq + Clone,
    S: Hash + Eq + Copy,
{
    pub fn new() -> Self {
        Engine {
            index: SmoothMap::default(),
            channels: Slab::new(),
            free_ids: Vec::new(),
            subscribers: SmoothMap::default(),
            subscriptions: 0,
        }
    }

    /// Subscribes `subscriber` to the channel `key`.
    ///
    /// `make_key` builds the owned key and runs only when the channel is new;
    /// `register` builds the subscriber's data and runs only when the
    /// subscriber is new to the engine. If `register` fails nothing changes.
    pub fn subscribe<Q, E>(
        &mut self,
        key: &Q,
        make_key: impl FnOnce() -> C,
        subscriber: S,
        register: impl FnOnce() -> Result<D, E>,
    ) -> Result<Subscribed, SubscribeError<E>>
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (id, created) = match self.index.get(key) {
            Some(&id) => (id, false),
            None => match self.create_channel(make_key()) {
                Some(id) => (id, true),
                None => return Err(SubscribeError::TooManyChannels),
            },
        };
        let Some(channel) = self.channel(id) else {
            return Err(SubscribeError::Internal);
        };
        let connected = channel.connected;
        if channel.positions.contains_key(&subscriber) {
            return Ok(Subscribed {
                added: false,
                connected,
            });
        }
        match self.subscribers.get_mut(&subscriber) {
            Some(entry) => entry.channels.insert(id),
            None => match register() {
                Ok(data) => {
                    let mut channels = ChannelSet::default();
                    channels.insert(id);
                    self.subscribers
                        .insert(subscriber, Subscriber { channels, data });
                }
                Err(error) => {
                    if created {
                        self.drop_channel(id);
                        self.shrink_if_sparse();
                    }
                    return Err(SubscribeError::Register(error));
                }
            },
        }
        let Some(channel) = self.channel_mut(id) else {
            return Err(SubscribeError::Internal);
        };
        // A channel never exceeds u32::MAX members: each member is a distinct
        // subscriber and ids are at most pointer-sized process ids; saturate
        // anyway rather than wrap.
        let position = u32::try_from(channel.members.len()).unwrap_or(u32::MAX);
        channel.positions.insert(subscriber, position);
        channel.members.push(subscriber);
        channel.invalidate();
        self.subscriptions += 1;
        Ok(Subscribed {
            added: true,
            connected,
        })
    }

    /// Removes `subscriber` from the channel `key`. `None` when it was not
    /// subscribed there. See [`Unsubscribed::in_flight`] for what the
    /// caller must do before reporting success.
    pub fn unsubscribe<Q>(&mut self, key: &Q, subscriber: S) -> Option<Unsubscribed<C, S, D>>
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = *self.index.get(key)?;
        if !self.remove_member(id, subscriber) {
            return None;
        }
        // `remove_member` retired the cached snapshot if a delivery held it,
        // so every snapshot still in use is in `retired` now.
        let in_flight = self
            .channel(id)
            .map(|channel| channel.retired.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        let released = match self.subscribers.get_mut(&subscriber) {
            Some(entry) => {
                entry.channels.remove(id);
                if entry.channels.is_empty() {
                    self.subscribers.remove(&subscriber).map(|entry| entry.data)
                } else {
                    None
                }
            }
            None => None,
        };
        let emptied = self.drop_if_empty(id);
        self.shrink_if_sparse();
        Some(Unsubscribed {
            released,
            emptied,
            in_flight,
        })
    }

    /// Takes a subscriber (it died) out of the table in O(1), leaving its
    /// memberships to [`Engine::remove_memberships`], so that a subscriber
    /// on a million channels is cleaned up in bounded steps instead of one
    /// long call. Until then its channels still list it (sends to a dead
    /// process are dropped by the VM). `None` when the engine did not know
    /// it.
    pub fn detach_subscriber(&mut self, subscriber: S) -> Option<Detached<D>> {
        let entry = self.subscribers.remove(&subscriber)?;
        Some(Detached {
            data: entry.data,
            channels: entry.channels,
        })
    }

    /// Removes a detached subscriber from `channels`; returns the watched
    /// channels that lost their last subscriber.
    pub fn remove_memberships(&mut self, subscriber: S, channels: &[ChannelRef]) -> Vec<C> {
        let mut emptied = Vec::new();
        for &ChannelRef(id) in channels {
            self.remove_member(id, subscriber);
            emptied.extend(self.drop_if_empty(id));
        }
        self.shrink_if_sparse();
        emptied
    }

    /// Channel, subscriber and subscription counts, in O(1).
    pub fn counts(&self) -> Counts {
        Counts {
            channels: self.index.len(),
            subscribers: self.subscribers.len(),
            subscriptions: self.subscriptions,
        }
    }

    /// The channel's subscribers, as a snapshot that stays valid (and
    /// unchanged) after the engine moves on. `None` for an unknown channel.
    pub fn snapshot<Q>(&mut self, key: &Q) -> Option<Snapshot<S>>
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = *self.index.get(key)?;
        Some(self.channel_mut(id)?.snapshot())
    }

    /// The channel's subscribers for one publish: borrowed as they are when
    /// there are at most `few` of them, else as a snapshot. `None` for an
    /// unknown channel.
    pub fn targets<Q>(&mut self, key: &Q, few: usize) -> Option<Targets<'_, S>>
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = *self.index.get(key)?;
        let channel = self.channel_mut(id)?;
        Some(if channel.members.len() <= few {
            Targets::Few(&channel.members)
        } else {
            Targets::Many(channel.snapshot())
        })
    }

    /// Sets the channel's connection state. When the state changed, returns
    /// the subscribers to tell, taken atomically with the change; `None`
    /// when it was already so, or for an unknown channel (a channel exists
    /// only while it has subscribers).
    pub fn set_connected<Q>(&mut self, key: &Q, connected: bool) -> Option<Snapshot<S>>
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = *self.index.get(key)?;
        let channel = self.channel_mut(id)?;
        if channel.connected == connected {
            return None;
        }
        channel.connected = connected;
        Some(channel.snapshot())
    }

    /// Marks a channel whose emptying the caller wants to hear about (its
    /// key comes back in [`Unsubscribed::emptied`] / [`Engine::remove_memberships`]).
    /// Returns `false` for an unknown channel.
    pub fn set_watched<Q>(&mut self, key: &Q, watched: bool) -> bool
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = self.index.get(key).copied();
        match id.and_then(|id| self.channel_mut(id)) {
            Some(channel) => {
                channel.watched = watched;
                true
            }
            None => false,
        }
    }

    /// The watched channels among the table slots `from..from + max`, and
    /// the slot to go on from (`None` past the last one). A channel keeps
    /// its slot while it exists, so walking every page lists each channel
    /// that existed throughout the walk exactly once, while one call looks
    /// at no more than `max` slots.
    pub fn watched_page(&self, from: usize, max: usize) -> (Vec<C>, Option<usize>) {
        let end = from.saturating_add(max).min(self.channels.len);
        let keys = (from..end)
            .filter_map(|id| self.channel(ChannelId::try_from(id).ok()?))
            .filter(|channel| channel.watched)
            .map(|channel| channel.key.clone())
            .collect();
        (keys, (end < self.channels.len).then_some(end))
    }

    pub fn is_connected<Q>(&self, key: &Q) -> bool
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(key).is_some_and(|channel| channel.connected)
    }

    pub fn is_subscribed<Q>(&self, key: &Q, subscriber: S) -> bool
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(key)
            .is_some_and(|channel| channel.positions.contains_key(&subscriber))
    }

    pub fn subscriber_count<Q>(&self, key: &Q) -> usize
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(key).map_or(0, |channel| channel.members.len())
    }

    fn lookup<Q>(&self, key: &Q) -> Option<&Channel<C, S>>
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.channel(*self.index.get(key)?)
    }

    /// `None` when every channel id is taken.
    fn create_channel(&mut self, key: C) -> Option<ChannelId> {
        let channel = Channel {
            key: key.clone(),
            members: Vec::new(),
            positions: SmoothMap::default(),
            connected: false,
            watched: false,
            snapshot: None,
            retired: Vec::new(),
        };
        let id = match self.free_ids.pop() {
            Some(id) => match self.channels.slot_mut(id) {
                Some(slot) => {
                    *slot = Some(channel);
                    id
                }
                // A free id past the slab's end cannot happen; forget it.
                None => return self.create_channel(channel.key),
            },
            None => self.channels.push(channel)?,
        };
        self.index.insert(key, id);
        Some(id)
    }

    fn drop_channel(&mut self, id: ChannelId) -> Option<Channel<C, S>> {
        let channel = self.channels.slot_mut(id)?.take()?;
        self.index.remove(&channel.key);
        self.free_ids.push(id);
        Some(channel)
    }

    /// Drops the channel if it has no member; returns its key when the
    /// caller asked to hear about it.
    fn drop_if_empty(&mut self, id: ChannelId) -> Option<C> {
        if !self.channel(id)?.members.is_empty() {
            return None;
        }
        let channel = self.drop_channel(id)?;
        channel.watched.then_some(channel.key)
    }

    /// Gives memory back after mass departures, so the table's footprint
    /// follows its contents. Amortized O(1): a table shrinks only after it
    /// lost three quarters of its entries.
    fn shrink_if_sparse(&mut self) {
        if self.index.is_empty() {
            // The slab cannot be compacted while ids are live, but once the
            // last channel is gone it is all free.
            self.channels = Slab::new();
            self.free_ids = Vec::new();
        }
        if self.free_ids.len() * 4 <= self.free_ids.capacity() {
            self.free_ids.shrink_to(self.free_ids.len() * 2);
        }
    }

    fn remove_member(&mut self, id: ChannelId, subscriber: S) -> bool {
        let Some(channel) = self.channel_mut(id) else {
            return false;
        };
        let Some(position) = channel.positions.remove(&subscriber) else {
            return false;
        };
        let position = position as usize;
        if position < channel.members.len() {
            channel.members.swap_remove(position);
            if let Some(&moved) = channel.members.get(position) {
                channel.positions.insert(moved, position as u32);
            }
        }
        channel.invalidate();
        // Give memory back once a big channel has mostly emptied.
        if channel.members.len() * 4 <= channel.members.capacity() {
            channel.members.shrink_to(channel.members.len() * 2);
        }
        self.subscriptions = self.subscriptions.saturating_sub(1);
        true
    }

    // Ids come only from `index` and from subscribers' channel sets, which
    // are kept in step with the slab; a missing slot would be an engine bug,
    // and callers treat it as an unknown channel rather than panic.
    fn channel(&self, id: ChannelId) -> Option<&Channel<C, S>> {
        self.channels.slot(id)?.as_ref()
    }

    fn channel_mut(&mut self, id: ChannelId) -> Option<&mut Channel<C, S>> {
        self.channels.slot_mut(id)?.as_mut()
    }
}

impl<C, S: Hash + Eq + Copy> Channel<C, S> {
    fn snapshot(&mut self) -> Snapshot<S> {
        if let Some(snapshot) = &self.snapshot {
            return Arc::clone(snapshot);
        }
        let snapshot = Arc::new(Members::new(&self.members));
        self.snapshot = Some(Arc::clone(&snapshot));
        snapshot
    }

    /// Membership changed: drop the cached snapshot, remembering it if a
    /// delivery still uses it. Clones of a snapshot are only made under the
    /// engine's lock (here, from the cache), so a count of one means no
    /// delivery has it and none can get it any more.
    fn invalidate(&mut self) {
        self.retired.retain(|old| old.strong_count() > 0);
        if let Some(old) = self.snapshot.take() {
            if Arc::strong_count(&old) > 1 {
                self.retired.push(Arc::downgrade(&old));
            }
        }
        if self.retired.is_empty() && self.retired.capacity() > 0 {
            self.retired = Vec::new();
        }
    }
}

#[cfg(test)]
mod inspect;
#[cfg(test)]
mod tests;
