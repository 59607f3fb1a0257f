//! `GET /health/cache` for axum: the core's [`HealthReport`] as JSON, 200
//! while requests can be answered (healthy or degraded), 503 when not.
//!
//! The report probes Redis and the store at most once a second however
//! often it is scraped (see `apikey_cache::ApiKeyCache::health`).
//!
//! ```
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
//! use apikey_cache_tower::health_router;
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
//! let app = axum::Router::new().merge(health_router(cache));
//! let res = app
//!     .oneshot(http::Request::get("/health/cache").body(axum::body::Body::empty())?)
//!     .await?;
//! assert_eq!(res.status(), 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! [`HealthReport`]: apikey_cache::HealthReport

use apikey_cache::ApiKeyCache;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Where [`health_router`] serves the report.
pub const HEALTH_PATH: &str = "/health/cache";

/// A router serving [`HEALTH_PATH`]; merge it into your app (outside any
/// [`ApiKeyLayer`](crate::ApiKeyLayer): probes carry no key).
pub fn health_router<S>(cache: ApiKeyCache) -> Router<S> {
    Router::new()
        .route(HEALTH_PATH, get(health))
        .with_state(cache)
}

async fn health(State(cache): State<ApiKeyCache>) -> Response {
    let report = cache.health().await;
    let status =
        StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match serde_json::to_vec(&report) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health report could not be serialized");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
