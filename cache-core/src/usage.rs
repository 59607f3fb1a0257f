//! Usage counters: counted in memory on the request path, flushed in batches
//! to Redis (fleet-wide monthly counts) and to the store (durable totals).
//!
//! Each key has one [`UsageCell`], shared by its L1 entries through an
//! `Arc`, so counting a request is one atomic add: no lock, no I/O.
//!
//! Exactly once, whatever fails: the flusher moves counts out of the cells
//! into a *batch* with a fresh id, then offers that same batch (same id, same
//! counts) to the store until the store acknowledges it. The store applies a
//! batch id at most once (`KeyStore::record_usage`), so a retry after an
//! ambiguous failure (committed, but the acknowledgement was lost) counts
//! nothing twice, and nothing leaves memory before it is durable. Redis gets
//! its own batch the same way, deduplicated by a marker key set in the same
//! script that adds the counts. Memory is bounded by the number of keys: a
//! cell leaves the registry once it is empty and no cache entry holds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use crate::{KeyId, StoreError, UsageBatch, UsageDelta};

/// Requests counted for one key since its counts were last taken for a batch.
#[derive(Debug, Default)]
pub(crate) struct UsageCell {
    pending: AtomicU64,
}

impl UsageCell {
    #[inline]
    pub(crate) fn incr(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }
}

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<KeyId, Arc<UsageCell>>>;

/// Outstanding counts for health and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) keys: u64,
    pub(crate) increments: u64,
}

pub(crate) struct Usage {
    shards: Vec<Shard>,
    /// The store batch being delivered; retried as-is until acknowledged.
    store_batch: tokio::sync::Mutex<Option<UsageBatch>>,
    /// The Redis batch being delivered, and counts waiting for the next.
    redis_batch: tokio::sync::Mutex<RedisUsage>,
    pub(crate) flush_errors: AtomicU64,
    pub(crate) flushed: AtomicU64,
}

fn shard_of(id: &KeyId) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(id.as_str());
    (h as usize) % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Usage {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            store_batch: tokio::sync::Mutex::new(None),
            redis_batch: tokio::sync::Mutex::new(RedisUsage::default()),
            flush_errors: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// The cell of `id`, shared with every cache entry of that key.
    pub(crate) fn cell(&self, id: &KeyId) -> Arc<UsageCell> {
        lock(&self.shards[shard_of(id)])
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// Moves every cell's count into one batch; drops idle cells. Never
    /// awaits: counts taken out of the cells live only in the returned
    /// batch, so a flush cancelled halfway through taking would lose them.
    fn take(&self, now: OffsetDateTime) -> Vec<UsageDelta> {
        let mut deltas = Vec::new();
        for shard in &self.shards {
            lock(shard).retain(|id, cell| {
                let n = cell.pending.swap(0, Ordering::AcqRel);
                if n > 0 {
                    deltas.push(UsageDelta {
                        key_id: id.clone(),
                        requests: n,
                        // Flush time: exact to the flush interval, and free
                        // of a clock read on every request.
                        last_used_at: now,
                    });
                }
                // Keep cells that cache entries still point at: dropping
                // one would detach its future counts from the registry.
                n > 0 || Arc::strong_count(cell) > 1
            });
        }
        deltas
    }

    /// Counts not yet acknowledged by the store.
    pub(crate) fn pending(&self) -> Pending {
        let mut p = Pending::default();
        for shard in &self.shards {
            for cell in lock(shard).values() {
                let n = cell.pending.load(Ordering::Relaxed);
                if n > 0 {
                    p.keys += 1;
                    p.increments += n;
                }
            }
        }
        if let Ok(batch) = self.store_batch.try_lock() {
            if let Some(b) = batch.as_ref() {
                p.keys += b.deltas.len() as u64;
                p.increments += b.deltas.iter().map(|d| d.requests).sum::<u64>();
            }
        }
        p
    }
}

/// Where batches go; implemented by the cache (store + Redis).
#[async_trait::async_trait]
pub(crate) trait Sink: Send + Sync {
    async fn to_store(&self, batch: &UsageBatch) -> Result<(), StoreError>;
    /// `Ok(false)` when there is no Redis to deliver to.
    async fn to_redis(&self, batch: &UsageBatch) -> Result<bool, String>;
    /// Whether there is a Redis to deliver to at all (configured, whatever
    /// its health).
    fn has_redis(&self) -> bool;
}

impl Usage {
    /// One flush: deliver the batches in flight, then new counts. Returns
    /// whether everything counted so far has reached the store.
    pub(crate) async fn flush(&self, sink: &dyn Sink, now: OffsetDateTime) -> bool {
        // Hold both slots for the whole flush, so two flushes (the timer and
        // a shutdown) cannot interleave.
        let mut store_slot = self.store_batch.lock().await;
        let mut redis = self.redis_batch.lock().await;
        if store_slot.is_none() {
            let deltas = self.take(now);
            if !deltas.is_empty() {
                if sink.has_redis() {
                    for d in &deltas {
                        *redis.backlog.entry(d.key_id.clone()).or_default() += d.requests;
                    }
                }
                *store_slot = Some(UsageBatch {
                    id: uuid::Uuid::new_v4(),
                    deltas,
                });
            }
        }
        if let Some(batch) = store_slot.as_ref() {
            match sink.to_store(batch).await {
                Ok(()) => {
                    let n: u64 = batch.deltas.iter().map(|d| d.requests).sum();
                    self.flushed.fetch_add(n, Ordering::Relaxed);
                    *store_slot = None;
                }
                Err(e) => {
                    self.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(batch = %batch.id, error = %e, "usage flush to the store failed; the same batch will be retried");
                }
            }
        }
        // Redis is delivered independently, so its outage never holds up
        // the store: counts wait in a per-key backlog (bounded by the number
        // of keys) while a batch is in flight.
        if redis.in_flight.is_none() && !redis.backlog.is_empty() {
            let deltas = redis
                .backlog
                .drain()
                .map(|(key_id, requests)| UsageDelta {
                    key_id,
                    requests,
                    last_used_at: now,
                })
                .collect();
            redis.in_flight = Some(UsageBatch {
                id: uuid::Uuid::new_v4(),
                deltas,
            });
        }
        if let Some(batch) = redis.in_flight.as_ref() {
            match sink.to_redis(batch).await {
                Ok(_) => redis.in_flight = None,
                Err(e) => {
                    self.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(batch = %batch.id, error = %e, "usage flush to redis failed; will retry");
                }
            }
        }
        store_slot.is_none()
    }
}

/// The Redis side of the flusher.
#[derive(Default)]
pub(crate) struct RedisUsage {
    in_flight: Option<UsageBatch>,
    backlog: HashMap<KeyId, u64>,
}

/// Flushes every `interval` while the cache lives.
pub(crate) async fn flusher(cache: std::sync::Weak<crate::cache::Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = cache.upgrade() else { return };
        let cache = crate::ApiKeyCache { inner };
        if cache.inner.shutting_down.load(Ordering::Acquire) {
            return;
        }
        cache.flush_usage().await;
    }
}

