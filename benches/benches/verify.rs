//! The verification path, side by side with its floor.
//!
//! * `floor`: SHA-256 of a 43-byte key plus a cache `get` of an `Arc`,
//!   with moka (default hasher, and the pass-through hasher L1 uses) and
//!   with quick_cache.
//! * `l1_hit`: `ApiKeyCache::verify_key` answered by L1.
//! * `l2_hit`: L1 disabled (TTL 0), answered by Redis on loopback.
//! * `store_sqlite` / `store_postgres`: `database_only` mode, every call a query.
//!
//! Group `limits`, one key each, L1 hits through the same async harness:
//!
//! * `unlimited`: a key without a rate limit (the baseline);
//! * `leased`: a rate-limited key with token leases (the default): an
//!   atomic decrement on the key's lease, refills in the background;
//! * `per_request`: the same key with leases off: one limiter script round
//!   trip to Redis per request.
//!
//! Redis: `BENCH_REDIS_URL` (default `redis://127.0.0.1:6379`). PostgreSQL:
//! `BENCH_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`); a
//! throwaway database is created and dropped. A tier that is not reachable
//! is skipped with a message.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    generate_api_key, ApiKeyCache, CacheConfig, KeyAdmin, KeyHasher, KeyId, KeyRecord, MemoryStore,
    Mode, PostgresStore, RateLimit, RequiredScopes, Scopes, SqliteStore,
};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use futures::FutureExt;
use sha2::{Digest, Sha256};

const KEYS: usize = 10_000;

/// The first 8 digest bytes as the hash, as L1's moka engine does
/// (`cache-core/src/l1/moka.rs`); here over a bare `[u8; 32]`, which hashes
/// as a length and then its bytes.
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        if let Some(first) = bytes.first_chunk::<8>() {
            self.0 = u64::from_le_bytes(*first);
        }
    }
    fn write_usize(&mut self, _len: usize) {}
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|_| generate_api_key().expect("os rng"))
        .collect()
}

async fn import_all(store: &dyn KeyAdmin, hasher: &KeyHasher, keys: &[String]) {
    for (i, k) in keys.iter().enumerate() {
        let record = KeyRecord::new(
            KeyId::new(format!("key_{i}")),
            hasher.hash(k.as_bytes()),
            format!("owner_{}", i % 100),
            Scopes::new(["orders:*", "whoami"]),
        );
        store.import_key(&record).await.expect("import");
    }
}

/// SHA-256 of each key in turn plus one `get`: what any cached lookup costs.
fn floor<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    keys: &[String],
    get: impl Fn(&[u8; 32]) -> Option<T>,
) {
    let mut i = 0usize;
    group.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let h: [u8; 32] = Sha256::digest(keys[i].as_bytes()).into();
            black_box(get(&h))
        })
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let keys = keys();
    let required = RequiredScopes::new(["orders:read"]);
    let mut group = c.benchmark_group("verify");

    // (a) the floor, with the design's reference cache and with L1's
    let moka: moka::sync::Cache<[u8; 32], Arc<String>> = moka::sync::Cache::new(100_000);
    let quick: quick_cache::sync::Cache<[u8; 32], Arc<String>> =
        quick_cache::sync::Cache::new(100_000);
    for k in &keys {
        let h: [u8; 32] = Sha256::digest(k.as_bytes()).into();
        moka.insert(h, Arc::new(k.clone()));
        quick.insert(h, Arc::new(k.clone()));
    }
    floor(&mut group, "floor_sha256_moka_get", &keys, |h| moka.get(h));
    let moka_digest: moka::sync::Cache<[u8; 32], Arc<String>, BuildHasherDefault<DigestHasher>> =
        moka::sync::Cache::builder()
            .max_capacity(100_000)
            .build_with_hasher(BuildHasherDefault::default());
    for k in &keys {
        moka_digest.insert(Sha256::digest(k.as_bytes()).into(), Arc::new(k.clone()));
    }
    floor(
        &mut group,
        "floor_sha256_moka_digest_hasher_get",
        &keys,
        |h| moka_digest.get(h),
    );
    floor(&mut group, "floor_sha256_quick_cache_get", &keys, |h| {
        quick.get(h)
    });

    // (b) L1 hit
    let mem = Arc::new(MemoryStore::new());
    let l1_cache = rt.block_on(async {
        let cache = ApiKeyCache::new(CacheConfig::default(), mem.clone()).expect("cache");
        import_all(&*mem, cache.hasher(), &keys).await;
        for k in &keys {
            assert!(cache.verify_key(k, &required).await.is_valid());
        }
        cache
    });
    let mut i = 0usize;
    group.bench_function("l1_hit", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            // An L1 hit completes on first poll; no executor needed.
            let outcome = l1_cache.verify_key(&keys[i], &required).now_or_never();
            black_box(outcome)
        })
    });

    // The same hit without scope checks, and without hashing: where the
    // time beyond the floor goes.
    let none = RequiredScopes::none();
    let mut i = 0usize;
    group.bench_function("l1_hit_no_scopes", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(l1_cache.verify_key(&keys[i], &none).now_or_never())
        })
    });
    let hashes: Vec<_> = keys.iter().map(|k| l1_cache.hash_key(k)).collect();
    let mut i = 0usize;
    group.bench_function("l1_hit_prehashed", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(l1_cache.verify_cached(&hashes[i], &required))
        })
    });

    // (c) L2 hit
    let redis_url =
        std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let l2_cache = rt.block_on(async {
        let config = CacheConfig::builder()
            .redis_url(redis_url.clone())
            .key_prefix(format!(
                "apikey-cache-bench-{}:",
                uuid::Uuid::new_v4().simple()
            ))
            .l1_ttl(Duration::ZERO)
            .build()
            .expect("config");
        let cache = ApiKeyCache::new(config, mem.clone()).expect("cache");
        tokio::time::sleep(Duration::from_millis(300)).await;
        for k in &keys[..1000] {
            assert!(cache.verify_key(k, &required).await.is_valid());
        }
        cache
    });
    if l2_cache.stats().l2_errors == 0 {
        let before = l2_cache.stats().store_queries;
        let mut i = 0usize;
        group.bench_function("l2_hit", |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % 1000;
                let (cache, key) = (&l2_cache, &keys[i]);
                async { black_box(cache.verify_key(key, &required).await) }
            })
        });
        assert_eq!(
            l2_cache.stats().store_queries,
            before,
            "l2 bench hit the store"
        );
    } else {
        eprintln!("skipping l2_hit: redis at {redis_url} is not reachable");
    }

    // (d) the stores, caches disabled
    let db_only = || {
        CacheConfig::builder()
            .mode(Mode::DatabaseOnly)
            .build()
            .expect("config")
    };
    let sqlite_path =
        std::env::temp_dir().join(format!("apikey-cache-bench-{}.db", std::process::id()));
    let sqlite_cache = rt.block_on(async {
        let store = Arc::new(
            SqliteStore::connect(&format!("sqlite://{}", sqlite_path.display()))
                .await
                .expect("sqlite"),
        );
        store.migrate().await.expect("migrate");
        let cache = ApiKeyCache::new(db_only(), store.clone()).expect("cache");
        import_all(&*store, cache.hasher(), &keys[..1000]).await;
        cache
    });
    let mut i = 0usize;
    group.bench_function("store_sqlite", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % 1000;
            let (cache, key) = (&sqlite_cache, &keys[i]);
            async { black_box(cache.verify_key(key, &required).await) }
        })
    });

    let pg_base = std::env::var("BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db_name = format!("apikey_cache_bench_{}", std::process::id());
    let pg = rt.block_on(async {
        let admin = PostgresStore::connect(&pg_base).await.ok()?;
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(admin.pool())
            .await
            .ok()?;
        let url = format!("{}/{db_name}", pg_base.rsplit_once('/')?.0);
        let store = Arc::new(PostgresStore::connect(&url).await.ok()?);
        store.migrate().await.ok()?;
        let cache = ApiKeyCache::new(db_only(), store.clone()).ok()?;
        import_all(&*store, cache.hasher(), &keys[..1000]).await;
        Some((admin, store, cache))
    });
    if let Some((_, _, pg_cache)) = &pg {
        let mut i = 0usize;
        group.bench_function("store_postgres", |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % 1000;
                let key = &keys[i];
                async { black_box(pg_cache.verify_key(key, &required).await) }
            })
        });
    } else {
        eprintln!("skipping store_postgres: {pg_base} is not reachable");
    }
    group.finish();

    limits(c, &rt, &mem, &redis_url, &required);

    if let Some((admin, store, cache)) = pg {
        rt.block_on(async move {
            drop(cache);
            store.pool().close().await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                .execute(admin.pool())
                .await;
        });
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", sqlite_path.display()));
    }
}

