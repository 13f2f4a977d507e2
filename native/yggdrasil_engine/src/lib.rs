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
//! after the membership changed.

use rustc_hash::FxHashMap;
use std::borrow::Borrow;
use std::hash::Hash;
use std::mem::size_of;
use std::sync::Arc;

mod channel_set;
use channel_set::ChannelSet;

/// Dense id of a live channel: an index into the engine's channel slab.
type ChannelId = u32;

/// An immutable list of a channel's subscribers, cheap to clone and safe to
/// read without holding the engine.
pub type Snapshot<S> = Arc<[S]>;

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
#[derive(Debug, PartialEq, Eq)]
pub struct Unsubscribed<C, D> {
    /// The subscriber's data, handed back when this was its last channel (the
    /// caller should e.g. drop its monitor).
    pub released: Option<D>,
    /// The channel's key, when the channel had no subscriber left and was
    /// marked as watched (see [`Engine::set_watched`]).
    pub emptied: Option<C>,
}

/// Result of [`Engine::remove_subscriber`].
#[derive(Debug, PartialEq, Eq)]
pub struct Removed<C, D> {
    pub data: D,
    /// How many subscriptions were dropped.
    pub subscriptions: usize,
    /// Watched channels that lost their last subscriber.
    pub emptied: Vec<C>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError<E> {
    /// The caller's `register` callback refused the new subscriber.
    Register(E),
    /// The engine cannot hold more distinct channels (2³² − 1).
    TooManyChannels,
}

/// Counts and memory of the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub channels: usize,
    pub subscribers: usize,
    pub subscriptions: usize,
    /// Heap bytes held by the table's own structures (an estimate from the
    /// containers' capacities; keys' own heap data is not included).
    pub memory_bytes: usize,
}

struct Channel<C, S> {
    key: C,
    /// Dense list of subscribers; `positions` maps each to its index so that
    /// removal is a swap-remove, O(1) on any channel size.
    members: Vec<S>,
    positions: FxHashMap<S, u32>,
    connected: bool,
    watched: bool,
    /// Cached copy of `members`; dropped on every membership change.
    snapshot: Option<Snapshot<S>>,
}

struct Subscriber<D> {
    channels: ChannelSet,
    data: D,
}

/// The subscription table. See the crate documentation.
pub struct Engine<C, S, D> {
    index: FxHashMap<C, ChannelId>,
    channels: Vec<Option<Channel<C, S>>>,
    free_ids: Vec<ChannelId>,
    subscribers: FxHashMap<S, Subscriber<D>>,
    subscriptions: usize,
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
            index: FxHashMap::default(),
            channels: Vec::new(),
            free_ids: Vec::new(),
            subscribers: FxHashMap::default(),
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
        let connected = self.channel(id).connected;
        if self.channel(id).positions.contains_key(&subscriber) {
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
        let channel = self.channel_mut(id);
        // A channel never exceeds u32::MAX members: each member is a distinct
        // subscriber and ids are at most pointer-sized process ids; saturate
        // anyway rather than wrap.
        let position = u32::try_from(channel.members.len()).unwrap_or(u32::MAX);
        channel.positions.insert(subscriber, position);
        channel.members.push(subscriber);
        channel.snapshot = None;
        self.subscriptions += 1;
        Ok(Subscribed {
            added: true,
            connected,
        })
    }

