//! The set of channels one subscriber is on.
//!
//! Most subscribers are on a handful of channels, where a small vector beats
//! a hash set on both memory and speed; past a threshold it becomes a
//! [`SmoothMap`] so that a subscriber on thousands of channels still
//! unsubscribes in O(1), and one on millions never waits for a full rehash.

use crate::smooth::SmoothMap;

const SMALL_LIMIT: usize = 16;

pub(crate) enum ChannelSet {
    Small(Vec<u32>),
    Large(SmoothMap<u32, ()>),
}

impl Default for ChannelSet {
    fn default() -> Self {
        ChannelSet::Small(Vec::new())
    }
}

impl ChannelSet {
    /// Inserts `id`; the caller guarantees it is not present yet.
    pub(crate) fn insert(&mut self, id: u32) {
        match self {
            ChannelSet::Small(ids) if ids.len() < SMALL_LIMIT => ids.push(id),
            ChannelSet::Small(ids) => {
                let mut set = SmoothMap::default();
                for old in ids.drain(..) {
                    set.insert(old, ());
                }
                set.insert(id, ());
                *self = ChannelSet::Large(set);
            }
            ChannelSet::Large(set) => {
                set.insert(id, ());
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u32) -> bool {
        match self {
            ChannelSet::Small(ids) => match ids.iter().position(|&other| other == id) {
                Some(position) => {
                    ids.swap_remove(position);
                    true
                }
                None => false,
            },
            ChannelSet::Large(set) => set.remove(&id).is_some(),
        }
    }

    /// All the ids, as a list (one pass over a large set).
    pub(crate) fn into_ids(self) -> Vec<u32> {
        match self {
            ChannelSet::Small(ids) => ids,
            ChannelSet::Large(set) => set.keys().copied().collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            ChannelSet::Small(ids) => ids.len(),
            ChannelSet::Large(set) => set.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            ChannelSet::Small(ids) => Box::new(ids.iter().copied()),
            ChannelSet::Large(set) => Box::new(set.keys().copied()),
        }
    }

    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            ChannelSet::Small(ids) => ids.capacity() * std::mem::size_of::<u32>(),
            ChannelSet::Large(set) => set.heap_bytes(),
        }
    }
}
