//! A hash map whose growth never stalls its caller.
//!
//! A plain hash table doubles by rehashing every entry in one go: at a few
//! hundred thousand entries that single insert takes milliseconds, and here
//! it would run inside a NIF call, on a scheduler, under the engine's lock.
//! `SmoothMap` stays one ordinary table while small and splits into
//! [`SHARDS`] tables (by a remix of the key's hash) once it reaches
//! [`SPLIT_AT`] entries, so any later growth rehashes one shard: about
//! 1/256 of the entries. The split itself moves `SPLIT_AT` entries once.

use rustc_hash::{FxBuildHasher, FxHashMap};
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

/// Number of shards of a large map.
pub(crate) const SHARDS: usize = 256;
/// A small map becomes sharded when it reaches this many entries.
pub(crate) const SPLIT_AT: usize = 8_192;
/// A sharded map becomes one table again below this many entries.
const MERGE_BELOW: usize = 1_024;

pub(crate) enum SmoothMap<K, V> {
    One(FxHashMap<K, V>),
    Many {
        shards: Box<[FxHashMap<K, V>]>,
        len: usize,
    },
}

impl<K, V> Default for SmoothMap<K, V> {
    fn default() -> Self {
        SmoothMap::One(FxHashMap::default())
    }
}

/// The shard of a hash. The tables inside a shard use the same hash's low
/// bits (bucket) and top 7 bits (tag); a multiply by another odd constant
/// makes the shard number independent of both.
#[inline]
fn slot(hash: u64) -> usize {
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

impl<K: Hash + Eq, V> SmoothMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            SmoothMap::One(map) => map.len(),
            SmoothMap::Many { len, .. } => *len,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmoothMap::One(map) => map.get(key),
            SmoothMap::Many { shards, .. } => {
                shards.get(slot(FxBuildHasher.hash_one(key)))?.get(key)
            }
        }
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmoothMap::One(map) => map.get_mut(key),
            SmoothMap::Many { shards, .. } => shards
                .get_mut(slot(FxBuildHasher.hash_one(key)))?
                .get_mut(key),
        }
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            SmoothMap::One(map) => {
                let old = map.insert(key, value);
                if map.len() >= SPLIT_AT {
                    self.split();
                }
                old
            }
            SmoothMap::Many { shards, len } => {
                let shard = shards.get_mut(slot(FxBuildHasher.hash_one(&key)))?;
                let old = shard.insert(key, value);
                if old.is_none() {
                    *len += 1;
                }
                old
            }
        }
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmoothMap::One(map) => {
                let old = map.remove(key);
                shrink(map);
                old
            }
            SmoothMap::Many { shards, len } => {
                let shard = shards.get_mut(slot(FxBuildHasher.hash_one(key)))?;
                let old = shard.remove(key);
                shrink(shard);
                if old.is_some() {
                    *len -= 1;
                    if *len < MERGE_BELOW {
                        self.merge();
                    }
                }
                old
            }
        }
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.tables().flat_map(FxHashMap::keys)
    }

    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.tables().flat_map(FxHashMap::values)
    }

    /// Approximate heap bytes of the tables (entries not included beyond
    /// their inline size).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        let shards = match self {
            SmoothMap::One(_) => 0,
            SmoothMap::Many { shards, .. } => shards.len() * std::mem::size_of::<FxHashMap<K, V>>(),
        };
        shards
            + self
                .tables()
                .map(|table| crate::inspect::map_bytes::<K, V>(table.capacity()))
                .sum::<usize>()
    }

    fn tables(&self) -> std::slice::Iter<'_, FxHashMap<K, V>> {
        match self {
            SmoothMap::One(map) => std::slice::from_ref(map).iter(),
            SmoothMap::Many { shards, .. } => shards.iter(),
        }
    }

    fn split(&mut self) {
        let SmoothMap::One(map) = std::mem::take(self) else {
            return;
        };
        let len = map.len();
        let mut shards: Box<[FxHashMap<K, V>]> =
            (0..SHARDS).map(|_| FxHashMap::default()).collect();
        for (key, value) in map {
            if let Some(shard) = shards.get_mut(slot(FxBuildHasher.hash_one(&key))) {
                shard.insert(key, value);
            }
        }
        *self = SmoothMap::Many { shards, len };
    }

    fn merge(&mut self) {
        let SmoothMap::Many { shards, len } = std::mem::take(self) else {
            return;
        };
        let mut map = FxHashMap::with_capacity_and_hasher(len, FxBuildHasher);
        for shard in shards.into_vec() {
            map.extend(shard);
        }
        *self = SmoothMap::One(map);
    }
}

/// Gives memory back after mass departures. Amortized O(1): a table
/// shrinks only after it lost three quarters of its entries.
fn shrink<K: Hash + Eq, V>(map: &mut FxHashMap<K, V>) {
    if map.len() * 4 <= map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn splits_merges_and_keeps_every_entry() {
        let mut map: SmoothMap<u64, u64> = SmoothMap::default();
        for i in 0..50_000 {
            assert_eq!(map.insert(i, i * 2), None);
        }
        assert!(matches!(map, SmoothMap::Many { .. }));
        assert_eq!(map.len(), 50_000);
        assert_eq!(map.insert(7, 1), Some(14));
        assert_eq!(map.len(), 50_000);
        for i in 0..50_000 {
            assert!(map.contains_key(&i));
        }
        assert_eq!(map.keys().count(), 50_000);
        for i in 0..49_500 {
            assert!(map.remove(&i).is_some());
        }
        assert!(map.remove(&1).is_none());
        assert!(matches!(map, SmoothMap::One(_)));
        assert_eq!(map.len(), 500);
        assert_eq!(map.get(&49_999), Some(&99_998));
        *map.get_mut(&49_999).unwrap() = 5;
        assert_eq!(map.values().filter(|&&v| v == 5).count(), 1);
        for i in 49_500..50_000 {
            map.remove(&i);
        }
        assert!(map.is_empty());
        assert_eq!(map.heap_bytes(), 0);
    }

    #[test]
    fn shards_are_balanced_for_sequential_keys() {
        let mut counts = [0usize; SHARDS];
        for key in 0..(SHARDS as u64 * 1_000) {
            counts[slot(FxBuildHasher.hash_one(key))] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 700 && *max < 1_300, "min {min} max {max}");
    }
}
