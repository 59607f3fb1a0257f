//! Every row of the design's outcome table, through an actix-web app, header
//! by header (the rows are in `cache-core/tests/support/expectations.rs`,
//! shared with the tower layer's tests).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use actix_web::{test, web, App, HttpMessage, HttpRequest, HttpResponse};
use apikey_cache::{ApiKeyCache, KeyAdmin, KeyStatus, NewKey, Outcome, RateLimit, VerifiedKey};
use apikey_cache_actix::{ApiKeyAuth, Authenticated};
use support::expectations::{
    DISABLED, EXPIRED, INSUFFICIENT_SCOPE, INVALID, MISSING, QUOTA_EXCEEDED, RATE_LIMITED, REVOKED,
    UNAVAILABLE,
};
use support::{anonymous, bearer, cache_over_a_down_store, send, Fixture};

async fn whoami(Authenticated(key): Authenticated, req: HttpRequest) -> HttpResponse {
    let from_extensions = req.extensions().get::<VerifiedKey>().cloned();
    assert_eq!(Some(&key), from_extensions.as_ref());
    HttpResponse::Ok().json(serde_json::json!({
        "key_id": key.id.as_str(),
        "owner": key.owner,
        "scopes": key.scopes.as_slice(),
    }))
}

macro_rules! app {
    ($cache:expr, $scopes:expr) => {
        test::init_service(
            App::new()
                .wrap(ApiKeyAuth::new($cache).require($scopes.iter().copied()))
                .route("/v1/whoami", web::get().to(whoami)),
        )
        .await
    };
}

/// The body is the core's rendering of `outcome`, byte for byte: the
/// middleware holds no table of its own.
fn assert_core_body(answer: &support::Answer, outcome: &Outcome) {
    assert_eq!(answer.text(), outcome.rejection().unwrap().body);
}

#[actix_web::test]
async fn valid_key_reaches_the_handler_on_a_miss_and_on_a_hit() {
    let f = Fixture::new();
    let key = f.key(&["orders:read"]).await;
    let app = app!(f.cache.clone(), ["orders:read"]);

    // First request: an L1 miss, the async path.
    let answer = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("www-authenticate"), None);
    let body = answer.json();
    assert_eq!(body["key_id"], key.record.id.as_str());
    assert_eq!(body["owner"], "acme");
    assert_eq!(body["scopes"], serde_json::json!(["orders:read"]));
    let stats = f.cache.stats();
    assert_eq!((stats.l1_hits, stats.store_queries), (0, 1));

    // Second: an L1 hit, the sync path; same answer, no store query.
    let again = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    assert_eq!((again.status, again.body), (answer.status, answer.body));
    let stats = f.cache.stats();
    assert_eq!((stats.l1_hits, stats.store_queries), (1, 1));
}

#[actix_web::test]
async fn x_api_key_header_works_too() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    let req = anonymous("/v1/whoami").insert_header(("x-api-key", key.plaintext.as_str()));
    assert_eq!(send(&app, req).await.status, 200);
}

#[actix_web::test]
async fn missing_key() {
    let f = Fixture::new();
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    let answer = send(&app, anonymous("/v1/whoami")).await;
    answer.expect(&MISSING);
    assert_core_body(&answer, &Outcome::Missing);
}

#[actix_web::test]
async fn unknown_key_on_a_miss_then_from_the_negative_cache() {
    let f = Fixture::new();
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    let answer = send(&app, bearer("/v1/whoami", "ak_no_such_key")).await;
    answer.expect(&INVALID);
    assert_core_body(&answer, &Outcome::Unknown);
    // Negatively cached: the second answer comes from L1, and is the same.
    let again = send(&app, bearer("/v1/whoami", "ak_no_such_key")).await;
    again.expect(&INVALID);
    assert_eq!(again.body, answer.body);
    assert_eq!(f.cache.stats().store_queries, 1);
}

#[actix_web::test]
async fn malformed_key_looks_like_unknown() {
    let f = Fixture::new();
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    for req in [
        anonymous("/v1/whoami").insert_header(("x-api-key", "two words")),
        anonymous("/v1/whoami").insert_header(("authorization", "Basic dXNlcjpwYXNz")),
        anonymous("/v1/whoami")
            .append_header(("x-api-key", "ak_a"))
            .append_header(("x-api-key", "ak_b")),
        anonymous("/v1/whoami").insert_header(("x-api-key", "a".repeat(257))),
    ] {
        let answer = send(&app, req).await;
        answer.expect(&INVALID);
        assert_core_body(&answer, &Outcome::Unknown);
    }
    assert_eq!(
        f.cache.stats().store_queries,
        0,
        "refused before any lookup"
    );
}

