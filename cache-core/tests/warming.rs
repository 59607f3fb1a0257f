//! Cache warming at start-up (`warm_keys`): what it loads and in which
//! order, its batches, its bounds (deadline, store failure,
//! `database_only`), what it reports in health and logs, and that it never
//! brings back a key invalidated while it ran.
//!
//! Without Redis, on paused time: the in-memory store behind a gate
//! (`support/gated.rs`) that holds each warming batch after the store read
//! it. With Redis: a redis-server per test, real time.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, CacheConfigBuilder, CreatedKey, HealthStatus, KeyAdmin, KeyHash,
    KeyHasher, KeyId, KeyRecord, KeyStore, MemoryStore, Mode, NewKey, Outcome, RequiredScopes,
    StoreError, UsageBatch, UsageDelta, WarmingState,
};
use support::gated::GatedStore;
use support::hold_proxy::HoldProxy;
use support::redis::RedisServer;
use support::store::CountingStore;
use support::wait_until;
use time::macros::datetime;

/// Warming `n` keys, two per batch.
fn warm(n: u64) -> CacheConfigBuilder {
    CacheConfig::builder()
        .warm_keys(n)
        .warm_batch_size(2)
        .warm_batch_pause(Duration::from_millis(20))
}

/// `n` keys, each used once: key 0 most recently, key `n - 1` least
/// recently. `never_used` more keys that were never used (no
/// `last_used_at`) come after them in the returned list.
async fn keys(mem: &MemoryStore, n: usize, never_used: usize) -> Vec<CreatedKey> {
    let hasher = KeyHasher::new(None);
    let mut out = Vec::new();
    let mut deltas = Vec::new();
    for i in 0..n + never_used {
        let created = mem
            .create_key(&hasher, NewKey::new(format!("owner{i}"), ["orders:*"]))
            .await
            .unwrap();
        if i < n {
            deltas.push(UsageDelta {
                key_id: created.record.id.clone(),
                requests: 1,
                last_used_at: datetime!(2030-01-01 12:00 UTC)
                    - time::Duration::minutes(i64::try_from(i).unwrap()),
            });
        }
        out.push(created);
    }
    mem.record_usage(&UsageBatch {
        id: uuid::Uuid::new_v4(),
        deltas,
    })
    .await
    .unwrap();
    out
}

/// What L1 alone answers for `key` (`None`: not in L1), without loading it.
fn in_l1(cache: &ApiKeyCache, key: &CreatedKey) -> Option<Outcome> {
    cache.verify_cached(&key.record.hash, &RequiredScopes::none())
}

fn warmed(cache: &ApiKeyCache, keys: &[CreatedKey]) -> Vec<bool> {
    keys.iter()
        .map(|k| in_l1(cache, k).is_some_and(|o| o.is_valid()))
        .collect()
}

/// Waits until batch `n` has been read from the store and is held at the
/// gate.
async fn until_batch_held(store: &GatedStore, n: usize) {
    wait_until(&format!("batch {n} held"), || {
        store.recent.passed() == n && store.recent.parked() == 1
    })
    .await;
}

/// Lets the held batch go on, and holds the next one once it is read.
fn next_batch(store: &GatedStore) {
    store.recent.release();
    store.recent.hold();
}

/// Polls every 50 ms (of paused time, where it is paused), at most 10 s of
/// real time.
async fn until_state(cache: &ApiKeyCache, state: WarmingState) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.warming().state != state {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until warming {state}: {:?}",
            cache.warming()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn verify(cache: &ApiKeyCache, key: &CreatedKey) -> Outcome {
    cache
        .verify_key(&key.plaintext, &RequiredScopes::none())
        .await
}

fn redis_value(redis: &RedisServer, hash: &KeyHash) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("apikey-cache:key:{}", hash.to_hex()))
        .query(&mut redis.conn())
        .unwrap()
}

// ---------------------------------------------------------------------------
// Without Redis, on paused time

