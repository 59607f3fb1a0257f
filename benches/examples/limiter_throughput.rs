//! Throughput of the rate-limit script against Redis: `concurrency` tasks
//! verify rate-limited keys (limits high enough never to refuse) for a few
//! seconds; prints verifies per second. Each verify is an L1 hit plus one
//! script round trip: token leases are off here (with them, the default, a
//! verify is an L1 hit and a refill now and then; `cargo bench`'s `limits`
//! group compares the two).
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --example limiter_throughput -- [concurrency] [seconds] [redis-url]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    generate_api_key, ApiKeyCache, CacheConfig, KeyId, KeyRecord, MemoryStore, RateLimit,
    RequiredScopes, Scopes,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let concurrency: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(
        CacheConfig::builder()
            .redis_url(url)
            .key_prefix(format!("apikey-cache-limiter-{}:", std::process::id()))
            .leases(false)
            .build()?,
        store.clone(),
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut keys = Vec::new();
    for i in 0..1000 {
        let key = generate_api_key()?;
        let mut r = KeyRecord::new(
            KeyId::new(format!("k{i}")),
            cache.hash_key(&key),
            "o",
            Scopes::new(["a"]),
        );
        r.rate_limit = Some(RateLimit::new(u32::MAX, Duration::from_secs(1)));
        r.monthly_quota = Some(u64::MAX / 2);
        store.insert(r);
        keys.push(key);
    }
    let keys = Arc::new(keys);
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (cache, keys, done, refused) =
                (cache.clone(), keys.clone(), done.clone(), refused.clone());
            tokio::spawn(async move {
                let none = RequiredScopes::none();
                let mut i = t;
                while Instant::now() < until {
                    if !cache
                        .verify_key(&keys[i % keys.len()], &none)
                        .await
                        .is_valid()
                    {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += concurrency;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "concurrency={concurrency} verifies/s={:.0} refused={} l2_errors={}",
        n as f64 / seconds as f64,
        refused.load(Ordering::Relaxed),
        cache.stats().l2_errors
    );
    Ok(())
}
