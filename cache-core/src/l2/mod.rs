//! The shared tier: Redis, behind a timeout on every call and a breaker.
//!
//! The connection is made lazily and never retried inside a request (see
//! `link.rs` for each topology: one server, a cluster, a sentinel-managed
//! primary), and each call is capped at `redis_timeout`. After
//! `breaker_threshold` consecutive failures the breaker opens and requests
//! skip Redis; a background task probes it.
//!
//! Every key one command or script touches lies in one cluster slot: the
//! scripts here touch one key each (or an owner list and its keys' entries,
//! which on a cluster are checked key by key, see `fill_list`), and
//! multi-key writes are pipelines on one server but separate commands on a
//! cluster, where a pipeline must not span slots.

mod cluster;
mod link;
mod sentinel;
pub(crate) mod topology;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use self::link::{AnyConn, Link};
pub use self::topology::L2Kind;

use crate::breaker::{Breaker, BreakerState};
use crate::codec::{self, Decoded};
use crate::{CacheConfig, KeyHash};

/// What a read from Redis found.
#[derive(Debug)]
pub(crate) enum L2Read {
    Found(Box<crate::KeyRecord>),
    NotFound,
    /// Recently invalidated: ask the store, do not refill.
    Tombstone,
    /// Absent or undecodable: ask the store, then fill.
    Miss,
    /// Redis failed or was skipped: ask the store, and do not try to fill
    /// (that would only wait out a second timeout).
    Unavailable,
}

/// Failure of one Redis call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum L2Error {
    #[error("redis call skipped: circuit breaker open")]
    BreakerOpen,
    #[error("redis call timed out")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl L2Error {
    /// Redis did not answer in time: ours, or redis-rs's own response
    /// timeout (set to the same budget), which fires first.
    pub(crate) fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Redis(e) => e.is_timeout(),
            Self::BreakerOpen => false,
        }
    }
}

#[derive(Default)]
pub(crate) struct L2Stats {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) bad_values: AtomicU64,
    /// Latency of the last successful call, in microseconds.
    pub(crate) last_latency_us: AtomicU64,
    /// Why the last call failed, until one succeeds (health shows it: "why
    /// is Redis down?" is the first question of an incident).
    last_error: std::sync::Mutex<Option<String>>,
    failing: std::sync::atomic::AtomicBool,
}

