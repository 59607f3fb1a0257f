//! Fleet-wide usage counts in Redis: exactly once, in the month the request
//! was served, independent of the store, and accounted for at shutdown.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyAdmin, KeyId, ManualClock, MemoryStore, NewKey, RequiredScopes,
};
use support::gated::GatedStore;
use support::redis::RedisServer;
use support::wait_until;

fn config(redis: &RedisServer) -> CacheConfig {
    CacheConfig::builder()
        .redis_url(redis.url())
        // Generous for a loaded CI machine: these tests time nothing.
        .redis_timeout(Duration::from_secs(1))
        .breaker_cooldown(Duration::from_millis(100))
        // Flushes are driven by the tests.
        .usage_flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap()
}

async fn cache(
    store: Arc<GatedStore>,
    redis: &RedisServer,
    clock: Arc<ManualClock>,
) -> ApiKeyCache {
    let cache = ApiKeyCache::builder(store)
        .config(config(redis))
        .clock(clock)
        .build()
        .unwrap();
    wait_until("subscribed", || cache.stats().subscribed).await;
    cache
}

fn count(redis: &RedisServer, id: &KeyId, month: &str) -> Option<u64> {
    redis::cmd("GET")
        .arg(format!("apikey-cache:usage:{{{month}}}:{id}"))
        .query(&mut redis.conn())
        .unwrap()
}

async fn serve(cache: &ApiKeyCache, key: &str, n: usize) {
    for _ in 0..n {
        assert!(cache
            .verify_key(key, &RequiredScopes::none())
            .await
            .is_valid());
    }
}

/// Requests served on the last evening of January and flushed in February
/// count for January; February's for February.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_go_to_the_month_they_were_served_in() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-01-31 23:59:59 UTC),
    ));
    let cache = cache(store, &redis, clock.clone()).await;
    let key = mem
        .create_key(cache.hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    serve(&cache, &key.plaintext, 3).await;
    clock.advance(Duration::from_secs(1));
    serve(&cache, &key.plaintext, 2).await;
    assert!(cache.flush_usage().await);
    assert_eq!(count(&redis, &key.record.id, "2030-01"), Some(3));
    assert_eq!(count(&redis, &key.record.id, "2030-02"), Some(2));
    // Months later, without a flush in between: still each in its month.
    clock.set(time::macros::datetime!(2030-04-30 12:00 UTC));
    serve(&cache, &key.plaintext, 4).await;
    clock.set(time::macros::datetime!(2030-05-01 0:00 UTC));
    serve(&cache, &key.plaintext, 1).await;
    clock.set(time::macros::datetime!(2030-06-01 0:00 UTC));
    serve(&cache, &key.plaintext, 6).await;
    assert!(cache.flush_usage().await);
    assert_eq!(count(&redis, &key.record.id, "2030-04"), Some(4));
    assert_eq!(count(&redis, &key.record.id, "2030-05"), Some(1));
    assert_eq!(count(&redis, &key.record.id, "2030-06"), Some(6));
    let details = mem.key_details(&key.record.id).await.unwrap().unwrap();
    assert_eq!(details.total_requests, 16);
}

/// The store refusing usage batches does not hold up Redis's counts; once
/// it is back, it gets every request exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_does_not_stop_redis_counts() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-03-10 10:00 UTC),
    ));
    let cache = cache(store.clone(), &redis, clock).await;
    let key = mem
        .create_key(cache.hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    store.usage.set_failing(true);
    for round in 1..=3u64 {
        serve(&cache, &key.plaintext, 5).await;
        assert!(!cache.flush_usage().await, "the store is down");
        assert_eq!(count(&redis, &key.record.id, "2030-03"), Some(5 * round));
    }
    assert_eq!(cache.stats().usage_pending_increments, 15);
    store.usage.set_failing(false);
    assert!(cache.flush_usage().await);
    let details = mem.key_details(&key.record.id).await.unwrap().unwrap();
    assert_eq!(details.total_requests, 15);
    assert_eq!(count(&redis, &key.record.id, "2030-03"), Some(15));
}

