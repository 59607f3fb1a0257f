//! One Redis against a local Redis Cluster (3 primaries, 3 replicas), in
//! one run: the latency of a verify answered from Redis (L1 miss, L2 hit),
//! revocation propagation between two instances, and, on the cluster, the
//! time from killing a primary to the first invalidation that lands.
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --example scale_out -- [keys] [breaker-cooldown]
//! ```
//! Default 2000 keys and the default breaker cool-down (10s): after a
//! failover, invalidations land again once the breaker's probe succeeds,
//! so the cool-down bounds that time from below. It starts its own `redis-server` processes (the
//! deployments of the scale-out tests) on loopback ports and stops them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey, Outcome, RequiredScopes,
};

// The scale-out tests' deployments (they find `PortLease` as
// `super::ports`).
#[allow(dead_code, clippy::all, missing_docs, unreachable_pub)]
#[path = "../../cache-core/tests/support/deploy.rs"]
mod deploy;
#[allow(dead_code, clippy::all, missing_docs, unreachable_pub)]
#[path = "../../cache-core/tests/support/ports.rs"]
mod ports;
#[allow(dead_code, clippy::all, missing_docs, unreachable_pub)]
#[path = "../../cache-core/tests/support/redis.rs"]
mod redis_server;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(topology: &str, what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{topology:<8} {what:<28} n={:<5} p50={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );
}

struct Pair {
    a: ApiKeyCache,
    b: ApiKeyCache,
    store: Arc<MemoryStore>,
}

async fn pair(url: &str, cooldown: Duration) -> Result<Pair, Box<dyn std::error::Error>> {
    let config = || {
        CacheConfig::builder()
            .redis_url(url)
            .breaker_cooldown(cooldown)
            .build()
    };
    let store = Arc::new(MemoryStore::new());
    let a = ApiKeyCache::new(config()?, store.clone())?;
    let b = ApiKeyCache::new(config()?, store.clone())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.stats().subscribed && b.stats().subscribed) {
        if Instant::now() > deadline {
            return Err(format!("{url}: the instances never subscribed").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Pair { a, b, store })
}

/// L2-hit verifies on B of keys A filled, then revocations from A seen by B.
async fn measure(
    topology: &str,
    url: &str,
    n: usize,
    cooldown: Duration,
) -> Result<Pair, Box<dyn std::error::Error>> {
    let p = pair(url, cooldown).await?;
    let none = RequiredScopes::none();
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let k = p
            .store
            .create_key(p.a.hasher(), NewKey::new("bench", ["a"]))
            .await?;
        assert!(p.a.verify_key(&k.plaintext, &none).await.is_valid());
        keys.push(k);
    }
    let queries = p.b.stats().store_queries;
    let mut hits = Vec::with_capacity(n);
    for k in &keys {
        let started = Instant::now();
        assert!(p.b.verify_key(&k.plaintext, &none).await.is_valid());
        hits.push(started.elapsed());
    }
    if p.b.stats().store_queries != queries {
        return Err(format!("{topology}: B asked the store, not Redis").into());
    }
    line(topology, "verify, L2 hit", hits);

    let mut seen = Vec::with_capacity(n);
    for k in &keys {
        p.store.revoke_key(&k.record.id).await?;
        let started = Instant::now();
        p.a.invalidate(&k.record.hash).await?;
        while p.b.verify_key(&k.plaintext, &none).await != Outcome::Revoked {
            if started.elapsed() > Duration::from_secs(5) {
                return Err(format!("{topology}: B never refused the key").into());
            }
            tokio::task::yield_now().await;
        }
        seen.push(started.elapsed());
    }
    line(topology, "revocation refused by B", seen);
    Ok(p)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let cooldown = args
        .next()
        .and_then(|s| apikey_cache::parse_duration(&s))
        .unwrap_or(CacheConfig::default().breaker_cooldown);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let single = redis_server::RedisServer::start();
    measure("single", &single.url(), n, cooldown).await?;
    drop(single);

    let mut cluster = deploy::RedisCluster::start(3, 1);
    let p = measure("cluster", &cluster.url(), n, cooldown).await?;

    // A primary killed: how long until an invalidation lands again.
    let k = p
        .store
        .create_key(p.a.hasher(), NewKey::new("bench", ["a"]))
        .await?;
    // The primary that holds the key's entry, whose tombstone must land.
    let victim = cluster.primary_for_key(&format!("apikey-cache:key:{}", k.record.hash.to_hex()));
    cluster.kill9(victim);
    let killed = Instant::now();
    let mut refused = 0;
    while p.a.invalidate(&k.record.hash).await.is_err() {
        refused += 1;
        if killed.elapsed() > Duration::from_secs(60) {
            return Err("no invalidation landed within 60 s of the kill".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let landed = killed.elapsed();
    let takeover = cluster.wait_for_failover_async(victim).await;
    println!(
        "cluster  primary killed: first invalidation landed after {landed:.3?} ({refused} refused before); node {takeover} took over (node timeout {} ms, breaker cool-down {cooldown:?})",
        deploy::RedisCluster::NODE_TIMEOUT_MS
    );
    Ok(())
}