/// The five most recent of seven used keys, in three batches of at most
/// two, most recent first; health says `running` (with the count so far)
/// until the last batch is in, then `done`. The cache answers requests
/// while a batch is held.
#[tokio::test(start_paused = true)]
async fn loads_the_most_recent_keys_in_batches_and_reports_progress() {
    let mem = Arc::new(MemoryStore::new());
    let all = keys(&mem, 7, 1).await;
    let (used, unused) = all.split_at(7);
    let store = GatedStore::new(mem.clone());
    store.recent.hold();
    let cache = ApiKeyCache::new(warm(5).build().unwrap(), store.clone()).unwrap();
    // Built at once; warming runs in the background.
    assert_eq!(cache.warming().state, WarmingState::Running);
    assert_eq!(cache.warming().loaded, 0);

    until_batch_held(&store, 1).await;
    // Readiness: a request is answered while warming is held mid-batch.
    assert!(verify(&cache, &unused[0]).await.is_valid());
    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Healthy);
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(
        json["warming"],
        serde_json::json!({"state": "running", "loaded": 0})
    );
    assert_eq!(warmed(&cache, used), [false; 7], "nothing filled yet");

    next_batch(&store);
    until_batch_held(&store, 2).await;
    assert_eq!(
        warmed(&cache, used),
        [true, true, false, false, false, false, false]
    );
    assert_eq!(cache.warming().loaded, 2);
    assert_eq!(cache.warming().state, WarmingState::Running);

    next_batch(&store);
    until_batch_held(&store, 3).await;
    assert_eq!(
        warmed(&cache, used),
        [true, true, true, true, false, false, false]
    );
    assert_eq!(cache.warming().loaded, 4);

    store.recent.release();
    until_state(&cache, WarmingState::Done).await;
    assert_eq!(
        warmed(&cache, used),
        [true, true, true, true, true, false, false]
    );
    assert_eq!(store.recent_limits(), [2, 2, 1], "one query per batch");
    tokio::time::advance(Duration::from_secs(2)).await;
    let json = serde_json::to_value(cache.health().await).unwrap();
    assert_eq!(
        json["warming"],
        serde_json::json!({"state": "done", "loaded": 5})
    );
    // Warmed keys are answered from L1: no store query for them.
    let lookups = store.by_hash.passed();
    for k in &used[..5] {
        assert!(verify(&cache, k).await.is_valid());
    }
    assert_eq!(store.by_hash.passed(), lookups);
}

/// Fewer used keys than asked for: all of them, and no query past the
/// last (short) batch. Never more than L1 holds.
#[tokio::test(start_paused = true)]
async fn loads_what_the_store_has_and_at_most_l1_capacity() {
    let mem = Arc::new(MemoryStore::new());
    let all = keys(&mem, 3, 2).await;
    let store = GatedStore::new(mem.clone());
    let cache = ApiKeyCache::new(warm(10).build().unwrap(), store.clone()).unwrap();
    until_state(&cache, WarmingState::Done).await;
    assert_eq!(cache.warming().loaded, 3);
    assert_eq!(store.recent_limits(), [2, 2]);
    assert_eq!(warmed(&cache, &all), [true, true, true, false, false]);

    let mem = Arc::new(MemoryStore::new());
    keys(&mem, 8, 0).await;
    let store = GatedStore::new(mem.clone());
    let config = warm(100).l1_capacity(3).build().unwrap();
    let cache = ApiKeyCache::new(config, store.clone()).unwrap();
    until_state(&cache, WarmingState::Done).await;
    assert_eq!(store.recent_limits(), [2, 1], "capped at the L1 capacity");
    assert_eq!(cache.warming().loaded, 3);
}

