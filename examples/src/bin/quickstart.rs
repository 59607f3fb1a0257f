//! Issues a key in an SQLite store and verifies it through the cache:
//! valid, wrong scope, unknown, then revoked after an invalidation.
//!
//! ```text
//! cargo run -p apikey-cache-examples --bin quickstart
//! ```
//!
//! `DATABASE_URL` picks the store (default: `sqlite://apikey-cache-demo.db`
//! in the working directory; a `postgres://` URL works too);
//! `APIKEY_CACHE_*` variables configure the cache (e.g.
//! `APIKEY_CACHE_REDIS_URL=redis://127.0.0.1:6379`).

use std::error::Error;
use std::time::Instant;

use apikey_cache::{ApiKeyCache, CacheConfig, NewKey, RequiredScopes};
use apikey_cache_examples::demo::setup::open_store;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "sqlite://apikey-cache-demo.db".to_owned());
    // Two handles on one store: the admin side for us, the read side for
    // the cache (no `dyn KeyAdmin` -> `dyn KeyStore` upcast, which needs
    // Rust 1.86).
    let opened = open_store(&url).await?;
    let store = opened.admin;
    let config = CacheConfig::from_env()?;
    println!("config: {config:?}");
    let cache = ApiKeyCache::new(config, opened.reader)?;

    let issued = store
        .create_key(cache.hasher(), NewKey::new("demo", ["orders:*"]))
        .await?;
    println!(
        "issued {} (fingerprint {})",
        issued.record.id,
        issued.record.hash.fingerprint()
    );

    let read = RequiredScopes::new(["orders:read"]);
    let admin = RequiredScopes::new(["admin"]);
    for (what, key, scopes) in [
        ("first use (store)", issued.plaintext.as_str(), &read),
        ("second use (L1)", issued.plaintext.as_str(), &read),
        ("needs admin", issued.plaintext.as_str(), &admin),
        ("unknown key", "ak_not_a_real_key", &read),
    ] {
        let started = Instant::now();
        let outcome = cache.verify_key(key, scopes).await;
        println!(
            "{what:<18} -> {:<18} in {:?}",
            outcome.label(),
            started.elapsed()
        );
    }

    store.revoke_key(&issued.record.id).await?;
    cache.invalidate(&issued.record.hash).await?;
    let outcome = cache.verify_key(&issued.plaintext, &read).await;
    println!("{:<18} -> {}", "after revocation", outcome.label());
    println!("stats: {:?}", cache.stats());
    Ok(())
}
