//! Memory per cached key, for capacity planning: the process's resident
//! memory (L1 entries and usage cells) and Redis's `used_memory` (L2
//! entries) before and after `n` keys with 3 scopes are verified once each.
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --example memory_per_key -- [n] [redis-url]
//! ```
//! Defaults: 100000 keys, no Redis (L1 only). With a Redis URL (a unique key
//! prefix keeps the run apart from anything else there; its keys are left to
//! expire with the L2 TTL) it also reports Redis bytes per key.
//!
//! The store's records are created before the first reading, so they are
//! not counted. Resident memory moves in pages and the allocator keeps
//! some slack: use `n` of 100k or more.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyId, KeyRecord, MemoryStore, RequiredScopes, Scopes,
};

/// Resident set size of this process, in bytes (Linux `/proc`).
fn rss_bytes() -> Result<u64, Box<dyn std::error::Error>> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("unexpected /proc/self/statm")?
        .parse()?;
    // The page size of every Linux target this runs on.
    Ok(pages * 4096)
}

/// `used_memory` from `INFO memory`, over a raw connection (host:port of a
/// `redis://` URL without auth).
fn redis_used_memory(url: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let addr = url
        .strip_prefix("redis://")
        .ok_or("only redis:// URLs")?
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"INFO memory\r\n")?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    // A bulk string: read until the field is in.
    while !String::from_utf8_lossy(&reply).contains("used_memory_human") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    let line = text
        .lines()
        .find(|l| l.starts_with("used_memory:"))
        .ok_or("no used_memory in INFO")?;
    Ok(line["used_memory:".len()..].trim().parse()?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let redis = args.next();

    let mut config = CacheConfig::builder()
        .l1_capacity(2 * n as u64)
        // No usage keys in Redis during the run: only L2 entries count.
        .usage_flush_interval(Duration::from_secs(3600));
    if let Some(url) = &redis {
        config = config
            .redis_url(url.clone())
            .key_prefix(format!("apikey-cache-memory-{}:", std::process::id()));
    }
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(config.build()?, store.clone())?;
    let keys: Vec<String> = (0..n).map(apikey_cache_benches::key).collect();
    for (i, k) in keys.iter().enumerate() {
        store.insert(KeyRecord::new(
            KeyId::new(format!("key_{i:08}")),
            cache.hash_key(k),
            format!("owner_{}", i % 1000),
            Scopes::new(["orders:read", "orders:write", "billing:read"]),
        ));
    }

    let rss_before = rss_bytes()?;
    let redis_before = redis.as_deref().map(redis_used_memory).transpose()?;
    let none = RequiredScopes::none();
    for k in &keys {
        assert!(cache.verify_key(k, &none).await.is_valid());
    }
    let rss_after = rss_bytes()?;
    let redis_after = redis.as_deref().map(redis_used_memory).transpose()?;

    let per_key = |before: u64, after: u64| after.saturating_sub(before) as f64 / n as f64;
    println!(
        "keys {n}  l1_entries {}  l1+usage bytes/key {:.0}",
        cache.stats().l1_entries,
        per_key(rss_before, rss_after)
    );
    if let (Some(before), Some(after)) = (redis_before, redis_after) {
        println!("redis bytes/key {:.0}", per_key(before, after));
    }
    Ok(())
}