#[actix_web::test]
async fn revoked_key() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    f.store.revoke_key(&key.record.id).await.unwrap();
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    let answer = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    answer.expect(&REVOKED);
    assert_core_body(&answer, &Outcome::Revoked);
}

#[actix_web::test]
async fn revoked_after_it_was_cached() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    assert_eq!(
        send(&app, bearer("/v1/whoami", &key.plaintext))
            .await
            .status,
        200
    );
    f.store.revoke_key(&key.record.id).await.unwrap();
    f.cache.invalidate(&key.record.hash).await.unwrap();
    send(&app, bearer("/v1/whoami", &key.plaintext))
        .await
        .expect(&REVOKED);
}

#[actix_web::test]
async fn disabled_key() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    f.store
        .update(&key.record.id, |r| r.status = KeyStatus::Disabled)
        .unwrap();
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    let answer = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    answer.expect(&DISABLED);
    assert_core_body(&answer, &Outcome::Disabled);
}

#[actix_web::test]
async fn expired_key() {
    let f = Fixture::new();
    let past = support::START - time::Duration::hours(1);
    let key = f.issue(NewKey::new("acme", ["a"]).expires_at(past)).await;
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    let answer = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    answer.expect(&EXPIRED);
    assert_core_body(&answer, &Outcome::Expired);
}

#[actix_web::test]
async fn key_expiring_while_cached_is_expired_from_l1() {
    let f = Fixture::new();
    let soon = support::START + time::Duration::seconds(10);
    let key = f.issue(NewKey::new("acme", ["a"]).expires_at(soon)).await;
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    assert_eq!(
        send(&app, bearer("/v1/whoami", &key.plaintext))
            .await
            .status,
        200
    );

    // Judged at request time against the clock: the cached record is
    // expired now, without a store query.
    f.clock.advance(Duration::from_secs(10));
    send(&app, bearer("/v1/whoami", &key.plaintext))
        .await
        .expect(&EXPIRED);
    assert_eq!(f.cache.stats().store_queries, 1);
}

#[actix_web::test]
async fn insufficient_scope_lists_what_is_missing() {
    let f = Fixture::new();
    let key = f.key(&["orders:read"]).await;
    let app = app!(f.cache.clone(), ["orders:read", "orders:write", "admin"]);
    let answer = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    answer.expect(&INSUFFICIENT_SCOPE);
    let missing = Outcome::InsufficientScope {
        missing: vec!["orders:write".into(), "admin".into()],
    };
    assert_core_body(&answer, &missing);
    // The same answer from L1 on the second request.
    let again = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    again.expect(&INSUFFICIENT_SCOPE);
    assert_eq!(again.body, answer.body);
    assert_eq!(f.cache.stats().l1_hits, 1);
}

#[actix_web::test]
async fn rate_limited_key_without_redis() {
    let f = Fixture::new();
    let per_minute = RateLimit::new(1, Duration::from_secs(60));
    let key = f
        .issue(NewKey::new("acme", ["a"]).rate_limit(per_minute))
        .await;
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    assert_eq!(
        send(&app, bearer("/v1/whoami", &key.plaintext))
            .await
            .status,
        200
    );

    // No time has passed on the manual clock: refused, for exactly 60 s.
    let answer = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    answer.expect(&RATE_LIMITED);

    // And allowed again once the period has passed.
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(
        send(&app, bearer("/v1/whoami", &key.plaintext))
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn quota_exceeded_key() {
    let f = Fixture::new();
    let key = f.issue(NewKey::new("acme", ["a"]).monthly_quota(1)).await;
    let app = app!(f.cache.clone(), [] as [&str; 0]);
    assert_eq!(
        send(&app, bearer("/v1/whoami", &key.plaintext))
            .await
            .status,
        200
    );

    // 23:00 on the month's last day: the quota resets in one hour.
    let answer = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    answer.expect(&QUOTA_EXCEEDED);
    let body: serde_json::Value = answer.json();
    assert_eq!(body["error"], "quota_exceeded");
}

#[actix_web::test]
async fn store_down_and_nothing_cached_fails_closed_with_503() {
    let cache: ApiKeyCache = cache_over_a_down_store();
    let app = app!(cache, [] as [&str; 0]);
    let answer = send(&app, bearer("/v1/whoami", "ak_whatever_it_is")).await;
    answer.expect(&UNAVAILABLE);
    assert_core_body(&answer, &Outcome::Unavailable);
}

#[actix_web::test]
async fn extractor_without_the_middleware_is_a_500_not_a_200() {
    let app = test::init_service(App::new().route("/v1/whoami", web::get().to(whoami))).await;
    let answer = send(&app, bearer("/v1/whoami", "ak_anything")).await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["error"], "api_key_layer_missing");
    assert!(body["message"].is_string());
    assert!(!answer.text().contains("ak_anything"), "never echo the key");
}
