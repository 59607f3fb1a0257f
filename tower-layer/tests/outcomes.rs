//! Every row of the design's outcome table, through an axum router, header
//! by header.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyAdmin, KeyStatus, NewKey, Outcome, RateLimit, RateLimitInfo,
    VerifiedKey,
};
use apikey_cache_tower::{ApiKeyLayer, Authenticated};
use axum::routing::get;
use axum::{Extension, Json, Router};
use http::StatusCode;
use support::{anonymous, bearer, send, Answer, DownStore, Fixture};
use time::{Duration, OffsetDateTime};

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

/// The common shape of every rejection: status, JSON content type, the
/// design's `error`, a message, and the body the core renders for `outcome`.
fn assert_rejected(answer: &Answer, status: u16, error: &str, outcome: &Outcome) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["error"], error);
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let core: serde_json::Value = serde_json::from_str(&outcome.rejection().unwrap().body).unwrap();
    assert_eq!(body, core, "the layer renders the core's table");
}

const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;

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
    assert_rejected(&answer, 401, "missing_api_key", &Outcome::Missing);
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    assert_eq!(answer.header("retry-after"), None);
}

#[tokio::test]
async fn unknown_key() {
    let f = Fixture::new();
    let app = app(f.cache.clone(), &[]);
    let answer = send(&app, bearer("GET", "/v1/whoami", "ak_no_such_key")).await;
    assert_rejected(&answer, 401, "invalid_api_key", &Outcome::Unknown);
    assert_eq!(answer.header("www-authenticate"), Some(INVALID_TOKEN));
    // Negatively cached: the second answer comes from L1, and is the same.
    let again = send(&app, bearer("GET", "/v1/whoami", "ak_no_such_key")).await;
    assert_eq!((again.status, again.body), (answer.status, answer.body));
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
    assert_rejected(&answer, 401, "invalid_api_key", &Outcome::Unknown);
    assert_eq!(answer.header("www-authenticate"), Some(INVALID_TOKEN));
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
    assert_rejected(&answer, 401, "revoked_api_key", &Outcome::Revoked);
    assert_eq!(answer.header("www-authenticate"), Some(INVALID_TOKEN));
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
    assert_rejected(&answer, 401, "disabled_api_key", &Outcome::Disabled);
    assert_eq!(answer.header("www-authenticate"), Some(INVALID_TOKEN));
}

#[tokio::test]
async fn expired_key() {
    let f = Fixture::new();
    let past = OffsetDateTime::now_utc() - Duration::hours(1);
    let key = f
        .issue(NewKey::new("acme", ["orders:read"]).expires_at(past))
        .await;
    let answer = send(
        &app(f.cache.clone(), &[]),
        bearer("GET", "/v1/whoami", &key.plaintext),
    )
    .await;
    assert_rejected(&answer, 401, "expired_api_key", &Outcome::Expired);
    assert_eq!(answer.header("www-authenticate"), Some(INVALID_TOKEN));
}

#[tokio::test]
async fn key_expiring_after_it_was_cached() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    let app = app(f.cache.clone(), &[]);
    let req = || bearer("GET", "/v1/whoami", &key.plaintext);
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);

    let past = OffsetDateTime::now_utc() - Duration::seconds(1);
    f.store
        .set_expires_at(&key.record.id, Some(past))
        .await
        .unwrap();
    f.cache.invalidate(&key.record.hash).await.unwrap();
    let answer = send(&app, req()).await;
    assert_rejected(&answer, 401, "expired_api_key", &Outcome::Expired);
}

#[tokio::test]
async fn insufficient_scope_lists_what_is_missing() {
    let f = Fixture::new();
    let key = f.key(&["orders:read"]).await;
    let app = app(f.cache.clone(), &["orders:read", "orders:write", "admin"]);
    let answer = send(&app, bearer("GET", "/v1/whoami", &key.plaintext)).await;
    let missing = vec!["orders:write".to_owned(), "admin".to_owned()];
    assert_rejected(
        &answer,
        403,
        "insufficient_scope",
        &Outcome::InsufficientScope {
            missing: missing.clone(),
        },
    );
    assert_eq!(answer.json()["missing_scopes"], serde_json::json!(missing));
    assert_eq!(
        answer.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope", scope="orders:write admin""#)
    );
    // The same answer from L1 on the second request.
    let again = send(&app, bearer("GET", "/v1/whoami", &key.plaintext)).await;
    assert_eq!((again.status, again.body), (answer.status, answer.body));
}

#[tokio::test]
async fn store_down_fails_closed_with_503() {
    let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(DownStore)).unwrap();
    let answer = send(
        &app(cache, &[]),
        bearer("GET", "/v1/whoami", "ak_whatever_it_is"),
    )
    .await;
    assert_rejected(&answer, 503, "auth_unavailable", &Outcome::Unavailable);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.header("www-authenticate"), None);
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
async fn rate_limited_key() {
    let f = Fixture::new();
    let per_minute = RateLimit::new(2, std::time::Duration::from_secs(60));
    let key = f
        .issue(NewKey::new("acme", ["orders:read"]).rate_limit(per_minute))
        .await;
    let app = app(f.cache.clone(), &[]);
    let req = || bearer("GET", "/v1/whoami", &key.plaintext);
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);

    let answer = send(&app, req()).await;
    let info = RateLimitInfo::new(2, 0, std::time::Duration::ZERO, std::time::Duration::ZERO);
    assert_rejected(&answer, 429, "rate_limited", &Outcome::RateLimited(info));
    let seconds = |name: &str| -> u64 { answer.header(name).unwrap().parse().unwrap() };
    assert!((1..=60).contains(&seconds("retry-after")));
    assert_eq!(answer.header("ratelimit-limit"), Some("2"));
    assert_eq!(answer.header("ratelimit-remaining"), Some("0"));
    assert!(seconds("ratelimit-reset") <= 60);
    assert_eq!(answer.header("www-authenticate"), None);
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

    let answer = send(&app, req()).await;
    let outcome = Outcome::QuotaExceeded {
        quota: 1,
        retry_after: std::time::Duration::from_secs(1),
    };
    assert_rejected(&answer, 429, "quota_exceeded", &outcome);
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=31 * 24 * 3600).contains(&retry_after));
    assert_eq!(answer.header("www-authenticate"), None);
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
