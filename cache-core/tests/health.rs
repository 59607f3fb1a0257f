//! The `/health/cache` report: status rules and the once-a-second probe bound.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, Clock, HealthStatus, KeyAdmin, ManualClock, MemoryStore, Mode,
    NewKey, RequiredScopes,
};
use support::redis::RedisServer;
use support::store::CountingStore;

fn setup(
    config: CacheConfig,
) -> (
    Arc<MemoryStore>,
    Arc<CountingStore<MemoryStore>>,
    ApiKeyCache,
) {
    let mem = Arc::new(MemoryStore::new());
    let store = CountingStore::new(mem.clone());
    let cache = ApiKeyCache::new(config, store.clone()).unwrap();
    (mem, store, cache)
}

#[tokio::test(start_paused = true)]
async fn probes_at_most_once_a_second_whatever_the_rate() {
    let (_, store, cache) = setup(CacheConfig::default());
    let reports = futures_util::future::join_all((0..200).map(|_| cache.health())).await;
    assert!(reports.iter().all(|r| r.status == HealthStatus::Healthy));
    assert_eq!(cache.health_probe_count(), 1);
    assert_eq!(store.lookups(), 1, "one store query for 200 probes");
    tokio::time::advance(Duration::from_millis(999)).await;
    cache.health().await;
    assert_eq!(cache.health_probe_count(), 1);
    tokio::time::advance(Duration::from_millis(2)).await;
    cache.health().await;
    assert_eq!(cache.health_probe_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn status_rules() {
    let (mem, store, cache) = setup(CacheConfig::default());
    let json = serde_json::to_value(cache.health().await).unwrap();
    for field in [
        "status",
        "mode",
        "l1",
        "l2",
        "store",
        "invalidation",
        "owner_lists",
        "warming",
        "checked_at",
    ] {
        assert!(json.get(field).is_some(), "missing {field}: {json}");
    }
    assert_eq!(json["l1"]["hit_rate"], 0.0, "a cold cache is still healthy");
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["l2"]["status"], "disabled");
    assert_eq!(
        json["warming"],
        serde_json::json!({"state": "off", "loaded": 0}),
        "not configured"
    );

    // Store down, nothing cached: unhealthy, 503.
    store.set_failing(true);
    tokio::time::advance(Duration::from_secs(2)).await;
    let r = cache.health().await;
    assert_eq!((r.status, r.http_status()), (HealthStatus::Unhealthy, 503));
    assert_eq!(r.store.status, "down");

    // Store down, but L1 can answer: degraded, 200.
    store.set_failing(false);
    let key = mem
        .create_key(cache.hasher(), NewKey::new("a", ["x"]))
        .await
        .unwrap();
    assert!(cache
        .verify_key(&key.plaintext, &RequiredScopes::none())
        .await
        .is_valid());
    store.set_failing(true);
    tokio::time::advance(Duration::from_secs(2)).await;
    let r = cache.health().await;
    assert_eq!((r.status, r.http_status()), (HealthStatus::Degraded, 200));
    assert_eq!(r.l1.hits + r.l1.misses, 1);

    // Database-only with the store down: unhealthy whatever L1 holds.
    cache.set_mode(Mode::DatabaseOnly);
    let key2 = mem
        .create_key(cache.hasher(), NewKey::new("a", ["x"]))
        .await
        .unwrap();
    drop(key2);
    tokio::time::advance(Duration::from_secs(2)).await;
    let r = cache.health().await;
    assert_eq!(r.mode, "database_only");
    assert_eq!(r.status, HealthStatus::Unhealthy);
}

/// The once-a-second bound is also read off the cache's clock, for tests
/// whose real I/O rules out paused time.
#[tokio::test]
async fn probes_at_most_once_a_second_on_the_cache_clock() {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let cache = ApiKeyCache::builder(Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = cache.health().await;
    assert_eq!(
        first.checked_at,
        clock.now(),
        "stamped by the cache's clock"
    );
    clock.advance(Duration::from_millis(999));
    cache.health().await;
    assert_eq!(cache.health_probe_count(), 1);
    clock.advance(Duration::from_millis(2));
    let second = cache.health().await;
    assert_eq!(cache.health_probe_count(), 2);
    assert_eq!(second.checked_at, clock.now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_degraded_not_unhealthy() {
    let mut redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let cache = ApiKeyCache::builder(Arc::new(MemoryStore::new()))
        .config(
            CacheConfig::builder()
                .redis_url(redis.url())
                .redis_timeout(Duration::from_millis(200))
                .build()
                .unwrap(),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    support::wait_until("subscribed", || cache.stats().subscribed).await;
    let r = cache.health().await;
    assert_eq!(r.status, HealthStatus::Healthy);
    assert_eq!(r.l2.status, "up");
    assert!(r.invalidation.subscribed);
    redis.kill9();
    // Past the probe throttle without sleeping (real sockets: no paused
    // time here).
    clock.advance(Duration::from_millis(1001));
    let r = cache.health().await;
    assert_eq!(r.l2.status, "down");
    assert_eq!((r.status, r.http_status()), (HealthStatus::Degraded, 200));
}

/// Advances paused time in small steps, letting background tasks run at
/// each, so their timers fire when due rather than all at the end of one
/// big jump.
async fn step(by: Duration) {
    let mut left = by;
    while !left.is_zero() {
        let d = left.min(Duration::from_millis(100));
        tokio::time::advance(d).await;
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        left -= d;
    }
}

/// Entries past their lifetime cannot answer: with the store down and only
/// dead entries in L1, health says unhealthy (the probe sweeps them before
/// counting), not degraded.
#[tokio::test(start_paused = true)]
async fn dead_entries_do_not_count_as_cached_answers() {
    // Entries live 50 s; the sweeper runs every 45 s (the shorter TTL), so
    // the entry below dies between two sweeps, wherever their beat falls.
    let config = CacheConfig::builder()
        .l1_ttl(Duration::from_secs(50))
        .negative_ttl(Duration::from_secs(45))
        .build()
        .unwrap();
    let (mem, store, cache) = setup(config);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let key = mem
        .create_key(cache.hasher(), NewKey::new("a", ["x"]))
        .await
        .unwrap();
    let none = RequiredScopes::none();
    assert!(cache.verify_key(&key.plaintext, &none).await.is_valid());
    store.set_failing(true);
    step(Duration::from_secs(48)).await;
    assert_eq!(cache.health().await.status, HealthStatus::Degraded);
    step(Duration::from_secs(3)).await;
    assert_eq!(cache.stats().l1_entries, 1, "not swept yet");
    let r = cache.health().await;
    assert_eq!((r.status, r.l1.entries), (HealthStatus::Unhealthy, 0));
    assert_eq!(
        cache.verify_key(&key.plaintext, &none).await,
        apikey_cache::Outcome::Unavailable
    );
}

/// The background sweeper frees dead entries without any request touching
/// them.
#[tokio::test(start_paused = true)]
async fn background_sweep_frees_dead_entries() {
    let (_, _, cache) = setup(CacheConfig::default());
    // Let the background tasks start (and the sweeper's clock with them).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let none = RequiredScopes::none();
    for i in 0..5 {
        let unknown = format!("ak_unknown_{i:032}");
        assert_eq!(
            cache.verify_key(&unknown, &none).await,
            apikey_cache::Outcome::Unknown
        );
    }
    assert_eq!(cache.stats().l1_entries, 5);
    // "Not found" lives 30 s; the sweeper runs every 30 s.
    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(cache.stats().l1_entries, 0);
}
