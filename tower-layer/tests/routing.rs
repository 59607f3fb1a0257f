//! Scopes per route, wildcards, the miss and hit paths, revocation, and
//! concurrent first requests.
#![allow(clippy::unwrap_used)]

mod support;

use apikey_cache::{ApiKeyCache, KeyAdmin};
use apikey_cache_tower::{ApiKeyLayer, Authenticated};
use axum::routing::{delete, get, post};
use axum::Router;
use http::StatusCode;
use support::{anonymous, bearer, send, Fixture};

/// The demo contract's shape: one router per set of scopes, merged; the
/// same path needs different scopes per method.
fn app(cache: &ApiKeyCache) -> Router {
    let whoami = Router::new()
        .route(
            "/v1/whoami",
            get(|Authenticated(key): Authenticated| async move { key.owner.clone() }),
        )
        .route_layer(ApiKeyLayer::new(cache.clone()));
    let read = Router::new()
        .route("/v1/orders", get(|| async { "[]" }))
        .route_layer(ApiKeyLayer::new(cache.clone()).require(["orders:read"]));
    let write = Router::new()
        .route("/v1/orders", post(|| async { StatusCode::CREATED }))
        .route_layer(ApiKeyLayer::new(cache.clone()).require(["orders:write"]));
    let admin = Router::new()
        .route(
            "/admin/keys/{id}",
            delete(|| async { StatusCode::NO_CONTENT }),
        )
        .route_layer(ApiKeyLayer::new(cache.clone()).require(["admin"]));
    whoami.merge(read).merge(write).merge(admin)
}

async fn statuses(app: &Router, key: &str) -> [u16; 4] {
    [
        send(app, bearer("GET", "/v1/whoami", key)).await.status,
        send(app, bearer("GET", "/v1/orders", key)).await.status,
        send(app, bearer("POST", "/v1/orders", key)).await.status,
        send(app, bearer("DELETE", "/admin/keys/k1", key))
            .await
            .status,
    ]
    .map(|s| s.as_u16())
}

#[tokio::test]
async fn each_route_requires_its_own_scopes() {
    let f = Fixture::new();
    let app = app(&f.cache);
    let reader = f.key(&["orders:read"]).await;
    let writer = f.key(&["orders:write"]).await;
    let none = f.key(&[]).await;
    assert_eq!(
        statuses(&app, &reader.plaintext).await,
        [200, 200, 403, 403]
    );
    assert_eq!(
        statuses(&app, &writer.plaintext).await,
        [200, 403, 201, 403]
    );
    assert_eq!(statuses(&app, &none.plaintext).await, [200, 403, 403, 403]);
}

#[tokio::test]
async fn wildcard_scopes() {
    let f = Fixture::new();
    let app = app(&f.cache);
    let orders = f.key(&["orders:*"]).await;
    let all = f.key(&["*"]).await;
    // `orders:*` does not grant `orders` itself, nor other prefixes.
    let bare = f.key(&["orders", "ord*"]).await;
    assert_eq!(
        statuses(&app, &orders.plaintext).await,
        [200, 200, 201, 403]
    );
    assert_eq!(statuses(&app, &all.plaintext).await, [200, 200, 201, 204]);
    assert_eq!(statuses(&app, &bare.plaintext).await, [200, 403, 403, 403]);
}

#[tokio::test]
async fn route_layer_leaves_unknown_paths_a_404_and_layer_does_not() {
    let f = Fixture::new();
    let answer = send(&app(&f.cache), anonymous("GET", "/nope")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    let guarded = Router::new()
        .route("/v1/orders", get(|| async { "[]" }))
        .layer(ApiKeyLayer::new(f.cache.clone()));
    let answer = send(&guarded, anonymous("GET", "/nope")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let key = f.key(&[]).await;
    let answer = send(&guarded, bearer("GET", "/nope", &key.plaintext)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn miss_then_hit() {
    let f = Fixture::new();
    let app = app(&f.cache);
    let key = f.key(&["orders:read"]).await;

    // Miss: loaded from the store inside the response future.
    let first = send(&app, bearer("GET", "/v1/whoami", &key.plaintext)).await;
    assert_eq!(
        (first.status, first.text()),
        (StatusCode::OK, "acme".into())
    );
    let stats = f.cache.stats();
    assert_eq!(stats.store_queries, 1);
    let hits_before = stats.l1_hits;

    // Hit: answered synchronously from L1, on this and other routes.
    let second = send(&app, bearer("GET", "/v1/whoami", &key.plaintext)).await;
    assert_eq!(
        (second.status, second.text()),
        (StatusCode::OK, "acme".into())
    );
    let third = send(&app, bearer("GET", "/v1/orders", &key.plaintext)).await;
    assert_eq!(third.status, StatusCode::OK);
    let stats = f.cache.stats();
    assert_eq!(stats.store_queries, 1, "no second store query");
    assert_eq!(stats.l1_hits - hits_before, 2, "both answered from L1");
}

#[tokio::test]
async fn revoked_and_invalidated_key_is_refused_on_the_next_request() {
    let f = Fixture::new();
    let app = app(&f.cache);
    let key = f.key(&["orders:read"]).await;
    let req = || bearer("GET", "/v1/orders", &key.plaintext);
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);
    assert_eq!(send(&app, req()).await.status, StatusCode::OK);

    f.store.revoke_key(&key.record.id).await.unwrap();
    f.cache.invalidate(&key.record.hash).await.unwrap();
    let answer = send(&app, req()).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.json()["error"], "revoked_api_key");
    // And it stays refused (now from L1).
    assert_eq!(send(&app, req()).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_share_one_load() {
    let f = Fixture::new();
    let app = app(&f.cache);
    let key = f.key(&["orders:read"]).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (app, plaintext, barrier) = (app.clone(), key.plaintext.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                send(&app, bearer("GET", "/v1/orders", &plaintext))
                    .await
                    .status
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let stats = f.cache.stats();
    assert_eq!(stats.store_queries, 1, "single flight: {stats:?}");
}
