//! The verification path, run against every ready-made store: in-memory,
//! SQLite (a temp file) and PostgreSQL (a fresh database per test), with a
//! private redis-server per test where Redis is involved.

// Runs against the SQLite and PostgreSQL stores: built only with their features.
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    generate_api_key, ApiKeyCache, CacheConfig, Clock, KeyAdmin, KeyId, KeyRecord, KeyStatus,
    KeyStore, ManualClock, MemoryStore, Mode, NewKey, Outcome, PostgresStore, RequiredScopes,
    Scopes, SqliteStore,
};
use support::pg::PgTestDb;
use support::redis::RedisServer;
use support::store::CountingStore;

/// One backing database for one test.
enum Fixture {
    Memory(Arc<dyn KeyAdmin>),
    Sqlite(Arc<dyn KeyAdmin>, std::path::PathBuf),
    Postgres(Arc<dyn KeyAdmin>, PgTestDb),
}

impl Fixture {
    async fn memory() -> Self {
        Self::Memory(Arc::new(MemoryStore::new()))
    }

    async fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!(
            "apikey-cache-verify-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("open sqlite");
        store.migrate().await.expect("migrate sqlite");
        Self::Sqlite(Arc::new(store), path)
    }

    async fn postgres() -> Self {
        let db = PgTestDb::create().await;
        let store = PostgresStore::connect(&db.url).await.expect("connect pg");
        store.migrate().await.expect("migrate pg");
        Self::Postgres(Arc::new(store), db)
    }

    fn admin(&self) -> Arc<dyn KeyAdmin> {
        match self {
            Self::Memory(a) | Self::Sqlite(a, _) | Self::Postgres(a, _) => a.clone(),
        }
    }

