//! Delivering usage counts: to the store (durable totals) and to Redis
//! (fleet-wide counts per month), each exactly once, each on its own.

use std::collections::hash_map;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Map, MonthId, Pending, Usage};
use crate::{ApiKeyCache, KeyId, StoreError, UsageBatch, UsageDelta};

/// A batch for Redis: counts by key and by the month they were served in.
#[derive(Debug, Clone)]
pub(crate) struct RedisBatch {
    pub(crate) id: uuid::Uuid,
    pub(crate) counts: Vec<(KeyId, MonthId, u64)>,
}

/// What one destination is sent: a batch id and entries.
trait Batch {
    type Entry: Entry;
    fn new(id: uuid::Uuid, entries: Vec<Self::Entry>) -> Self;
    fn entries(&self) -> &[Self::Entry];
    fn into_entries(self) -> Vec<Self::Entry>;
}

/// One entry of a batch: the counts of one key (store) or of one key in
/// one month (Redis).
trait Entry {
    type Key: Hash + Eq;
    fn key(&self) -> Self::Key;
    fn requests(&self) -> u64;
    /// Adds `other`, an entry with the same key.
    fn merge(&mut self, other: Self);
}

impl Batch for UsageBatch {
    type Entry = UsageDelta;
    fn new(id: uuid::Uuid, deltas: Vec<UsageDelta>) -> Self {
        Self { id, deltas }
    }
    fn entries(&self) -> &[UsageDelta] {
        &self.deltas
    }
    fn into_entries(self) -> Vec<UsageDelta> {
        self.deltas
    }
}

impl Entry for UsageDelta {
    type Key = KeyId;
    fn key(&self) -> KeyId {
        self.key_id.clone()
    }
    fn requests(&self) -> u64 {
        self.requests
    }
    fn merge(&mut self, other: Self) {
        self.requests += other.requests;
        self.last_used_at = self.last_used_at.max(other.last_used_at);
    }
}

impl Batch for RedisBatch {
    type Entry = (KeyId, MonthId, u64);
    fn new(id: uuid::Uuid, counts: Vec<(KeyId, MonthId, u64)>) -> Self {
        Self { id, counts }
    }
    fn entries(&self) -> &[(KeyId, MonthId, u64)] {
        &self.counts
    }
    fn into_entries(self) -> Vec<(KeyId, MonthId, u64)> {
        self.counts
    }
}

impl Entry for (KeyId, MonthId, u64) {
    type Key = (KeyId, MonthId);
    fn key(&self) -> (KeyId, MonthId) {
        (self.0.clone(), self.1)
    }
    fn requests(&self) -> u64 {
        self.2
    }
    fn merge(&mut self, other: Self) {
        self.2 += other.2;
    }
}

/// Whether a flush may append its counts to a backlog without looking for
/// their keys in it: the backlog was empty when the flush began, and every
/// key comes once (a key is in one registry shard, with one count per
/// month slot; counts carried from a reused slot can repeat a key, so a
/// flush with carried counts always looks).
#[derive(Debug, Clone, Copy)]
struct Fresh {
    store: bool,
    redis: bool,
}

/// Counts on their way to one destination: the batch offered until it is
/// acknowledged, and what waits for the next one.
struct Outbox<B: Batch> {
    /// One entry per key: the entries of the next batch, as they will be
    /// sent.
    backlog: Vec<B::Entry>,
    /// Where each key's entry is in `backlog`: complete, or empty while no
    /// flush needed it (built by the first flush that files into a backlog
    /// that was not empty; cleared with the backlog).
    index: Map<<B::Entry as Entry>::Key, usize>,
    /// What `backlog` holds.
    backlog_pending: Pending,
    /// The batch offered until it is acknowledged, and what it holds.
    in_flight: Option<(B, Pending)>,
}

impl<B: Batch> Default for Outbox<B> {
    fn default() -> Self {
        Self {
            backlog: Vec::new(),
            index: Map::default(),
            backlog_pending: Pending::default(),
            in_flight: None,
        }
    }
}