impl L2Stats {
    fn failed(&self, e: &L2Error) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(e.to_string());
        self.failing.store(true, Ordering::Release);
    }

    fn succeeded(&self) {
        // One atomic read on the common path; the lock only after a failure.
        if self.failing.swap(false, Ordering::AcqRel) {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// The error of the last failed call, if none succeeded since.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub(crate) struct L2 {
    link: Link,
    prefix: String,
    timeout: Duration,
    probe_timeout: Duration,
    cooldown: Duration,
    pub(crate) breaker: Breaker,
    pub(crate) stats: L2Stats,
    read_script: redis::Script,
    fill_script: redis::Script,
    fill_list_script: redis::Script,
}

/// Redis's clock (microseconds since the epoch) when a load read its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadStamp(pub(crate) i64);

/// `GET` with the server's time, read first: any write that lands after
/// this read happens at or after that time.
const READ: &str = r"
local t = redis.call('TIME')
return {t[1], t[2], redis.call('GET', KEYS[1])}
";

/// `SET NX PX` unless the server's clock has passed `ARGV[3]` (µs); -1
/// when too late, 1 when written, 0 when the key was taken.
const FILL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now >= tonumber(ARGV[3]) then return -1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// An owner's key list: `SET NX PX` unless the server's clock has passed
/// `ARGV[3]` (-1), or one of the listed keys' entries (`KEYS[2..]`) is a
/// tombstone (`ARGV[4]`): a key invalidated since the list was read (-2).
/// 1 when written, 0 when the list's key was taken.
const FILL_LIST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now >= tonumber(ARGV[3]) then return -1 end
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[4] then return -2 end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

impl L2 {
    /// Creates the tier without connecting; spawns the breaker's prober.
    /// Must run inside a Tokio runtime.
    pub(crate) fn new(
        url: &str,
        config: &CacheConfig,
        audit: Arc<crate::audit::Audit>,
    ) -> Result<Arc<Self>, crate::BuildError> {
        let target = topology::Target::parse(url)?;
        let tls = config.redis_tls_files().load()?;
        let link = Link::open(target, tls, config)?;
        let l2 = Arc::new(Self {
            link,
            prefix: config.key_prefix.clone(),
            timeout: config.redis_timeout,
            probe_timeout: config.redis_connect_timeout + config.redis_timeout,
            cooldown: config.breaker_cooldown,
            breaker: Breaker::new(config.breaker_threshold, audit),
            stats: L2Stats::default(),
            read_script: redis::Script::new(READ),
            fill_script: redis::Script::new(FILL),
            fill_list_script: redis::Script::new(FILL_LIST),
        });
        tokio::spawn(probe_loop(Arc::downgrade(&l2)));
        // Warm the connection off the request path, with the connect budget.
        let warm = Arc::downgrade(&l2);
        tokio::spawn(async move {
            if let Some(l2) = warm.upgrade() {
                if l2.ping(l2.probe_timeout).await.is_err() {
                    l2.breaker.on_failure();
                }
            }
        });
        Ok(l2)
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Where Redis is: one server, a cluster or a sentinel-managed primary.
    pub(crate) fn kind(&self) -> L2Kind {
        self.link.kind()
    }

    /// The primary in use, for a sentinel-managed Redis (`host:port`).
    pub(crate) fn primary(&self) -> Option<String> {
        self.link.primary()
    }

    /// A pub/sub connection for the invalidation subscriber (`attempt`
    /// counts its reconnections).
    pub(crate) async fn pubsub(&self, attempt: u64) -> redis::RedisResult<redis::aio::PubSub> {
        self.link.pubsub(attempt).await
    }

    fn conn(&self) -> AnyConn {
        self.link.conn()
    }

    pub(crate) fn entry_key(&self, hash: &KeyHash) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 4 + 64);
        k.push_str(&self.prefix);
        k.push_str("key:");
        k.push_str(&hash.to_hex());
        k
    }

    /// The Redis key of `owner`'s key list (`owner_list.rs`).
    pub(crate) fn owner_list_key(&self, owner: &str) -> String {
        format!("{}owner-keys:{owner}", self.prefix)
    }

    /// Runs one command under the timeout and the breaker.
    pub(crate) async fn call<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, L2Error> {
        let mut conn = self.conn();
        self.guarded(self.timeout, cmd.query_async(&mut conn)).await
    }

    /// Awaits `op` (not yet polled, so nothing is sent when the breaker is
    /// open) under `budget`, and feeds the result to the breaker and stats.
    async fn guarded<T>(
        &self,
        budget: Duration,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, L2Error> {
        if !self.breaker.allows() {
            return Err(L2Error::BreakerOpen);
        }
        let started = Instant::now();
        let result = timed(budget, op).await;
        match &result {
            Ok(_) => {
                self.breaker.on_success();
                self.stats.succeeded();
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.stats.last_latency_us.store(us, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "redis call failed");
                self.breaker.on_failure();
                self.stats.failed(e);
                self.link_failed(e);
            }
        }
        result
    }

    /// Lets the link react to a failure (a sentinel link looks for a new
    /// primary).
    fn link_failed(&self, e: &L2Error) {
        match e {
            L2Error::Redis(r) => self.link.failed(Some(r)),
            L2Error::Timeout => self.link.failed(None),
            L2Error::BreakerOpen => {}
        }
    }

    /// A `PING` outside the breaker: the prober's and the warm-up's.
    async fn ping(&self, budget: Duration) -> Result<(), L2Error> {
        let mut conn = self.conn();
        let result = timed(budget, redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(drop);
        match &result {
            Ok(()) => self.stats.succeeded(),
            Err(e) => {
                self.stats.failed(e);
                self.link_failed(e);
            }
        }
        result
    }

    /// Reads the entry for `hash`, with Redis's clock at the read (so a
    /// later fill can prove that no tombstone written after this read can
    /// have expired yet). Errors and bad values are misses.
    pub(crate) async fn get(&self, hash: &KeyHash) -> (L2Read, Option<ReadStamp>) {
        let (bytes, stamp) = match self.read_raw(self.entry_key(hash)).await {
            Ok(v) => v,
            Err(_) => return (L2Read::Unavailable, None),
        };
        let stamp = Some(stamp);
        let Some(bytes) = bytes else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return (L2Read::Miss, stamp);
        };
        let read = match codec::decode(&bytes) {
            Decoded::Found(r) if r.hash == *hash => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                L2Read::Found(r)
            }
            Decoded::NotFound => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                L2Read::NotFound
            }
            Decoded::Tombstone => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                L2Read::Tombstone
            }
            Decoded::Found(_) | Decoded::Bad => {
                self.stats.bad_values.fetch_add(1, Ordering::Relaxed);
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %hash.fingerprint(), "undecodable value in redis, treated as a miss");
                L2Read::Miss
            }
        };
        (read, stamp)
    }

    /// The raw value under `key`, with Redis's clock at the read.
    pub(crate) async fn read_raw(
        &self,
        key: String,
    ) -> Result<(Option<Vec<u8>>, ReadStamp), L2Error> {
        let inv = self.read_script.key(key);
        let (secs, micros, bytes): (i64, i64, Option<Vec<u8>>) = self.call_script(&inv).await?;
        let stamp = ReadStamp(secs.saturating_mul(1_000_000).saturating_add(micros));
        Ok((bytes, stamp))
    }

    /// The raw values under `keys` (`MGET`), in order.
    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, L2Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        // One command, many keys: a few command budgets, like a pipeline.
        self.guarded(self.timeout * 4, cmd.query_async(&mut conn))
            .await
    }

    /// Stores an owner's key list under `key` (`SET NX`) while Redis's
    /// clock is before `stamp + window` and none of `entries` (the listed
    /// keys' entry keys) holds a tombstone; see `FILL_LIST` and
    /// `owner_list.rs`. Returns whether it was written.
    pub(crate) async fn fill_list(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
        stamp: ReadStamp,
        window: Duration,
        entries: Vec<String>,
    ) -> bool {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return false;
        }
        let window_us = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        let deadline = stamp.0.saturating_add(window_us);
        if self.link.is_cluster() {
            // The entries lie in other slots: one script cannot read them.
            // The reader's check of every listed entry (`owner_list.rs`)
            // still refuses a list that a tombstone outdates, since a list
            // outlives no tombstone written after its store read.
            let mut inv = self.fill_script.key(key);
            inv.arg(value).arg(ms).arg(deadline);
            return matches!(self.call_script::<i64>(&inv).await, Ok(1));
        }
        let mut inv = self.fill_list_script.key(key);
        for entry in entries {
            inv.key(entry);
        }
        inv.arg(value)
            .arg(ms)
            .arg(deadline)
            .arg(codec::encode_tombstone());
        matches!(self.call_script::<i64>(&inv).await, Ok(1))
    }

    /// Redis's clock now, for fills of records read from the store after
    /// this call (cache warming reads many keys in one store query instead
    /// of reading each from Redis first); `None` when Redis does not answer.
    /// A stamp taken before the store read proves for [`fill`](Self::fill)
    /// what the stamp of a [`get`](Self::get) does.
    pub(crate) async fn now_stamp(&self) -> Option<ReadStamp> {
        let (secs, micros): (i64, i64) = self.call(&redis::cmd("TIME")).await.ok()?;
        Some(ReadStamp(
            secs.saturating_mul(1_000_000).saturating_add(micros),
        ))
    }

    /// Stores `value` unless the key exists (`SET NX`), and only while
    /// Redis's clock is within `tombstone_ttl` of the load's read (`stamp`).
    ///
    /// A load that read the store before a revocation read Redis even
    /// earlier, so the revocation's tombstone was written after `stamp` and
    /// lives at least until `stamp + tombstone_ttl`: a fill that runs before
    /// that instant finds the tombstone and writes nothing, and a later one
    /// (a slow load, or a command that sat in a paused server's socket) is
    /// refused by the script. Redis judges both times by its own clock.
    pub(crate) async fn fill(
        &self,
        hash: &KeyHash,
        value: Vec<u8>,
        ttl: Duration,
        stamp: ReadStamp,
        tombstone_ttl: Duration,
    ) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return;
        }
        let tomb_us = i64::try_from(tombstone_ttl.as_micros()).unwrap_or(i64::MAX);
        let mut inv = self.fill_script.key(self.entry_key(hash));
        inv.arg(value).arg(ms).arg(stamp.0.saturating_add(tomb_us));
        if let Ok(-1) = self.call_script::<i64>(&inv).await {
            tracing::debug!(key = %hash.fingerprint(), "fill skipped: the load outlived the tombstone window");
        }
    }
}

