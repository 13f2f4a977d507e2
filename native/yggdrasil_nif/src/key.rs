//! Channel identity as the engine sees it.
//!
//! A channel is identified by its whole term (the `%Yggdrasil.Channel{}`
//! with `metadata: nil`), compared with `=:=`. The VM's internal hash only
//! picks the bucket; equality is always checked on the terms themselves, so
//! two channels whose hashes collide never share deliveries.

use rustler::sys::{enif_alloc_env, enif_free_env, enif_is_identical, enif_make_copy};
use rustler::sys::{ErlNifEnv, ErlNifTerm};
use rustler::{Env, Term};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Salt for the VM's internal hash; any constant works.
const HASH_SALT: u64 = 0x5967_6764_7261_7369;

/// A channel term looked up during one NIF call. The lifetime is the call's
/// environment (the `'a` of the `Term<'a>` it came from), so the compiler
/// keeps it from outliving the call. Stored keys hold a `TermKey<'static>`
/// whose term lives in a slab instead (see [`ChannelKey`]).
#[derive(Clone, Copy)]
pub struct TermKey<'a> {
    hash: u64,
    term: ErlNifTerm,
    env: PhantomData<&'a ()>,
}

impl<'a> TermKey<'a> {
    pub fn new(term: Term<'a>) -> Self {
        TermKey {
            hash: bucket_hash(term),
            term: term.as_c_arg(),
            env: PhantomData,
        }
    }
}

mod atoms {
    rustler::atoms! { name }
}

/// The hash only picks a bucket, so it may look at part of the term. For a
/// map (the `%Yggdrasil.Channel{}` every API call passes) it is the `:name`
/// value alone, which is what tells channels apart in practice: hashing the
/// whole seven-field struct was the top cost of a one-subscriber publish
/// (`docs/performance.md`). Equality still compares the whole terms, so
/// channels that differ only in another field share a bucket, never
/// deliveries.
fn bucket_hash(term: Term<'_>) -> u64 {
    if term.is_map() {
        if let Ok(name) = term.map_get(atoms::name()) {
            return name.hash_internal(HASH_SALT);
        }
    }
    term.hash_internal(HASH_SALT)
}

impl Hash for TermKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for TermKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        // SAFETY: both terms are alive: one belongs to the running call, the
        // other to a `ChannelKey` whose slab the engine keeps alive while it is
        // reachable. `enif_is_identical` only reads them.
        self.hash == other.hash && unsafe { enif_is_identical(self.term, other.term) } != 0
    }
}

impl Eq for TermKey<'_> {}

/// A process-independent environment shared by up to [`SLAB_KEYS`] stored
/// channel terms. An environment carries a few KB of fixed VM overhead
/// (`docs/performance.md`), so keys share them; a slab is freed when its
/// last key goes.
struct Slab {
    env: *mut ErlNifEnv,
    /// Live keys stored here.
    keys: AtomicUsize,
}

// SAFETY: terms are only ever appended to a slab (under `CURRENT_SLAB`'s
// lock, one writer at a time); appending allocates new heap fragments and
// never moves or changes terms already there, so readers of older terms
// (hash, identity comparison, copying out) need no lock. The environment is
// freed exactly once, when the last `Arc<Slab>` goes.
unsafe impl Send for Slab {}
unsafe impl Sync for Slab {}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: `env` came from `enif_alloc_env` and is freed only here.
        unsafe { enif_free_env(self.env) }
    }
}

/// Keys per slab: with 32, the environment overhead is ~85 bytes per key,
/// and a slab pinned by one long-lived key holds at most 31 dead copies.
const SLAB_KEYS: usize = 32;

/// The slab new keys go to, and how many it holds.
static CURRENT_SLAB: Mutex<Option<(Arc<Slab>, usize)>> = Mutex::new(None);

/// A channel term's place in a slab, so the engine can keep it as a key
/// after the call that created it has returned: one per stored term, shared
/// by the key's clones, counted in the slab.
struct StoredTerm {
    // Keeps the slab, hence the term's memory, alive.
    slab: Arc<Slab>,
}

impl Drop for StoredTerm {
    fn drop(&mut self) {
        // The last key of the current slab is going: let the slab go too, so
        // an engine without channels holds no environment at all. (`store`
        // counts a key in under the same lock, so the second check is exact.)
        if self.slab.keys.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut current = CURRENT_SLAB.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((slab, _)) = current.as_ref() {
                if Arc::ptr_eq(slab, &self.slab) && slab.keys.load(Ordering::Acquire) == 0 {
                    *current = None;
                }
            }
        }
    }
}

/// The owned channel key held by the engine; cloning is a reference count.
/// Hash and term are kept inline, so that a lookup compares the term
/// without first loading the shared `StoredTerm` (one cache miss less per
/// publish among many channels), and growing the engine's tables never
/// follows a pointer.
#[derive(Clone)]
pub struct ChannelKey {
    // `'static` because the term belongs to no call: it lives as long as
    // the slab of `_stored`, and is only lent out borrowed from this key.
    key: TermKey<'static>,
    // Held, never read: keeps the term's slab alive and counted.
    _stored: Arc<StoredTerm>,
}

impl ChannelKey {
    /// Copies the looked-up term into the current slab.
    pub fn store(key: &TermKey<'_>) -> Self {
        let mut current = CURRENT_SLAB.lock().unwrap_or_else(PoisonError::into_inner);
        let slab = match current.as_mut() {
            Some((slab, held)) if *held < SLAB_KEYS => {
                *held += 1;
                Arc::clone(slab)
            }
            _ => {
                // SAFETY: a fresh process-independent environment.
                let slab = Arc::new(Slab {
                    env: unsafe { enif_alloc_env() },
                    keys: AtomicUsize::new(0),
                });
                *current = Some((Arc::clone(&slab), 1));
                slab
            }
        };
        slab.keys.fetch_add(1, Ordering::AcqRel);
        // SAFETY: a deep copy of a live term into the slab, while holding
        // the lock that makes this the slab's only writer; the hash of a
        // copy equals the original's.
        let term = unsafe { enif_make_copy(slab.env, key.term) };
        drop(current);
        ChannelKey {
            key: TermKey {
                hash: key.hash,
                term,
                env: PhantomData,
            },
            _stored: Arc::new(StoredTerm { slab }),
        }
    }

    /// The channel term, copied into `env` (e.g. to send it).
    pub fn to_term<'a>(&self, env: Env<'a>) -> Term<'a> {
        // SAFETY: the stored term is alive while `self` (and so its slab) is.
        unsafe { Term::new(env, enif_make_copy(env.as_c_arg(), self.key.term)) }
    }
}

impl<'a> Borrow<TermKey<'a>> for ChannelKey {
    fn borrow(&self) -> &TermKey<'a> {
        &self.key
    }
}

impl Hash for ChannelKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must equal `TermKey`'s hash (the `Borrow` contract).
        state.write_u64(self.key.hash);
    }
}

impl PartialEq for ChannelKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for ChannelKey {}
