//! Revocation across instances, Redis and store faults, and the emergency
//! database-only mode, with real processes: a private redis-server per test
//! (killed, paused, restarted), PostgreSQL behind a TCP proxy that can cut
//! or blackhole the connection.

// Runs against the PostgreSQL store: built only with their features.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    ApiKeyCache, BreakerState, CacheConfig, Clock, KeyAdmin, KeyRecord, KeyStore, ManualClock,
    MemoryStore, Mode, NewKey, Outcome, PostgresStore, RequiredScopes,
};
use support::pg::PgTestDb;
use support::proxy::TcpProxy;
use support::redis::RedisServer;
use support::wait_until;

fn config(redis: &RedisServer) -> apikey_cache::CacheConfigBuilder {
    CacheConfig::builder()
        .redis_url(redis.url())
        .redis_timeout(Duration::from_millis(200))
        .redis_connect_timeout(Duration::from_millis(200))
        .breaker_cooldown(Duration::from_millis(200))
}

async fn instance(store: Arc<dyn KeyStore>, config: CacheConfig) -> ApiKeyCache {
    let cache = ApiKeyCache::new(config, store).unwrap();
    wait_until("subscribed", || cache.stats().subscribed).await;
    cache
}

async fn issue(store: &MemoryStore, cache: &ApiKeyCache, owner: &str) -> (String, KeyRecord) {
    let created = store
        .create_key(cache.hasher(), NewKey::new(owner, ["orders:*"]))
        .await
        .unwrap();
    (created.plaintext.clone(), created.record.clone())
}