impl L2 {
    /// Tombstones many hashes in one round trip.
    pub(crate) async fn tombstone_many(
        &self,
        hashes: &[KeyHash],
        ttl: Duration,
    ) -> Result<(), L2Error> {
        let keys: Vec<String> = hashes.iter().map(|h| self.entry_key(h)).collect();
        self.tombstone_keys(&keys, ttl).await
    }

    /// Tombstones Redis keys (entries or owner lists) in one round trip.
    pub(crate) async fn tombstone_keys(
        &self,
        keys: &[String],
        ttl: Duration,
    ) -> Result<(), L2Error> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let tomb = codec::encode_tombstone();
        if self.link.is_cluster() {
            // A cluster pipeline goes to one node: one command per key,
            // all in flight at once, under the pipeline's budget.
            let writes = keys.iter().map(|key| {
                let mut conn = self.conn();
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(&tomb).arg("PX").arg(ms);
                async move { cmd.query_async::<()>(&mut conn).await }
            });
            let all = async {
                futures_util::future::join_all(writes)
                    .await
                    .into_iter()
                    .collect::<redis::RedisResult<Vec<()>>>()
                    .map(drop)
            };
            return self.guarded(self.timeout * 4, all).await;
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("SET")
                .arg(key)
                .arg(&tomb)
                .arg("PX")
                .arg(ms)
                .ignore();
        }
        self.call_pipe(&pipe).await
    }

    pub(crate) async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), L2Error> {
        self.call::<i64>(redis::cmd("PUBLISH").arg(channel).arg(payload))
            .await
            .map(drop)
    }

    /// `GET` of a string outside the breaker (under the connect + command
    /// budget): for a read that is retried until it succeeds whatever the
    /// breaker says, such as the fleet mode after a reconnect.
    pub(crate) async fn get_string_unguarded(&self, key: &str) -> Result<Option<String>, L2Error> {
        let mut conn = self.conn();
        timed(
            self.probe_timeout,
            redis::cmd("GET").arg(key).query_async(&mut conn),
        )
        .await
    }

    pub(crate) async fn set_string(&self, key: &str, value: &str) -> Result<(), L2Error> {
        self.call(redis::cmd("SET").arg(key).arg(value)).await
    }

    /// Runs a Lua script (EVALSHA, loading it on first use) under the
    /// timeout and the breaker.
    pub(crate) async fn call_script<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, L2Error> {
        let mut conn = self.conn();
        // A first call loads the script: two round trips.
        self.guarded(self.timeout * 2, inv.invoke_async(&mut conn))
            .await
    }

    /// [`call`](Self::call) with `budgets` command budgets, for a command
    /// that carries a long script or many keys.
    pub(crate) async fn call_long<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        budgets: u32,
    ) -> Result<T, L2Error> {
        let mut conn = self.conn();
        self.guarded(self.timeout * budgets, cmd.query_async(&mut conn))
            .await
    }

    async fn call_pipe(&self, pipe: &redis::Pipeline) -> Result<(), L2Error> {
        let mut conn = self.conn();
        // A pipeline carries many commands: give it a few command budgets.
        self.guarded(self.timeout * 4, pipe.query_async(&mut conn))
            .await
    }
}

