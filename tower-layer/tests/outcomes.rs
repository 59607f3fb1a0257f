//! Every row of the design's outcome table, through an axum router, header
//! by header (the rows are in `cache-core/tests/support/expectations.rs`,
//! shared with the actix middleware's tests).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyAdmin, KeyStatus, NewKey, Outcome, RateLimit, VerifiedKey,
};
use apikey_cache_tower::{ApiKeyLayer, Authenticated};
use axum::routing::get;
use axum::{Extension, Json, Router};
use http::StatusCode;
use support::expectations::{
    DISABLED, EXPIRED, INSUFFICIENT_SCOPE, INVALID, MISSING, QUOTA_EXCEEDED, RATE_LIMITED, REVOKED,
    UNAVAILABLE,
};
use support::{anonymous, bearer, send, Answer, DownStore, Fixture, START};

async fn whoami(
    Authenticated(key): Authenticated,
    Extension(from_extensions): Extension<VerifiedKey>,
) -> Json<serde_json::Value> {
    assert_eq!(key, from_extensions);
    Json(serde_json::json!({
        "key_id": key.id.as_str(),
        "owner": key.owner,
        "scopes": key.scopes.as_slice(),
    }))
}

fn app(cache: ApiKeyCache, scopes: &[&str]) -> Router {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route_layer(ApiKeyLayer::new(cache).require(scopes.iter().copied()))
}

/// The body is the core's rendering of `outcome`, byte for byte: the layer
/// holds no table of its own.
fn assert_core_body(answer: &Answer, outcome: &Outcome) {
    assert_eq!(answer.text(), outcome.rejection().unwrap().body);
}

#[tokio::test]
async fn valid_key_reaches_the_handler_with_its_record() {
    let f = Fixture::new();
    let key = f.key(&["orders:read"]).await;
    let app = app(f.cache.clone(), &["orders:read"]);

    let answer = send(&app, bearer("GET", "/v1/whoami", &key.plaintext)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.header("www-authenticate"), None);
    let body = answer.json();
    assert_eq!(body["key_id"], key.record.id.as_str());
    assert_eq!(body["owner"], "acme");
    assert_eq!(body["scopes"], serde_json::json!(["orders:read"]));
}

#[tokio::test]
async fn x_api_key_header_works_too() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    let app = app(f.cache.clone(), &[]);
    let req = http::Request::get("/v1/whoami")
        .header("x-api-key", &key.plaintext)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.status, StatusCode::OK);
}

#[tokio::test]
async fn missing_key() {
    let f = Fixture::new();
    let answer = send(&app(f.cache.clone(), &[]), anonymous("GET", "/v1/whoami")).await;
    answer.expect(&MISSING);
    assert_core_body(&answer, &Outcome::Missing);
}

#[tokio::test]
async fn unknown_key() {
    let f = Fixture::new();
    let app = app(f.cache.clone(), &[]);
    let answer = send(&app, bearer("GET", "/v1/whoami", "ak_no_such_key")).await;
    answer.expect(&INVALID);
    assert_core_body(&answer, &Outcome::Unknown);
    // Negatively cached: the second answer comes from L1, and is the same.
    let again = send(&app, bearer("GET", "/v1/whoami", "ak_no_such_key")).await;
    again.expect(&INVALID);
    assert_eq!(again.body, answer.body);
    assert_eq!(f.cache.stats().store_queries, 1);
}

#[tokio::test]
async fn malformed_key_looks_like_unknown() {
    let f = Fixture::new();
    let app = app(f.cache.clone(), &[]);
    let req = http::Request::get("/v1/whoami")
        .header("x-api-key", "two words")
        .body(axum::body::Body::empty())
        .unwrap();
    let answer = send(&app, req).await;
    answer.expect(&INVALID);
    assert_core_body(&answer, &Outcome::Unknown);
    assert_eq!(
        f.cache.stats().store_queries,
        0,
        "refused before any lookup"
    );
}

#[tokio::test]
async fn revoked_key() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    f.store.revoke_key(&key.record.id).await.unwrap();
    let answer = send(
        &app(f.cache.clone(), &[]),
        bearer("GET", "/v1/whoami", &key.plaintext),
    )
    .await;
    answer.expect(&REVOKED);
    assert_core_body(&answer, &Outcome::Revoked);
}

#[tokio::test]
async fn disabled_key() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    f.store
        .update(&key.record.id, |r| r.status = KeyStatus::Disabled)
        .unwrap();
    let answer = send(
        &app(f.cache.clone(), &[]),
        bearer("GET", "/v1/whoami", &key.plaintext),
    )
    .await;
    answer.expect(&DISABLED);
    assert_core_body(&answer, &Outcome::Disabled);
}

