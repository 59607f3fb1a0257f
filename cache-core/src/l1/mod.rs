//! The in-process tier: a bounded cache of `hash -> Found | NotFound |
//! Expired`.
//!
//! The engine is moka (`moka.rs`: TinyLFU admission, an identity hasher
//! over the digest, no per-entry expiry), as the design asks. quick_cache
//! (S3-FIFO), L1's engine before, saved 2.3% of the server's instructions
//! per request through axum, under the 3% that would have kept it as an
//! option (README, "L1 engines"); it holds a key in 456 bytes against
//! moka's 726, the one thing moka is worse at.
//!
//! Every entry carries its own deadline, checked on read against the
//! monotonic clock (tokio's, so tests can pause it): a record is fresh for
//! `l1_ttl` after it was loaded (then, with stale-if-error, servable for
//! `stale_if_error` more while the store is down), a "not found" for
//! `negative_ttl` (at most `l1_ttl`), an expired key's verdict for
//! `negative_ttl` too. A
//! record's `expires_at` is judged separately on every read against the
//! [`Clock`](crate::Clock), so no entry is served past it; the request path
//! also drops it then. Dead entries are never served; [`L1::sweep`] frees
//! them in the background (and before health counts entries) so they do not
//! wait for eviction.

mod moka;
use self::moka::Engine;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

// tokio's `Instant` is std's unless tokio's `test-util` is on; with it,
// tests can pause and advance time instead of sleeping through TTLs.
use tokio::time::Instant;

use crate::cache::Inner;
use crate::limits::Lease;
use crate::usage::UsageCell;
use crate::{Clock, KeyHash, KeyRecord, KeyStatus, RequiredScopes};

/// A record as the caches hold it: with its key's usage counter, so a valid
/// request is counted with one atomic add, and with copies of what every hit
/// reads.
///
/// Under load the hit path's cost is cache misses more than instructions:
/// the record spans several cache lines and its scopes are separate
/// allocations. The fields every hit reads come first (`repr(C)`), next to
/// the `Arc`'s reference count, which the hit writes anyway; after the first
/// request through a route, the scope check reads no scope strings.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Found {
    /// `(id << 1) | 1` of the last [`RequiredScopes`] this record was found
    /// to satisfy; 0 for none. Records never change once loaded, so a match
    /// stays true.
    granted: AtomicU64,
    pub(crate) usage: Arc<UsageCell>,
    /// The key's token lease, for a limited key with leases on: a request
    /// it admits is answered here, without Redis (`limits/lease.rs`).
    pub(crate) lease: Option<Arc<Lease>>,
    /// `record.expires_at`, in nanoseconds since the epoch (saturating),
    /// compared with [`Clock::unix_nanos`](crate::Clock::unix_nanos).
    pub(crate) expires_at_nanos: Option<i64>,
    /// `record.status`.
    pub(crate) status: KeyStatus,
    /// Whether the record has a rate limit or a quota to consult.
    pub(crate) limited: bool,
    pub(crate) record: KeyRecord,
}

impl Found {
    pub(crate) fn new(record: KeyRecord, usage: Arc<UsageCell>) -> Self {
        Self::with_lease(record, usage, None)
    }

    pub(crate) fn with_lease(
        record: KeyRecord,
        usage: Arc<UsageCell>,
        lease: Option<Arc<Lease>>,
    ) -> Self {
        Self {
            granted: AtomicU64::new(0),
            usage,
            lease,
            expires_at_nanos: record
                .expires_at
                .map(|at| i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX)),
            status: record.status,
            limited: record.rate_limit.is_some() || record.monthly_quota.is_some(),
            record,
        }
    }

    /// Whether the record grants every scope in `required`.
    #[inline]
    pub(crate) fn grants_all(&self, required: &RequiredScopes) -> bool {
        if required.is_empty() {
            return true;
        }
        let memo = (required.id() << 1) | 1;
        if self.granted.load(Ordering::Relaxed) == memo {
            return true;
        }
        let granted = self.record.scopes.grants_all(required);
        if granted {
            self.granted.store(memo, Ordering::Relaxed);
        }
        granted
    }
}