/// A key revoked and invalidated after warming read it (and before the
/// batch was filled) is not admitted: the batch is read again and the key
/// is refused, from L1 too.
#[tokio::test(start_paused = true)]
async fn a_key_revoked_while_warming_runs_is_not_served() {
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 2, 0).await;
    let store = GatedStore::new(mem.clone());
    store.recent.hold();
    let cache = ApiKeyCache::new(warm(2).build().unwrap(), store.clone()).unwrap();
    until_batch_held(&store, 1).await; // read: both keys active

    mem.revoke_key(&used[0].record.id).await.unwrap();
    cache.invalidate(&used[0].record.hash).await.unwrap();
    store.recent.release();
    until_state(&cache, WarmingState::Done).await;

    assert_eq!(in_l1(&cache, &used[0]), Some(Outcome::Revoked));
    assert_eq!(verify(&cache, &used[0]).await, Outcome::Revoked);
    assert!(in_l1(&cache, &used[1]).unwrap().is_valid());
    assert_eq!(store.recent_limits(), [2, 2], "the raced batch, read again");
    assert_eq!(cache.warming().loaded, 2);
}

/// The store fails every warming query: `failed` after three attempts;
/// requests are answered as usual and health stays healthy.
#[tokio::test(start_paused = true)]
async fn a_failing_store_makes_warming_fail_and_nothing_else() {
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 3, 0).await;
    let store = GatedStore::new(mem.clone());
    store.recent.set_failing(true);
    let cache = ApiKeyCache::new(warm(3).build().unwrap(), store.clone()).unwrap();
    until_state(&cache, WarmingState::Failed).await;
    assert_eq!(store.recent_limits(), [2, 2, 2], "three attempts");
    assert_eq!(cache.warming().loaded, 0);
    assert_eq!(warmed(&cache, &used), [false; 3]);
    assert!(verify(&cache, &used[0]).await.is_valid());
    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Healthy);
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(
        json["warming"],
        serde_json::json!({"state": "failed", "loaded": 0})
    );
}

/// A store written before `recently_used` existed (the trait's default
/// body): warming fails once, without retries.
#[tokio::test(start_paused = true)]
async fn a_store_without_recently_used_makes_warming_fail_once() {
    struct Legacy(Arc<MemoryStore>);
    #[apikey_cache::async_trait]
    impl KeyStore for Legacy {
        async fn find_by_hash(&self, h: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
            self.0.find_by_hash(h).await
        }
        async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
            self.0.find_by_id(id).await
        }
        async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
            self.0.list_by_owner(owner).await
        }
        async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
            self.0.record_usage(batch).await
        }
    }
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 2, 0).await;
    let legacy = Arc::new(Legacy(mem.clone()));
    assert!(matches!(
        legacy.recently_used(2, None).await,
        Err(StoreError::Unsupported("recently_used"))
    ));
    let started = tokio::time::Instant::now();
    let cache = ApiKeyCache::new(warm(2).build().unwrap(), legacy.clone()).unwrap();
    until_state(&cache, WarmingState::Failed).await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "not retried: unsupported stays unsupported"
    );
    assert_eq!(warmed(&cache, &used), [false; 2]);
    assert!(verify(&cache, &used[0]).await.is_valid());
}

/// `database_only` at start: no warming at all (`off`, no query). Turned on
/// while a batch is held: that batch fills nothing, no further batch is
/// read, and warming reports `off`.
#[tokio::test(start_paused = true)]
async fn database_only_mode_means_no_warming() {
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 4, 0).await;
    let store = GatedStore::new(mem.clone());
    let config = warm(4).mode(Mode::DatabaseOnly).build().unwrap();
    let cache = ApiKeyCache::new(config, store.clone()).unwrap();
    assert_eq!(cache.warming().state, WarmingState::Off);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(store.recent_limits().is_empty());
    assert_eq!(cache.warming().state, WarmingState::Off);
    let json = serde_json::to_value(cache.health().await).unwrap();
    assert_eq!(
        json["warming"],
        serde_json::json!({"state": "off", "loaded": 0})
    );

    let store = GatedStore::new(mem.clone());
    store.recent.hold();
    let cache = ApiKeyCache::new(warm(4).build().unwrap(), store.clone()).unwrap();
    until_batch_held(&store, 1).await;
    cache.set_mode(Mode::DatabaseOnly);
    store.recent.release();
    until_state(&cache, WarmingState::Off).await;
    assert_eq!(
        cache.stats().l1_entries,
        0,
        "nothing filled in database_only"
    );
    assert_eq!(store.recent_limits(), [2]);
    cache.set_mode(Mode::Normal);
    assert_eq!(warmed(&cache, &used), [false; 4]);
    assert_eq!(cache.warming().loaded, 0);
}