#[tokio::test]
async fn expired_key() {
    let f = Fixture::new();
    let past = START - time::Duration::hours(1);
    let key = f
        .issue(NewKey::new("acme", ["orders:read"]).expires_at(past))
        .await;
    let answer = send(
        &app(f.cache.clone(), &[]),
        bearer("GET", "/v1/whoami", &key.plaintext),
    )
    .await;
    answer.expect(&EXPIRED);
    assert_core_body(&answer, &Outcome::Expired);
}

#[tokio::test]
async fn key_expiring_while_cached_is_expired_from_l1() {
    let f = Fixture::new();
    let soon = START + time::Duration::seconds(10);
    let key = f
        .issue(NewKey::new("acme", ["orders:read"]).expires_at(soon))
        .await;
    let app = app(f.cache.clone(), &[]);
    let req = || bearer("GET", "/v1/whoami", &key.plaintext);
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);

    // Judged at request time against the clock: the cached record is
    // expired now, without a store query.
    f.clock.advance(Duration::from_secs(10));
    send(&app, req()).await.expect(&EXPIRED);
    assert_eq!(f.cache.stats().store_queries, 1);
}

#[tokio::test]
async fn insufficient_scope_lists_what_is_missing() {
    let f = Fixture::new();
    let key = f.key(&["orders:read"]).await;
    let app = app(f.cache.clone(), &["orders:read", "orders:write", "admin"]);
    let answer = send(&app, bearer("GET", "/v1/whoami", &key.plaintext)).await;
    answer.expect(&INSUFFICIENT_SCOPE);
    let missing = Outcome::InsufficientScope {
        missing: vec!["orders:write".into(), "admin".into()],
    };
    assert_core_body(&answer, &missing);
    // The same answer from L1 on the second request.
    let again = send(&app, bearer("GET", "/v1/whoami", &key.plaintext)).await;
    again.expect(&INSUFFICIENT_SCOPE);
    assert_eq!(again.body, answer.body);
    assert_eq!(f.cache.stats().l1_hits, 1);
}

#[tokio::test]
async fn store_down_fails_closed_with_503() {
    let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(DownStore)).unwrap();
    let answer = send(
        &app(cache, &[]),
        bearer("GET", "/v1/whoami", "ak_whatever_it_is"),
    )
    .await;
    answer.expect(&UNAVAILABLE);
    assert_core_body(&answer, &Outcome::Unavailable);
}

#[tokio::test]
async fn extractor_without_the_layer_is_a_500_not_a_200() {
    let app = Router::new().route("/v1/whoami", get(whoami));
    let answer = send(&app, bearer("GET", "/v1/whoami", "ak_anything")).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["error"], "api_key_layer_missing");
    assert!(body["message"].is_string());
}

#[tokio::test]
async fn rate_limited_key_without_redis() {
    let f = Fixture::new();
    let per_minute = RateLimit::new(1, Duration::from_secs(60));
    let key = f
        .issue(NewKey::new("acme", ["orders:read"]).rate_limit(per_minute))
        .await;
    let app = app(f.cache.clone(), &[]);
    let req = || bearer("GET", "/v1/whoami", &key.plaintext);
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);

    // No time has passed on the manual clock: refused, for exactly 60 s.
    send(&app, req()).await.expect(&RATE_LIMITED);

    // And allowed again once the period has passed.
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn quota_exceeded_key() {
    let f = Fixture::new();
    let key = f
        .issue(NewKey::new("acme", ["orders:read"]).monthly_quota(1))
        .await;
    let app = app(f.cache.clone(), &[]);
    let req = || bearer("GET", "/v1/whoami", &key.plaintext);
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);

    // 23:00 on the month's last day: the quota resets in one hour.
    send(&app, req()).await.expect(&QUOTA_EXCEEDED);
}

#[tokio::test]
async fn grpc_and_grpc_web_requests_get_grpc_statuses() {
    let f = Fixture::new();
    let reader = f.key(&["orders:read"]).await;
    let app = app(f.cache.clone(), &["orders:write"]);
    for content_type in [
        "application/grpc",
        "application/grpc-web+proto",
        "application/grpc-web-text",
    ] {
        let mut missing = anonymous("POST", "/v1/whoami");
        let mut scope = bearer("POST", "/v1/whoami", &reader.plaintext);
        for req in [&mut missing, &mut scope] {
            req.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
        }
        for (req, code) in [(missing, "16"), (scope, "7")] {
            let answer = send(&app, req).await;
            // Trailers-only: 200, the status in the headers, no body; the
            // content type is the client's own (gRPC-Web clients check it).
            assert_eq!(answer.status, StatusCode::OK, "{content_type}");
            assert_eq!(answer.header("grpc-status"), Some(code), "{content_type}");
            assert_eq!(answer.header("content-type"), Some(content_type));
            assert!(answer.text().is_empty(), "{content_type}");
        }
    }
}