/// A batch is applied whole or not at all: Redis out of memory refuses the
/// script before its first write (no marker, no count), and the same batch
/// lands once later. A count key holding garbage is replaced, not a reason
/// to fail forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_batches_are_all_or_nothing() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-03-10 10:00 UTC),
    ));
    let cache = cache(store, &redis, clock).await;
    let a = mem
        .create_key(cache.hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    let b = mem
        .create_key(cache.hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    // Garbage where b's count goes.
    let _: () = redis::cmd("RPUSH")
        .arg(format!("apikey-cache:usage:{{2030-03}}:{}", b.record.id))
        .arg("junk")
        .query(&mut redis.conn())
        .unwrap();
    serve(&cache, &a.plaintext, 4).await;
    serve(&cache, &b.plaintext, 2).await;
    let mut conn = redis.conn();
    redis.set_max_memory("1");
    assert!(cache.flush_usage().await, "the store took it");
    let markers: Vec<String> = redis::cmd("KEYS")
        .arg("apikey-cache:usage-batch:*")
        .query(&mut conn)
        .unwrap();
    assert!(
        markers.is_empty(),
        "no marker without its counts: {markers:?}"
    );
    assert_eq!(count(&redis, &a.record.id, "2030-03"), None);
    // More requests while the refused batch waits: they queue behind it,
    // neither replacing it nor joining it.
    serve(&cache, &a.plaintext, 3).await;
    assert!(cache.flush_usage().await);
    assert_eq!(count(&redis, &a.record.id, "2030-03"), None);
    redis.set_max_memory("0");
    assert!(cache.flush_usage().await);
    assert!(cache.flush_usage().await, "a second flush adds nothing");
    assert_eq!(count(&redis, &a.record.id, "2030-03"), Some(7));
    assert_eq!(count(&redis, &b.record.id, "2030-03"), Some(2));
    assert_eq!(cache.stats().l2_bad_values, 1, "the garbage was counted");
}

/// `shutdown` delivers the Redis backlog, or says what it could not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_what_redis_did_not_get() {
    let mut redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-03-10 10:00 UTC),
    ));
    let cache = cache(store, &redis, clock).await;
    let key = mem
        .create_key(cache.hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    serve(&cache, &key.plaintext, 7).await;
    redis.kill9();
    let err = cache
        .shutdown(Duration::from_millis(600))
        .await
        .expect_err("Redis is gone");
    assert_eq!((err.keys, err.increments), (0, 0), "the store has it all");
    assert_eq!((err.redis_keys, err.redis_increments), (1, 7));
    let details = mem.key_details(&key.record.id).await.unwrap().unwrap();
    assert_eq!(details.total_requests, 7);

    // With Redis up, shutdown delivers it.
    redis.restart();
    let cache = ApiKeyCache::builder(GatedStore::new(mem.clone()))
        .config(config(&redis))
        .build()
        .unwrap();
    serve(&cache, &key.plaintext, 3).await;
    cache.shutdown(Duration::from_secs(5)).await.unwrap();
    let month = apikey_cache_month_now();
    assert_eq!(count(&redis, &key.record.id, &month), Some(3));
}

fn apikey_cache_month_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

/// A batch of more keys than are put in its command between two yields to
/// the runtime (the command is built in steps) lands whole: every key's
/// count, one marker, and the same totals in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_thousands_of_keys_lands_whole() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-03-10 10:00 UTC),
    ));
    let cache = cache(store, &redis, clock).await;
    let n = 2_500;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let plaintext = format!("ak_many_{i:06}");
        let id = KeyId::new(format!("key_{i}"));
        mem.insert(apikey_cache::KeyRecord::new(
            id.clone(),
            cache.hash_key(&plaintext),
            "acme",
            apikey_cache::Scopes::new(["a"]),
        ));
        serve(&cache, &plaintext, i % 3 + 1).await;
        ids.push(id);
    }
    assert!(cache.flush_usage().await);
    let keys: Vec<String> = ids
        .iter()
        .map(|id| format!("apikey-cache:usage:{{2030-03}}:{id}"))
        .collect();
    let counts: Vec<Option<u64>> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut redis.conn())
        .unwrap();
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(*c, Some((i % 3 + 1) as u64), "key_{i} in redis");
    }
    let markers: Vec<String> = redis::cmd("KEYS")
        .arg("apikey-cache:usage-batch:*")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(markers.len(), 1, "one batch");
    for (i, id) in ids.iter().enumerate().step_by(97) {
        let details = mem.key_details(id).await.unwrap().unwrap();
        assert_eq!(
            details.total_requests,
            (i % 3 + 1) as u64,
            "key_{i} in the store"
        );
    }
}
