//! Counters the cache keeps about itself.
//!
//! Hit and miss counters are bumped on every request, from every core. A
//! single atomic would bounce its cache line between cores on each request,
//! so hot counters are striped: each thread adds to its own padded slot and
//! readers sum the slots.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter that many threads bump cheaply and few threads read.
#[derive(Default)]
pub(crate) struct StripedCounter([Padded; STRIPES]);

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl StripedCounter {
    #[inline]
    pub(crate) fn incr(&self) {
        self.0[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    /// Requests by outcome, indexed by `Outcome::index`.
    pub(crate) outcomes: [StripedCounter; 11],
    /// L1 hits that did not answer `valid` at once (see `l1_valid`).
    pub(crate) l1_hits: StripedCounter,
    /// L1 hits answered `valid`, the hot path's one add for both its
    /// counts: each is both an L1 hit and a `valid` outcome.
    pub(crate) l1_valid: StripedCounter,
    pub(crate) l1_misses: StripedCounter,
    pub(crate) store_queries: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    /// Latency of the last store query, in microseconds.
    pub(crate) store_latency_us: AtomicU64,
    pub(crate) invalidations_local: AtomicU64,
    /// Requests answered from a stale entry while the store was down.
    pub(crate) stale_served: AtomicU64,
    pub(crate) invalidations_remote: AtomicU64,
}

/// A point-in-time copy of the cache's counters.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
///
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
/// let stats = cache.stats();
/// assert_eq!(stats.l1_hits, 0);
/// assert_eq!(stats.l2_breaker, None); // no Redis configured
/// # });
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Entries in the in-process tier (approximate).
    pub l1_entries: u64,
    /// Requests answered by the in-process tier.
    pub l1_hits: u64,
    /// Requests the in-process tier could not answer.
    pub l1_misses: u64,
    /// Reads answered by Redis.
    pub l2_hits: u64,
    /// Reads Redis could not answer.
    pub l2_misses: u64,
    /// Failed or timed-out Redis calls (skipped calls not included).
    pub l2_errors: u64,
    /// Undecodable or wrong-version values found in Redis.
    pub l2_bad_values: u64,
    /// Breaker position; `None` when no Redis is configured.
    pub l2_breaker: Option<crate::BreakerState>,
    /// Latency of the last successful Redis call, in milliseconds.
    pub l2_latency_ms: f64,
    /// Queries sent to the store.
    pub store_queries: u64,
    /// Store queries that failed or timed out.
    pub store_errors: u64,
    /// Latency of the last store query, in milliseconds.
    pub store_latency_ms: f64,
    /// Requests answered from a stale entry while the store was down.
    pub stale_served: u64,
    /// Whether the invalidation subscriber is listening (always `false`
    /// without Redis).
    pub subscribed: bool,
    /// Pub/sub events received.
    pub events_received: u64,
    /// Times the subscriber reconnected and cleared L1.
    pub resyncs: u64,
    /// Invalidations made on this instance.
    pub invalidations_local: u64,
    /// Invalidations applied from other instances' events.
    pub invalidations_remote: u64,
    /// The effective mode.
    pub mode: crate::Mode,
    /// Requests by outcome, indexed like [`Outcome::LABELS`](crate::Outcome::LABELS).
    pub outcomes: [u64; 11],
    /// Keys with counted requests not yet in the store.
    pub usage_pending_keys: u64,
    /// Counted requests not yet in the store.
    pub usage_pending_increments: u64,
    /// Failed usage flushes (store or Redis), each retried.
    pub usage_flush_errors: u64,
    /// Requests flushed to the store by this instance.
    pub usage_flushed: u64,
    /// Rate-limited or quota requests that waited for Redis: no token lease,
    /// or an empty one with no refill back (zero in steady traffic with
    /// leases on).
    pub limit_waits: u64,
    /// Rate-limited or quota requests decided by this instance alone
    /// (Redis unavailable).
    pub limit_local_decisions: u64,
    /// Token lease calls to Redis (background refills and give-backs).
    pub lease_calls: u64,
    /// Leased tokens given back to the fleet unspent.
    pub lease_tokens_returned: u64,
}
