//! Shared pieces of the apikey-cache benchmarks: the axum apps of the
//! side-by-side HTTP comparison, served by `bench-server` and driven
//! in-process by the `router` example (instruction counts), the actix
//! ones ([`actix`]), served by `actix-bench-server`, the comparison itself
//! ([`compare`], the `compare` binary) and L1 memory per key ([`memory`]).
//!
//! The criterion benchmarks live in `benches/`; run them with
//! `cargo bench -p apikey-cache-benches`.

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyHash, KeyId, KeyRecord, KeyStore, MemoryStore, Mode,
    PostgresStore, RateLimit, RequiredScopes, Scopes,
};
use apikey_cache_tower::{ApiKeyLayer, Authenticated};
use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

pub mod actix;
pub mod compare;
pub mod memory;
use tower_http::auth::{AsyncAuthorizeRequest, AsyncRequireAuthorizationLayer};

/// How many keys the `apikey`, `moka` and `quick` apps know.
pub const KEYS: usize = 10_000;

/// The ways `GET /v1/whoami` can be guarded, as [`app`] builds them.
pub const MODES: &[&str] = &[
    "noauth",
    "bearer",
    "apikey",
    "apikey-limited",
    "moka",
    "quick",
];

/// The bench key number `i`: `ak_bench_` plus six digits, padded with `x`
/// to 43 characters, the length of a generated key
/// (`benches/wrk/random-key.lua` builds the same strings).
pub fn key(i: usize) -> String {
    format!("ak_bench_{i:06}{}", "x".repeat(43 - 15))
}

async fn whoami() -> &'static str {
    r#"{"ok":true}"#
}

async fn whoami_keyed(Authenticated(key): Authenticated) -> &'static str {
    std::hint::black_box(&key.id);
    r#"{"ok":true}"#
}

/// The token of `Authorization: Bearer <token>`.
fn bearer<B>(req: &Request<B>) -> Option<&[u8]> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
}

fn unauthorized() -> Response<Body> {
    let mut res = Response::new(Body::from(r#"{"error":"invalid_api_key"}"#));
    *res.status_mut() = StatusCode::UNAUTHORIZED;
    res
}

/// The design's prototype: SHA-256 of the bearer token and one cache
/// lookup in a `from_fn` middleware; no store, no scopes, no counting.
fn bare_lookup(found: impl Fn(&[u8; 32]) -> bool + Clone + Send + Sync + 'static) -> Router {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route_layer(axum::middleware::from_fn(
            move |req: Request<Body>, next: axum::middleware::Next| {
                let hit = bearer(&req).is_some_and(|t| found(&Sha256::digest(t).into()));
                async move {
                    if hit {
                        next.run(req).await
                    } else {
                        unauthorized()
                    }
                }
            },
        ))
}

/// The cheapest credible bearer check: right scheme, right prefix and
/// length, no lookup.
#[derive(Clone, Copy)]
struct StaticBearer;

impl<B: Send + 'static> AsyncAuthorizeRequest<B> for StaticBearer {
    type RequestBody = B;
    type ResponseBody = Body;
    type Future = std::future::Ready<Result<Request<B>, Response<Body>>>;

    fn authorize(&mut self, req: Request<B>) -> Self::Future {
        let ok = bearer(&req).is_some_and(|t| t.len() == 43 && t.starts_with(b"ak_bench_"));
        std::future::ready(if ok { Ok(req) } else { Err(unauthorized()) })
    }
}

/// Bench key `i`'s record: id `key_<i>`, 100 owners, scopes `orders:*` and
/// `whoami`, and `limit` if given.
///
/// ```
/// use apikey_cache::KeyHasher;
/// use apikey_cache_benches::{bench_record, key};
///
/// let r = bench_record(7, KeyHasher::new(None).hash(key(7).as_bytes()), None);
/// assert_eq!((r.id.as_str(), r.owner.as_str()), ("key_7", "owner_7"));
/// ```
pub fn bench_record(i: usize, hash: KeyHash, limit: Option<RateLimit>) -> KeyRecord {
    let mut record = KeyRecord::new(
        KeyId::new(format!("key_{i}")),
        hash,
        format!("owner_{}", i % 100),
        Scopes::new(["orders:*", "whoami"]),
    );
    record.rate_limit = limit;
    record
}

/// `BENCH_RATE_LIMIT` (`<requests>/<seconds>`): every bench key's limit.
fn rate_limit_from_env() -> Result<Option<RateLimit>, Box<dyn std::error::Error>> {
    let Ok(text) = std::env::var("BENCH_RATE_LIMIT") else {
        return Ok(None);
    };
    let (requests, secs) = text
        .split_once('/')
        .ok_or("BENCH_RATE_LIMIT: expected <requests>/<seconds>")?;
    Ok(Some(RateLimit::try_new(
        requests.parse()?,
        Duration::from_secs(secs.parse()?),
    )?))
}

/// A cache (configured by `APIKEY_CACHE_*`) over [`KEYS`] bench keys
/// ([`bench_record`]), every key verified once so that a run measures L1
/// hits. Both frameworks' `apikey` servers use it.
///
/// The keys live in a memory store, or with `BENCH_STORE_URL` in that
/// PostgreSQL database (which must hold them already: `compare` fills
/// it). `BENCH_RATE_LIMIT=<requests>/<seconds>` gives every key that rate
/// limit. In `database_only` mode nothing is warmed.
///
/// Must run inside a Tokio runtime (the cache spawns its background tasks).
pub async fn warm_cache() -> Result<ApiKeyCache, Box<dyn std::error::Error>> {
    warm_cache_with(rate_limit_from_env()?).await
}

