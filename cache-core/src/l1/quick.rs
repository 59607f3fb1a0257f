//! L1's opt-in engine (cargo feature `l1-quick-cache`): `quick_cache`
//! (S3-FIFO). A hit is a read lock (per-thread slots with `sharded-lock`,
//! so readers on different cores share no lock word), a table probe and,
//! until it saturates, a relaxed counter bump. S3-FIFO's small probation
//! queue keeps what TinyLFU keeps in the default engine: a flood of
//! one-off keys does not push out keys that are read again.

use std::cell::Cell;

use quick_cache::sync::Cache;

use super::Entry;
use crate::KeyHash;

pub(super) struct Engine(Cache<KeyHash, Entry>);

impl Engine {
    pub(super) fn new(capacity: u64) -> Self {
        Self(Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)))
    }

    #[inline]
    pub(super) fn get(&self, hash: &KeyHash) -> Option<Entry> {
        self.0.get(hash)
    }

    pub(super) fn insert(&self, hash: KeyHash, entry: Entry) {
        self.0.insert(hash, entry);
    }

    pub(super) fn remove(&self, hash: &KeyHash) {
        self.0.remove(hash);
    }

    pub(super) fn clear(&self) {
        self.0.clear();
    }

    /// Drops the entries matching `predicate`, shard by shard under the
    /// shard's write lock; how many.
    pub(super) fn remove_if(&self, predicate: impl Fn(&Entry) -> bool) -> usize {
        let dropped = Cell::new(0usize);
        self.0.retain(|_, entry| {
            let doomed = predicate(entry);
            dropped.set(dropped.get() + usize::from(doomed));
            !doomed
        });
        dropped.get()
    }

    pub(super) fn len(&self) -> u64 {
        u64::try_from(self.0.len()).unwrap_or(u64::MAX)
    }
}
