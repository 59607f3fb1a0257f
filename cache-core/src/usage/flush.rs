//! Delivering usage counts: to the store (durable totals) and to Redis
//! (fleet-wide counts per month), each exactly once, each on its own.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use time::OffsetDateTime;

use super::{MonthId, Pending, Taken, Usage};
use crate::{ApiKeyCache, KeyId, StoreError, UsageBatch, UsageDelta};

/// A batch for Redis: counts by key and by the month they were served in.
#[derive(Debug, Clone)]
pub(crate) struct RedisBatch {
    pub(crate) id: uuid::Uuid,
    pub(crate) counts: Vec<(KeyId, MonthId, u64)>,
}

/// Counts on their way to one destination: the batch offered until it is
/// acknowledged, and what waits for the next one.
#[derive(Debug)]
struct Outbox<K, B> {
    backlog: HashMap<K, u64>,
    in_flight: Option<B>,
}

impl<K, B> Default for Outbox<K, B> {
    fn default() -> Self {
        Self {
            backlog: HashMap::new(),
            in_flight: None,
        }
    }
}

/// Both outboxes; locked for a whole flush, so two flushes (the timer and
/// a shutdown) cannot interleave.
#[derive(Debug, Default)]
pub(crate) struct Outboxes {
    store: Outbox<KeyId, UsageBatch>,
    /// `last_used_at` of each key in the store backlog.
    last_used: HashMap<KeyId, OffsetDateTime>,
    redis: Outbox<(KeyId, MonthId), RedisBatch>,
}

fn pending_of<'a>(counts: impl Iterator<Item = &'a u64>) -> Pending {
    let mut p = Pending::default();
    for n in counts.filter(|n| **n > 0) {
        p.keys += 1;
        p.increments += n;
    }
    p
}

impl Outboxes {
    /// Counts not yet in the store.
    pub(crate) fn store_pending(&self) -> Pending {
        let in_flight = self.store.in_flight.iter().flat_map(|b| &b.deltas);
        pending_of(
            self.store
                .backlog
                .values()
                .chain(in_flight.map(|d| &d.requests)),
        )
    }

    /// Counts not yet in Redis.
    fn redis_pending(&self) -> Pending {
        let in_flight = self.redis.in_flight.iter().flat_map(|b| &b.counts);
        pending_of(
            self.redis
                .backlog
                .values()
                .chain(in_flight.map(|(_, _, n)| n)),
        )
    }

    /// Files counts taken from the cells. Synchronous: nothing taken may be
    /// held across an await outside the outboxes.
    fn file(&mut self, taken: Taken, now: OffsetDateTime, redis: bool) {
        for (id, month, n) in taken {
            *self.store.backlog.entry(id.clone()).or_default() += n;
            self.last_used.insert(id.clone(), now);
            if redis {
                *self.redis.backlog.entry((id, month)).or_default() += n;
            }
        }
    }

    fn next_store_batch(&mut self) -> Option<&UsageBatch> {
        if self.store.in_flight.is_none() && !self.store.backlog.is_empty() {
            let deltas = self
                .store
                .backlog
                .drain()
                .map(|(key_id, requests)| UsageDelta {
                    last_used_at: self
                        .last_used
                        .remove(&key_id)
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    key_id,
                    requests,
                })
                .collect();
            self.store.in_flight = Some(UsageBatch {
                id: uuid::Uuid::new_v4(),
                deltas,
            });
        }
        self.store.in_flight.as_ref()
    }

    fn next_redis_batch(&mut self) -> Option<&RedisBatch> {
        if self.redis.in_flight.is_none() && !self.redis.backlog.is_empty() {
            let counts = self
                .redis
                .backlog
                .drain()
                .map(|((id, month), n)| (id, month, n))
                .collect();
            self.redis.in_flight = Some(RedisBatch {
                id: uuid::Uuid::new_v4(),
                counts,
            });
        }
        self.redis.in_flight.as_ref()
    }
}

/// Where batches go; implemented by the cache (store + Redis).
#[async_trait::async_trait]
pub(crate) trait Sink: Send + Sync {
    async fn to_store(&self, batch: &UsageBatch) -> Result<(), StoreError>;
    async fn to_redis(&self, batch: &RedisBatch) -> Result<(), String>;
    /// Whether there is a Redis to deliver to at all (configured, whatever
    /// its health).
    fn has_redis(&self) -> bool;
}

/// What a flush left undelivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Left {
    pub(crate) store: Pending,
    pub(crate) redis: Pending,
}

/// Batches one flush may deliver per destination: the one in flight, then
/// one of what waited behind it.
const BATCHES_PER_FLUSH: usize = 2;

impl Usage {
    /// One flush: file new counts, then offer each destination its batch in
    /// flight and the next one. Returns what is left undelivered.
    pub(crate) async fn flush(&self, sink: &dyn Sink, now: OffsetDateTime) -> Left {
        let mut boxes = self.outboxes.lock().await;
        boxes.file(self.take(), now, sink.has_redis());
        for _ in 0..BATCHES_PER_FLUSH {
            let Some(batch) = boxes.next_store_batch() else {
                break;
            };
            match sink.to_store(batch).await {
                Ok(()) => {
                    let n: u64 = batch.deltas.iter().map(|d| d.requests).sum();
                    self.flushed.fetch_add(n, Ordering::Relaxed);
                    boxes.store.in_flight = None;
                }
                Err(e) => {
                    self.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(batch = %batch.id, error = %e, "usage flush to the store failed; the same batch will be retried");
                    break;
                }
            }
        }
        // Redis is delivered independently, so an outage of either never
        // holds up the other: counts wait in the backlog meanwhile.
        for _ in 0..BATCHES_PER_FLUSH {
            let Some(batch) = boxes.next_redis_batch() else {
                break;
            };
            match sink.to_redis(batch).await {
                Ok(()) => boxes.redis.in_flight = None,
                Err(e) => {
                    self.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(batch = %batch.id, error = %e, "usage flush to redis failed; the same batch will be retried");
                    break;
                }
            }
        }
        Left {
            store: boxes.store_pending(),
            redis: boxes.redis_pending(),
        }
    }
}

