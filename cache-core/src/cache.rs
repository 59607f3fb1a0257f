//! [`ApiKeyCache`]: the verification path over L1 (moka), L2 (Redis) and
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
//! 4. On an L1 miss, one caller per hash (single flight) reads L2, then the
//!    store; the result fills L2 (`SET NX`) and L1. Concurrent callers wait
//!    for that result.
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
//! * L1: every invalidation bumps a generation counter *before* removing the
//!   entry. A loader inserts into L1 and *then* re-reads the counter; if it
//!   moved since the load began, the loader removes what it inserted. Either
//!   the invalidation's removal runs after the insert, or the loader sees the
//!   bump; the old record cannot survive both.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::codec;
use crate::events::{self, EventStats};
use crate::extract::validate_key;
use crate::flight::{self, Flights, Role};
use crate::l1::{lifetime_until, Entry, L1};
use crate::l2::{L2Read, L2};
use crate::stats::{CacheStats, Stats};
use crate::{
    CacheConfig, Clock, Extracted, HeaderSource, KeyExtractor, KeyHash, KeyHasher, KeyRecord,
    KeyStatus, KeyStore, Mode, Outcome, RequiredScopes, SystemClock, VerifiedKey,
};

/// The cache could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The Redis URL was rejected by the Redis client.
    #[error("invalid redis configuration: {0}")]
    Redis(#[from] redis::RedisError),
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
    pub(crate) flights: Flights<Loaded>,
    /// Bumped by every invalidation; see the module docs.
    pub(crate) generation: AtomicU64,
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
}

/// The future of [`ApiKeyCache::verify`]: ready at once on an L1 hit, a
/// boxed load otherwise.
#[must_use = "futures do nothing unless polled"]
pub struct Verify<'a>(VerifyState<'a>);

enum VerifyState<'a> {
    Ready(Option<Outcome>),
    Pending(Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>),
}

impl Verify<'_> {
    fn ready(outcome: Outcome) -> Self {
        Self(VerifyState::Ready(Some(outcome)))
    }

    /// The outcome, if it was known without waiting (an L1 hit or an early
    /// rejection); `Err(self)` if the future has to be awaited.
    pub fn into_ready(self) -> Result<Outcome, Self> {
        match self.0 {
            VerifyState::Ready(Some(outcome)) => Ok(outcome),
            state => Err(Self(state)),
        }
    }
}

impl std::fmt::Debug for Verify<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            VerifyState::Ready(o) => f.debug_tuple("Verify::Ready").field(o).finish(),
            VerifyState::Pending(_) => f.write_str("Verify::Pending"),
        }
    }
}

