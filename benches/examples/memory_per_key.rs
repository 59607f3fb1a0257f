//! Memory per cached key, for capacity planning: L1 (entries and usage
//! cells, resident memory) and, with a Redis URL, L2 (Redis's
//! `used_memory`), for `n` keys with 3 scopes (see
//! [`apikey_cache_benches::memory`]). `compare` reports the L1 figure too.
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --example memory_per_key -- [n] [redis-url]
//! ```
//! Defaults: 100000 keys, no Redis (L1 only).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let redis = args.next();
    let m = apikey_cache_benches::memory::measure(n, redis.as_deref()).await?;
    println!(
        "keys {n}  l1_entries {}  l1+usage bytes/key {:.0}",
        m.l1_entries, m.l1_bytes_per_key
    );
    if let Some(b) = m.redis_bytes_per_key {
        println!("redis bytes/key {b:.0}");
    }
    Ok(())
}
