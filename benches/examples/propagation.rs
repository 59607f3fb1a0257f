//! Revocation propagation between two instances on one Redis: revoke in the
//! store, `invalidate` on instance A, and time until instance B refuses the
//! key; and how long `invalidate` itself takes on A (call to return).
//! Prints p50, p99 and max of each over the revocations.
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --example propagation -- [revocations] [redis-url]
//! ```
//! Defaults: 1000 revocations, `redis://127.0.0.1:6379` (a unique key prefix
//! keeps it apart from anything else there).

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey, Outcome, RequiredScopes,
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let prefix = format!("apikey-cache-propagation-{}:", std::process::id());
    let config = || {
        CacheConfig::builder()
            .redis_url(url.clone())
            .key_prefix(prefix.clone())
            .build()
    };
    let store = Arc::new(MemoryStore::new());
    let a = ApiKeyCache::new(config()?, store.clone())?;
    let b = ApiKeyCache::new(config()?, store.clone())?;
    while !(a.stats().subscribed && b.stats().subscribed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let none = RequiredScopes::none();
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let k = store
            .create_key(a.hasher(), NewKey::new("bench", ["a"]))
            .await?;
        assert!(b.verify_key(&k.plaintext, &none).await.is_valid());
        keys.push(k);
    }
    let mut latencies = Vec::with_capacity(n);
    let mut calls = Vec::with_capacity(n);
    for k in &keys {
        store.revoke_key(&k.record.id).await?;
        let started = Instant::now();
        a.invalidate(&k.record.hash).await?;
        calls.push(started.elapsed());
        loop {
            if b.verify_key(&k.plaintext, &none).await == Outcome::Revoked {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                return Err("B never refused the key".into());
            }
            tokio::task::yield_now().await;
        }
        latencies.push(started.elapsed());
    }
    for (what, mut times) in [("refused by B", latencies), ("invalidate call", calls)] {
        times.sort();
        println!(
            "{what}: revocations={n} p50={:?} p99={:?} max={:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
    }
    Ok(())
}