/// [`warm_cache`], every key with the rate limit `limit` if given (instead
/// of `BENCH_RATE_LIMIT`'s).
pub async fn warm_cache_with(
    limit: Option<RateLimit>,
) -> Result<ApiKeyCache, Box<dyn std::error::Error>> {
    let config = CacheConfig::from_env()?;
    let with_redis = config.redis_url.is_some();
    let store: Arc<dyn KeyStore> = match std::env::var("BENCH_STORE_URL") {
        Ok(url) => Arc::new(PostgresStore::connect(&url).await?),
        Err(_) => {
            let store = MemoryStore::new();
            let hasher = apikey_cache::KeyHasher::new(config.pepper.as_deref().map(str::as_bytes));
            for i in 0..KEYS {
                store.insert(bench_record(i, hasher.hash(key(i).as_bytes()), limit));
            }
            Arc::new(store)
        }
    };
    let cache = ApiKeyCache::new(config, store)?;
    if cache.mode() == Mode::DatabaseOnly {
        return Ok(cache);
    }
    if with_redis {
        // Let the connection come up, so that warming fills Redis too.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for i in 0..KEYS {
        cache.verify_key(&key(i), &RequiredScopes::none()).await;
    }
    Ok(cache)
}

/// Serves [`app`]`(mode)` on 127.0.0.1:`port` until killed: what
/// `bench-server` runs. Builds its own runtime (sized by
/// `TOKIO_WORKER_THREADS`, like `#[tokio::main]`).
pub fn serve_axum(mode: &str, port: u16) -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let app = app(mode).await?;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            axum::serve(listener, app).await?;
            Ok(())
        })
}

/// Serves [`actix::ActixApp`]`(mode)` on 127.0.0.1:`port` with `workers`
/// workers (one app and one cache for all) until killed: what
/// `actix-bench-server` runs.
pub fn serve_actix(
    mode: &str,
    port: u16,
    workers: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    actix_web::rt::System::new().block_on(async move {
        let app = actix::ActixApp::new(mode).await?;
        actix_web::HttpServer::new(move || {
            let app = app.clone();
            actix_web::App::new().configure(move |cfg| app.configure(cfg))
        })
        .workers(workers)
        .bind(("127.0.0.1", port))?
        .run()
        .await?;
        Ok(())
    })
}

/// `TOKIO_WORKER_THREADS`, else one per core: the actix servers' workers,
/// so that one setting sizes both frameworks' servers.
pub fn workers_from_env() -> Result<usize, Box<dyn std::error::Error>> {
    Ok(match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(n) => n.parse()?,
        Err(_) => std::thread::available_parallelism().map_or(1, usize::from),
    })
}

/// The app for `mode` (one of [`MODES`]), with every key in its cache:
///
/// * `noauth`: no authentication at all;
/// * `bearer`: tower-http's `AsyncRequireAuthorizationLayer`, a static check;
/// * `apikey`: `ApiKeyLayer` requiring scope `whoami`, [`KEYS`] keys in L1;
/// * `apikey-limited`: the same, every key rate-limited far above the load
///   (a million per minute; needs `APIKEY_CACHE_REDIS_URL`: with token
///   leases, the default, answered from L1; with `APIKEY_CACHE_LEASES=off`,
///   one Redis round trip per request);
/// * `moka`, `quick`: the design's prototype, `from_fn` with SHA-256 and a
///   bare moka or quick_cache lookup.
///
/// Must run inside a Tokio runtime (the cache spawns its background tasks).
pub async fn app(mode: &str) -> Result<Router, Box<dyn std::error::Error>> {
    Ok(match mode {
        "noauth" => Router::new().route("/v1/whoami", get(whoami)),
        "bearer" => Router::new()
            .route("/v1/whoami", get(whoami))
            .route_layer(AsyncRequireAuthorizationLayer::new(StaticBearer)),
        "apikey" => {
            let cache = warm_cache().await?;
            Router::new()
                .route("/v1/whoami", get(whoami_keyed))
                .route_layer(ApiKeyLayer::new(cache).require(["whoami"]))
        }
        "apikey-limited" => {
            if std::env::var_os("APIKEY_CACHE_REDIS_URL").is_none() {
                return Err("apikey-limited needs APIKEY_CACHE_REDIS_URL".into());
            }
            let limit = RateLimit::new(1_000_000, std::time::Duration::from_secs(60));
            let cache = warm_cache_with(Some(limit)).await?;
            Router::new()
                .route("/v1/whoami", get(whoami_keyed))
                .route_layer(ApiKeyLayer::new(cache).require(["whoami"]))
        }
        "moka" => {
            let l1: moka::sync::Cache<[u8; 32], ()> = moka::sync::Cache::new(100_000);
            for i in 0..KEYS {
                l1.insert(Sha256::digest(key(i).as_bytes()).into(), ());
            }
            bare_lookup(move |h| l1.get(h).is_some())
        }
        "quick" => {
            let l1: Arc<quick_cache::sync::Cache<[u8; 32], ()>> =
                Arc::new(quick_cache::sync::Cache::new(100_000));
            for i in 0..KEYS {
                l1.insert(Sha256::digest(key(i).as_bytes()).into(), ());
            }
            bare_lookup(move |h| l1.get(h).is_some())
        }
        other => return Err(format!("unknown mode {other}: one of {MODES:?}").into()),
    })
}
