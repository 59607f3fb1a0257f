//! What one usage flush costs with every key in use, for instruction counts
//! under `valgrind --tool=callgrind` (repeatable where wall-clock time is
//! not).
//!
//! ```text
//! cargo build --release -p apikey-cache-benches --example flush_cost
//! valgrind --tool=callgrind target/release/examples/flush_cost flush 20
//! valgrind --tool=callgrind target/release/examples/flush_cost count 20
//! ```
//!
//! Arguments: `[op] [cycles] [keys] [redis-url]`, defaults `flush 20 10000`,
//! no Redis. Each cycle counts one request for every key (`verify_cached`,
//! an L1 hit) and then, for `op`:
//!
//! * `flush`: flushes (`flush_usage`) to a `MemoryStore` (and to Redis when
//!   a URL is given); every key has counts in every flush, as on a busy
//!   server;
//! * `count`: nothing more;
//! * `stats`: reads `stats()` (what the metrics publisher and the health
//!   check do every second), counts still pending.
//!
//! So a flush of every key costs `(Ir(flush, N) - Ir(count, N)) / N`, and
//! `stats()` with every key pending `(Ir(stats, N) - Ir(count, N)) / N`.
//!
//! Without Redis the cache is built outside the runtime, so no background
//! task (metrics publisher, timed flusher, sweeper) runs and the count is
//! the same from run to run. With Redis those tasks run (Redis needs the
//! runtime), which adds a little noise; the flusher's interval is an hour
//! and Redis's budgets are long, so that nothing times out under valgrind.

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyAdmin, KeyId, KeyRecord, MemoryStore, RequiredScopes, Scopes,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let op = args.next().unwrap_or_else(|| "flush".into());
    let cycles: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let keys: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let redis = args.next();
    if !["flush", "count", "stats"].contains(&op.as_str()) {
        return Err(format!("unknown op {op:?}: flush, count or stats").into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut config = CacheConfig::builder().usage_flush_interval(Duration::from_secs(3600));
    if let Some(url) = &redis {
        // Budgets for valgrind's pace: a timed-out script would be
        // retried, and counted twice.
        config = config
            .redis_url(url.clone())
            .redis_timeout(Duration::from_secs(2))
            .redis_connect_timeout(Duration::from_secs(2))
            .tombstone_ttl(Duration::from_secs(60))
            .key_prefix(format!("apikey-cache-flush-cost-{}:", std::process::id()));
    }
    let store = Arc::new(MemoryStore::new());
    let cache = if redis.is_some() {
        let _rt = rt.enter();
        ApiKeyCache::new(config.build()?, store.clone())?
    } else {
        ApiKeyCache::new(config.build()?, store.clone())?
    };
    let none = RequiredScopes::none();
    let hashes: Vec<_> = (0..keys)
        .map(|i| cache.hash_key(&apikey_cache_benches::key(i)))
        .collect();
    rt.block_on(async {
        // Subscribing clears L1 (it may have missed invalidations): first.
        while redis.is_some() && !cache.stats().subscribed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (i, hash) in hashes.iter().enumerate() {
            let r = KeyRecord::new(
                KeyId::new(format!("key_{i}")),
                *hash,
                format!("owner_{}", i % 100),
                Scopes::new(["orders:*", "whoami"]),
            );
            store.import_key(&r).await?;
            let k = apikey_cache_benches::key(i);
            assert!(cache.verify_key(&k, &none).await.is_valid());
        }
        // The set-up's own counts, out of the way.
        assert!(cache.flush_usage().await, "first flush");
        for _ in 0..cycles {
            for hash in &hashes {
                let outcome = cache.verify_cached(hash, &none);
                assert!(outcome.is_some_and(|o| o.is_valid()));
            }
            match op.as_str() {
                "flush" => assert!(cache.flush_usage().await, "flushed"),
                "stats" => {
                    std::hint::black_box(cache.stats());
                }
                _ => {}
            }
        }
        // The same checks in every op, so that they cancel out.
        let pending = cache.stats().usage_pending_increments;
        let mut total = 0;
        for i in 0..keys.min(100) {
            let id = KeyId::new(format!("key_{i}"));
            let details = store.key_details(&id).await?.ok_or("key gone")?;
            total += details.total_requests;
        }
        let (in_store, left) = match op.as_str() {
            // Every request reached the store exactly once.
            "flush" => (cycles as u64 + 1, 0),
            _ => (1, (cycles * keys) as u64),
        };
        assert_eq!(total, keys.min(100) as u64 * in_store, "store totals");
        assert_eq!(pending, left, "pending");
        println!("{op}: {cycles} cycles of {keys} keys");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