/// Usage could not be flushed completely before the shutdown deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{increments} request counts for {keys} keys could not be flushed to the store")]
#[non_exhaustive]
pub struct ShutdownError {
    /// Keys with counts left in memory.
    pub keys: u64,
    /// Requests counted but not durable.
    pub increments: u64,
}

const REDIS_FLUSH: &str = r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  for i = 2, #KEYS do
    redis.call('INCRBY', KEYS[i], ARGV[i + 1])
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return 1
"#;

#[async_trait::async_trait]
impl Sink for crate::ApiKeyCache {
    async fn to_store(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        let inner = &*self.inner;
        tokio::time::timeout(inner.config.store_timeout, inner.store.record_usage(batch))
            .await
            .map_err(|_| StoreError::Timeout)?
    }

    fn has_redis(&self) -> bool {
        self.inner.l2.is_some()
    }

    async fn to_redis(&self, batch: &UsageBatch) -> Result<bool, String> {
        let Some(l2) = self.inner.l2.as_deref() else {
            return Ok(false);
        };
        let prefix = &self.inner.config.key_prefix;
        let month = crate::limits::month_tag(self.inner.clock.now());
        let script = redis::Script::new(REDIS_FLUSH);
        let mut inv = script.prepare_invoke();
        // The marker makes a retried batch a no-op: at most once in Redis.
        inv.key(format!("{prefix}usage-batch:{}", batch.id))
            .arg(86_400_000u64)
            .arg(40u64 * 86_400_000);
        for d in &batch.deltas {
            inv.key(format!("{prefix}usage:{}:{month}", d.key_id));
            inv.arg(d.requests);
        }
        l2.call_script::<i64>(&inv)
            .await
            .map(|_| true)
            .map_err(|e| e.to_string())
    }
}

impl crate::ApiKeyCache {
    /// Flushes counted requests now (the background task does this every
    /// `usage_flush_interval`). Returns whether every count so far is in the
    /// store.
    pub async fn flush_usage(&self) -> bool {
        let now = self.inner.clock.now();
        self.inner.usage.flush(self, now).await
    }

    /// Stops the background flusher and flushes everything counted, retrying
    /// with back-off until the store has it all or `deadline` passes. Call it
    /// on SIGTERM after the server stopped taking requests.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey, RequiredScopes};
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
    /// let key = store.create_key(cache.hasher(), NewKey::new("acme", ["a"])).await.unwrap();
    /// for _ in 0..3 {
    ///     cache.verify_key(&key.plaintext, &RequiredScopes::none()).await;
    /// }
    /// cache.shutdown(Duration::from_secs(5)).await.unwrap();
    /// let details = store.key_details(&key.record.id).await.unwrap().unwrap();
    /// assert_eq!(details.total_requests, 3);
    /// # });
    /// ```
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), ShutdownError> {
        self.inner.shutting_down.store(true, Ordering::Release);
        let give_up = tokio::time::Instant::now() + deadline;
        let mut backoff = Duration::from_millis(50);
        loop {
            // Two passes: the first may deliver an older batch in flight.
            if self.flush_usage().await && self.flush_usage().await {
                let p = self.inner.usage.pending();
                if p.increments == 0 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() + backoff > give_up {
                let p = self.inner.usage.pending();
                tracing::error!(
                    keys = p.keys,
                    increments = p.increments,
                    "usage not flushed before the shutdown deadline"
                );
                return Err(ShutdownError {
                    keys: p.keys,
                    increments: p.increments,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