    async fn cleanup(self) {
        match self {
            Self::Memory(_) => {}
            Self::Sqlite(a, path) => {
                drop(a);
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Self::Postgres(a, db) => {
                drop(a);
                db.drop_db().await;
            }
        }
    }
}

fn config(redis: Option<&str>) -> CacheConfig {
    let mut b = CacheConfig::builder()
        // Generous for a loaded CI machine; the default is 50 ms.
        .redis_timeout(Duration::from_millis(500))
        .redis_connect_timeout(Duration::from_millis(500));
    if let Some(url) = redis {
        b = b.redis_url(url);
    }
    b.build().expect("valid config")
}

type Counted = CountingStore<dyn KeyAdmin>;

/// A cache over `store`; with Redis, returns once its invalidation
/// subscriber listens (its first subscription clears L1, which would
/// otherwise race the test's first requests).
async fn cache_over(store: &Arc<Counted>, config: CacheConfig) -> ApiKeyCache {
    let with_redis = config.redis_url.is_some();
    let cache = ApiKeyCache::new(config, store.clone()).expect("build cache");
    if with_redis {
        support::wait_until("subscribed", || cache.stats().subscribed).await;
    }
    cache
}

async fn issue(
    admin: &Arc<dyn KeyAdmin>,
    cache: &ApiKeyCache,
    scopes: &[&str],
) -> (String, KeyRecord) {
    let created = admin
        .create_key(cache.hasher(), NewKey::new("acme", scopes.iter().copied()))
        .await
        .expect("create key");
    (created.plaintext.clone(), created.record.clone())
}

// ---- the behaviours ----

/// 200 concurrent verifies of one uncached key: one store lookup.
async fn single_flight(admin: Arc<dyn KeyAdmin>) {
    let redis = RedisServer::start();
    let store = CountingStore::new(admin.clone());
    let cache = cache_over(&store, config(Some(&redis.url()))).await;
    let (key, _) = issue(&admin, &cache, &["orders:read"]).await;
    // Keep the load open long enough that every task joins it.
    store.set_delay(Duration::from_millis(200));
    let required = RequiredScopes::new(["orders:read"]);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (cache, key, required) = (cache.clone(), key.clone(), required.clone());
            tokio::spawn(async move { cache.verify_key(&key, &required).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_valid());
    }
    assert_eq!(store.lookups(), 1);
}

/// 1000 verifies of an unknown key: one lookup; once the key exists, an
/// invalidation makes it valid at once (not after the negative TTL).
async fn negative_caching(admin: Arc<dyn KeyAdmin>) {
    let redis = RedisServer::start();
    let store = CountingStore::new(admin.clone());
    let cache = cache_over(&store, config(Some(&redis.url()))).await;
    let key = generate_api_key().unwrap();
    let none = RequiredScopes::none();
    for _ in 0..1000 {
        assert_eq!(cache.verify_key(&key, &none).await, Outcome::Unknown);
    }
    assert_eq!(store.lookups(), 1);

    let hash = cache.hash_key(&key);
    let record = KeyRecord::new(KeyId::generate(), hash, "acme", Scopes::new(["*"]));
    admin.import_key(&record).await.unwrap();
    // Still the cached "unknown" until invalidated.
    assert_eq!(cache.verify_key(&key, &none).await, Outcome::Unknown);
    cache.invalidate(&hash).await.unwrap();
    assert!(cache.verify_key(&key, &none).await.is_valid());
    // A second instance on the same Redis did not see the old negative entry
    // either: the invalidation replaced it with a tombstone.
    let other = cache_over(&store, config(Some(&redis.url()))).await;
    assert!(other.verify_key(&key, &none).await.is_valid());
}

/// A record cached with a long TTL but expiring in 2 s is refused after 2 s,
/// judged against the clock at request time (no sleeping).
async fn expiry_at_request_time(admin: Arc<dyn KeyAdmin>) {
    let store = CountingStore::new(admin.clone());
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let cache = ApiKeyCache::builder(store.clone())
        .config(
            CacheConfig::builder()
                .l1_ttl(Duration::from_secs(3600))
                .build()
                .unwrap(),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    let expires = clock.now() + Duration::from_secs(2);
    let created = admin
        .create_key(
            cache.hasher(),
            NewKey::new("acme", ["a"]).expires_at(expires),
        )
        .await
        .unwrap();
    let none = RequiredScopes::none();
    assert!(cache.verify_key(&created.plaintext, &none).await.is_valid());
    clock.advance(Duration::from_millis(1999));
    assert!(cache.verify_key(&created.plaintext, &none).await.is_valid());
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        cache.verify_key(&created.plaintext, &none).await,
        Outcome::Expired
    );
    // Answered from L1: the store was asked once, at the start.
    assert_eq!(store.lookups(), 1);
}

/// A second instance on the same Redis finds the first one's fill in L2.
async fn l2_shared_between_instances(admin: Arc<dyn KeyAdmin>) {
    let redis = RedisServer::start();
    let store = CountingStore::new(admin.clone());
    let a = cache_over(&store, config(Some(&redis.url()))).await;
    let b = cache_over(&store, config(Some(&redis.url()))).await;
    let (key, _) = issue(&admin, &a, &["x"]).await;
    let unknown = generate_api_key().unwrap();
    let none = RequiredScopes::none();
    assert!(a.verify_key(&key, &none).await.is_valid());
    assert_eq!(a.verify_key(&unknown, &none).await, Outcome::Unknown);
    assert_eq!(store.lookups(), 2);
    let valid = b.verify_key(&key, &none).await;
    assert_eq!(
        valid.verified().map(|k| k.scopes.as_slice().to_vec()),
        Some(vec!["x".to_string()])
    );
    assert_eq!(b.verify_key(&unknown, &none).await, Outcome::Unknown);
    assert_eq!(store.lookups(), 2, "b answered both from L2");
    assert_eq!(b.stats().l2_hits, 2);
    // And after A's L1 is cleared, A reads L2 too.
    a.clear_l1();
    assert!(a.verify_key(&key, &none).await.is_valid());
    assert_eq!(store.lookups(), 2);
    // Nothing in Redis holds the plaintext key.
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 2);
    for k in keys {
        let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut conn).unwrap();
        let v = String::from_utf8_lossy(&v);
        assert!(!k.contains(&key), "{k}");
        assert!(!v.contains(&key), "{k} = {v}");
        assert!(!v.contains(&unknown), "{k} = {v}");
    }
}

