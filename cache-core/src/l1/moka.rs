//! L1's engine: a `moka::sync::Cache` (TinyLFU admission, LRU eviction)
//! with the least per-read work moka allows.
//!
//! * The key is a SHA-256 digest, already uniform: [`DigestHasher`] passes
//!   64 of its bits through instead of running SipHash over it.
//! * No per-entry `Expiry` and no TTL: deadlines live in the entries and
//!   are checked on read (`l1/mod.rs`), so moka keeps no timer wheel and
//!   writes no timestamps beyond its access order.
//! * No eviction listener, no invalidation predicates: nothing makes a
//!   read take a lock or consult a registry.
//!
//! What remains per hit is moka's own bookkeeping: a clock read, the table
//! probe, and a read record pushed to a bounded channel (dropped when the
//! channel is full) that feeds the frequency sketch behind TinyLFU, so a
//! flood of one-off keys cannot push out keys that are read again.

use std::hash::{BuildHasherDefault, Hasher};

use moka::sync::Cache;

use super::Entry;
use crate::KeyHash;

/// Passes a [`KeyHash`]'s bits through as the hash: `KeyHash` hashes as one
/// `write_u128` of its first 16 digest bytes, and a digest needs no mixing.
/// Bytes written any other way are folded in, so the hasher stays a valid
/// (if slower) `Hasher` for anything else.
#[derive(Default, Clone, Copy)]
pub(super) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        // 64 uniform bits: all moka uses (segment, bucket and sketch
        // indices are taken from different bits of them).
        self.0 = n as u64;
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

type Map = Cache<KeyHash, Entry, BuildHasherDefault<DigestHasher>>;

pub(super) struct Engine(Map);

impl Engine {
    pub(super) fn new(capacity: u64) -> Self {
        Self(
            Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(BuildHasherDefault::default()),
        )
    }

    #[inline]
    pub(super) fn get(&self, hash: &KeyHash) -> Option<Entry> {
        self.0.get(hash)
    }

    pub(super) fn insert(&self, hash: KeyHash, entry: Entry) {
        self.0.insert(hash, entry);
    }

    pub(super) fn remove(&self, hash: &KeyHash) {
        self.0.invalidate(hash);
    }

    /// Every entry written before this call is unreadable once it returns
    /// (moka marks the cache "valid after now": an entry's write time is
    /// read before it is put in the map, so anything already in the map
    /// was stamped earlier); the memory is freed by moka's maintenance.
    pub(super) fn clear(&self) {
        self.0.invalidate_all();
        self.0.run_pending_tasks();
    }

    /// Drops the entries matching `predicate`; how many. An entry replaced
    /// between the scan and its removal may be dropped too: callers that
    /// must not lose a fill hold the fill lock (invalidation), the sweep
    /// only costs such a fill one reload.
    pub(super) fn remove_if(&self, predicate: impl Fn(&Entry) -> bool) -> usize {
        let doomed: Vec<_> = self
            .0
            .iter()
            .filter(|(_, entry)| predicate(entry))
            .map(|(hash, _)| hash)
            .collect();
        doomed
            .iter()
            .filter(|hash| self.0.remove(&***hash).is_some())
            .count()
    }

    /// Entries held, after moka has applied pending writes and evictions.
    pub(super) fn len(&self) -> u64 {
        self.0.run_pending_tasks();
        self.0.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hash};

    use super::*;

    #[test]
    fn digest_hasher_passes_the_digest_through() {
        let build = BuildHasherDefault::<DigestHasher>::default();
        let a = KeyHash::from_bytes([1; 32]);
        let mut b = [1; 32];
        b[0] = 2;
        let b = KeyHash::from_bytes(b);
        assert_eq!(build.hash_one(a), build.hash_one(a));
        assert_ne!(build.hash_one(a), build.hash_one(b));
        // The bytes beyond the first 16 do not take part (`KeyHash`'s own
        // `Hash`), and no mixing is spent on the ones that do.
        let mut c = [1; 32];
        c[31] = 9;
        assert_eq!(build.hash_one(a), build.hash_one(KeyHash::from_bytes(c)));
        let mut bytes = [0; 32];
        bytes[..8].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
        let mut h = DigestHasher::default();
        KeyHash::from_bytes(bytes).hash(&mut h);
        assert_eq!(h.finish(), 0x0123_4567_89ab_cdef);
    }
}
