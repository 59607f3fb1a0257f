//! Cache warming: preloading the most recently used keys at start-up.
//!
//! With [`warm_keys`](crate::CacheConfig::warm_keys) = N > 0
//! (`APIKEY_CACHE_WARM_KEYS`), building the cache spawns a task that pages
//! through [`KeyStore::recently_used`](crate::KeyStore::recently_used), most
//! recently used first, and puts each key into L1 (and Redis, when it is
//! configured and answers) the way a request's load would. Building the
//! cache and answering requests never wait for it; `/health/cache` shows its
//! progress (`warming`), and it logs a line when it starts, one per batch,
//! and one when it ends (counts only: the store holds hashes, and not even
//! their fingerprints are logged).
//!
//! Bounds:
//! * **Keys:** at most N, and at most `l1_capacity` (more would only evict
//!   what warming itself loaded).
//! * **Store load:** one query per batch of at most
//!   [`warm_batch_size`](crate::CacheConfig::warm_batch_size) keys (default
//!   500), each under `store_timeout`, with
//!   [`warm_batch_pause`](crate::CacheConfig::warm_batch_pause) between
//!   them. A failed query is retried twice, then warming reports `failed`.
//! * **Time:** warming stops at
//!   [`warm_deadline`](crate::CacheConfig::warm_deadline) after the cache
//!   was built (default 60 s), wherever it is, and reports `done` with the
//!   keys it had loaded (and a warning in the log).
//!
//! # Never re-admitting an invalidated key
//!
//! A batch is just another load, filled through the same path
//! ([`ApiKeyCache::fill_from_store`]): the invalidation generation is read
//! and Redis's clock stamped *before* the store query, so a record the
//! query read before a revocation is kept out of L1 by the generation check
//! (under the same lock invalidations take) and out of Redis by `SET NX`
//! over the tombstone and the stamp's window (see `cache.rs`). A batch that
//! raced an invalidation is read again (the store now has the new state),
//! a few times at most.
//!
//! # Choices
//!
//! * Keys are loaded as what they are, like any load: a recently used
//!   revoked or disabled key is cached as such (it is likely to be presented
//!   again), an expired one as "expired" for the negative TTL. Keys never
//!   used (`last_used_at` unset) are not listed.
//! * With Redis configured, warming first waits (briefly) for the
//!   invalidation subscriber, whose first subscription clears L1; if Redis
//!   does not answer, it warms L1 alone.
//! * `database_only` at start: no warming (state `off`). Entering it while
//!   warming runs stops warming (state `off`): the caches are bypassed, and
//!   leaving the mode clears L1 anyway.
//! * A store without [`recently_used`](crate::KeyStore::recently_used) (the
//!   default body answers `Unsupported`) makes warming `failed`, once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::cache::Inner;
use crate::store::{RecentCursor, RecentKey};
use crate::{ApiKeyCache, KeyHash, Mode, StoreError};

/// Attempts of one batch query before warming gives up.
const QUERY_ATTEMPTS: u32 = 3;
/// Wait before the second attempt of a failed query (then twice that).
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Times one batch is read again because an invalidation raced its fills;
/// after that, what it could fill is kept and warming moves on.
const MAX_RACES: u32 = 5;
/// Redis fills of one batch in flight at once (one multiplexed connection).
const FILL_CONCURRENCY: usize = 16;
/// How often warming looks whether the subscriber is listening yet.
const SUBSCRIBER_POLL: Duration = Duration::from_millis(10);

/// Where cache warming is, as `/health/cache` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WarmingState {
    /// Not configured (`warm_keys` is 0), or not run (no runtime,
    /// `database_only` at start), or stopped by `database_only`.
    Off,
    /// Loading keys in the background.
    Running,
    /// Finished: every key asked for (or every key the store had) was
    /// loaded, or the deadline stopped it first (logged as a warning).
    Done,
    /// The store could not list recently used keys; the cache works as
    /// usual and loads keys on first use.
    Failed,
}

impl WarmingState {
    /// `off`, `running`, `done` or `failed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Running,
            2 => Self::Done,
            3 => Self::Failed,
            _ => Self::Off,
        }
    }

    const fn to_u8(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Running => 1,
            Self::Done => 2,
            Self::Failed => 3,
        }
    }
}