    /// Removes `subscriber` from the channel `key`. `None` when it was not
    /// subscribed there.
    pub fn unsubscribe<Q>(&mut self, key: &Q, subscriber: S) -> Option<Unsubscribed<C, D>>
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = *self.index.get(key)?;
        if !self.remove_member(id, subscriber) {
            return None;
        }
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
        Some(Unsubscribed { released, emptied })
    }

    /// Removes `subscriber` from every channel (it died). `None` when the
    /// engine did not know it.
    pub fn remove_subscriber(&mut self, subscriber: S) -> Option<Removed<C, D>> {
        let entry = self.subscribers.remove(&subscriber)?;
        let mut emptied = Vec::new();
        let mut subscriptions = 0;
        for id in entry.channels.iter() {
            if self.remove_member(id, subscriber) {
                subscriptions += 1;
            }
            emptied.extend(self.drop_if_empty(id));
        }
        self.shrink_if_sparse();
        Some(Removed {
            data: entry.data,
            subscriptions,
            emptied,
        })
    }

    /// The channel's subscribers, as a snapshot that stays valid (and
    /// unchanged) after the engine moves on. `None` for an unknown channel.
    pub fn snapshot<Q>(&mut self, key: &Q) -> Option<Snapshot<S>>
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = *self.index.get(key)?;
        Some(self.snapshot_of(id))
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
        let channel = self.channel_mut(id);
        if channel.connected == connected {
            return None;
        }
        channel.connected = connected;
        Some(self.snapshot_of(id))
    }

    /// Marks a channel whose emptying the caller wants to hear about (its
    /// key comes back in [`Unsubscribed::emptied`] / [`Removed::emptied`]).
    /// Returns `false` for an unknown channel.
    pub fn set_watched<Q>(&mut self, key: &Q, watched: bool) -> bool
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.index.get(key) {
            Some(&id) => {
                self.channel_mut(id).watched = watched;
                true
            }
            None => false,
        }
    }

    pub fn is_connected<Q>(&self, key: &Q) -> bool
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index
            .get(key)
            .is_some_and(|&id| self.channel(id).connected)
    }

    pub fn is_subscribed<Q>(&self, key: &Q, subscriber: S) -> bool
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index
            .get(key)
            .is_some_and(|&id| self.channel(id).positions.contains_key(&subscriber))
    }

    pub fn subscriber_count<Q>(&self, key: &Q) -> usize
    where
        C: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index
            .get(key)
            .map_or(0, |&id| self.channel(id).members.len())
    }

    /// How many channels `subscriber` is on.
    pub fn channel_count_of(&self, subscriber: S) -> usize {
        self.subscribers
            .get(&subscriber)
            .map_or(0, |entry| entry.channels.len())
    }

    pub fn subscriber_data(&self, subscriber: S) -> Option<&D> {
        self.subscribers.get(&subscriber).map(|entry| &entry.data)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            channels: self.index.len(),
            subscribers: self.subscribers.len(),
            subscriptions: self.subscriptions,
            memory_bytes: self.memory_bytes(),
        }
    }

    fn memory_bytes(&self) -> usize {
        let mut bytes = map_bytes::<C, ChannelId>(self.index.capacity())
            + self.channels.capacity() * size_of::<Option<Channel<C, S>>>()
            + self.free_ids.capacity() * size_of::<ChannelId>()
            + map_bytes::<S, Subscriber<D>>(self.subscribers.capacity());
        for channel in self.channels.iter().flatten() {
            bytes += channel.members.capacity() * size_of::<S>()
                + map_bytes::<S, u32>(channel.positions.capacity())
                + channel
                    .snapshot
                    .as_ref()
                    .map_or(0, |s| 2 * size_of::<usize>() + s.len() * size_of::<S>());
        }
        for entry in self.subscribers.values() {
            bytes += entry.channels.heap_bytes();
        }
        bytes
    }

    /// `None` when every channel id is taken.
    fn create_channel(&mut self, key: C) -> Option<ChannelId> {
        let channel = Channel {
            key: key.clone(),
            members: Vec::new(),
            positions: FxHashMap::default(),
            connected: false,
            watched: false,
            snapshot: None,
        };
        let id = match self.free_ids.pop() {
            Some(id) => {
                if let Some(slot) = self.channels.get_mut(id as usize) {
                    *slot = Some(channel);
                }
                id
            }
            None => {
                let id = ChannelId::try_from(self.channels.len())
                    .ok()
                    .filter(|&id| id != ChannelId::MAX)?;
                self.channels.push(Some(channel));
                id
            }
        };
        self.index.insert(key, id);
        Some(id)
    }

    fn drop_channel(&mut self, id: ChannelId) -> Option<Channel<C, S>> {
        let channel = self.channels.get_mut(id as usize)?.take()?;
        self.index.remove(&channel.key);
        self.free_ids.push(id);
        Some(channel)
    }

    /// Drops the channel if it has no member; returns its key when the
    /// caller asked to hear about it.
    fn drop_if_empty(&mut self, id: ChannelId) -> Option<C> {
        if !self.channel(id).members.is_empty() {
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
            self.channels = Vec::new();
            self.free_ids = Vec::new();
        }
        shrink_map(&mut self.index);
        shrink_map(&mut self.subscribers);
    }

    fn remove_member(&mut self, id: ChannelId, subscriber: S) -> bool {
        let channel = self.channel_mut(id);
        let Some(position) = channel.positions.remove(&subscriber) else {
            return false;
        };
        let position = position as usize;
        channel.members.swap_remove(position);
        if let Some(&moved) = channel.members.get(position) {
            channel.positions.insert(moved, position as u32);
        }
        channel.snapshot = None;
        // Give memory back once a big channel has mostly emptied.
        if channel.members.len() * 4 <= channel.members.capacity() {
            channel.members.shrink_to(channel.members.len() * 2);
        }
        shrink_map(&mut channel.positions);
        self.subscriptions -= 1;
        true
    }

    fn snapshot_of(&mut self, id: ChannelId) -> Snapshot<S> {
        let channel = self.channel_mut(id);
        if let Some(snapshot) = &channel.snapshot {
            return Arc::clone(snapshot);
        }
        let snapshot: Snapshot<S> = Arc::from(channel.members.as_slice());
        channel.snapshot = Some(Arc::clone(&snapshot));
        snapshot
    }

    // Ids come only from `index` and from subscribers' channel sets, which
    // are kept in step with the slab, so a missing slot is an engine bug.
    fn channel(&self, id: ChannelId) -> &Channel<C, S> {
        match self.channels.get(id as usize) {
            Some(Some(channel)) => channel,
            _ => unreachable!("channel id {id} is not live"),
        }
    }

    fn channel_mut(&mut self, id: ChannelId) -> &mut Channel<C, S> {
        match self.channels.get_mut(id as usize) {
            Some(Some(channel)) => channel,
            _ => unreachable!("channel id {id} is not live"),
        }
    }
}

fn shrink_map<K: Hash + Eq, V>(map: &mut FxHashMap<K, V>) {
    if map.len() * 4 <= map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// Approximate heap bytes of a hashbrown table holding `capacity` entries:
/// buckets are 8/7 of the capacity, each an entry plus one control byte.
pub(crate) fn map_bytes<K, V>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    (capacity * 8 / 7 + 1) * (size_of::<(K, V)>() + 1)
}

#[cfg(test)]
mod tests;