impl Future for Verify<'_> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.0 {
            // `Outcome::Unavailable` after completion: polling a finished
            // future is a caller bug, and failing closed is the safe answer.
            VerifyState::Ready(o) => Poll::Ready(o.take().unwrap_or(Outcome::Unavailable)),
            VerifyState::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
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
    pub fn build(self) -> Result<ApiKeyCache, BuildError> {
        let c = &self.config;
        let l1 = L1::new(c.l1_capacity, c.l1_ttl, c.negative_ttl, c.stale_if_error);
        let l2 = match &c.redis_url {
            Some(url) => Some(L2::new(url, c)?),
            None => None,
        };
        let hasher = KeyHasher::new(c.pepper.as_deref().map(str::as_bytes));
        let mode = mode_to_u8(c.mode);
        let cache = ApiKeyCache {
            inner: Arc::new(Inner {
                hasher,
                extractor: self.extractor,
                clock: self.clock,
                l1,
                l2,
                flights: Flights::new(),
                generation: AtomicU64::new(0),
                local_mode: AtomicU8::new(mode),
                fleet_mode: AtomicU8::new(mode_to_u8(Mode::Normal)),
                stats: Stats::default(),
                store: self.store,
                config: self.config,
                instance_id: uuid::Uuid::new_v4().simple().to_string(),
                events: EventStats::default(),
                health_probe: tokio::sync::Mutex::new(None),
                health_probes: AtomicU64::new(0),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(crate::telemetry::publisher(Arc::downgrade(&cache.inner)));
        }
        if let Some(l2) = &cache.inner.l2 {
            tokio::spawn(events::subscriber(
                Arc::downgrade(&cache.inner),
                l2.client().clone(),
            ));
        }
        Ok(cache)
    }
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

    /// Verifies the key found in a request's headers.
    ///
    /// An L1 hit is answered before the returned future is first polled, so
    /// the common case allocates nothing; a miss boxes the load.
    pub fn verify<'a, R: HeaderSource + ?Sized>(
        &'a self,
        req: &R,
        required: &'a RequiredScopes,
    ) -> Verify<'a> {
        match self.inner.extractor.extract(req) {
            Extracted::Key(key) => self.verify_hash(self.hash_key(key), required),
            Extracted::Missing => Verify::ready(self.counted(Outcome::Missing)),
            Extracted::Malformed(m) => Verify::ready(self.counted(Outcome::Malformed(m))),
        }
    }

    /// Verifies a bare key (already taken out of its header).
    pub fn verify_key<'a>(&'a self, key: &str, required: &'a RequiredScopes) -> Verify<'a> {
        match validate_key(key.as_bytes()) {
            Ok(()) => self.verify_hash(self.hash_key(key), required),
            Err(m) => Verify::ready(self.counted(Outcome::Malformed(m))),
        }
    }

    /// Verifies a key by its hash.
    pub fn verify_hash<'a>(&'a self, hash: KeyHash, required: &'a RequiredScopes) -> Verify<'a> {
        match self.verify_cached(&hash, required) {
            Some(outcome) => Verify::ready(outcome),
            None => Verify(VerifyState::Pending(Box::pin(
                self.verify_uncached(hash, required),
            ))),
        }
    }

    /// The synchronous half of [`verify`](Self::verify), for web adapters:
    /// `Ok(outcome)` when the answer is known without waiting (an early
    /// rejection or an L1 hit), `Err(hash)` when the key must be loaded; pass
    /// that hash to [`verify_owned`](Self::verify_owned).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore, Outcome, RequiredScopes};
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// let mut headers = http::HeaderMap::new();
    /// assert_eq!(cache.verify_now(&headers, &RequiredScopes::none()), Ok(Outcome::Missing));
    /// headers.insert("x-api-key", "ak_unknown".parse().unwrap());
    /// let hash = cache.verify_now(&headers, &RequiredScopes::none()).unwrap_err();
    /// let outcome = cache.verify_owned(hash, RequiredScopes::none()).await;
    /// assert_eq!(outcome, Outcome::Unknown);
    /// # });
    /// ```
    pub fn verify_now<R: HeaderSource + ?Sized>(
        &self,
        req: &R,
        required: &RequiredScopes,
    ) -> Result<Outcome, KeyHash> {
        match self.inner.extractor.extract(req) {
            Extracted::Key(key) => {
                let hash = self.hash_key(key);
                self.verify_cached(&hash, required).ok_or(hash)
            }
            Extracted::Missing => Ok(self.counted(Outcome::Missing)),
            Extracted::Malformed(m) => Ok(self.counted(Outcome::Malformed(m))),
        }
    }

    /// The asynchronous half of [`verify`](Self::verify): loads `hash`
    /// (single flight, L2, store) and judges it. The future owns its inputs,
    /// so it can be stored in a `'static` response future.
    pub fn verify_owned(
        &self,
        hash: KeyHash,
        required: RequiredScopes,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'static>> {
        let this = self.clone();
        Box::pin(async move { this.verify_uncached(hash, &required).await })
    }

    /// Counts `outcome` for the requests-by-outcome metric.
    #[inline]
    fn counted(&self, outcome: Outcome) -> Outcome {
        self.inner.stats.outcomes[outcome.index()].incr();
        outcome
    }

    async fn verify_uncached(&self, hash: KeyHash, required: &RequiredScopes) -> Outcome {
        let outcome = self.verify_uncounted(hash, required).await;
        self.counted(outcome)
    }

    async fn verify_uncounted(&self, hash: KeyHash, required: &RequiredScopes) -> Outcome {
        if self.mode() == Mode::DatabaseOnly {
            return self.verify_from_store(&hash, required).await;
        }
        match self.load(hash).await {
            Ok(entry) => self.judge(&entry, required),
            // Stale-if-error: a record past its freshness but within the
            // stale window, and not invalidated (invalidation removes it),
            // is judged as usual, so it is never served past `expires_at`.
            // A "not found" is never served stale.
            Err(()) => match self.inner.l1.get_stale(&hash) {
                Some(record) => {
                    self.inner
                        .stats
                        .stale_served
                        .fetch_add(1, Ordering::Relaxed);
                    self.judge(&Entry::Found(record, None), required)
                }
                None => Outcome::Unavailable,
            },
        }
    }

    /// The answer from L1 alone, without awaiting anything; `None` when L1
    /// cannot answer (a miss, or `database_only` mode). Web adapters call
    /// this first so the common case needs no future of its own.
    #[inline]
    pub fn verify_cached(&self, hash: &KeyHash, required: &RequiredScopes) -> Option<Outcome> {
        let inner = &*self.inner;
        // Both flags are 0 in normal mode: one load of each, no branch on
        // the combined mode.
        if inner.local_mode.load(Ordering::Relaxed) | inner.fleet_mode.load(Ordering::Relaxed) != 0
        {
            return None;
        }
        match inner.l1.get(hash) {
            Some(entry) => {
                inner.stats.l1_hits.incr();
                let outcome = self.counted(self.judge(&entry, required));
                if outcome == Outcome::Expired {
                    // Expired is final for this record: free the slot now
                    // rather than at the TTL.
                    inner.l1.remove(hash);
                }
                Some(outcome)
            }
            None => {
                inner.stats.l1_misses.incr();
                None
            }
        }
    }

    /// Judges a record now: status, expiry, scopes.
    fn judge(&self, entry: &Entry, required: &RequiredScopes) -> Outcome {
        let record = match entry {
            Entry::NotFound { .. } => return Outcome::Unknown,
            Entry::Found(r, _) => r,
        };
        match record.status {
            KeyStatus::Active => {}
            KeyStatus::Revoked => return Outcome::Revoked,
            KeyStatus::Disabled => return Outcome::Disabled,
        }
        if let Some(at) = record.expires_at {
            if self.inner.clock.now() >= at {
                return Outcome::Expired;
            }
        }
        if !record.scopes.grants_all(required) {
            return Outcome::InsufficientScope {
                missing: record.scopes.missing(required),
            };
        }
        Outcome::Valid(VerifiedKey::new(record.clone()))
    }

    async fn verify_from_store(&self, hash: &KeyHash, required: &RequiredScopes) -> Outcome {
        match self.query_store(hash).await {
            Ok(Some(record)) => self.judge(&Entry::Found(Arc::new(record), None), required),
            Ok(None) => Outcome::Unknown,
            Err(()) => Outcome::Unavailable,
        }
    }

    /// L1 missed: join or lead the single flight for `hash`.
    async fn load(&self, hash: KeyHash) -> Loaded {
        loop {
            match self.inner.flights.join(hash) {
                Role::Leader(leader) => {
                    let started = Instant::now();
                    let loaded = self.lead(hash).await;
                    metrics::histogram!("apikey_cache_lookup_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    leader.finish(loaded.clone());
                    return loaded;
                }
                Role::Follower(rx) => {
                    if let Some(loaded) = flight::wait(rx).await {
                        return loaded;
                    }
                    // The leader's request was cancelled: take over.
                }
            }
        }
    }

    /// Loads `hash` from L2, then the store, filling the tiers.
    async fn lead(&self, hash: KeyHash) -> Loaded {
        let inner = &*self.inner;
        let generation = inner.generation.load(Ordering::SeqCst);
        let mut skip_l2_fill = false;
        if let Some(l2) = &inner.l2 {
            match l2.get(&hash).await {
                L2Read::Found(record) => {
                    let entry = inner.l1.found(Arc::from(record));
                    self.fill_l1(hash, entry.clone(), generation);
                    return Ok(entry);
                }
                L2Read::NotFound => {
                    let entry = inner.l1.not_found();
                    self.fill_l1(hash, entry.clone(), generation);
                    return Ok(entry);
                }
                L2Read::Tombstone | L2Read::Unavailable => skip_l2_fill = true,
                L2Read::Miss => {}
            }
        }
        let entry = match self.query_store(&hash).await {
            Ok(Some(record)) => inner.l1.found(Arc::new(record)),
            Ok(None) => inner.l1.not_found(),
            Err(()) => return Err(()),
        };
        if let (Some(l2), false) = (&inner.l2, skip_l2_fill) {
            // A load that raced an invalidation must not refill Redis; the
            // tombstone + SET NX guard covers the rest (see module docs).
            if inner.generation.load(Ordering::SeqCst) == generation {
                let (value, ttl) = match &entry {
                    Entry::Found(r, _) => (
                        codec::encode_found(r),
                        lifetime_until(r, inner.config.l2_ttl, &*inner.clock),
                    ),
                    Entry::NotFound { .. } => {
                        (codec::encode_not_found(), inner.config.negative_ttl)
                    }
                };
                l2.fill(&hash, value, ttl).await;
            }
        }
        self.fill_l1(hash, entry.clone(), generation);
        Ok(entry)
    }

    fn fill_l1(&self, hash: KeyHash, entry: Entry, generation: u64) {
        let inner = &*self.inner;
        if let Entry::Found(r, _) = &entry {
            if r.is_expired_at(inner.clock.now()) {
                // Expired is final until the store says otherwise; keeping
                // it would outlive `expires_at`.
                return;
            }
        }
        inner.l1.insert(hash, entry);
        if inner.generation.load(Ordering::SeqCst) != generation {
            inner.l1.remove(&hash);
        }
    }

    async fn query_store(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, ()> {
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

    /// Counters and tier state.
    pub fn stats(&self) -> CacheStats {
        let inner = &*self.inner;
        let l2 = inner.l2.as_deref();
        let ms =
            |us: &AtomicU64| Duration::from_micros(us.load(Ordering::Relaxed)).as_secs_f64() * 1e3;
        let l2_count = |f: fn(&L2) -> &AtomicU64| l2.map_or(0, |l2| f(l2).load(Ordering::Relaxed));
        CacheStats {
            l1_entries: inner.l1.entry_count(),
            l1_hits: inner.stats.l1_hits.get(),
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
            outcomes: std::array::from_fn(|i| inner.stats.outcomes[i].get()),
        }
    }

    /// Entries in L1 after running moka's pending maintenance: exact, for
    /// tests and health checks.
    pub fn l1_entry_count_exact(&self) -> u64 {
        self.inner.l1.sync();
        self.inner.l1.entry_count()
    }

    /// Negative ("no such key") entries in L1: scans L1, so call it at most
    /// about once a second (health checks).
    pub fn l1_negative_entries(&self) -> u64 {
        self.inner.l1.negative_count()
    }
}
