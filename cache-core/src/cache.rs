//! [`ApiKeyCache`]: the verification path over L1 (in-process), L2 (Redis) and
//! the store.
//!
//! ```
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey, Outcome, RequiredScopes};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = Arc::new(MemoryStore::new());
//! let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
//! let created = store.create_key(cache.hasher(), NewKey::new("acme", ["orders:*"])).await?;
//!
//! let read = RequiredScopes::new(["orders:read"]);
//! let outcome = cache.verify_key(&created.plaintext, &read).await;
//! assert!(outcome.is_valid());
//! assert_eq!(cache.verify_key("ak_unknown", &read).await, Outcome::Unknown);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # How a request is answered
//!
//! 1. The key is extracted and checked (length, bytes), then hashed.
//! 2. In `database_only` mode the store is asked directly, every time.
//! 3. Otherwise L1 answers if it holds the hash (found or known-unknown).
//! 4. On an L1 miss, one load per hash (single flight), run as a task of
//!    its own, reads L2, then the store; the result fills L2 (`SET NX`,
//!    within the tombstone window) and L1. Every caller waits for that
//!    result, each at most the load budget; none of them owns the load.
//! 5. The record is judged at request time: status, `expires_at` against the
//!    clock, scopes. A cached record is never trusted past its expiry.
//!
//! A store failure with nothing cached answers [`Outcome::Unavailable`]:
//! the cache fails closed.
//!
//! # Invalidation and the refill race
//!
//! A load that read a record before it was revoked may finish after the
//! revocation's `invalidate`. Two guards keep it from writing the old
//! record back:
//!
//! * L2: `invalidate` overwrites the entry with a tombstone (lifetime
//!   `tombstone_ttl`, longer than any load may take), and fills use `SET NX`,
//!   so a late fill finds the key taken and writes nothing.
//! * L1: every invalidation bumps a generation counter and removes the
//!   entry under a write lock; a loader checks that the counter has not
//!   moved since its load began and inserts under the read lock. Either the
//!   insert comes first and the invalidation removes it, or the loader sees
//!   the bump and inserts nothing; no request sees the old record in
//!   between.
//! * While an invalidation is under way on this instance (until Redis has
//!   its tombstone), Redis's answers for what it covers are not trusted
//!   (`invalidation/guard.rs`), and a tombstone read from Redis drops any
//!   stale L1 copy.
//! * A fill that outlives the tombstone: fills run as a script that writes
//!   only while Redis's clock is within `tombstone_ttl` of the load's Redis
//!   read (`l2.rs`), and `tombstone_ttl` must exceed the load budget.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec;
use crate::events::{self, EventStats};
use crate::flight::{self, Flights, Role, Waited};
use crate::l1::{lifetime_until, Entry, Found, L1};
use crate::l2::{L2Read, ReadStamp, L2};
use crate::limits::Limiter;
use crate::stats::{CacheStats, Stats};
use crate::usage::Usage;
use crate::{
    CacheConfig, Clock, KeyExtractor, KeyHash, KeyHasher, KeyRecord, KeyStore, Mode, SystemClock,
};

/// The cache could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The Redis URL was rejected by the Redis client.
    #[error("invalid redis configuration: {0}")]
    Redis(#[from] redis::RedisError),
    /// The configuration does not hold together (see
    /// [`CacheConfig::validate`]).
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
}

/// The result a load shares with everyone waiting on it; `Err` means the
/// store failed and nothing cached could answer.
pub(crate) type Loaded = Result<Entry, ()>;