/// The deadline stops warming wherever it is: here while the second batch
/// is held, so only the first one is loaded, and no third is read.
#[tokio::test(start_paused = true)]
async fn the_deadline_stops_warming() {
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 6, 0).await;
    let store = GatedStore::new(mem.clone());
    store.recent.hold();
    let started = tokio::time::Instant::now();
    let config = warm(6)
        .warm_deadline(Duration::from_secs(30))
        .l1_ttl(Duration::from_secs(3600))
        // A held batch is a slow query, not a failed one.
        .store_timeout(Duration::from_secs(120))
        .tombstone_ttl(Duration::from_secs(300))
        .build()
        .unwrap();
    let cache = ApiKeyCache::new(config, store.clone()).unwrap();
    until_batch_held(&store, 1).await;
    next_batch(&store);
    until_batch_held(&store, 2).await;
    assert_eq!(cache.warming().state, WarmingState::Running);
    // Held for good: only the deadline ends it.
    until_state(&cache, WarmingState::Done).await;
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert_eq!(cache.warming().loaded, 2);
    assert_eq!(
        warmed(&cache, &used),
        [true, true, false, false, false, false]
    );
    store.recent.release();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(store.recent_limits(), [2, 2], "no batch after the deadline");
    assert_eq!(
        warmed(&cache, &used),
        [true, true, false, false, false, false],
        "the held batch was dropped, not filled late"
    );
}