/// Garbage in the Redis entry is a counted miss, answered from the store.
async fn garbage_in_redis(admin: Arc<dyn KeyAdmin>) {
    let redis = RedisServer::start();
    let store = CountingStore::new(admin.clone());
    let cache = cache_over(&store, config(Some(&redis.url()))).await;
    let (key, record) = issue(&admin, &cache, &["a"]).await;
    let unknown = generate_api_key().unwrap();
    let mut conn = redis.conn();
    for (hash, junk) in [
        (record.hash, &b"\xff\x00not json at all"[..]),
        (cache.hash_key(&unknown), br#"{"v":99,"k":"f"}"#),
    ] {
        let k = format!("apikey-cache:key:{}", hash.to_hex());
        redis::cmd("SET")
            .arg(&k)
            .arg(junk)
            .query::<()>(&mut conn)
            .unwrap();
    }
    let none = RequiredScopes::none();
    assert!(cache.verify_key(&key, &none).await.is_valid());
    assert_eq!(cache.verify_key(&unknown, &none).await, Outcome::Unknown);
    assert_eq!(store.lookups(), 2);
    assert_eq!(cache.stats().l2_bad_values, 2);
}

/// Redis on a closed port: answers come from the store, promptly.
async fn redis_unreachable(admin: Arc<dyn KeyAdmin>) {
    // Leased and never listened on: closed for the whole test (a port
    // released after `bind(:0)` could meanwhile get another test's server).
    let lease = support::ports::PortLease::acquire();
    let closed = lease.port();
    let store = CountingStore::new(admin.clone());
    let cache = ApiKeyCache::new(
        config(Some(&format!("redis://127.0.0.1:{closed}"))),
        store.clone(),
    )
    .unwrap();
    let (key, _) = issue(&admin, &cache, &["a"]).await;
    let none = RequiredScopes::none();
    let started = Instant::now();
    assert!(cache.verify_key(&key, &none).await.is_valid());
    assert_eq!(
        cache.verify_key(&generate_api_key().unwrap(), &none).await,
        Outcome::Unknown
    );
    // Bounded by the Redis timeout plus a store query, not a reconnect back-off.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Two lookups, each a failed Redis read: both counted.
    assert!(cache.stats().l2_errors >= 2, "{:?}", cache.stats());
}

/// Status and scopes, revocation with invalidation, and fail-closed.
async fn outcomes_and_revocation(admin: Arc<dyn KeyAdmin>) {
    let redis = RedisServer::start();
    let store = CountingStore::new(admin.clone());
    let cache = cache_over(&store, config(Some(&redis.url()))).await;
    let (key, record) = issue(&admin, &cache, &["orders:*", "whoami"]).await;
    let ok = RequiredScopes::new(["orders:write", "whoami"]);
    assert!(cache.verify_key(&key, &ok).await.is_valid());
    assert_eq!(
        cache
            .verify_key(
                &key,
                &RequiredScopes::new(["admin", "orders:read", "billing"])
            )
            .await,
        Outcome::InsufficientScope {
            missing: vec!["admin".into(), "billing".into()]
        }
    );
    admin.revoke_key(&record.id).await.unwrap();
    cache.invalidate_key_id(&record.id).await.unwrap();
    assert_eq!(cache.verify_key(&key, &ok).await, Outcome::Revoked);
    // A second instance reading Redis does not see the pre-revocation record.
    let other = cache_over(&store, config(Some(&redis.url()))).await;
    assert_eq!(other.verify_key(&key, &ok).await, Outcome::Revoked);
    let found = admin.find_by_id(&record.id).await.unwrap().unwrap();
    assert_eq!(found.status, KeyStatus::Revoked);

    // Store down: what L1 holds still answers; what it does not is 503.
    store.set_failing(true);
    assert_eq!(cache.verify_key(&key, &ok).await, Outcome::Revoked);
    assert_eq!(
        cache.verify_key(&generate_api_key().unwrap(), &ok).await,
        Outcome::Unavailable
    );
}

/// Leaving database-only mode drops what L1 held from before: a key
/// revoked in the store meanwhile (no invalidation, none is needed in
/// database-only mode) is refused once back in normal mode.
async fn leaving_database_only_drops_l1(admin: Arc<dyn KeyAdmin>) {
    let store = CountingStore::new(admin.clone());
    let cache = cache_over(&store, config(None)).await;
    let (key, record) = issue(&admin, &cache, &["a"]).await;
    let (kept, _) = issue(&admin, &cache, &["a"]).await;
    let none = RequiredScopes::none();
    for k in [&key, &kept] {
        assert!(cache.verify_key(k, &none).await.is_valid());
        assert!(cache.verify_key(k, &none).await.is_valid());
    }
    assert_eq!(store.lookups(), 2, "both keys held in L1");
    assert_eq!(cache.stats().l1_entries, 2);

    cache.set_mode(Mode::DatabaseOnly);
    admin.revoke_key(&record.id).await.unwrap();
    assert_eq!(cache.verify_key(&key, &none).await, Outcome::Revoked);
    assert_eq!(store.lookups(), 3);

    cache.set_mode(Mode::Normal);
    assert_eq!(cache.stats().l1_entries, 0, "L1 dropped on leaving");
    assert_eq!(
        cache.verify_key(&key, &none).await,
        Outcome::Revoked,
        "the pre-revocation L1 entry would have said valid"
    );
    assert!(cache.verify_key(&kept, &none).await.is_valid());
    assert_eq!(store.lookups(), 5, "both reloaded from the store");
    assert!(cache.verify_key(&kept, &none).await.is_valid());
    assert_eq!(store.lookups(), 5, "and cached again");
}

/// Database-only mode asks the store on every request.
async fn database_only(admin: Arc<dyn KeyAdmin>) {
    let store = CountingStore::new(admin.clone());
    let cache = cache_over(
        &store,
        CacheConfig::builder()
            .mode(Mode::DatabaseOnly)
            .build()
            .unwrap(),
    )
    .await;
    let (key, record) = issue(&admin, &cache, &["a"]).await;
    let none = RequiredScopes::none();
    for _ in 0..5 {
        assert!(cache.verify_key(&key, &none).await.is_valid());
    }
    assert_eq!(store.lookups(), 5);
    admin.revoke_key(&record.id).await.unwrap();
    assert_eq!(
        cache.verify_key(&key, &none).await,
        Outcome::Revoked,
        "no invalidation needed"
    );
    cache.set_mode(Mode::Normal);
    cache.verify_key(&key, &none).await;
    cache.verify_key(&key, &none).await;
    assert_eq!(store.lookups(), 7, "normal mode caches again");
}

/// A load that read the record before a revocation and finishes after the
/// invalidation must not put the old record back in L1 or L2.
async fn load_racing_invalidation(admin: Arc<dyn KeyAdmin>) {
    let redis = RedisServer::start();
    let store = CountingStore::new(admin.clone());
    let a = cache_over(&store, config(Some(&redis.url()))).await;
    let (key, record) = issue(&admin, &a, &["a"]).await;
    let none = RequiredScopes::none();

    store.hold();
    let racing = {
        let (a, key, none) = (a.clone(), key.clone(), none.clone());
        tokio::spawn(async move { a.verify_key(&key, &none).await })
    };
    support::wait_until("the load read the active record and parked", || {
        store.parked() > 0
    })
    .await;
    admin.revoke_key(&record.id).await.unwrap();
    a.invalidate(&record.hash).await.unwrap();
    store.release();
    // The request that started before the revocation may pass; that is the
    // linearization point, not a leak.
    assert!(racing.await.unwrap().is_valid());

    // Neither tier kept the old record.
    let mut conn = redis.conn();
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(format!("apikey-cache:key:{}", record.hash.to_hex()))
        .query(&mut conn)
        .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        raw["k"], "t",
        "redis holds the tombstone, not the old record"
    );
    assert_eq!(a.verify_key(&key, &none).await, Outcome::Revoked);
    let b = cache_over(&store, config(Some(&redis.url()))).await;
    assert_eq!(b.verify_key(&key, &none).await, Outcome::Revoked);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::Fixture::memory().await;
                    super::$name(f.admin()).await;
                    f.cleanup().await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::Fixture::sqlite().await;
                    super::$name(f.admin()).await;
                    f.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::Fixture::postgres().await;
                    super::$name(f.admin()).await;
                    f.cleanup().await;
                }
            )*
        }
    };
}