impl<B: Batch> Outbox<B> {
    /// Adds `entry` to the backlog: appended when `fresh` (see [`Fresh`]),
    /// else merged with the entry of its key, if any.
    fn file(&mut self, entry: B::Entry, fresh: bool) {
        self.backlog_pending.increments += entry.requests();
        if !fresh {
            if self.index.len() != self.backlog.len() {
                self.index.clear();
                self.index.reserve(self.backlog.len());
                for (i, e) in self.backlog.iter().enumerate() {
                    self.index.insert(e.key(), i);
                }
            }
            match self.index.entry(entry.key()) {
                hash_map::Entry::Occupied(at) => {
                    self.backlog[*at.get()].merge(entry);
                    return;
                }
                hash_map::Entry::Vacant(at) => {
                    at.insert(self.backlog.len());
                }
            }
        }
        self.backlog_pending.keys += 1;
        self.backlog.push(entry);
    }

    /// The batch in flight, or a new one made of the backlog (if any).
    fn next_batch(&mut self) -> Option<&B> {
        if self.in_flight.is_none() && !self.backlog.is_empty() {
            self.index.clear();
            let entries = std::mem::take(&mut self.backlog);
            let pending = std::mem::take(&mut self.backlog_pending);
            self.in_flight = Some((B::new(uuid::Uuid::new_v4(), entries), pending));
        }
        self.in_flight.as_ref().map(|(batch, _)| batch)
    }

    /// The batch in flight was delivered: what it held. Its memory is kept
    /// for the next backlog, which will likely be as long.
    fn acknowledge(&mut self) -> Pending {
        let Some((batch, pending)) = self.in_flight.take() else {
            return Pending::default();
        };
        let mut entries = batch.into_entries();
        let used = entries.len();
        entries.clear();
        if self.backlog.is_empty() && entries.capacity() > self.backlog.capacity() {
            // Unless mostly unused (many more keys were in use once).
            if entries.capacity() / 4 <= used {
                self.backlog = entries;
            }
        }
        pending
    }

    /// Counts not yet delivered.
    fn pending(&self) -> Pending {
        let mut p = self.backlog_pending;
        if let Some((_, in_flight)) = &self.in_flight {
            p += *in_flight;
        }
        p
    }

    /// Checks what is kept up to date as entries come and go (debug builds:
    /// the tests).
    fn check(&self) {
        if cfg!(debug_assertions) {
            let count = |entries: &[B::Entry]| Pending {
                keys: entries.len() as u64,
                increments: entries.iter().map(Entry::requests).sum(),
            };
            assert_eq!(self.backlog_pending, count(&self.backlog));
            if let Some((batch, pending)) = &self.in_flight {
                assert_eq!(*pending, count(batch.entries()));
            }
            assert!(self.backlog.iter().all(|e| e.requests() > 0));
            let keys: std::collections::HashSet<_> = self.backlog.iter().map(Entry::key).collect();
            assert_eq!(keys.len(), self.backlog.len(), "one entry per key");
            assert!(self.index.is_empty() || self.index.len() == self.backlog.len());
            for (key, i) in &self.index {
                assert!(self.backlog[*i].key() == *key, "index points at its key");
            }
        }
    }
}

/// Both outboxes; locked for a whole flush, so two flushes (the timer and
/// a shutdown) cannot interleave.
#[derive(Default)]
pub(crate) struct Outboxes {
    store: Outbox<UsageBatch>,
    redis: Outbox<RedisBatch>,
}

impl Outboxes {
    /// How this flush may file into each outbox (see [`Fresh`]).
    fn fresh(&self, carried: bool) -> Fresh {
        Fresh {
            store: !carried && self.store.backlog.is_empty(),
            redis: !carried && self.redis.backlog.is_empty(),
        }
    }

