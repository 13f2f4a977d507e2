//! Test-only views into the engine: memory estimates and the one-call
//! removal of a subscriber that the NIF does in steps instead. Compiled for
//! `cargo test` only, so none of it costs the library anything.

use super::*;
use std::mem::size_of;

/// Result of [`Engine::remove_subscriber`].
#[derive(Debug, PartialEq, Eq)]
pub struct Removed<C, D> {
    pub data: D,
    /// How many subscriptions were dropped.
    pub subscriptions: usize,
    /// Watched channels that lost their last subscriber.
    pub emptied: Vec<C>,
}

impl<C, S, D> Engine<C, S, D>
where
    C: Hash + Eq + Clone,
    S: Hash + Eq + Copy,
{
    /// Removes `subscriber` from every channel (it died). `None` when the
    /// engine did not know it. No fencing: nothing can reach a dead process.
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

    /// How many channels `subscriber` is on.
    pub fn channel_count_of(&self, subscriber: S) -> usize {
        self.subscribers
            .get(&subscriber)
            .map_or(0, |entry| entry.channels.len())
    }

    pub fn subscriber_data(&self, subscriber: S) -> Option<&D> {
        self.subscribers.get(&subscriber).map(|entry| &entry.data)
    }

    /// Heap bytes held by the table's own structures (an estimate from the
    /// containers' capacities; keys' own heap data is not included).
    pub fn heap_bytes(&self) -> usize {
        let mut bytes = self.index.heap_bytes()
            + self.channels.heap_bytes()
            + self.free_ids.capacity() * size_of::<ChannelId>()
            + self.subscribers.heap_bytes();
        for channel in self.channels.iter() {
            bytes += channel.members.capacity() * size_of::<S>()
                + channel.positions.heap_bytes()
                + channel.retired.capacity() * size_of::<Weak<Members<S>>>()
                + channel.snapshot.as_ref().map_or(0, |s| s.heap_bytes());
        }
        for entry in self.subscribers.values() {
            bytes += entry.channels.heap_bytes();
        }
        bytes
    }
}

impl<S: Hash + Eq + Copy> Members<S> {
    fn heap_bytes(&self) -> usize {
        size_of::<Self>()
            + 2 * size_of::<usize>()
            + self.members.len() * size_of::<S>()
            // Never wait for a fence here: this runs under the engine's lock.
            + self
                .left
                .try_read()
                .map_or(0, |left| map_bytes::<S, ()>(left.capacity()))
    }
}

impl<T> Slab<T> {
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten().flatten()
    }

    fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * size_of::<Vec<Option<T>>>()
            + self
                .chunks
                .iter()
                .map(|chunk| chunk.capacity() * size_of::<Option<T>>())
                .sum::<usize>()
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