/// Logs: a start line, one per batch and a done line, with counts; never a
/// key or its hash.
#[tokio::test(start_paused = true)]
async fn warming_logs_progress_with_counts_only() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let _guard = tracing::subscriber::set_default(capture::Capture(events.clone()));
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 3, 0).await;
    let cache = ApiKeyCache::new(warm(3).build().unwrap(), mem.clone()).unwrap();
    until_state(&cache, WarmingState::Done).await;
    let events = events.lock().unwrap().clone();
    let warming: Vec<&String> = events.iter().filter(|e| e.contains("warming")).collect();
    let line = |needle: &str| {
        warming
            .iter()
            .find(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {warming:#?}"))
    };
    assert!(line("cache warming started").contains("keys=3"));
    assert_eq!(
        warming
            .iter()
            .filter(|e| e.contains("cache warming batch loaded"))
            .count(),
        2
    );
    assert!(line("cache warming batch loaded").contains("loaded=2"));
    assert!(line("cache warming done").contains("loaded=3"));
    for e in &events {
        for k in &used {
            assert!(!e.contains(&k.plaintext), "{e}");
            assert!(!e.contains(&k.record.hash.to_hex()), "{e}");
        }
    }
}

/// A minimal `tracing` subscriber that keeps each event as
/// `message field=value ...`.
mod capture {
    use std::fmt::Write;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<String>>>);

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            } else {
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = Line(String::new());
            event.record(&mut line);
            self.0.lock().unwrap().push(line.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

// ---------------------------------------------------------------------------
// With Redis

fn redis_config(url: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .redis_url(url)
        // Generous for a loaded machine: these tests time nothing.
        .redis_timeout(Duration::from_secs(1))
        .redis_connect_timeout(Duration::from_secs(1))
        .breaker_cooldown(Duration::from_millis(200))
        .warm_batch_size(2)
        .warm_batch_pause(Duration::from_millis(5))
}

async fn subscribed(cache: ApiKeyCache) -> ApiKeyCache {
    wait_until("subscribed", || cache.stats().subscribed).await;
    cache
}

/// Warmed keys reach Redis too: another instance answers them from Redis
/// without asking the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gets_the_warmed_entries() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 4, 0).await;
    let a = ApiKeyCache::new(
        redis_config(&redis.url()).warm_keys(3).build().unwrap(),
        mem.clone(),
    )
    .unwrap();
    until_state(&a, WarmingState::Done).await;
    assert_eq!(a.warming().loaded, 3);
    for (i, k) in used.iter().enumerate() {
        let value = redis_value(&redis, &k.record.hash);
        if i < 3 {
            let value = value.unwrap_or_else(|| panic!("key {i} not in Redis"));
            assert!(value.contains("\"k\":\"f\""), "{value}");
            assert!(value.contains("\"status\":\"active\""), "{value}");
        } else {
            assert_eq!(value, None, "key {i} was not asked for");
        }
    }
    let counted = CountingStore::new(mem.clone());
    let b = subscribed(
        ApiKeyCache::new(redis_config(&redis.url()).build().unwrap(), counted.clone()).unwrap(),
    )
    .await;
    for k in &used[..3] {
        assert!(verify(&b, k).await.is_valid());
    }
    assert_eq!(counted.lookups(), 0, "answered from Redis");
}

/// The revocation race with Redis: warming held after reading an active
/// key, the key revoked and invalidated, warming released. Neither this
/// instance's L1 nor Redis holds the old record afterwards: the instance
/// refuses the key from L1, Redis keeps the tombstone, and another instance
/// refuses it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_warming_runs_is_refused_in_l1_and_redis() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 2, 0).await;
    let store = GatedStore::new(mem.clone());
    store.recent.hold();
    let a = ApiKeyCache::new(
        redis_config(&redis.url()).warm_keys(2).build().unwrap(),
        store.clone(),
    )
    .unwrap();
    until_batch_held(&store, 1).await;
    assert!(a.stats().subscribed, "warming waits for the subscriber");

    mem.revoke_key(&used[0].record.id).await.unwrap();
    a.invalidate(&used[0].record.hash).await.unwrap();
    store.recent.release();
    until_state(&a, WarmingState::Done).await;

    assert_eq!(in_l1(&a, &used[0]), Some(Outcome::Revoked));
    let value = redis_value(&redis, &used[0].record.hash).unwrap();
    assert!(
        value.contains("\"k\":\"t\""),
        "still the tombstone: {value}"
    );
    assert!(redis_value(&redis, &used[1].record.hash)
        .unwrap()
        .contains("\"status\":\"active\""));
    assert_eq!(store.recent_limits(), [2, 2], "the raced batch, read again");
    let b = subscribed(
        ApiKeyCache::new(redis_config(&redis.url()).build().unwrap(), mem.clone()).unwrap(),
    )
    .await;
    assert_eq!(verify(&b, &used[0]).await, Outcome::Revoked);
    assert!(verify(&b, &used[1]).await.is_valid());
}