/// What one tier knows about a hash.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// A record, fresh until the instant; past it, only stale-if-error may
    /// serve it (for the stale window, while the store is down).
    Found(Arc<Found>, Instant),
    /// No such key, believed until the deadline (the negative TTL).
    NotFound { until: Instant },
    /// The key's `expires_at` has passed, believed until the deadline (the
    /// negative TTL): a leaked expired key costs no store query per request.
    Expired { until: Instant },
}

impl Entry {
    /// The record behind a found entry.
    pub(crate) fn record(&self) -> Option<&KeyRecord> {
        match self {
            Self::Found(f, _) => Some(&f.record),
            Self::NotFound { .. } | Self::Expired { .. } => None,
        }
    }

    /// Until when a read may return the entry (`Found`: its freshness).
    fn deadline(&self) -> Instant {
        match self {
            Self::Found(_, fresh) => *fresh,
            Self::NotFound { until } | Self::Expired { until } => *until,
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

pub(crate) struct L1 {
    /// `Found` entries.
    cache: Engine,
    /// `NotFound` and `Expired` entries.
    negative: Engine,
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
        // Deadlines are `Instant + lifetime`, which panics on overflow: cap
        // absurd settings (a configured `u64::MAX` seconds) at a century.
        const CAP: Duration = Duration::from_secs(100 * 365 * 86_400);
        let ttl = ttl.min(CAP);
        Self {
            cache: Engine::new(capacity.max(1)),
            negative: Engine::new((capacity / 8).max(64)),
            ttl,
            // A "not found" is no more trustworthy than a record: it too
            // must not outlive `l1_ttl`, the bound on staleness when an
            // invalidation (here: of a key created elsewhere) is lost.
            negative_ttl: negative_ttl.min(ttl),
            stale_window: stale_window.min(CAP),
        }
    }

    /// The fresh entry for `hash`; a "not found" past its deadline, or a
    /// record past its freshness, is a miss.
    #[inline]
    pub(crate) fn get(&self, hash: &KeyHash) -> Option<Entry> {
        let entry = match self.cache.get(hash) {
            Some(found) => found,
            None => self.negative.get(hash)?,
        };
        (Instant::now() < entry.deadline()).then_some(entry)
    }

    /// A found entry for `hash` even if stale, within the stale window: what
    /// may answer while the store is down. Invalidation removes entries, so
    /// nothing invalidated comes back this way.
    pub(crate) fn get_stale(&self, hash: &KeyHash) -> Option<Arc<Found>> {
        match self.cache.get(hash) {
            Some(Entry::Found(found, fresh)) if Instant::now() < fresh + self.stale_window => {
                Some(found)
            }
            _ => None,
        }
    }

    pub(crate) fn found(&self, record: Arc<Found>) -> Entry {
        Entry::Found(record, Instant::now() + self.ttl)
    }

    pub(crate) fn not_found(&self) -> Entry {
        Entry::NotFound {
            until: Instant::now() + self.negative_ttl,
        }
    }

    pub(crate) fn expired(&self) -> Entry {
        Entry::Expired {
            until: Instant::now() + self.negative_ttl,
        }
    }

    pub(crate) fn insert(&self, hash: KeyHash, entry: Entry) {
        // An entry dead on arrival (L1 switched off, a zero negative TTL)
        // could never be read, and would only evict live ones.
        let last_read = match &entry {
            Entry::Found(_, fresh) => *fresh + self.stale_window,
            other => other.deadline(),
        };
        if Instant::now() < last_read {
            // Out of the other side first: a reader finds the old verdict,
            // or nothing (a load), never the old one after the new one.
            if matches!(entry, Entry::Found(..)) {
                self.negative.remove(&hash);
                self.cache.insert(hash, entry);
            } else {
                self.cache.remove(&hash);
                self.negative.insert(hash, entry);
            }
        }
    }

    pub(crate) fn remove(&self, hash: &KeyHash) {
        self.cache.remove(hash);
        self.negative.remove(hash);
    }

    pub(crate) fn clear(&self) {
        self.cache.clear();
        self.negative.clear();
    }

    /// Drops every entry matching `predicate`: a full scan (milliseconds
    /// for 100k entries: fine for an account suspension, not for a
    /// request). Returns how many were dropped.
    pub(crate) fn remove_if(&self, predicate: impl Fn(&Entry) -> bool) -> usize {
        self.cache.remove_if(&predicate) + self.negative.remove_if(&predicate)
    }

    /// Frees entries no read can return any more (past their deadline and
    /// any stale window). Run in the background; reads never need it.
    pub(crate) fn sweep(&self) -> usize {
        let now = Instant::now();
        let stale_window = self.stale_window;
        self.remove_if(|entry| match entry {
            Entry::Found(_, fresh) => now >= *fresh + stale_window,
            other => now >= other.deadline(),
        })
    }

    /// Entries held, live or not yet swept.
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.len() + self.negative.len()
    }

    /// Counts negative entries (unknown or expired keys), for health.
    pub(crate) fn negative_count(&self) -> u64 {
        self.negative.len()
    }
}

/// Sweeps L1 every `every` for as long as the cache lives.
pub(crate) async fn sweeper(cache: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = cache.upgrade() else { return };
        inner.l1.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyHasher, KeyId, Scopes};

