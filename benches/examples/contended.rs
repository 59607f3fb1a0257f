//! Two threads verifying random keys against one cache at once: the
//! per-request cost of an L1 hit when both cores share the cache's memory
//! (lock words, reference counts, usage counters), which a one-thread
//! micro-benchmark does not see.
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --example contended [threads] [seconds]
//! ```
//!
//! Prints nanoseconds per operation for a bare SHA-256 + quick_cache `get`
//! (the floor) and for `verify_key` on the same keys, alternating 5 rounds.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyId, KeyRecord, MemoryStore, RequiredScopes, Scopes,
};
use apikey_cache_benches::{key, KEYS};
use futures::FutureExt;
use sha2::{Digest, Sha256};

fn run(threads: usize, secs: f64, op: &(dyn Fn(usize) + Sync)) -> f64 {
    let ops: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                    let end = Instant::now() + Duration::from_secs_f64(secs);
                    let mut n = 0u64;
                    while Instant::now() < end {
                        for _ in 0..256 {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            op((x % KEYS as u64) as usize);
                        }
                        n += 256;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    secs * threads as f64 * 1e9 / ops as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let store = Arc::new(MemoryStore::new());
    let cache = rt.block_on(async { ApiKeyCache::new(CacheConfig::default(), store.clone()) })?;
    let required = RequiredScopes::new(["whoami"]);
    let bare: quick_cache::sync::Cache<[u8; 32], ()> = quick_cache::sync::Cache::new(100_000);
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            store.insert(KeyRecord::new(
                KeyId::new(format!("key_{i}")),
                cache.hash_key(k),
                format!("owner_{}", i % 100),
                Scopes::new(["orders:*", "whoami"]),
            ));
            assert!(cache.verify_key(k, &required).await.is_valid());
            bare.insert(Sha256::digest(k.as_bytes()).into(), ());
        }
    });
    let floor = |i: usize| {
        let h: [u8; 32] = Sha256::digest(keys[i].as_bytes()).into();
        black_box(bare.get(&h));
    };
    let verify = |i: usize| {
        black_box(cache.verify_key(&keys[i], &required).now_or_never());
    };
    let none = RequiredScopes::none();
    let unscoped = |i: usize| {
        black_box(cache.verify_key(&keys[i], &none).now_or_never());
    };
    for round in 1..=5 {
        let f = run(threads, secs, &floor);
        let v = run(threads, secs, &verify);
        let u = run(threads, secs, &unscoped);
        println!(
            "round {round}: floor {f:.0} ns, verify {v:.0} ns ({:.2}x), no scope {u:.0} ns",
            v / f
        );
    }
    Ok(())
}