/// Another instance revokes while this one warms, and this one's Redis
/// traffic (its fill, and the event) is held in the network until the
/// tombstone has expired: the late fill must not write the old record.
/// Warming read Redis's clock before its store query, so Redis refuses the
/// fill as too late; a clock read at fill time (after the revocation) would
/// still let it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warming_fill_that_outlives_the_tombstone_writes_nothing() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 2, 0).await;
    let (k, other) = (&used[0], &used[1]);
    let store = GatedStore::new(mem.clone());
    let proxy = HoldProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    // Short tombstones, still longer than a load may take (1.5 s + 4 x
    // 200 ms); the batch is held for a quarter of one, well within the
    // store timeout (a held batch must be a slow query, not a failed one).
    let tomb_ttl = Duration::from_millis(2400);
    let quick = |url: &str| {
        redis_config(url)
            .store_timeout(Duration::from_millis(1500))
            .redis_timeout(Duration::from_millis(200))
            .tombstone_ttl(tomb_ttl)
    };
    let a =
        subscribed(ApiKeyCache::new(quick(&redis.url()).build().unwrap(), mem.clone()).unwrap())
            .await;
    // Loads the fill script into Redis, so the held fill runs when it
    // arrives instead of failing with NOSCRIPT.
    assert!(verify(&a, other).await.is_valid());
    assert!(redis_value(&redis, &other.record.hash).is_some());

    store.recent.hold();
    let b = ApiKeyCache::new(
        quick(&proxy.url()).warm_keys(1).build().unwrap(),
        store.clone(),
    )
    .unwrap();
    until_batch_held(&store, 1).await; // B has read the active record
    proxy.hold();
    mem.revoke_key(&k.record.id).await.unwrap();
    a.invalidate(&k.record.hash).await.unwrap();
    let tombstoned_at = redis_time(&redis);
    // A quarter of a tombstone later, B fills: its fill waits in the proxy.
    let quarter = i64::try_from(tomb_ttl.as_micros() / 4).unwrap();
    wait_until("a quarter of a tombstone passed", || {
        redis_time(&redis) > tombstoned_at + quarter
    })
    .await;
    store.recent.release();
    until_state(&b, WarmingState::Done).await; // B gave up waiting for it
    assert_eq!(
        store.recent_limits(),
        [1],
        "the batch read before the revocation"
    );
    assert!(
        in_l1(&b, k).unwrap().is_valid(),
        "B has not heard of it yet"
    );
    wait_until("the tombstone expired", || {
        redis_value(&redis, &k.record.hash).is_none()
    })
    .await;
    let fill_ran = watch_commands(&redis, k.record.hash.to_hex());
    proxy.release(); // the late fill reaches Redis now
    let command =
        tokio::task::spawn_blocking(move || fill_ran.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the held fill reached Redis");
    assert!(
        command.to_ascii_lowercase().contains("evalsha"),
        "{command}"
    );
    let value = redis_value(&redis, &k.record.hash);
    assert!(
        value
            .as_deref()
            .is_none_or(|v| !v.contains("\"status\":\"active\"")),
        "the old record came back: {value:?}"
    );
    let c =
        subscribed(ApiKeyCache::new(quick(&redis.url()).build().unwrap(), mem.clone()).unwrap())
            .await;
    assert_eq!(verify(&c, k).await, Outcome::Revoked);
}

/// Redis's clock, in microseconds.
fn redis_time(redis: &RedisServer) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut redis.conn()).unwrap();
    secs * 1_000_000 + micros
}

/// Watches Redis (`MONITOR`) for a command mentioning `needle`; the
/// receiver gets the first one. Redis runs one command at a time, so a
/// command sent after it arrives runs after it.
fn watch_commands(redis: &RedisServer, needle: String) -> std::sync::mpsc::Receiver<String> {
    let mut conn = redis.conn();
    conn.send_packed_command(&redis::cmd("MONITOR").get_packed_command())
        .unwrap();
    assert_eq!(conn.recv_response().unwrap(), redis::Value::Okay);
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(line) = conn.recv_response() {
            let line = match line {
                redis::Value::SimpleString(s) => s,
                other => format!("{other:?}"),
            };
            if line.contains(&needle) {
                let _ = tx.send(line);
                return;
            }
        }
    });
    rx
}

/// Redis down at start: warming fills L1 alone, and reports `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_warming_fills_l1_only() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill9();
    let mem = Arc::new(MemoryStore::new());
    let used = keys(&mem, 3, 0).await;
    let config = redis_config(&url)
        .redis_timeout(Duration::from_millis(100))
        .redis_connect_timeout(Duration::from_millis(100))
        .warm_keys(3)
        .build()
        .unwrap();
    let cache = ApiKeyCache::new(config, mem.clone()).unwrap();
    until_state(&cache, WarmingState::Done).await;
    assert_eq!(cache.warming().loaded, 3);
    assert_eq!(warmed(&cache, &used), [true; 3]);
    assert!(!cache.stats().subscribed);
}
