//! Runs one hot-path operation N times, for instruction counts under
//! `valgrind --tool=callgrind` (repeatable where wall-clock time is not).
//!
//! ```text
//! cargo build --release -p apikey-cache-benches --example hotpath
//! valgrind --tool=callgrind target/release/examples/hotpath verify 100000
//! ```
//!
//! Subtract a run with N = 0 and divide by N for instructions per operation.
//! Operations: `floor` (SHA-256 + moka get), `verify` (`verify_key`, one
//! required scope), `verify_none` (no scopes), `cached` (`verify_cached` on a
//! precomputed hash).

use std::hint::black_box;
use std::sync::Arc;

use apikey_cache::{
    generate_api_key, ApiKeyCache, CacheConfig, KeyAdmin, KeyId, KeyRecord, MemoryStore,
    RequiredScopes, Scopes,
};
use futures::FutureExt;
use sha2::{Digest, Sha256};

fn main() {
    let mut args = std::env::args().skip(1);
    let op = args.next().unwrap_or_else(|| "verify".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys: Vec<String> = (0..10_000)
        .map(|_| generate_api_key().expect("rng"))
        .collect();
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).expect("cache");
    let required = RequiredScopes::new(["orders:read"]);
    let none = RequiredScopes::none();
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            let r = KeyRecord::new(
                KeyId::new(format!("k{i}")),
                cache.hash_key(k),
                "o",
                Scopes::new(["orders:*", "whoami"]),
            );
            store.import_key(&r).await.expect("import");
            assert!(cache.verify_key(k, &required).await.is_valid());
        }
    });
    let floor: moka::sync::Cache<[u8; 32], Arc<String>> = moka::sync::Cache::new(100_000);
    for k in &keys {
        floor.insert(Sha256::digest(k.as_bytes()).into(), Arc::new(k.clone()));
    }
    struct Exp;
    impl moka::Expiry<[u8; 32], Arc<String>> for Exp {
        fn expire_after_create(
            &self,
            _: &[u8; 32],
            _: &Arc<String>,
            _: std::time::Instant,
        ) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_secs(60))
        }
    }
    let with_expiry: moka::sync::Cache<[u8; 32], Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .expire_after(Exp)
        .build();
    let with_ttl: moka::sync::Cache<[u8; 32], Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(std::time::Duration::from_secs(60))
        .build();
    for k in &keys {
        with_expiry.insert(Sha256::digest(k.as_bytes()).into(), Arc::new(k.clone()));
        with_ttl.insert(Sha256::digest(k.as_bytes()).into(), Arc::new(k.clone()));
    }
    let hashes: Vec<_> = keys.iter().map(|k| cache.hash_key(k)).collect();
    for i in 0..n {
        let j = i % keys.len();
        match op.as_str() {
            "floor" => {
                let h: [u8; 32] = Sha256::digest(keys[j].as_bytes()).into();
                black_box(floor.get(&h));
            }
            "sha" => {
                black_box(Sha256::digest(keys[j].as_bytes()));
            }
            "moka" => {
                black_box(floor.get(hashes[j].as_bytes()));
            }
            "moka_expiry" => {
                black_box(with_expiry.get(hashes[j].as_bytes()));
            }
            "moka_ttl" => {
                black_box(with_ttl.get(hashes[j].as_bytes()));
            }
            "verify" => {
                black_box(cache.verify_key(&keys[j], &required).now_or_never());
            }
            "verify_none" => {
                black_box(cache.verify_key(&keys[j], &none).now_or_never());
            }
            "cached" => {
                black_box(cache.verify_cached(&hashes[j], &required));
            }
            other => panic!("unknown op {other}"),
        }
    }
}