pub(crate) struct Inner {
    pub(crate) config: CacheConfig,
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) hasher: KeyHasher,
    pub(crate) extractor: KeyExtractor,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) l1: L1,
    pub(crate) l2: Option<Arc<L2>>,
    pub(crate) flights: Arc<Flights<Loaded>>,
    /// Bumped by every invalidation; see the module docs.
    pub(crate) generation: AtomicU64,
    /// Fills check the generation and insert under the read lock;
    /// invalidations bump it and remove under the write lock, so no
    /// request ever sees, even for an instant, a fill that raced one.
    fills: std::sync::RwLock<()>,
    /// This instance's own mode (`set_mode`, `APIKEY_CACHE_MODE`).
    pub(crate) local_mode: AtomicU8,
    /// The fleet-wide mode (`set_fleet_mode`, Redis).
    pub(crate) fleet_mode: AtomicU8,
    pub(crate) stats: Stats,
    /// Identifies this instance's own events on the shared channel.
    pub(crate) instance_id: String,
    pub(crate) events: EventStats,
    pub(crate) health_probe: tokio::sync::Mutex<Option<crate::health::Probe>>,
    pub(crate) health_probes: AtomicU64,
    /// Cache warming's progress, for health (`warm.rs`).
    pub(crate) warming: crate::warm::Warming,
    pub(crate) usage: Usage,
    pub(crate) limiter: Limiter,
    /// The runtime the cache was built in, for tasks started where no
    /// runtime is current.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// Set by `shutdown`: the flusher stops, the final flush runs once.
    pub(crate) shutting_down: AtomicBool,
    /// Invalidations under way on this instance, and what they hold.
    pub(crate) invalidations: crate::invalidation::Invalidations,
    /// The owner key-list cache's L1 (`owner_list.rs`).
    pub(crate) owner_lists: crate::owner_list::OwnerLists,
    /// Audit events' rate limits (shared with the Redis breaker).
    pub(crate) audit: Arc<crate::audit::Audit>,
    /// One scope set per distinct list among cached records (memory).
    scope_sets: crate::scope::ScopeSets,
}

/// Verifies API keys through an in-process cache, Redis and the store.
/// Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct ApiKeyCache {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCache")
            .field("config", &self.inner.config)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

/// Builder for [`ApiKeyCache`], for the parts that are not plain
/// configuration (clock, key extractor).
///
/// ```
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, KeyExtractor, KeySource, MemoryStore, SystemClock};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let cache = ApiKeyCache::builder(Arc::new(MemoryStore::new()))
///     .config(CacheConfig::default())
///     .extractor(KeyExtractor::new(vec![KeySource::Header("x-api-key".into())]))
///     .clock(Arc::new(SystemClock))
///     .build()
///     .unwrap();
/// # });
/// ```
pub struct ApiKeyCacheBuilder {
    store: Arc<dyn KeyStore>,
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    extractor: KeyExtractor,
}

