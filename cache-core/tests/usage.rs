//! Usage accounting that loses nothing and counts nothing twice, fleet-wide
//! rate limits and monthly quotas, against real Redis and PostgreSQL.

// Runs against the PostgreSQL store: built only with their features.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    async_trait, ApiKeyCache, CacheConfig, Clock, KeyAdmin, KeyHash, KeyId, KeyRecord, KeyStore,
    ManualClock, MemoryStore, NewKey, Outcome, PostgresStore, RateLimit, RequiredScopes,
    StoreError, UsageBatch,
};
use support::pg::PgTestDb;
use support::proxy::TcpProxy;
use support::redis::RedisServer;
use support::wait_until;

/// 3 instances, 30,000 verifies, Redis killed and restarted, the database
/// cut for a while: after a clean shutdown the store's totals are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_accounting_through_redis_and_database_outages() {
    let db = PgTestDb::create().await;
    let direct = PostgresStore::connect(&db.url).await.unwrap();
    direct.migrate().await.unwrap();
    // Bind the proxy first to learn its port, then point the store at it.
    let probe = TcpProxy::start(support::pg::through_proxy(&db.url, 1).0).await;
    let (_, proxied_url) = support::pg::through_proxy(&db.url, probe.port);
    let proxy = probe;
    let options = PostgresStore::pool_options().acquire_timeout(Duration::from_millis(300));
    let store = Arc::new(
        PostgresStore::connect_with(&proxied_url, options)
            .await
            .unwrap(),
    );
    let mut redis = RedisServer::start();
    let config = || {
        CacheConfig::builder()
            .redis_url(redis.url())
            .redis_timeout(Duration::from_millis(200))
            .breaker_cooldown(Duration::from_millis(200))
            .store_timeout(Duration::from_millis(500))
            .usage_flush_interval(Duration::from_millis(50))
            .l1_ttl(Duration::from_millis(200))
            .stale_if_error(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let instances: Vec<ApiKeyCache> = (0..3)
        .map(|_| ApiKeyCache::new(config(), store.clone()).unwrap())
        .collect();
    for cache in &instances {
        wait_until("subscribed", || cache.stats().subscribed).await;
    }
    let mut keys = Vec::new();
    for i in 0..30 {
        let k = direct
            .create_key(
                instances[0].hasher(),
                NewKey::new(format!("o{}", i % 3), ["a"]),
            )
            .await
            .unwrap();
        keys.push(k);
    }
    let none = RequiredScopes::none();
    // Warm every instance so keys stay answerable while the store is cut.
    for cache in &instances {
        for k in &keys {
            assert!(cache.verify_key(&k.plaintext, &none).await.is_valid());
        }
    }
    let mut valid: HashMap<KeyId, u64> = HashMap::new();
    for k in &keys {
        *valid.entry(k.record.id.clone()).or_default() += 3;
    }
    let total = 30_000usize;
    for i in 0..total {
        match i {
            // The database first: the warm L1s answer meanwhile (stale if
            // need be). Then Redis: its restart makes every subscriber
            // clear its L1, which the store then refills.
            5_000 => proxy.cut(),
            12_000 => proxy.restore(),
            17_000 => redis.kill9(),
            23_000 => redis.restart(),
            _ => {}
        }
        let cache = &instances[i % 3];
        let k = &keys[i % keys.len()];
        let outcome = cache.verify_key(&k.plaintext, &none).await;
        match outcome {
            Outcome::Valid(_) => *valid.entry(k.record.id.clone()).or_default() += 1,
            other => panic!("request {i}: unexpected {other:?}"),
        }
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(
        instances.iter().any(|c| c.stats().usage_flush_errors > 0),
        "the outages were felt"
    );
    for cache in &instances {
        cache.shutdown(Duration::from_secs(30)).await.unwrap();
    }
    let mut sum = 0;
    for k in &keys {
        let details = direct.key_details(&k.record.id).await.unwrap().unwrap();
        assert_eq!(
            details.total_requests, valid[&k.record.id],
            "key {}",
            k.record.id
        );
        assert!(details.last_used_at.is_some());
        sum += details.total_requests;
    }
    assert_eq!(sum, valid.values().sum::<u64>());
    assert_eq!(sum, 30_000 + 90);
    drop(instances);
    store.pool().close().await;
    direct.pool().close().await;
    drop(proxy);
    db.drop_db().await;
}

/// A store whose usage write commits, then reports a failure once: the
/// flusher's retry (same batch id) must not count twice.
struct CommitThenFail {
    inner: PostgresStore,
    failed_once: AtomicBool,
}

#[async_trait]
impl KeyStore for CommitThenFail {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.find_by_hash(hash).await
    }
    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.find_by_id(id).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list_by_owner(owner).await
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        self.inner.record_usage(batch).await?;
        if !self.failed_once.swap(true, Ordering::SeqCst) {
            return Err(StoreError::unavailable(std::io::Error::other(
                "connection reset after commit (test)",
            )));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_flush_failure_does_not_double_count() {
    let db = PgTestDb::create().await;
    let pg = PostgresStore::connect(&db.url).await.unwrap();
    pg.migrate().await.unwrap();
    let store = Arc::new(CommitThenFail {
        inner: pg.clone(),
        failed_once: AtomicBool::new(false),
    });
    let cache = ApiKeyCache::new(
        CacheConfig::builder()
            .usage_flush_interval(Duration::from_secs(3600))
            .build()
            .unwrap(),
        store.clone(),
    )
    .unwrap();
    let key = pg
        .create_key(cache.hasher(), NewKey::new("a", ["x"]))
        .await
        .unwrap();
    for _ in 0..7 {
        assert!(cache
            .verify_key(&key.plaintext, &RequiredScopes::none())
            .await
            .is_valid());
    }
    assert!(
        !cache.flush_usage().await,
        "the first delivery reports failure"
    );
    assert_eq!(
        cache.stats().usage_pending_increments,
        7,
        "kept for the retry"
    );
    assert!(cache.flush_usage().await);
    cache.shutdown(Duration::from_secs(5)).await.unwrap();
    let details = pg.key_details(&key.record.id).await.unwrap().unwrap();
    assert_eq!(details.total_requests, 7);
    assert_eq!(cache.stats().usage_flush_errors, 1);
    pg.pool().close().await;
    db.drop_db().await;
}

fn limited(store: &MemoryStore, cache: &ApiKeyCache, f: impl FnOnce(&mut KeyRecord)) -> String {
    let key = apikey_cache::generate_api_key().unwrap();
    let mut record = KeyRecord::new(
        KeyId::generate(),
        cache.hash_key(&key),
        "acme",
        apikey_cache::Scopes::new(["a"]),
    );
    f(&mut record);
    store.insert(record);
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_shared_by_the_fleet() {
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-05-10 12:00 UTC),
    ));
    let instance = || {
        ApiKeyCache::builder(store.clone())
            .config(
                CacheConfig::builder()
                    .redis_url(redis.url())
                    .build()
                    .unwrap(),
            )
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (instance(), instance());
    wait_until("subscribed", || {
        a.stats().subscribed && b.stats().subscribed
    })
    .await;
    let key = limited(&store, &a, |r| {
        r.rate_limit = Some(RateLimit::new(5, Duration::from_secs(60)));
    });
    let none = RequiredScopes::none();
    let mut passed = 0;
    let mut refused = Vec::new();
    for i in 0..8 {
        let cache = if i % 2 == 0 { &a } else { &b };
        match cache.verify_key(&key, &none).await {
            Outcome::Valid(_) => passed += 1,
            Outcome::RateLimited(info) => refused.push(info),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(passed, 5);
    assert_eq!(refused.len(), 3);
    for info in &refused {
        // 5 per 60 s: the next slot opens 12 s after the burst.
        assert!(info.retry_after.abs_diff(Duration::from_secs(12)) <= Duration::from_secs(1));
        assert_eq!((info.limit, info.remaining), (5, 0));
    }
    let rejection = Outcome::RateLimited(refused[0]).rejection().unwrap();
    assert_eq!(rejection.status, 429);
    assert!(rejection
        .headers
        .iter()
        .any(|(k, v)| *k == "retry-after" && v == "12"));

    clock.advance(Duration::from_secs(12));
    assert!(b.verify_key(&key, &none).await.is_valid(), "one slot later");
    assert!(matches!(
        a.verify_key(&key, &none).await,
        Outcome::RateLimited(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_quota_with_reset() {
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-01-31 23:00 UTC),
    ));
    let cache = ApiKeyCache::builder(store.clone())
        .config(
            CacheConfig::builder()
                .redis_url(redis.url())
                .build()
                .unwrap(),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    wait_until("subscribed", || cache.stats().subscribed).await;
    let key = limited(&store, &cache, |r| r.monthly_quota = Some(10));
    let none = RequiredScopes::none();
    for _ in 0..10 {
        assert!(cache.verify_key(&key, &none).await.is_valid());
    }
    match cache.verify_key(&key, &none).await {
        Outcome::QuotaExceeded { quota, retry_after } => {
            assert_eq!(quota, 10);
            assert_eq!(retry_after, Duration::from_secs(3600), "until February");
        }
        other => panic!("{other:?}"),
    }
    clock.set(clock.now() + Duration::from_secs(3600));
    assert!(
        cache.verify_key(&key, &none).await.is_valid(),
        "a new month"
    );
    // Refused requests were not counted as usage.
    cache.shutdown(Duration::from_secs(5)).await.unwrap();
    let id = store.list_by_owner("acme").await.unwrap()[0].id.clone();
    assert_eq!(
        store
            .key_details(&id)
            .await
            .unwrap()
            .unwrap()
            .total_requests,
        11
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_falls_back_to_the_instance_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-05-10 12:00 UTC),
    ));
    let cache = ApiKeyCache::builder(store.clone())
        .config(
            CacheConfig::builder()
                .redis_url(redis.url())
                .redis_timeout(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    wait_until("subscribed", || cache.stats().subscribed).await;
    let key = limited(&store, &cache, |r| {
        r.rate_limit = Some(RateLimit::new(3, Duration::from_secs(60)));
    });
    redis.kill9();
    let none = RequiredScopes::none();
    let outcomes: Vec<_> =
        futures_util::future::join_all((0..4).map(|_| cache.verify_key(&key, &none))).await;
    assert_eq!(outcomes.iter().filter(|o| o.is_valid()).count(), 3);
    assert!(matches!(
        outcomes.iter().find(|o| !o.is_valid()),
        Some(Outcome::RateLimited(_))
    ));
    // The first probe of this cache: no throttle to wait out.
    assert_eq!(
        cache.health().await.status,
        apikey_cache::HealthStatus::Degraded
    );
}
