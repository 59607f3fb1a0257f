//! `GET /health/cache` for actix-web: the core's [`HealthReport`] as JSON,
//! 200 while requests can be answered (healthy or degraded), 503 when not.
//!
//! The report probes Redis and the store at most once a second however
//! often it is scraped (see [`ApiKeyCache::health`]).
//!
//! ```
//! use std::sync::Arc;
//! use actix_web::{test, App};
//! use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
//!
//! # actix_web::rt::System::new().block_on(async {
//! let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
//! let app = test::init_service(App::new().configure(apikey_cache_actix::health(cache))).await;
//! let res = test::call_service(&app, test::TestRequest::get().uri("/health/cache").to_request()).await;
//! assert_eq!(res.status(), 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! [`HealthReport`]: apikey_cache::HealthReport

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use apikey_cache::ApiKeyCache;

/// Where [`health()`] serves the report.
///
/// ```
/// assert_eq!(apikey_cache_actix::HEALTH_PATH, "/health/cache");
/// ```
pub const HEALTH_PATH: &str = "/health/cache";

/// Registers `GET` (and `HEAD`) [`HEALTH_PATH`]; mount it with
/// `App::configure` (or `Scope::configure`), outside any
/// [`ApiKeyAuth`](crate::ApiKeyAuth): probes carry no key.
///
/// ```no_run
/// use std::sync::Arc;
/// use actix_web::{App, HttpServer};
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
///
/// #[actix_web::main]
/// async fn main() -> std::io::Result<()> {
///     let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))
///         .map_err(std::io::Error::other)?;
///     HttpServer::new(move || App::new().configure(apikey_cache_actix::health(cache.clone())))
///         .bind(("127.0.0.1", 8080))?
///         .run()
///         .await
/// }
/// ```
pub fn health(cache: ApiKeyCache) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config| {
        let handler = move || {
            let cache = cache.clone();
            async move { report(&cache).await }
        };
        config.service(
            web::resource(HEALTH_PATH)
                .route(web::get().to(handler.clone()))
                .route(web::head().to(handler)),
        );
    }
}

async fn report(cache: &ApiKeyCache) -> HttpResponse {
    let report = cache.health().await;
    let status =
        StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match serde_json::to_vec(&report) {
        Ok(body) => HttpResponse::build(status)
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(body),
        Err(e) => {
            tracing::error!(error = %e, "health report could not be serialized");
            HttpResponse::ServiceUnavailable().finish()
        }
    }
}
