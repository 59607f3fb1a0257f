//! L1 memory per cached key, for capacity planning and `compare`: the
//! process's resident memory (L1 entries and usage cells) and, with a
//! Redis URL, Redis's `used_memory` (L2 entries), before and after `n`
//! keys with 3 scopes are verified once each.
//!
//! The store's records are created before the first reading, so they are
//! not counted. Resident memory moves in pages and the allocator keeps
//! some slack: use `n` of 100k or more, in a process that has done little
//! else (`compare` runs each size in a fresh one).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let m = apikey_cache_benches::memory::measure(1000, None).await.unwrap();
//! assert_eq!(m.l1_entries, 1000);
//! # });
//! ```

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyId, KeyRecord, MemoryStore, RequiredScopes, Scopes,
};

/// What [`measure`] found.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Keys verified.
    pub keys: usize,
    /// L1 entries afterwards.
    pub l1_entries: u64,
    /// Resident memory added per key (L1 entries and usage cells), bytes.
    pub l1_bytes_per_key: f64,
    /// Redis memory added per key, with a Redis URL.
    pub redis_bytes_per_key: Option<f64>,
}

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

/// Verifies `n` keys (3 scopes each, 1000 owners) once each and measures
/// what that added. With `redis` (a `redis://host:port` URL; a unique key
/// prefix keeps the run apart, its keys expire with the L2 TTL), Redis's
/// bytes per key too.
pub async fn measure(
    n: usize,
    redis: Option<&str>,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let mut config = CacheConfig::builder()
        .l1_capacity(2 * n as u64)
        // No usage keys in Redis during the run: only L2 entries count.
        .usage_flush_interval(Duration::from_secs(3600));
    if let Some(url) = redis {
        config = config
            .redis_url(url.to_owned())
            .key_prefix(format!("apikey-cache-memory-{}:", std::process::id()));
    }
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(config.build()?, store.clone())?;
    let keys: Vec<String> = (0..n).map(crate::key).collect();
    for (i, k) in keys.iter().enumerate() {
        store.insert(KeyRecord::new(
            KeyId::new(format!("key_{i:08}")),
            cache.hash_key(k),
            format!("owner_{}", i % 1000),
            Scopes::new(["orders:read", "orders:write", "billing:read"]),
        ));
    }

    let rss_before = rss_bytes()?;
    let redis_before = redis.map(redis_used_memory).transpose()?;
    let none = RequiredScopes::none();
    for k in &keys {
        if !cache.verify_key(k, &none).await.is_valid() {
            return Err(format!("bench key {k} was refused").into());
        }
    }
    let rss_after = rss_bytes()?;
    let redis_after = redis.map(redis_used_memory).transpose()?;

    let per_key = |before: u64, after: u64| after.saturating_sub(before) as f64 / n.max(1) as f64;
    Ok(Measured {
        keys: n,
        l1_entries: cache.stats().l1_entries,
        l1_bytes_per_key: per_key(rss_before, rss_after),
        redis_bytes_per_key: redis_before.zip(redis_after).map(|(b, a)| per_key(b, a)),
    })
}
