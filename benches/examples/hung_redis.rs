//! Verify latency while Redis hangs (`SIGSTOP`), once the breaker is open,
//! side by side with database-only mode over the same SQLite store. Every
//! request misses L1 (TTL 0) so each one exercises the fallback path.
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --example hung_redis -- [requests]
//! ```
//! Starts (and stops) its own `redis-server` on a free port.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    ApiKeyCache, BreakerState, CacheConfig, KeyAdmin, Mode, NewKey, RequiredScopes, SqliteStore,
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(cache: &ApiKeyCache, keys: &[String], n: usize) -> Vec<Duration> {
    let none = RequiredScopes::none();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let outcome = cache.verify_key(&keys[i % keys.len()], &none).await;
        out.push(started.elapsed());
        assert!(outcome.is_valid(), "{outcome:?}");
    }
    out.sort();
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let path = std::env::temp_dir().join(format!("apikey-cache-hung-{}.db", std::process::id()));
    let store = Arc::new(SqliteStore::connect(&format!("sqlite://{}", path.display())).await?);
    store.migrate().await?;
    let base = || {
        CacheConfig::builder()
            .l1_ttl(Duration::ZERO)
            .breaker_cooldown(Duration::from_secs(3600))
    };
    let hung = ApiKeyCache::new(
        base()
            .redis_url(format!("redis://127.0.0.1:{port}"))
            .build()?,
        store.clone(),
    )?;
    let db_only = ApiKeyCache::new(base().mode(Mode::DatabaseOnly).build()?, store.clone())?;
    let mut keys = Vec::new();
    for _ in 0..100 {
        keys.push(
            store
                .create_key(hung.hasher(), NewKey::new("bench", ["a"]))
                .await?
                .plaintext,
        );
    }

    Command::new("kill")
        .args(["-STOP", &redis.id().to_string()])
        .status()?;
    let opening = Instant::now();
    let mut during_opening = Vec::new();
    while hung.stats().l2_breaker != Some(BreakerState::Open) {
        let started = Instant::now();
        hung.verify_key(&keys[0], &RequiredScopes::none()).await;
        during_opening.push(started.elapsed());
    }
    println!(
        "breaker opened after {} requests in {:?}; slowest {:?}",
        during_opening.len(),
        opening.elapsed(),
        during_opening.iter().max().copied().unwrap_or_default()
    );
    // Warm both paths, then alternate rounds so drift hits both alike.
    measure(&hung, &keys, 500).await;
    measure(&db_only, &keys, 500).await;
    let (mut h, mut d) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        h.extend(measure(&hung, &keys, n / 4).await);
        d.extend(measure(&db_only, &keys, n / 4).await);
    }
    h.sort();
    d.sort();
    for (name, v) in [("breaker_open", &h), ("database_only", &d)] {
        println!(
            "{name:<14} p50={:?} p99={:?} max={:?}",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v[v.len() - 1]
        );
    }
    println!(
        "p99 ratio breaker_open / database_only = {:.2}",
        percentile(&h, 0.99).as_secs_f64() / percentile(&d, 0.99).as_secs_f64()
    );
    Command::new("kill")
        .args(["-CONT", &redis.id().to_string()])
        .status()?;
    redis.kill()?;
    let _ = redis.wait();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