suite!(
    single_flight,
    negative_caching,
    expiry_at_request_time,
    l2_shared_between_instances,
    garbage_in_redis,
    redis_unreachable,
    outcomes_and_revocation,
    database_only,
    leaving_database_only_drops_l1,
    load_racing_invalidation,
);

/// Invalidations made while in `database_only` reach Redis too, so leaving
/// the mode (which clears L1) does not bring a revoked key back from L2.
/// (A store change that is never invalidated is served from L2 until its
/// TTL, in either mode: the contract is "change the store, then
/// invalidate".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_database_only_keeps_invalidations_made_during_it() {
    let redis = RedisServer::start();
    let admin: Arc<dyn KeyAdmin> = Arc::new(MemoryStore::new());
    let store = CountingStore::new(admin.clone());
    let cache = cache_over(&store, config(Some(&redis.url()))).await;
    let (key, record) = issue(&admin, &cache, &["a"]).await;
    let none = RequiredScopes::none();
    assert!(
        cache.verify_key(&key, &none).await.is_valid(),
        "in L1 and L2"
    );
    cache.set_mode(Mode::DatabaseOnly);
    admin.revoke_key(&record.id).await.unwrap();
    cache.invalidate(&record.hash).await.unwrap();
    assert_eq!(cache.verify_key(&key, &none).await, Outcome::Revoked);
    cache.set_mode(Mode::Normal);
    assert_eq!(cache.verify_key(&key, &none).await, Outcome::Revoked);
    let other = cache_over(&store, config(Some(&redis.url()))).await;
    assert_eq!(other.verify_key(&key, &none).await, Outcome::Revoked);
}

/// `KeyStore` is object-safe and usable behind `Arc<dyn KeyStore>`.
#[allow(dead_code)]
fn assert_object_safe(s: Arc<dyn KeyStore>) -> Arc<dyn KeyStore> {
    s
}