/// Polls `cache` with `key` until the outcome is `want`.
async fn until_outcome(cache: &ApiKeyCache, key: &str, want: Outcome) -> Duration {
    let started = Instant::now();
    loop {
        if cache.verify_key(key, &RequiredScopes::none()).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_a_is_refused_by_b() {
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let a = instance(store.clone(), config(&redis).build().unwrap()).await;
    let b = instance(store.clone(), config(&redis).build().unwrap()).await;
    let (key, record) = issue(&store, &a, "acme").await;
    let none = RequiredScopes::none();
    assert!(b.verify_key(&key, &none).await.is_valid());
    assert!(b.verify_key(&key, &none).await.is_valid(), "now in B's L1");

    store.revoke_key(&record.id).await.unwrap();
    a.invalidate(&record.hash).await.unwrap();
    assert_eq!(a.verify_key(&key, &none).await, Outcome::Revoked);
    until_outcome(&b, &key, Outcome::Revoked).await;
    assert_eq!(b.stats().invalidations_remote, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_an_owner_with_1000_keys_takes_one_event() {
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let a = instance(store.clone(), config(&redis).build().unwrap()).await;
    let b = instance(store.clone(), config(&redis).build().unwrap()).await;
    let none = RequiredScopes::none();
    let mut keys = Vec::new();
    for _ in 0..1000 {
        keys.push(issue(&store, &a, "suspended-co").await.0);
    }
    let (bystander, _) = issue(&store, &a, "other-co").await;
    for k in keys.iter().chain([&bystander]) {
        assert!(b.verify_key(k, &none).await.is_valid());
    }
    let before = b.stats();

    let revoked = store.revoke_owner("suspended-co").await.unwrap();
    assert_eq!(revoked.len(), 1000);
    a.invalidate_owner("suspended-co").await.unwrap();
    wait_until("B received the event", || {
        b.stats().events_received == before.events_received + 1
    })
    .await;
    for k in &keys {
        assert_eq!(b.verify_key(k, &none).await, Outcome::Revoked);
    }
    // One event, and the other owner's key is still answered from L1.
    let lookups = b.stats().store_queries;
    assert!(b.verify_key(&bystander, &none).await.is_valid());
    assert_eq!(b.stats().store_queries, lookups);
    assert_eq!(b.stats().events_received, before.events_received + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_then_restarted() {
    let mut redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    // L1 TTL zero: every request goes through Redis or the store.
    let cfg = || config(&redis).l1_ttl(Duration::ZERO).build().unwrap();
    let a = instance(store.clone(), cfg()).await;
    let b = instance(store.clone(), config(&redis).build().unwrap()).await;
    let mut keys = Vec::new();
    for _ in 0..20 {
        keys.push(issue(&store, &a, "acme").await);
    }
    // A key in B's L1 whose revocation comes while Redis is down: nobody
    // publishes its invalidation, so only the resync's L1 clear makes B
    // ask the store again.
    let (missed_key, missed) = issue(&store, &a, "acme").await;
    assert!(b
        .verify_key(&missed_key, &RequiredScopes::none())
        .await
        .is_valid());
    assert!(b
        .verify_key(&missed_key, &RequiredScopes::none())
        .await
        .is_valid());
    assert_eq!(b.stats().l1_entries, 1);
    let stream = {
        let (a, keys) = (a.clone(), keys.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed() < Duration::from_millis(1500) {
                for (k, _) in &keys {
                    let outcome = a.verify_key(k, &RequiredScopes::none()).await;
                    assert!(outcome.is_valid(), "{outcome:?} while redis was down");
                    n += 1;
                }
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill9();
    store.revoke_key(&missed.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.restart();
    let served = stream.await.unwrap();
    assert!(served > 100);
    assert!(a.stats().l2_errors > 0, "the outage was seen");

    wait_until("A's breaker closed", || {
        a.stats().l2_breaker == Some(BreakerState::Closed)
    })
    .await;
    wait_until("B resubscribed", || {
        b.stats().subscribed && b.stats().resyncs >= 1
    })
    .await;
    // The resync clears L1 before it counts itself.
    assert_eq!(b.stats().l1_entries, 0, "B's L1 was cleared");
    assert_eq!(
        b.verify_key(&missed_key, &RequiredScopes::none()).await,
        Outcome::Revoked,
        "the revocation B never heard of"
    );
    wait_until("A resubscribed", || a.stats().subscribed).await;

    // Invalidation works again across instances.
    let (key, record) = &keys[0];
    assert!(b.verify_key(key, &RequiredScopes::none()).await.is_valid());
    store.revoke_key(&record.id).await.unwrap();
    a.invalidate(&record.hash).await.unwrap();
    until_outcome(&b, key, Outcome::Revoked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_costs_the_timeout_until_the_breaker_opens() {
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let cache = instance(
        store.clone(),
        config(&redis)
            .redis_timeout(Duration::from_millis(50))
            .breaker_threshold(3)
            .breaker_cooldown(Duration::from_secs(600))
            .build()
            .unwrap(),
    )
    .await;
    let mut keys = Vec::new();
    for _ in 0..20 {
        keys.push(issue(&store, &cache, "acme").await.0);
    }
    redis.pause();
    let none = RequiredScopes::none();
    // Closed breaker: each miss waits out the 50 ms Redis budget, no longer.
    let mut i = 0;
    while cache.stats().l2_breaker == Some(BreakerState::Closed) {
        let started = Instant::now();
        assert!(cache.verify_key(&keys[i], &none).await.is_valid());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        i += 1;
        assert!(i < 10, "breaker never opened");
    }
    assert_eq!(cache.stats().l2_breaker, Some(BreakerState::Open));
    // Open breaker: Redis is not called at all.
    let errors = cache.stats().l2_errors;
    for k in &keys[i..] {
        assert!(cache.verify_key(k, &none).await.is_valid());
    }
    assert_eq!(cache.stats().l2_errors, errors);
    redis.resume();
}

/// `postgres://user@host:port/db` with host:port replaced.
fn via_proxy(url: &str, port: u16) -> String {
    let at = url.find('@').unwrap();
    let slash = at + url[at..].find('/').unwrap();
    format!("{}127.0.0.1:{port}{}", &url[..at + 1], &url[slash..])
}

fn upstream_of(url: &str) -> std::net::SocketAddr {
    let at = url.find('@').unwrap();
    let slash = at + url[at..].find('/').unwrap();
    let hostport = &url[at + 1..slash];
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .unwrap()
        .next()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_serves_stale_within_the_window_and_fails_closed_otherwise() {
    let db = PgTestDb::create().await;
    let proxy = TcpProxy::start(upstream_of(&db.url)).await;
    let options = PostgresStore::pool_options().acquire_timeout(Duration::from_millis(300));
    let store = Arc::new(
        PostgresStore::connect_with(&via_proxy(&db.url, proxy.port), options)
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let cache = ApiKeyCache::builder(store.clone())
        .config(
            CacheConfig::builder()
                .l1_ttl(Duration::from_millis(100))
                .stale_if_error(Duration::from_secs(60))
                .store_timeout(Duration::from_millis(500))
                .build()
                .unwrap(),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    let none = RequiredScopes::none();
    let new = |owner: &str| NewKey::new(owner, ["a"]);
    let cached = store.create_key(cache.hasher(), new("acme")).await.unwrap();
    let invalidated = store.create_key(cache.hasher(), new("acme")).await.unwrap();
    let expiring = store
        .create_key(
            cache.hasher(),
            new("acme").expires_at(clock.now() + Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    for k in [&cached, &invalidated, &expiring] {
        assert!(cache.verify_key(&k.plaintext, &none).await.is_valid());
    }
    // Let the L1 entries go stale (real time: the proxy below is real I/O).
    tokio::time::sleep(Duration::from_millis(150)).await;

    proxy.cut();
    assert!(
        cache.verify_key(&cached.plaintext, &none).await.is_valid(),
        "stale-if-error"
    );
    assert!(cache.stats().stale_served >= 1);
    let unknown = apikey_cache::generate_api_key().unwrap();
    assert_eq!(
        cache.verify_key(&unknown, &none).await,
        Outcome::Unavailable
    );
    cache.invalidate(&invalidated.record.hash).await.unwrap();
    assert_eq!(
        cache.verify_key(&invalidated.plaintext, &none).await,
        Outcome::Unavailable,
        "never stale after an invalidation"
    );
    clock.advance(Duration::from_secs(7200));
    assert_eq!(
        cache.verify_key(&expiring.plaintext, &none).await,
        Outcome::Expired,
        "never past expires_at"
    );

    // A blackholed database: the store timeout ends the wait.
    proxy.blackhole();
    let started = Instant::now();
    assert_eq!(
        cache.verify_key(&unknown, &none).await,
        Outcome::Unavailable
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    proxy.restore();
    until_outcome(&cache, &unknown, Outcome::Unknown).await;
    assert!(cache
        .verify_key(&invalidated.plaintext, &none)
        .await
        .is_valid());
    drop(cache);
    store.pool().close().await;
    drop(proxy);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_only_mode_fleet_wide() {
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let a = instance(store.clone(), config(&redis).build().unwrap()).await;
    let b = instance(store.clone(), config(&redis).build().unwrap()).await;
    let (key, record) = issue(&store, &a, "acme").await;
    let none = RequiredScopes::none();
    assert!(b.verify_key(&key, &none).await.is_valid());

    a.set_fleet_mode(Mode::DatabaseOnly).await.unwrap();
    assert_eq!(a.mode(), Mode::DatabaseOnly);
    wait_until("B in database_only", || b.mode() == Mode::DatabaseOnly).await;
    // An instance that starts later reads the fleet mode.
    let c = instance(store.clone(), config(&redis).build().unwrap()).await;
    wait_until("C in database_only", || c.mode() == Mode::DatabaseOnly).await;

    // Every request asks the store: a revocation needs no invalidation.
    let queries = b.stats().store_queries;
    assert!(b.verify_key(&key, &none).await.is_valid());
    assert_eq!(b.stats().store_queries, queries + 1);
    store.revoke_key(&record.id).await.unwrap();
    assert_eq!(b.verify_key(&key, &none).await, Outcome::Revoked);
    assert_eq!(c.verify_key(&key, &none).await, Outcome::Revoked);

    a.set_fleet_mode(Mode::Normal).await.unwrap();
    wait_until("B back to normal", || b.mode() == Mode::Normal).await;
    assert_eq!(b.stats().mode, Mode::Normal);
}

/// An invalidation made while Redis hangs reaches Redis and the other
/// instances once it answers again: nobody reads the old record back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_during_a_redis_outage_lands_afterwards() {
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let cfg = || {
        config(&redis)
            .redis_timeout(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    let a = instance(store.clone(), cfg()).await;
    let b = instance(store.clone(), cfg()).await;
    let (key, record) = issue(&store, &a, "acme").await;
    let none = RequiredScopes::none();
    assert!(
        b.verify_key(&key, &none).await.is_valid(),
        "in B's L1 and in Redis"
    );

    redis.pause();
    store.revoke_key(&record.id).await.unwrap();
    assert!(a.invalidate(&record.hash).await.is_err());
    assert_eq!(a.pending_invalidations(), 1);
    assert_eq!(
        a.verify_key(&key, &none).await,
        Outcome::Revoked,
        "A at once"
    );
    redis.resume();

    wait_until("A's retry landed", || a.pending_invalidations() == 0).await;
    until_outcome(&b, &key, Outcome::Revoked).await;
    // A fresh instance reads Redis: the tombstone, not the old record.
    let c = instance(store.clone(), cfg()).await;
    assert_eq!(c.verify_key(&key, &none).await, Outcome::Revoked);
}