impl std::fmt::Display for WarmingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `warming` block of `/health/cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WarmingHealth {
    /// Where warming is.
    pub state: WarmingState,
    /// Keys warming has put into L1 so far.
    pub loaded: u64,
}

/// Warming's progress, shared by the task and health.
#[derive(Debug, Default)]
pub(crate) struct Warming {
    state: AtomicU8,
    loaded: AtomicU64,
}

impl Warming {
    fn set(&self, state: WarmingState) {
        self.state.store(state.to_u8(), Ordering::Release);
    }

    fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Acquire)
    }

    fn report(&self) -> WarmingHealth {
        WarmingHealth {
            state: WarmingState::from_u8(self.state.load(Ordering::Acquire)),
            loaded: self.loaded(),
        }
    }
}

impl ApiKeyCache {
    /// Where cache warming is ([`CacheConfig::warm_keys`](crate::CacheConfig::warm_keys)),
    /// as `/health/cache` reports it.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore, WarmingState};
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// assert_eq!(cache.warming().state, WarmingState::Off);
    ///
    /// let config = CacheConfig::builder().warm_keys(1000).build().unwrap();
    /// let cache = ApiKeyCache::new(config, Arc::new(MemoryStore::new())).unwrap();
    /// // In the background: the cache answers at once.
    /// assert_eq!(cache.warming().state, WarmingState::Running);
    /// # });
    /// ```
    pub fn warming(&self) -> WarmingHealth {
        self.inner.warming.report()
    }

    /// One batch: up to `limit` keys after `cursor`, read from the store and
    /// filled like any load; read again if an invalidation raced the fills.
    /// `None` when `database_only` came on meanwhile (nothing filled).
    async fn warm_batch(
        &self,
        limit: usize,
        cursor: Option<&RecentCursor>,
    ) -> Result<Option<Vec<RecentKey>>, StoreError> {
        let inner = &*self.inner;
        let mut filled: HashSet<KeyHash> = HashSet::new();
        let mut races = 0;
        loop {
            // Both before the store query: see the module docs.
            let generation = inner.generation.load(Ordering::SeqCst);
            let stamp = match &inner.l2 {
                Some(l2) => l2.now_stamp().await,
                None => None,
            };
            let mut keys = self.query_recent(limit, cursor).await?;
            keys.truncate(limit);
            if self.mode() == Mode::DatabaseOnly {
                return Ok(None);
            }
            let records: Vec<_> = keys.iter().map(|key| key.record.clone()).collect();
            let fills: Vec<(KeyHash, bool)> = futures_util::stream::iter(records)
                .map(|record| async move {
                    let hash = record.hash;
                    let (_, filled) = self
                        .fill_from_store(hash, Some(record), generation, stamp)
                        .await;
                    (hash, filled)
                })
                .buffered(FILL_CONCURRENCY)
                .collect()
                .await;
            let mut raced = false;
            for (hash, ok) in fills {
                if !ok {
                    raced = true;
                } else if filled.insert(hash) {
                    inner.warming.loaded.fetch_add(1, Ordering::AcqRel);
                }
            }
            if !raced || races >= MAX_RACES {
                return Ok(Some(keys));
            }
            races += 1;
            tracing::debug!(
                attempt = races,
                "cache warming batch raced an invalidation; reading it again"
            );
            tokio::time::sleep(inner.config.warm_batch_pause).await;
        }
    }

    /// One batch query, under the store timeout, retried on failure.
    async fn query_recent(
        &self,
        limit: usize,
        cursor: Option<&RecentCursor>,
    ) -> Result<Vec<RecentKey>, StoreError> {
        let inner = &*self.inner;
        let mut attempt = 1;
        loop {
            let query = inner.store.recently_used(limit, cursor);
            let result = tokio::time::timeout(inner.config.store_timeout, query)
                .await
                .unwrap_or(Err(StoreError::Timeout));
            match result {
                Ok(keys) => return Ok(keys),
                Err(e @ StoreError::Unsupported(_)) => return Err(e),
                Err(e) if attempt >= QUERY_ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "cache warming query failed; retrying");
                    tokio::time::sleep(RETRY_BACKOFF * attempt).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// Starts warming in the background if it is configured; called once the
/// cache is built.
pub(crate) fn start(cache: &ApiKeyCache) {
    let c = &cache.inner.config;
    if c.warm_keys == 0 {
        return;
    }
    if cache.mode() == Mode::DatabaseOnly {
        tracing::info!(
            keys = c.warm_keys,
            "cache warming skipped: database_only mode bypasses the caches"
        );
        return;
    }
    let warming = &cache.inner.warming;
    warming.set(WarmingState::Running);
    let deadline = Instant::now() + c.warm_deadline;
    if cache
        .spawn(run(Arc::downgrade(&cache.inner), deadline))
        .is_none()
    {
        warming.set(WarmingState::Off);
        tracing::warn!("cache warming skipped: no Tokio runtime to run it in");
    }
}

/// How warming ended, short of its deadline.
enum Ended {
    /// Every key asked for, or every key the store had.
    Complete,
    /// `database_only` came on.
    DatabaseOnly,
    /// The cache was dropped.
    Gone,
}

/// The warming task: holds the cache weakly between batches, so dropping
/// the cache ends it.
async fn run(cache: Weak<Inner>, deadline: Instant) {
    let Some(inner) = cache.upgrade() else { return };
    let c = &inner.config;
    let target = c.warm_keys.min(c.l1_capacity);
    let (batch, pause) = (c.warm_batch_size, c.warm_batch_pause);
    tracing::info!(
        keys = target,
        batch_size = batch,
        deadline_secs = c.warm_deadline.as_secs_f64(),
        redis = inner.l2.is_some(),
        "cache warming started"
    );
    if target < c.warm_keys {
        tracing::info!(
            asked = c.warm_keys,
            l1_capacity = c.l1_capacity,
            "cache warming capped at the L1 capacity"
        );
    }
    drop(inner);
    let ended = tokio::time::timeout_at(deadline, warm(&cache, target, batch, pause)).await;
    let Some(inner) = cache.upgrade() else { return };
    let warming = &inner.warming;
    let loaded = warming.loaded();
    match ended {
        Ok(Ok(Ended::Complete)) => {
            warming.set(WarmingState::Done);
            tracing::info!(loaded, "cache warming done");
        }
        Ok(Ok(Ended::DatabaseOnly)) => {
            warming.set(WarmingState::Off);
            tracing::info!(
                loaded,
                "cache warming stopped: database_only mode bypasses the caches"
            );
        }
        Ok(Ok(Ended::Gone)) => {}
        Ok(Err(e)) => {
            warming.set(WarmingState::Failed);
            tracing::warn!(
                loaded,
                error = %e,
                "cache warming failed; keys load on first use as usual"
            );
        }
        Err(_) => {
            warming.set(WarmingState::Done);
            tracing::warn!(
                loaded,
                keys = target,
                "cache warming stopped at its deadline (APIKEY_CACHE_WARM_DEADLINE)"
            );
        }
    }
}

/// Pages through the store's most recently used keys, `batch` at a time,
/// until `target` keys were read or the store has no more.
async fn warm(
    cache: &Weak<Inner>,
    target: u64,
    batch: u64,
    pause: Duration,
) -> Result<Ended, StoreError> {
    wait_for_subscriber(cache).await;
    let mut cursor: Option<RecentCursor> = None;
    let mut read = 0u64;
    let mut batches = 0u64;
    while read < target {
        let Some(inner) = cache.upgrade() else {
            return Ok(Ended::Gone);
        };
        let this = ApiKeyCache { inner };
        if this.mode() == Mode::DatabaseOnly {
            return Ok(Ended::DatabaseOnly);
        }
        let limit = (target - read).min(batch);
        let want = usize::try_from(limit).unwrap_or(usize::MAX);
        let Some(keys) = this.warm_batch(want, cursor.as_ref()).await? else {
            return Ok(Ended::DatabaseOnly);
        };
        batches += 1;
        read += keys.len() as u64;
        tracing::info!(
            batch = batches,
            keys = keys.len(),
            read,
            loaded = this.inner.warming.loaded(),
            "cache warming batch loaded"
        );
        if keys.len() < want {
            // The store has no more used keys.
            break;
        }
        cursor = keys.last().map(RecentKey::cursor);
        drop(this);
        if read < target {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(Ended::Complete)
}

/// With Redis, waits (at most two connection attempts' time) for the
/// invalidation subscriber: its first subscription clears L1, which would
/// drop what warming loaded before it.
async fn wait_for_subscriber(cache: &Weak<Inner>) {
    let Some(inner) = cache.upgrade() else { return };
    if inner.l2.is_none() {
        return;
    }
    let c = &inner.config;
    let patience = (c.redis_connect_timeout + c.redis_timeout) * 2 + Duration::from_millis(200);
    let until = Instant::now() + patience;
    drop(inner);
    loop {
        let Some(inner) = cache.upgrade() else { return };
        if inner.events.subscribed.load(Ordering::Acquire) {
            return;
        }
        if Instant::now() >= until {
            tracing::warn!(
                "cache warming starts before the invalidation subscriber listens \
                 (Redis unreachable?): L1 only, cleared when it subscribes"
            );
            return;
        }
        drop(inner);
        tokio::time::sleep(SUBSCRIBER_POLL).await;
    }
}