/// Flushes every `interval` while the cache lives.
pub(crate) async fn flusher(cache: std::sync::Weak<crate::cache::Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = cache.upgrade() else { return };
        let cache = ApiKeyCache { inner };
        if cache.inner.shutting_down.load(Ordering::Acquire) {
            return;
        }
        cache.flush_usage().await;
    }
}

/// What [`ApiKeyCache::shutdown`] could not deliver before its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not delivered before the shutdown deadline: {increments} request counts for {keys} keys \
     to the store, {redis_increments} for {redis_keys} keys to Redis, {invalidations} invalidations"
)]
#[non_exhaustive]
pub struct ShutdownError {
    /// Keys with counts not in the store.
    pub keys: u64,
    /// Requests counted but not durable in the store.
    pub increments: u64,
    /// Keys (per month) with counts not in Redis.
    pub redis_keys: u64,
    /// Requests counted but not in Redis's fleet-wide counts.
    pub redis_increments: u64,
    /// Invalidations that did not reach Redis (other instances may still
    /// serve those keys from their L1, at most `l1_ttl`).
    pub invalidations: u64,
}

/// Applies one batch: every count and then the batch's marker, or nothing
/// (the marker makes a retried batch a no-op). Nothing can fail between
/// the first write and the marker: the values are checked (bad data is
/// replaced, and counted) before anything is written, and the `#!lua`
/// header has Redis (7.0+) refuse the whole script up front when it is out
/// of memory, instead of failing at its first write.
const REDIS_FLUSH: &str = r"#!lua
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local bad = 0
for i = 2, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t == 'string' then
    if not string.match(redis.call('GET', KEYS[i]), '^%-?%d+$') then
      redis.call('DEL', KEYS[i])
      bad = bad + 1
    end
  elseif t ~= 'none' then
    redis.call('DEL', KEYS[i])
    bad = bad + 1
  end
end
for i = 2, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1 + bad
";

/// How long a batch marker is kept: longer than any retry of its batch.
const MARKER_TTL_MS: u64 = 86_400_000;

/// How long a month's count is kept after its last flush (a month, and
/// some days to read it after the month ended).
const COUNT_TTL_MS: u64 = 40 * 86_400_000;

#[async_trait::async_trait]
impl Sink for ApiKeyCache {
    async fn to_store(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        let inner = &*self.inner;
        tokio::time::timeout(inner.config.store_timeout, inner.store.record_usage(batch))
            .await
            .map_err(|_| StoreError::Timeout)?
    }

    fn has_redis(&self) -> bool {
        self.inner.l2.is_some()
    }

    async fn to_redis(&self, batch: &RedisBatch) -> Result<(), String> {
        let Some(l2) = self.inner.l2.as_deref() else {
            return Ok(());
        };
        let prefix = &self.inner.config.key_prefix;
        let script = redis::Script::new(REDIS_FLUSH);
        let mut inv = script.prepare_invoke();
        inv.key(format!("{prefix}usage-batch:{}", batch.id))
            .arg(MARKER_TTL_MS)
            .arg(COUNT_TTL_MS);
        for (id, month, n) in &batch.counts {
            inv.key(usage_key(prefix, id, *month));
            inv.arg(*n);
        }
        let applied = l2
            .call_script::<i64>(&inv)
            .await
            .map_err(|e| e.to_string())?;
        if applied > 1 {
            l2.stats
                .bad_values
                .fetch_add(u64::try_from(applied - 1).unwrap_or(0), Ordering::Relaxed);
            tracing::warn!(
                replaced = applied - 1,
                "undecodable usage counts in redis were replaced"
            );
        }
        Ok(())
    }
}

/// The Redis key of `id`'s request count in `month`.
pub(crate) fn usage_key(prefix: &str, id: &KeyId, month: MonthId) -> String {
    format!("{prefix}usage:{id}:{}", month.tag())
}

impl ApiKeyCache {
    /// Flushes counted requests now (the background task does this every
    /// `usage_flush_interval`). Returns whether every count so far is in the
    /// store.
    pub async fn flush_usage(&self) -> bool {
        let now = self.inner.clock.now();
        let left = self.inner.usage.flush(self, now).await;
        left.store.increments == 0
    }

    /// Stops the background flusher, then delivers everything pending,
    /// retrying with back-off until `deadline` passes: invalidations that
    /// did not reach Redis yet, usage counts to the store and to Redis.
    /// Call it on SIGTERM after the server stopped taking requests.
    ///
    /// `Err` tells what could not be delivered in time.
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
            if self.pending_invalidations() > 0 {
                self.retry_invalidations().await;
            }
            let now = self.inner.clock.now();
            let left = self.inner.usage.flush(self, now).await;
            let invalidations = self.pending_invalidations();
            if left == Left::default() && invalidations == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() + backoff > give_up {
                let e = ShutdownError {
                    keys: left.store.keys,
                    increments: left.store.increments,
                    redis_keys: left.redis.keys,
                    redis_increments: left.redis.increments,
                    invalidations: u64::try_from(invalidations).unwrap_or(u64::MAX),
                };
                tracing::error!(error = %e, "shutdown incomplete");
                return Err(e);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