/// A `rediss://` URL pointing at a plain-text server: the TLS handshake
/// fails, which is a Redis error like any other (no panic for a missing TLS
/// provider), and the store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_against_plain_server_falls_back_to_store() {
    let redis = RedisServer::start();
    let admin: Arc<dyn KeyAdmin> = Arc::new(MemoryStore::new());
    let store = CountingStore::new(admin.clone());
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let cache = ApiKeyCache::new(config(Some(&url)), store.clone()).unwrap();
    let (key, _) = issue(&admin, &cache, &["a"]).await;
    assert!(cache
        .verify_key(&key, &RequiredScopes::none())
        .await
        .is_valid());
    assert_eq!(store.lookups(), 1);
}

/// A flood of one-off unknown keys, twenty times L1's capacity, does not
/// push out keys that are read again: after it, the hot keys are still
/// answered from L1. (A plain LRU of the same size would have reloaded all
/// of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_key_flood_keeps_hot_keys_in_l1() {
    let admin: Arc<dyn KeyAdmin> = Arc::new(MemoryStore::new());
    let store = CountingStore::new(admin.clone());
    let config = CacheConfig::builder().l1_capacity(1_000).build().unwrap();
    let cache = cache_over(&store, config).await;
    let none = RequiredScopes::none();
    let mut hot = Vec::new();
    for _ in 0..300 {
        hot.push(issue(&admin, &cache, &["a"]).await.0);
    }
    for _ in 0..3 {
        for key in &hot {
            assert!(cache.verify_key(key, &none).await.is_valid());
        }
    }
    assert_eq!(store.lookups(), hot.len());

    // Each flood key is read once and never again: the one-off traffic
    // S3-FIFO's probation queue absorbs.
    for i in 0..20_000 {
        let unknown = format!("ak_flood_{i:034}");
        assert_eq!(cache.verify_key(&unknown, &none).await, Outcome::Unknown);
    }
    assert_eq!(store.lookups(), hot.len() + 20_000);

    for key in &hot {
        assert!(cache.verify_key(key, &none).await.is_valid());
    }
    let reloaded = store.lookups() - hot.len() - 20_000;
    assert!(
        reloaded <= hot.len() / 20,
        "{reloaded} of {} hot keys were pushed out by the flood",
        hot.len()
    );
}

/// An L1 hit that answers `valid` is counted with one add that stands for
/// both of its counts; the stats still show it as an L1 hit and a `valid`
/// outcome, beside hits that answer otherwise and answers that were loads.
#[cfg(feature = "http")]
#[tokio::test]
async fn every_answer_is_counted_once_as_a_hit_or_miss_and_by_outcome() {
    let admin: Arc<dyn KeyAdmin> = Arc::new(MemoryStore::new());
    let store = CountingStore::new(admin.clone());
    let cache = cache_over(&store, CacheConfig::default()).await;
    let (key, _) = issue(&admin, &cache, &["a"]).await;
    let none = RequiredScopes::none();
    let b = RequiredScopes::new(["b"]);
    let valid_index = Outcome::LABELS.iter().position(|l| *l == "valid").unwrap();
    let valid = |s: &apikey_cache::CacheStats| s.outcomes[valid_index];
    assert!(cache.verify_key(&key, &none).await.is_valid()); // a miss, loaded
    for _ in 0..3 {
        assert!(cache.verify_key(&key, &none).await.is_valid()); // valid hits
    }
    assert!(!cache.verify_key(&key, &b).await.is_valid()); // a refusing hit
    assert_eq!(cache.verify_key("ak_nobody", &none).await, Outcome::Unknown); // a miss
    assert_eq!(cache.verify_key("ak_nobody", &none).await, Outcome::Unknown); // a hit
    let headers = {
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", key.parse().unwrap());
        h
    };
    assert!(cache.verify_now(&headers, &none).unwrap().is_valid()); // a valid hit
    assert!(cache
        .verify_cached(&cache.hash_key(&key), &none)
        .unwrap()
        .is_valid());

    let s = cache.stats();
    assert_eq!((s.l1_hits, s.l1_misses), (7, 2));
    assert_eq!(valid(&s), 6, "1 loaded + 5 from L1");
    let by = |o: Outcome| s.outcomes[o.index()];
    assert_eq!(by(Outcome::Unknown), 2);
    assert_eq!(s.outcomes.iter().sum::<u64>(), 9, "one outcome per answer");
    assert_eq!(
        by(Outcome::InsufficientScope {
            missing: Vec::new()
        }),
        1
    );
}
