//! What token leases cost under API-like traffic, in process: 32 tasks
//! verify 10k keys, Zipf-distributed (s = 1: a few hot keys and a long
//! tail, as `compare`'s wrk script sends), for a few seconds, once with
//! every key unlimited and once with every key rate-limited far above the
//! load. Prints, per case, verifies per second, this process's CPU time
//! per verify, and per thousand verifies the lease calls to Redis (refills
//! and give-backs) and the verifies that waited for one.
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --example lease_traffic -- [seconds] [redis-url]
//! ```
//!
//! Runs on one Tokio worker, so CPU time per verify compares like for like.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyId, KeyRecord, MemoryStore, RateLimit, RequiredScopes, Scopes,
};

const KEYS: usize = 10_000;
const TASKS: usize = 32;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!("case        verifies/s  CPU us/verify  lease calls/1k  waits/1k");
    for (name, limit) in [
        ("unlimited", None),
        (
            "limited",
            Some(RateLimit::new(1_000_000, Duration::from_secs(60))),
        ),
    ] {
        let r = rt.block_on(run(&url, limit, Duration::from_secs(seconds)))?;
        println!(
            "{name:<10} {:>11.0} {:>14.3} {:>15.2} {:>9.2}",
            r.rate, r.cpu_us, r.calls_per_k, r.waits_per_k
        );
    }
    Ok(())
}

struct Result_ {
    rate: f64,
    cpu_us: f64,
    calls_per_k: f64,
    waits_per_k: f64,
}

async fn run(
    url: &str,
    limit: Option<RateLimit>,
    length: Duration,
) -> Result<Result_, Box<dyn std::error::Error>> {
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(
        CacheConfig::builder()
            .redis_url(url)
            .key_prefix(format!(
                "lease-traffic-{}-{}:",
                std::process::id(),
                limit.is_some()
            ))
            .build()?,
        store.clone(),
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("ak_lease_{i:06}{}", "x".repeat(28)))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let mut r = KeyRecord::new(
            KeyId::new(format!("k{i}")),
            cache.hash_key(key),
            "o",
            Scopes::new(["a"]),
        );
        r.rate_limit = limit;
        store.insert(r);
    }
    // Every key once (its first lease), as a server's warm-up does; then a
    // second of traffic before measuring.
    for key in &keys {
        cache.verify_key(key, &RequiredScopes::none()).await;
    }
    let cdf = zipf_cdf(KEYS, 1.0);
    let keys = Arc::new(keys);
    let cdf = Arc::new(cdf);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (cache, keys, cdf, stop, count) = (
                cache.clone(),
                keys.clone(),
                cdf.clone(),
                stop.clone(),
                count.clone(),
            );
            tokio::spawn(async move {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    let u = next_unit(&mut rng);
                    let i = cdf.partition_point(|&c| c < u).min(KEYS - 1);
                    let outcome = cache.verify_key(&keys[i], &RequiredScopes::none()).await;
                    assert!(outcome.is_valid(), "{outcome:?}");
                    count.fetch_add(1, Ordering::Relaxed);
                    // One verify per wake-up, as one request per poll.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (n0, cpu0, s0) = (count.load(Ordering::Relaxed), cpu_seconds(), cache.stats());
    let started = std::time::Instant::now();
    tokio::time::sleep(length).await;
    let (n1, cpu1, s1) = (count.load(Ordering::Relaxed), cpu_seconds(), cache.stats());
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    // Usage counts still pending are of no interest here.
    let _ = cache.shutdown(Duration::from_secs(1)).await;
    let n = (n1 - n0) as f64;
    Ok(Result_ {
        rate: n / elapsed,
        cpu_us: (cpu1 - cpu0) * 1e6 / n,
        calls_per_k: (s1.lease_calls - s0.lease_calls) as f64 * 1000.0 / n,
        waits_per_k: (s1.limit_waits - s0.limit_waits) as f64 * 1000.0 / n,
    })
}

/// Key `i`'s share is `1 / (i + 1)^s`, normalised: the cumulative sums.
fn zipf_cdf(keys: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    let mut cdf: Vec<f64> = (0..keys)
        .map(|i| {
            total += 1.0 / ((i + 1) as f64).powf(s);
            total
        })
        .collect();
    for c in &mut cdf {
        *c /= total;
    }
    cdf
}

/// xorshift64*, as a number in [0, 1).
fn next_unit(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// This process's user and system CPU time, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
