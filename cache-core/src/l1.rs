//! The in-process tier: a bounded moka cache of `hash -> Found | NotFound`.
//!
//! Entries live `l1_ttl` (plus the stale-if-error window; a cache-wide TTL: per-entry expiry would add a
//! timer-wheel callback to every read, about a quarter of a moka `get`).
//! "Not found" entries carry their own shorter deadline, checked on read;
//! that read is off the hot path for valid keys. A record's `expires_at` is
//! judged on every read against the clock, and an expired record is dropped
//! from L1 the first time it is seen, so no entry is served past it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::usage::UsageCell;
use crate::{Clock, KeyHash, KeyRecord};

/// A record as the caches hold it: with its key's usage counter, so a valid
/// request is counted with one atomic add.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) record: KeyRecord,
    pub(crate) usage: Arc<UsageCell>,
}

/// What one tier knows about a hash.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// A record, fresh until the instant if one is set (only with
    /// stale-if-error: the entry then lives on, stale, for the stale window).
    Found(Arc<Found>, Option<Instant>),
    /// No such key, believed until the deadline (the negative TTL).
    NotFound { until: Instant },
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

pub(crate) struct L1 {
    cache: Cache<KeyHash, Entry>,
    ttl: Duration,
    negative_ttl: Duration,
    /// Extra life of found entries, served only while the store is down.
    stale_window: Duration,
}

impl L1 {
    pub(crate) fn new(
        capacity: u64,
        ttl: Duration,
        negative_ttl: Duration,
        stale_window: Duration,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl + stale_window)
            .build();
        Self {
            cache,
            ttl,
            negative_ttl,
            stale_window,
        }
    }

    /// The fresh entry for `hash`; a "not found" past its deadline, or a
    /// record past its freshness, is a miss.
    #[inline]
    pub(crate) fn get(&self, hash: &KeyHash) -> Option<Entry> {
        match self.cache.get(hash) {
            Some(Entry::NotFound { until }) if Instant::now() >= until => None,
            Some(Entry::Found(_, Some(fresh))) if Instant::now() >= fresh => None,
            other => other,
        }
    }

    /// A found entry for `hash` even if stale: what may answer while the
    /// store is down. Invalidation removes entries, so nothing invalidated
    /// comes back this way.
    pub(crate) fn get_stale(&self, hash: &KeyHash) -> Option<Arc<Found>> {
        match self.cache.get(hash) {
            Some(Entry::Found(record, _)) => Some(record),
            _ => None,
        }
    }

    pub(crate) fn found(&self, record: Arc<Found>) -> Entry {
        let fresh = (!self.stale_window.is_zero()).then(|| Instant::now() + self.ttl);
        Entry::Found(record, fresh)
    }

    pub(crate) fn not_found(&self) -> Entry {
        Entry::NotFound {
            until: Instant::now() + self.negative_ttl,
        }
    }

    pub(crate) fn insert(&self, hash: KeyHash, entry: Entry) {
        // A zero lifetime (L1 switched off) would only make moka evict.
        if !(self.ttl + self.stale_window).is_zero() {
            self.cache.insert(hash, entry);
        }
    }

    pub(crate) fn remove(&self, hash: &KeyHash) {
        self.cache.invalidate(hash);
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Drops every entry matching `predicate`, by scanning L1 (milliseconds
    /// for 100k entries: fine for an account suspension, not for a request).
    /// moka's own `invalidate_entries_if` is lazy and skips entries its
    /// housekeeping has not timestamped yet, so it could miss a fresh fill.
    pub(crate) fn remove_if(&self, predicate: impl Fn(&Entry) -> bool) -> usize {
        let doomed: Vec<KeyHash> = self
            .cache
            .iter()
            .filter(|(_, v)| predicate(v))
            .map(|(k, _)| *k)
            .collect();
        for hash in &doomed {
            self.cache.invalidate(hash);
        }
        doomed.len()
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
            .filter(|(_, v)| matches!(v, Entry::NotFound { .. }))
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}