/// L1 hits on an unlimited key, a rate-limited key with token leases, and
/// the same key with leases off (a Redis round trip each).
fn limits(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    mem: &Arc<MemoryStore>,
    redis_url: &str,
    required: &RequiredScopes,
) {
    let cache = |leases: bool| {
        rt.block_on(async {
            let config = CacheConfig::builder()
                .redis_url(redis_url)
                .key_prefix(format!(
                    "apikey-cache-bench-rl-{}:",
                    uuid::Uuid::new_v4().simple()
                ))
                .leases(leases)
                // A lease lasts ~250 us at this rate: ask for enough that a
                // refill (a loopback round trip) lands before it runs out.
                .lease_max_tokens(100_000)
                .build()
                .expect("config");
            let cache = ApiKeyCache::new(config, mem.clone()).expect("cache");
            tokio::time::sleep(Duration::from_millis(300)).await;
            cache
        })
    };
    let (leased, per_request) = (cache(true), cache(false));
    let key = |id: &str, limited: bool| {
        let key = generate_api_key().expect("rng");
        let mut record = KeyRecord::new(
            KeyId::new(id),
            leased.hash_key(&key),
            "bench",
            Scopes::new(["orders:*"]),
        );
        // High enough never to refuse: this measures the limiter's cost.
        if limited {
            record.rate_limit = Some(RateLimit::new(u32::MAX, Duration::from_secs(1)));
        }
        mem.insert(record);
        key
    };
    let (unlimited_key, limited_key) = (key("unlimited", false), key("rate_limited", true));
    if leased.stats().l2_errors + per_request.stats().l2_errors > 0 {
        eprintln!("skipping limits: redis at {redis_url} is not reachable");
        return;
    }
    let mut group = c.benchmark_group("limits");
    for (name, cache, key) in [
        ("unlimited", &leased, &unlimited_key),
        ("leased", &leased, &limited_key),
        ("per_request", &per_request, &limited_key),
    ] {
        rt.block_on(async {
            assert!(cache.verify_key(key, required).await.is_valid());
        });
        let waits = cache.stats().limit_waits;
        group.bench_function(name, |b| {
            b.to_async(rt)
                .iter(|| async { black_box(cache.verify_key(key, required).await) })
        });
        if name == "leased" {
            let s = cache.stats();
            eprintln!(
                "leased: {} requests waited for Redis, {} lease calls",
                s.limit_waits - waits,
                s.lease_calls
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