impl ApiKeyCacheBuilder {
    /// Sets the configuration (default: [`CacheConfig::default`]).
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the clock expiry is judged against (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets where keys are looked for (default: `Authorization: Bearer`,
    /// then `X-API-Key`).
    pub fn extractor(mut self, extractor: KeyExtractor) -> Self {
        self.extractor = extractor;
        self
    }

    /// Builds the cache. Must be called inside a Tokio runtime when Redis is
    /// configured (background tasks are spawned); does not wait for Redis.
    pub fn build(mut self) -> Result<ApiKeyCache, BuildError> {
        self.config = self.config.validate()?;
        let c = &self.config;
        let l1 = L1::new(c.l1_capacity, c.l1_ttl, c.negative_ttl, c.stale_if_error);
        // No runtime, no background task to refill the audit budgets.
        let audit = Arc::new(crate::audit::Audit::new(
            self.clock.clone(),
            tokio::runtime::Handle::try_current().is_err(),
        ));
        let l2 = match &c.redis_url {
            Some(url) => Some(L2::new(url, c, audit.clone())?),
            None => None,
        };
        let hasher = KeyHasher::new(c.pepper.as_deref().map(str::as_bytes));
        let mode = mode_to_u8(c.mode);
        let owner_lists = crate::owner_list::OwnerLists::new(c.l1_ttl);
        let instance_id = uuid::Uuid::new_v4().simple().to_string();
        let limiter = Limiter::new(
            crate::limits::LeaseSettings {
                enabled: c.leases,
                max_tokens: c.lease_max_tokens,
                refill_threshold: c.lease_refill_threshold,
                prefix: c.key_prefix.clone(),
                instance_id: instance_id.clone(),
                // A refill is one script call (two budgets on its first
                // use); a waiter may need a second one.
                patience: c.redis_timeout.saturating_mul(4) + WAIT_SLACK,
                idle: c.lease_idle,
            },
            l2.clone(),
            self.clock.clone(),
        );
        let cache = ApiKeyCache {
            inner: Arc::new(Inner {
                hasher,
                extractor: self.extractor,
                clock: self.clock,
                l1,
                l2,
                flights: Arc::new(Flights::new()),
                generation: AtomicU64::new(0),
                fills: std::sync::RwLock::new(()),
                local_mode: AtomicU8::new(mode),
                fleet_mode: AtomicU8::new(mode_to_u8(Mode::Normal)),
                stats: Stats::default(),
                store: self.store,
                config: self.config,
                instance_id,
                events: EventStats::default(),
                health_probe: tokio::sync::Mutex::new(None),
                health_probes: AtomicU64::new(0),
                warming: Default::default(),
                usage: Usage::new(),
                limiter,
                shutting_down: AtomicBool::new(false),
                runtime: tokio::runtime::Handle::try_current().ok(),
                invalidations: Default::default(),
                owner_lists,
                audit,
                scope_sets: Default::default(),
            }),
        };
        crate::telemetry::describe_once();
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(crate::telemetry::publisher(Arc::downgrade(&cache.inner)));
            tokio::spawn(crate::usage::flusher(
                Arc::downgrade(&cache.inner),
                cache.inner.config.usage_flush_interval,
            ));
            tokio::spawn(crate::l1::sweeper(
                Arc::downgrade(&cache.inner),
                sweep_interval(&cache.inner.config),
            ));
            tokio::spawn(crate::audit::ticker(Arc::downgrade(&cache.inner.audit)));
        }
        if cache.inner.l2.is_some() {
            if cache.inner.limiter.leases.enabled() {
                tokio::spawn(crate::limits::sweeper(Arc::downgrade(
                    &cache.inner.limiter.leases,
                )));
            }
            tokio::spawn(crate::invalidation::retrier(Arc::downgrade(&cache.inner)));
            tokio::spawn(events::subscriber(Arc::downgrade(&cache.inner)));
        }
        crate::warm::start(&cache);
        Ok(cache)
    }
}

/// How long past the load budget a waiter waits before giving up on a
/// load (scheduling delays; the load itself is bounded by its timeouts).
const WAIT_SLACK: Duration = Duration::from_millis(100);

/// How often L1 is swept of dead entries: about as often as entries die,
/// within 1 s to 60 s (a sweep write-locks each shard briefly).
fn sweep_interval(c: &CacheConfig) -> Duration {
    let shortest = c.l1_ttl.min(c.negative_ttl);
    shortest.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

pub(crate) const fn mode_to_u8(mode: Mode) -> u8 {
    match mode {
        Mode::Normal => 0,
        Mode::DatabaseOnly => 1,
    }
}

impl ApiKeyCache {
    /// A cache over `store` with `config` and the system clock.
    pub fn new(config: CacheConfig, store: Arc<dyn KeyStore>) -> Result<Self, BuildError> {
        Self::builder(store).config(config).build()
    }

    /// A builder over `store`.
    pub fn builder(store: Arc<dyn KeyStore>) -> ApiKeyCacheBuilder {
        ApiKeyCacheBuilder {
            store,
            config: CacheConfig::default(),
            clock: Arc::new(SystemClock),
            extractor: KeyExtractor::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The hasher (with the configured pepper): use it to issue keys.
    pub fn hasher(&self) -> &KeyHasher {
        &self.inner.hasher
    }

    /// The key extractor.
    pub fn extractor(&self) -> &KeyExtractor {
        &self.inner.extractor
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// Hashes a presented key.
    pub fn hash_key(&self, key: &str) -> KeyHash {
        self.inner.hasher.hash(key.as_bytes())
    }

    /// L1 missed: join the single flight for `hash`, or start it.
    ///
    /// The load runs as a task of its own, so this caller going away
    /// cancels nothing; every caller waits at most the load budget.
    pub(crate) async fn load(&self, hash: KeyHash) -> Loaded {
        let inner = &*self.inner;
        let patience = inner.config.load_budget() + WAIT_SLACK;
        // A load task that ends without an answer (a panic) is taken over,
        // but not forever.
        for _ in 0..3 {
            let rx = match inner.flights.join(hash) {
                Role::Leader(leader) => {
                    // A flight that filled L1 may have ended between our L1
                    // miss and our joining: look again before going out.
                    if let Some(entry) = inner.l1.get(&hash) {
                        leader.finish(Ok(entry.clone()));
                        return Ok(entry);
                    }
                    let rx = leader.subscribe();
                    let generation = inner.generation.load(Ordering::SeqCst);
                    let this = self.clone();
                    let load = async move {
                        let started = Instant::now();
                        let loaded = this.lead(hash, generation).await;
                        metrics::histogram!(crate::telemetry::LOOKUP_DURATION)
                            .record(started.elapsed().as_secs_f64());
                        leader.finish(loaded);
                    };
                    if self.spawn(load).is_none() {
                        // Reached only outside any runtime (no Redis): there
                        // is nowhere else to run the load.
                        return self.lead(hash, generation).await;
                    }
                    rx
                }
                Role::Follower(rx) => rx,
            };
            match flight::wait(rx, patience).await {
                Waited::Done(loaded) => return loaded,
                Waited::TimedOut => return Err(()),
                // The load task ended without an answer: take over.
                Waited::Abandoned => {}
            }
        }
        Err(())
    }

    /// Runs `task` on the current runtime, else on the one the cache was
    /// built in; `None` when there is neither.
    pub(crate) fn spawn<F>(&self, task: F) -> Option<tokio::task::JoinHandle<F::Output>>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(current) => Some(current.spawn(task)),
            Err(_) => self.inner.runtime.as_ref().map(|rt| rt.spawn(task)),
        }
    }

    /// Loads `hash` from L2, then the store, filling the tiers.
    /// `generation` was read before the load began.
    async fn lead(&self, hash: KeyHash, generation: u64) -> Loaded {
        let inner = &*self.inner;
        // Redis's clock at a read that found nothing: the only case in which
        // the store's answer is written back to Redis.
        let mut fill_stamp = None;
        if let Some(l2) = &inner.l2 {
            let guard = &inner.invalidations.guard;
            let (read, stamp) = l2.get(&hash).await;
            match read {
                L2Read::Found(record) if !guard.distrusts(&record) => {
                    let entry = self.entry_for(*record);
                    self.fill_l1(hash, entry.clone(), generation);
                    return Ok(entry);
                }
                L2Read::NotFound if !guard.distrusts_hash(&hash) => {
                    let entry = inner.l1.not_found();
                    self.fill_l1(hash, entry.clone(), generation);
                    return Ok(entry);
                }
                L2Read::Found(_) | L2Read::NotFound | L2Read::Tombstone => {
                    // Invalidated since Redis was filled (a tombstone, or an
                    // invalidation this instance holds): whatever L1 still
                    // has for it, even a stale copy that stale-if-error
                    // could serve, must not answer again. Ask the store and
                    // leave Redis to the invalidation.
                    inner.l1.remove(&hash);
                }
                L2Read::Miss => fill_stamp = stamp,
                L2Read::Unavailable => {}
            }
        }
        let record = self.query_store(&hash).await?;
        Ok(self
            .fill_from_store(hash, record, generation, fill_stamp)
            .await
            .0)
    }

    /// Puts the store's answer for `hash` into the tiers: Redis (with a
    /// `stamp` of Redis's clock taken before the store was asked), then L1,
    /// neither if an invalidation ran since `generation` was read (also
    /// before the store was asked). Every load fills through here, cache
    /// warming too (`warm.rs`). Returns the entry, and whether L1 took it
    /// (`false`: an invalidation raced the load).
    pub(crate) async fn fill_from_store(
        &self,
        hash: KeyHash,
        record: Option<KeyRecord>,
        generation: u64,
        stamp: Option<ReadStamp>,
    ) -> (Entry, bool) {
        let inner = &*self.inner;
        if let (Some(l2), Some(stamp)) = (&inner.l2, stamp) {
            // A load that raced a local invalidation does not refill Redis;
            // the tombstone, `SET NX` and the stamp cover the rest (see
            // the module docs).
            if inner.generation.load(Ordering::SeqCst) == generation {
                let (value, ttl) = self.l2_value(record.as_ref());
                l2.fill(&hash, value, ttl, stamp, inner.config.tombstone_ttl)
                    .await;
            }
        }
        let entry = match record {
            Some(record) => self.entry_for(record),
            None => inner.l1.not_found(),
        };
        let filled = self.fill_l1(hash, entry.clone(), generation);
        (entry, filled)
    }

    /// The L1 entry for a loaded record: the record, or the verdict
    /// "expired" once its `expires_at` has passed.
    fn entry_for(&self, record: KeyRecord) -> Entry {
        let inner = &*self.inner;
        if record.is_expired_at(inner.clock.now()) {
            inner.l1.expired()
        } else {
            inner.l1.found(self.found(record))
        }
    }

    /// What to write to Redis for a store answer, and for how long: a
    /// record until the L2 TTL or its `expires_at`, whichever is first; an
    /// expired record or an unknown key for the negative TTL.
    fn l2_value(&self, record: Option<&KeyRecord>) -> (Vec<u8>, Duration) {
        let c = &self.inner.config;
        let clock = &*self.inner.clock;
        match record {
            Some(r) if r.is_expired_at(clock.now()) => (codec::encode_found(r), c.negative_ttl),
            Some(r) => (codec::encode_found(r), lifetime_until(r, c.l2_ttl, clock)),
            None => (codec::encode_not_found(), c.negative_ttl),
        }
    }

    /// Inserts what a load found, unless an invalidation ran since the
    /// load began (`generation`); whether it did.
    fn fill_l1(&self, hash: KeyHash, entry: Entry, generation: u64) -> bool {
        let inner = &*self.inner;
        let _fill = inner.fills.read().unwrap_or_else(|e| e.into_inner());
        let current = inner.generation.load(Ordering::SeqCst) == generation;
        if current {
            inner.l1.insert(hash, entry);
        }
        current
    }

    /// Runs `drop_entries` as an invalidation: after a generation bump,
    /// with no fill in progress (see [`fill_l1`](Self::fill_l1)).
    pub(crate) fn invalidating<T>(&self, drop_entries: impl FnOnce(&L1) -> T) -> T {
        let inner = &*self.inner;
        let _no_fills = inner.fills.write().unwrap_or_else(|e| e.into_inner());
        inner.generation.fetch_add(1, Ordering::SeqCst);
        drop_entries(&inner.l1)
    }

    /// Wraps a loaded record with its key's usage counter, for a limited
    /// key its token lease, and a scope set shared with the cached records
    /// that grant the same list.
    pub(crate) fn found(&self, mut record: KeyRecord) -> Arc<Found> {
        record.scopes = self.inner.scope_sets.share(record.scopes);
        let usage = self.inner.usage.cell(&record.id);
        let lease = self.inner.limiter.leases.lease_for(&record);
        Arc::new(Found::with_lease(record, usage, lease))
    }

    pub(crate) async fn query_store(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ()> {
        let inner = &*self.inner;
        inner.stats.store_queries.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result =
            tokio::time::timeout(inner.config.store_timeout, inner.store.find_by_hash(hash)).await;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        inner.stats.store_latency_us.store(us, Ordering::Relaxed);
        match result {
            Ok(Ok(Some(record))) if record.hash != *hash => {
                inner.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(key = %hash.fingerprint(), "store returned a record for another hash");
                Err(())
            }
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => {
                inner.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %hash.fingerprint(), error = %e, "key store lookup failed");
                Err(())
            }
            Err(_) => {
                inner.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %hash.fingerprint(), "key store lookup timed out");
                Err(())
            }
        }
    }

    /// The rate-limit tokens this instance holds in leases (a scan of its
    /// leases): what it could still admit without asking Redis, and at most
    /// what the rest of the fleet cannot use meanwhile. For health and
    /// tests.
    pub fn leased_tokens(&self) -> u64 {
        self.inner.limiter.leases.held().1
    }

    /// Counters and tier state.
    pub fn stats(&self) -> CacheStats {
        let inner = &*self.inner;
        let pending = inner.usage.pending();
        let leases = &inner.limiter.leases;
        let l2 = inner.l2.as_deref();
        let ms =
            |us: &AtomicU64| Duration::from_micros(us.load(Ordering::Relaxed)).as_secs_f64() * 1e3;
        let l2_count = |f: fn(&L2) -> &AtomicU64| l2.map_or(0, |l2| f(l2).load(Ordering::Relaxed));
        let l1_valid = inner.stats.l1_valid.get();
        CacheStats {
            l1_entries: inner.l1.entry_count(),
            l1_hits: inner.stats.l1_hits.get() + l1_valid,
            l1_misses: inner.stats.l1_misses.get(),
            l2_hits: l2_count(|l2| &l2.stats.hits),
            l2_misses: l2_count(|l2| &l2.stats.misses),
            l2_errors: l2_count(|l2| &l2.stats.errors),
            l2_bad_values: l2_count(|l2| &l2.stats.bad_values),
            l2_breaker: l2.map(L2::breaker_state),
            l2_latency_ms: l2.map_or(0.0, |l2| ms(&l2.stats.last_latency_us)),
            store_queries: inner.stats.store_queries.load(Ordering::Relaxed),
            store_errors: inner.stats.store_errors.load(Ordering::Relaxed),
            store_latency_ms: ms(&inner.stats.store_latency_us),
            stale_served: inner.stats.stale_served.load(Ordering::Relaxed),
            subscribed: inner.events.subscribed.load(Ordering::Acquire),
            events_received: inner.events.received.load(Ordering::Relaxed),
            resyncs: inner.events.resyncs.load(Ordering::Relaxed),
            invalidations_local: inner.stats.invalidations_local.load(Ordering::Relaxed),
            invalidations_remote: inner.stats.invalidations_remote.load(Ordering::Relaxed),
            mode: self.mode(),
            outcomes: std::array::from_fn(|i| {
                let valid = if i == crate::Outcome::VALID_INDEX {
                    l1_valid
                } else {
                    0
                };
                inner.stats.outcomes[i].get() + valid
            }),
            usage_pending_keys: pending.keys,
            usage_pending_increments: pending.increments,
            usage_flush_errors: inner.usage.flush_errors.load(Ordering::Relaxed),
            usage_flushed: inner.usage.flushed.load(Ordering::Relaxed),
            limit_waits: leases.stats.waits.load(Ordering::Relaxed),
            limit_local_decisions: inner.limiter.local_decisions.load(Ordering::Relaxed),
            lease_calls: leases.stats.calls.load(Ordering::Relaxed),
            lease_tokens_returned: leases.stats.returned.load(Ordering::Relaxed),
        }
    }
}