    /// Files counts of `id` taken from its cell (or carried), by month.
    /// Synchronous: nothing taken may be held across an await outside the
    /// outboxes.
    fn file(
        &mut self,
        id: &KeyId,
        counts: [(MonthId, u64); 2],
        now: OffsetDateTime,
        redis: bool,
        fresh: Fresh,
    ) {
        let mut counts = counts;
        if counts[0].0 == counts[1].0 {
            // One month in both slots (never with counts in both, but one
            // entry per key and month whatever happens).
            counts[0].1 += std::mem::take(&mut counts[1].1);
        }
        let requests = counts[0].1 + counts[1].1;
        if requests == 0 {
            return;
        }
        let delta = UsageDelta {
            key_id: id.clone(),
            requests,
            last_used_at: now,
        };
        self.store.file(delta, fresh.store);
        if redis {
            for (month, n) in counts {
                if n > 0 {
                    self.redis.file((id.clone(), month, n), fresh.redis);
                }
            }
        }
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
    ///
    /// New counts are taken and filed one registry shard at a time, with a
    /// yield to the runtime after each: on a single-threaded runtime (or
    /// the worker a request shares with this task) requests are served in
    /// between, instead of waiting for every key to be filed. Each shard's
    /// counts are in the outboxes before the yield.
    pub(crate) async fn flush(&self, sink: &dyn Sink, now: OffsetDateTime) -> Left {
        let mut boxes = self.outboxes.lock().await;
        let redis = sink.has_redis();
        let carried = self.take_carried();
        let fresh = boxes.fresh(!carried.is_empty());
        for (id, month, n) in carried {
            boxes.file(&id, [(month, n), (month, 0)], now, redis, fresh);
        }
        self.publish(&boxes);
        for shard in 0..super::SHARDS {
            self.take_shard(shard, |id, counts| {
                boxes.file(id, counts, now, redis, fresh);
            });
            self.publish(&boxes);
            tokio::task::yield_now().await;
        }
        for _ in 0..BATCHES_PER_FLUSH {
            let Some(batch) = boxes.store.next_batch() else {
                break;
            };
            match sink.to_store(batch).await {
                Ok(()) => {
                    let delivered = boxes.store.acknowledge();
                    self.flushed
                        .fetch_add(delivered.increments, Ordering::Relaxed);
                    self.publish(&boxes);
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
            let Some(batch) = boxes.redis.next_batch() else {
                break;
            };
            match sink.to_redis(batch).await {
                Ok(()) => {
                    boxes.redis.acknowledge();
                }
                Err(e) => {
                    self.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(batch = %batch.id, error = %e, "usage flush to redis failed; the same batch will be retried");
                    break;
                }
            }
        }
        boxes.store.check();
        boxes.redis.check();
        Left {
            store: boxes.store.pending(),
            redis: boxes.redis.pending(),
        }
    }

    /// Makes what the store's outbox holds visible to [`pending`](Self::pending).
    fn publish(&self, boxes: &Outboxes) {
        let p = boxes.store.pending();
        self.outbox_keys.store(p.keys, Ordering::Relaxed);
        self.outbox_increments
            .store(p.increments, Ordering::Relaxed);
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

/// Keys put in a Redis batch's command between two yields to the runtime.
const YIELD_EVERY: usize = 1024;

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
        // One script per month in the batch (almost always one): a month's
        // counts and markers share the month's hash tag, so each script
        // touches one cluster slot. Each month is applied whole or not at
        // all, under its own marker, so a retry after a partial failure
        // adds only the months that did not land.
        let mut months: Vec<MonthId> = Vec::with_capacity(2);
        for (_, month, _) in &batch.counts {
            if !months.contains(month) {
                months.push(*month);
            }
        }
        for month in months {
            self.month_to_redis(l2, batch, month).await?;
        }
        Ok(())
    }
}

impl ApiKeyCache {
    /// Applies `batch`'s counts for `month` in one script.
    async fn month_to_redis(
        &self,
        l2: &crate::l2::L2,
        batch: &RedisBatch,
        month: MonthId,
    ) -> Result<(), String> {
        let prefix = &self.inner.config.key_prefix;
        let tag = month.tag();
        let in_month = || batch.counts.iter().filter(move |(_, m, _)| *m == month);
        // EVAL, built straight into one command buffer: keys and counts are
        // copied once, where a `ScriptInvocation` allocates each of them
        // and copies them again into its EVALSHA. Redis compiles the
        // script once and keeps it; its text is a few hundred bytes beside
        // the keys.
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REDIS_FLUSH)
            .arg(in_month().count() + 1)
            .arg(format!("{prefix}usage-batch:{{{tag}}}:{}", batch.id));
        let mut key = String::new();
        for (done, (id, _, _)) in in_month().enumerate() {
            if done % YIELD_EVERY == YIELD_EVERY - 1 {
                // Long batches are built in steps, like the filing.
                tokio::task::yield_now().await;
            }
            key.clear();
            push_usage_key(&mut key, prefix, id, &tag);
            cmd.arg(key.as_str());
        }
        cmd.arg(MARKER_TTL_MS).arg(COUNT_TTL_MS);
        for (_, _, n) in in_month() {
            cmd.arg(*n);
        }
        // Two budgets, as for a script's first run (load, then run).
        let applied = l2
            .call_long::<i64>(&cmd, 2)
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

/// Appends the Redis key of `id`'s request count in the month `tag`
/// ([`MonthId::tag`]) to `out`: `{prefix}usage:{YYYY-MM}:{id}`, the month
/// first and in braces, as the cluster hash tag of the month's counts.
fn push_usage_key(out: &mut String, prefix: &str, id: &KeyId, tag: &str) {
    for part in [prefix, "usage:{", tag, "}:", id.as_str()] {
        out.push_str(part);
    }
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

    /// Stops the background flusher, gives this instance's token leases
    /// back to the fleet (rate-limited keys' unspent tokens), then delivers
    /// everything pending, retrying with back-off until `deadline` passes:
    /// invalidations that did not reach Redis yet, usage counts to the store
    /// and to Redis. Call it on SIGTERM after the server stopped taking
    /// requests.
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
        // Token leases first: their unspent tokens go back to the fleet,
        // and no new one is taken (a limited request from now on is one
        // Redis call).
        let _ = tokio::time::timeout(deadline, self.inner.limiter.leases.close()).await;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records what it is sent; fails while told to.
    #[derive(Default)]
    struct Recorder {
        store: Mutex<Vec<UsageBatch>>,
        redis: Mutex<Vec<RedisBatch>>,
        store_down: AtomicBool,
        with_redis: bool,
        /// Called (with the usage) at each delivery to the store.
        on_store: Option<Box<dyn Fn() + Send + Sync>>,
    }

    #[async_trait::async_trait]
    impl Sink for Recorder {
        async fn to_store(&self, batch: &UsageBatch) -> Result<(), StoreError> {
            if let Some(f) = &self.on_store {
                f();
            }
            if self.store_down.load(Ordering::SeqCst) {
                return Err(StoreError::Timeout);
            }
            self.store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(batch.clone());
            Ok(())
        }
        async fn to_redis(&self, batch: &RedisBatch) -> Result<(), String> {
            self.redis
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(batch.clone());
            Ok(())
        }
        fn has_redis(&self) -> bool {
            self.with_redis
        }
    }

    fn id(i: usize) -> KeyId {
        KeyId::new(format!("key_{i}"))
    }

    const T0: i64 = 1_900_000_000_000_000_000;

    fn at(nanos: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Totals per key of what the store was sent.
    fn totals(batches: &[UsageBatch]) -> HashMap<KeyId, u64> {
        let mut t = HashMap::new();
        for b in batches {
            let mut seen = std::collections::HashSet::new();
            for d in &b.deltas {
                assert!(
                    seen.insert(d.key_id.clone()),
                    "one delta per key in a batch"
                );
                *t.entry(d.key_id.clone()).or_default() += d.requests;
            }
        }
        t
    }

    #[tokio::test]
    async fn backlog_merges_what_waits_behind_a_failed_batch() {
        let usage = Usage::new();
        let sink = Recorder {
            with_redis: true,
            ..Recorder::default()
        };
        let cells: Vec<_> = (0..100).map(|i| usage.cell(&id(i))).collect();
        for (i, cell) in cells.iter().enumerate() {
            for _ in 0..=i % 3 {
                usage.count(cell, T0);
            }
        }
        sink.store_down.store(true, Ordering::SeqCst);
        let left = usage.flush(&sink, at(T0)).await;
        assert_eq!(
            left.store,
            Pending {
                keys: 100,
                increments: 199
            }
        );
        assert_eq!(left.redis, Pending::default(), "redis is independent");
        assert_eq!(usage.pending(), left.store);
        // Two more rounds while the store is down: the first batch waits
        // in flight, newer counts merge in the backlog (one entry per key).
        for round in 0..2 {
            for cell in &cells[..50] {
                usage.count(cell, T0 + 1);
            }
            let later = at(T0 + 1_000_000_000 * (round + 1));
            let left = usage.flush(&sink, later).await;
            assert_eq!(left.store.increments, 199 + 50 * (round as u64 + 1));
            assert_eq!(left.store.keys, 100 + 50, "in flight + backlog");
        }
        sink.store_down.store(false, Ordering::SeqCst);
        let left = usage.flush(&sink, at(T0 + 5_000_000_000)).await;
        assert_eq!(left, Left::default());
        assert_eq!(usage.pending(), Pending::default());
        let store = sink.store.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(store.len(), 2, "the batch retried, then the merged backlog");
        let t = totals(&store);
        for i in 0..100 {
            let expected = (i % 3 + 1) as u64 + if i < 50 { 2 } else { 0 };
            assert_eq!(t[&id(i)], expected, "key {i}");
        }
        let merged = &store[1];
        assert_eq!(merged.deltas.len(), 50);
        assert!(
            merged
                .deltas
                .iter()
                .all(|d| d.last_used_at == at(T0 + 2_000_000_000)),
            "the later flush's time"
        );
        assert_eq!(usage.flushed.load(Ordering::Relaxed), 299);
        let redis = sink.redis.lock().unwrap_or_else(|e| e.into_inner());
        let n: u64 = redis.iter().flat_map(|b| &b.counts).map(|c| c.2).sum();
        assert_eq!(n, 299);
    }

    /// Counts carried out of a reused month slot repeat keys the cells
    /// still count for: still one store delta per key, one Redis count per
    /// key and month, before and behind a failed batch.
    #[tokio::test]
    async fn carried_counts_merge_with_the_cells() {
        use time::macros::datetime;
        let nanos = |t: OffsetDateTime| i64::try_from(t.unix_timestamp_nanos()).unwrap_or(0);
        let (jan, feb, mar) = (
            datetime!(2030-01-20 12:00 UTC),
            datetime!(2030-02-20 12:00 UTC),
            datetime!(2030-03-20 12:00 UTC),
        );
        let usage = Usage::new();
        let sink = Recorder {
            with_redis: true,
            ..Recorder::default()
        };
        let cells: Vec<_> = (0..3).map(|i| usage.cell(&id(i))).collect();
        let count_all = |t: OffsetDateTime, times: usize| {
            for cell in &cells {
                for _ in 0..times {
                    usage.count(cell, nanos(t));
                }
            }
        };
        count_all(jan, 1);
        count_all(feb, 2);
        count_all(mar, 4); // January's slot is reused: its counts carried
        assert_eq!(
            usage.pending(),
            Pending {
                keys: 6,
                increments: 21
            },
            "cells and carried"
        );
        sink.store_down.store(true, Ordering::SeqCst);
        assert_eq!(usage.flush(&sink, mar).await.store.increments, 21);
        count_all(mar, 64);
        // A batch in flight, a backlog behind it.
        assert_eq!(usage.flush(&sink, mar).await.store.keys, 6);
        count_all(mar, 8);
        count_all(datetime!(2030-04-02 0:00 UTC), 16);
        count_all(datetime!(2030-05-02 0:00 UTC), 32); // March's 8 carried
        sink.store_down.store(false, Ordering::SeqCst);
        assert_eq!(usage.flush(&sink, mar).await, Left::default());
        let store = sink.store.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(store.len(), 2, "the batch in flight, then the backlog");
        assert!(store.iter().all(|b| b.deltas.len() == 3));
        let t = totals(&store);
        assert!((0..3).all(|i| t[&id(i)] == 1 + 2 + 4 + 64 + 8 + 16 + 32));
        let mut by_month: HashMap<(KeyId, String), u64> = HashMap::new();
        for b in sink.redis.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let mut seen = std::collections::HashSet::new();
            for (key, month, n) in &b.counts {
                assert!(
                    seen.insert((key.clone(), *month)),
                    "one count per key and month"
                );
                *by_month.entry((key.clone(), month.tag())).or_default() += n;
            }
        }
        for i in 0..3 {
            for (month, n) in [
                ("2030-01", 1),
                ("2030-02", 2),
                ("2030-03", 4 + 64 + 8),
                ("2030-04", 16),
                ("2030-05", 32),
            ] {
                assert_eq!(
                    by_month[&(id(i), month.to_owned())],
                    n,
                    "key {i} in {month}"
                );
            }
        }
    }

    #[tokio::test]
    async fn cells_nobody_holds_leave_once_taken() {
        let usage = Usage::new();
        let sink = Recorder::default();
        let held = usage.cell(&id(1));
        let dropped = usage.cell(&id(2));
        usage.count(&held, T0);
        usage.count(&dropped, T0);
        usage.count(&dropped, T0);
        drop(dropped);
        assert_eq!(
            usage.pending(),
            Pending {
                keys: 2,
                increments: 3
            }
        );
        assert_eq!(usage.flush(&sink, at(T0)).await, Left::default());
        assert_eq!(
            totals(&sink.store.lock().unwrap_or_else(|e| e.into_inner())).get(&id(2)),
            Some(&2)
        );
        let registered: usize = usage
            .shards
            .iter()
            .map(|s| super::super::lock(s).len())
            .sum();
        assert_eq!(registered, 1, "only the held cell stays");
        assert!(Arc::ptr_eq(&held, &usage.cell(&id(1))));
    }

    /// On a single-threaded runtime, other tasks run while a flush files
    /// its counts, and never see a count missing: each shard's counts are
    /// in the outboxes before the flush yields.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flush_lets_other_tasks_run_and_loses_sight_of_nothing() {
        let usage = Arc::new(Usage::new());
        let keys = 2_000;
        let cells: Vec<_> = (0..keys).map(|i| usage.cell(&id(i))).collect();
        for cell in &cells {
            usage.count(cell, T0);
        }
        let polls = Arc::new(AtomicUsize::new(0));
        let polls_at_delivery = Arc::new(AtomicUsize::new(usize::MAX));
        let sink = Recorder {
            on_store: Some(Box::new({
                let (polls, at_delivery) = (polls.clone(), polls_at_delivery.clone());
                move || at_delivery.store(polls.load(Ordering::SeqCst), Ordering::SeqCst)
            })),
            ..Recorder::default()
        };
        let done = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn({
            let (usage, polls, done) = (usage.clone(), polls.clone(), done.clone());
            async move {
                while !done.load(Ordering::SeqCst) {
                    let p = usage.pending();
                    if p.increments != 0 {
                        assert_eq!(
                            p,
                            Pending {
                                keys: keys as u64,
                                increments: keys as u64
                            }
                        );
                    }
                    polls.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            }
        });
        assert_eq!(usage.flush(&sink, at(T0)).await, Left::default());
        done.store(true, Ordering::SeqCst);
        watcher
            .await
            .expect("the watcher saw every count at all times");
        let interleaved = polls_at_delivery.load(Ordering::SeqCst);
        assert!(
            interleaved >= super::super::SHARDS - 1,
            "the other task ran between shards: {interleaved} times"
        );
        let store = sink.store.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(totals(&store).len(), keys);
        assert_eq!(usage.pending(), Pending::default());
    }
}