/// `op` under `budget`, with Redis errors and the timeout as [`L2Error`].
async fn timed<T>(
    budget: Duration,
    op: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, L2Error> {
    match tokio::time::timeout(budget, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(L2Error::Redis(e)),
        Err(_) => Err(L2Error::Timeout),
    }
}

/// Waits for the breaker to open, then probes after each cool-down until a
/// probe succeeds. Ends when the tier is dropped.
async fn probe_loop(l2: Weak<L2>) {
    loop {
        let Some(strong) = l2.upgrade() else { return };
        let cooldown = strong.cooldown;
        if strong.breaker.allows() {
            // Hold only a weak reference while idle, so dropping the cache
            // ends this task; re-check periodically in case the drop happened.
            let opened = async { strong.breaker.opened.notified().await };
            tokio::select! {
                _ = opened => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            drop(strong);
            continue;
        }
        drop(strong);
        tokio::time::sleep(cooldown).await;
        let Some(strong) = l2.upgrade() else { return };
        strong.breaker.begin_probe();
        match strong.ping(strong.probe_timeout).await {
            Ok(()) => strong.breaker.probe_succeeded(),
            Err(e) => {
                tracing::debug!(error = %e, "redis probe failed");
                strong.breaker.probe_failed();
                strong.link.probe_failed();
            }
        }
    }
}

/// Installs rustls's ring provider as the process default unless the host
/// installed one. rustls picks the provider from the process at the first
/// TLS connection and panics when none is installed and more than one is
/// compiled in (ring here, aws-lc-rs from another dependency): installing
/// it explicitly turns that panic into a choice.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A mutex's guard, poisoned or not: the links' state stays valid after a
/// panic elsewhere (each write replaces a whole value).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
