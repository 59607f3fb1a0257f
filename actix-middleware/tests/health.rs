//! `GET /health/cache` through actix-web: JSON fields and status codes, the
//! same as the tower adapter's health router.
#![allow(clippy::unwrap_used)]

mod support;

use actix_web::{test, web, App, HttpResponse};
use apikey_cache_actix::{health, ApiKeyAuth, HEALTH_PATH};
use support::{anonymous, bearer, cache_over_a_down_store, send, Fixture};

#[actix_web::test]
async fn healthy_report_without_a_key() {
    let f = Fixture::new();
    let app = test::init_service(
        App::new().configure(health(f.cache.clone())).service(
            web::scope("/v1")
                .wrap(ApiKeyAuth::new(f.cache.clone()))
                .route("/whoami", web::get().to(HttpResponse::Ok)),
        ),
    )
    .await;
    let answer = send(&app, anonymous(HEALTH_PATH)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
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
    assert_eq!(json["l2"]["status"], "disabled");
    assert_eq!(json["store"]["status"], "up");
    assert!(json["checked_at"].as_str().unwrap().contains('T'));
    // The rest of the app still wants a key.
    assert_eq!(send(&app, anonymous("/v1/whoami")).await.status, 401);
}

#[actix_web::test]
async fn l1_counters_show_in_the_report() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    let app = test::init_service(
        App::new().configure(health(f.cache.clone())).service(
            web::resource("/v1/whoami")
                .wrap(ApiKeyAuth::new(f.cache.clone()))
                .route(web::get().to(HttpResponse::Ok)),
        ),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            send(&app, bearer("/v1/whoami", &key.plaintext))
                .await
                .status,
            200
        );
    }
    let json = send(&app, anonymous(HEALTH_PATH)).await.json();
    assert_eq!(json["l1"]["entries"], 1);
    assert_eq!(json["l1"]["hits"], 1);
    assert_eq!(json["l1"]["misses"], 1);
}

#[actix_web::test]
async fn store_down_with_nothing_cached_is_503() {
    let app = test::init_service(App::new().configure(health(cache_over_a_down_store()))).await;
    let answer = send(&app, anonymous(HEALTH_PATH)).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let json = answer.json();
    assert_eq!(json["status"], "unhealthy");
    assert_eq!(json["store"]["status"], "down");
}

#[actix_web::test]
async fn head_is_answered_and_other_methods_are_not() {
    let f = Fixture::new();
    let app = test::init_service(App::new().configure(health(f.cache.clone()))).await;
    let head = anonymous(HEALTH_PATH).method(actix_web::http::Method::HEAD);
    assert_eq!(send(&app, head).await.status, 200);
    let post = anonymous(HEALTH_PATH).method(actix_web::http::Method::POST);
    assert_eq!(send(&app, post).await.status, 405);
}
