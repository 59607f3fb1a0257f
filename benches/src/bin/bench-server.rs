//! The servers of the side-by-side HTTP comparison: one axum app, several
//! ways to guard `GET /v1/whoami` (see [`apikey_cache_benches::app`]).
//!
//! ```text
//! bench-server noauth   # no authentication at all
//! bench-server bearer   # tower-http AsyncRequireAuthorizationLayer, a static check
//! bench-server apikey   # ApiKeyLayer over 10k keys, all in L1
//! bench-server apikey-limited  # the same, every key rate-limited far above
//!                              # the load (needs APIKEY_CACHE_REDIS_URL)
//! bench-server moka     # the design's reference: from_fn, SHA-256 + moka get
//! bench-server quick    # the same with quick_cache instead of moka
//! ```
//!
//! Listens on 127.0.0.1:$PORT (default 8080). `apikey` takes every
//! `APIKEY_CACHE_*` setting, plus `BENCH_STORE_URL` and `BENCH_RATE_LIMIT`
//! (see [`apikey_cache_benches::warm_cache`]). The `compare` binary runs
//! these same apps side by side; see the README.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "apikey".into());
    let port = std::env::var("PORT")
        .unwrap_or_else(|_| "8080".into())
        .parse()?;
    apikey_cache_benches::serve_axum(&mode, port)
}