    fn l1(stale_window: Duration) -> L1 {
        L1::new(
            100,
            Duration::from_secs(60),
            Duration::from_secs(30),
            stale_window,
        )
    }

    fn found(n: u8) -> (KeyHash, Arc<Found>) {
        let hash = KeyHasher::new(None).hash(&[n]);
        let record = KeyRecord::new(
            KeyId::new(format!("k{n}")),
            hash,
            "acme",
            Scopes::new(["a"]),
        );
        (hash, Arc::new(Found::new(record, Arc::default())))
    }

    #[tokio::test(start_paused = true)]
    async fn records_live_for_the_ttl_then_only_stale() {
        let l1 = l1(Duration::from_secs(10));
        let (hash, f) = found(1);
        l1.insert(hash, l1.found(f));
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert!(l1.get(&hash).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l1.get(&hash).is_none(), "past the TTL: a miss");
        assert!(l1.get_stale(&hash).is_some(), "within the stale window");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(l1.get_stale(&hash).is_none(), "past the stale window");
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_lives_for_the_negative_ttl_and_is_never_stale() {
        let l1 = l1(Duration::from_secs(10));
        let (hash, _) = found(2);
        l1.insert(hash, l1.not_found());
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(matches!(l1.get(&hash), Some(Entry::NotFound { .. })));
        assert!(l1.get_stale(&hash).is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l1.get(&hash).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_frees_only_dead_entries() {
        let l1 = l1(Duration::from_secs(10));
        let (old, f) = found(3);
        l1.insert(old, l1.found(f));
        let (unknown, _) = found(4);
        l1.insert(unknown, l1.not_found());
        tokio::time::advance(Duration::from_secs(65)).await;
        let (fresh, f) = found(5);
        l1.insert(fresh, l1.found(f));
        // `old` is stale but still servable on error; `unknown` is dead.
        assert_eq!(l1.sweep(), 1);
        assert_eq!(l1.entry_count(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l1.sweep(), 1, "`old` is past its stale window");
        assert!(l1.get(&fresh).is_some());
        assert_eq!(l1.entry_count(), 1);
    }

    #[test]
    fn scope_memo_answers_only_for_the_set_it_saw() {
        let (_, f) = found(1); // grants "a"
        let a = RequiredScopes::new(["a"]);
        let b = RequiredScopes::new(["b"]);
        let a_again = RequiredScopes::new(["a"]);
        assert!(f.grants_all(&a));
        assert!(f.grants_all(&a), "remembered");
        assert!(!f.grants_all(&b), "another set is checked, not remembered");
        assert!(!f.grants_all(&b));
        assert!(f.grants_all(&a.clone()));
        assert!(f.grants_all(&a_again));
        assert!(f.grants_all(&RequiredScopes::none()));
        let (_, g) = found(2);
        assert!(!g.grants_all(&RequiredScopes::new(["a", "c"])));
    }

    #[test]
    fn scope_memo_with_wildcards_and_alternating_routes() {
        let hash = KeyHasher::new(None).hash(b"w");
        let record = KeyRecord::new(KeyId::new("w"), hash, "acme", Scopes::new(["orders:*"]));
        let f = Found::new(record, Arc::default());
        let read = RequiredScopes::new(["orders:read"]);
        let bare = RequiredScopes::new(["orders"]);
        let billing = RequiredScopes::new(["billing:read"]);
        for _ in 0..3 {
            assert!(f.grants_all(&read));
            assert!(!f.grants_all(&bare), "`orders:*` does not grant `orders`");
            assert!(!f.grants_all(&billing));
        }
    }

    #[test]
    fn absurd_lifetimes_do_not_overflow() {
        let l1 = L1::new(10, Duration::MAX, Duration::MAX, Duration::MAX);
        let (hash, f) = found(7);
        l1.insert(hash, l1.found(f));
        assert!(l1.get(&hash).is_some());
        assert!(l1.get_stale(&hash).is_some());
        assert_eq!(l1.sweep(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_never_outlives_the_l1_ttl() {
        let l1 = L1::new(
            10,
            Duration::from_secs(5),
            Duration::from_secs(30),
            Duration::ZERO,
        );
        let (hash, _) = found(8);
        l1.insert(hash, l1.not_found());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(l1.get(&hash).is_none());
        // A zero negative TTL caches nothing.
        let l1 = L1::new(10, Duration::from_secs(5), Duration::ZERO, Duration::ZERO);
        l1.insert(hash, l1.not_found());
        assert_eq!(l1.entry_count(), 0);
    }

    #[test]
    fn remove_if_counts_what_it_drops() {
        let l1 = l1(Duration::ZERO);
        for n in 0..10 {
            let (hash, f) = found(n);
            l1.insert(hash, l1.found(f));
        }
        let dropped =
            l1.remove_if(|e| matches!(e, Entry::Found(f, _) if f.record.id.as_str() < "k5"));
        assert_eq!(dropped, 5);
        assert_eq!(l1.entry_count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_verdict_replaces_the_other_kind() {
        let l1 = l1(Duration::ZERO);
        let (hash, f) = found(9);
        l1.insert(hash, l1.not_found());
        l1.insert(hash, l1.found(f.clone()));
        assert!(matches!(l1.get(&hash), Some(Entry::Found(..))));
        assert_eq!((l1.entry_count(), l1.negative_count()), (1, 0));
        l1.insert(hash, l1.expired());
        assert!(matches!(l1.get(&hash), Some(Entry::Expired { .. })));
        assert!(l1.get_stale(&hash).is_none(), "the record is gone");
        assert_eq!((l1.entry_count(), l1.negative_count()), (1, 1));
        l1.remove(&hash);
        assert!(l1.get(&hash).is_none());
    }

    #[test]
    fn unknown_keys_never_push_out_records() {
        let l1 = L1::new(
            1000,
            Duration::from_secs(60),
            Duration::from_secs(30),
            Duration::ZERO,
        );
        let records: Vec<_> = (0..100).map(found).collect();
        for (hash, f) in &records {
            l1.insert(*hash, l1.found(f.clone()));
        }
        for i in 0..10_000u32 {
            let hash = KeyHasher::new(None).hash(&i.to_le_bytes());
            l1.insert(hash, l1.not_found());
        }
        for (hash, _) in &records {
            assert!(matches!(l1.get(hash), Some(Entry::Found(..))));
        }
        // An eighth of the capacity, give or take the engine's rounding.
        assert!(l1.negative_count() <= 1000 / 6, "{}", l1.negative_count());
    }

    #[test]
    fn switched_off_l1_holds_nothing() {
        let l1 = L1::new(100, Duration::ZERO, Duration::from_secs(30), Duration::ZERO);
        let (hash, f) = found(1);
        l1.insert(hash, l1.found(f));
        assert_eq!(l1.entry_count(), 0);
    }
}
