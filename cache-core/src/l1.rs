//! The in-process tier: a bounded moka cache of `hash -> Found | NotFound`.
//!
//! Each entry's lifetime is decided when it is written: the L1 TTL, cut
//! short by the record's `expires_at`, or the negative TTL for unknown keys.
//! Expiry is still re-checked on every read against the clock, so the
//! lifetime is only about memory, never about correctness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::{Clock, KeyHash, KeyRecord};

/// What one tier knows about a hash.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Found(Arc<KeyRecord>),
    NotFound,
}

struct EntryExpiry {
    ttl: Duration,
    negative_ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl EntryExpiry {
    fn lifetime(&self, entry: &Entry) -> Duration {
        match entry {
            Entry::NotFound => self.negative_ttl,
            Entry::Found(record) => lifetime_until(record, self.ttl, &*self.clock),
        }
    }
}

/// `ttl`, shortened so the entry never outlives the record's `expires_at`.
pub(crate) fn lifetime_until(record: &KeyRecord, ttl: Duration, clock: &dyn Clock) -> Duration {
    match record.expires_at {
        None => ttl,
        Some(at) => {
            let left = at - clock.now();
            if left.is_negative() {
                Duration::ZERO
            } else {
                ttl.min(left.unsigned_abs())
            }
        }
    }
}

impl Expiry<KeyHash, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &KeyHash, value: &Entry, _: Instant) -> Option<Duration> {
        Some(self.lifetime(value))
    }

    // moka keeps the old deadline on update by default; a refill must start
    // a fresh lifetime computed from the new value.
    fn expire_after_update(
        &self,
        _: &KeyHash,
        value: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }
}

pub(crate) struct L1 {
    cache: Cache<KeyHash, Entry>,
}

impl L1 {
    pub(crate) fn new(
        capacity: u64,
        ttl: Duration,
        negative_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .expire_after(EntryExpiry {
                ttl,
                negative_ttl,
                clock,
            })
            .build();
        Self { cache }
    }

    #[inline]
    pub(crate) fn get(&self, hash: &KeyHash) -> Option<Entry> {
        self.cache.get(hash)
    }

    pub(crate) fn insert(&self, hash: KeyHash, entry: Entry) {
        self.cache.insert(hash, entry);
    }

    pub(crate) fn remove(&self, hash: &KeyHash) {
        self.cache.invalidate(hash);
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs moka's deferred maintenance so counts are exact (tests, health).
    pub(crate) fn sync(&self) {
        self.cache.run_pending_tasks();
    }

    /// Counts negative entries: a full scan, so for health checks only.
    pub(crate) fn negative_count(&self) -> u64 {
        let n = self
            .cache
            .iter()
            .filter(|(_, v)| matches!(v, Entry::NotFound))
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}
