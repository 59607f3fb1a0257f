//! `GET /health/cache` through axum: JSON fields and status codes.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use apikey_cache::{ApiKeyCache, CacheConfig};
use apikey_cache_tower::{health_router, ApiKeyLayer};
use axum::routing::get;
use axum::Router;
use support::{anonymous, send, DownStore, Fixture};

#[tokio::test]
async fn healthy_report_without_a_key() {
    let f = Fixture::new();
    let app = Router::new()
        .route("/v1/whoami", get(|| async { "ok" }))
        .route_layer(ApiKeyLayer::new(f.cache.clone()))
        .merge(health_router(f.cache.clone()));
    let answer = send(&app, anonymous("GET", "/health/cache")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let json = answer.json();
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["mode"], "normal");
    for (block, fields) in [
        (
            "l1",
            &["entries", "hits", "misses", "hit_rate", "negative_entries"][..],
        ),
        (
            "l2",
            &[
                "status",
                "breaker",
                "latency_ms",
                "hits",
                "misses",
                "errors",
            ],
        ),
        ("store", &["status", "latency_ms"]),
        (
            "invalidation",
            &["subscribed", "events_received", "resyncs"],
        ),
        (
            "usage",
            &["pending_keys", "pending_increments", "flush_errors"],
        ),
        ("owner_lists", &["entries"]),
        ("warming", &["state", "loaded"]),
    ] {
        for field in fields {
            assert!(
                json[block].get(field).is_some(),
                "{block}.{field} missing: {json}"
            );
        }
    }
    assert!(json["checked_at"].as_str().unwrap().contains('T'));
}

#[tokio::test]
async fn store_down_with_nothing_cached_is_503() {
    let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(DownStore)).unwrap();
    let app: Router = health_router(cache);
    let answer = send(&app, anonymous("GET", "/health/cache")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["status"], "unhealthy");
    assert_eq!(answer.json()["store"]["status"], "down");
}
