//! The layer's audit events: one `auth_failed` per refused request, with
//! the route, method and client address (axum's `ConnectInfo`, or a bare
//! `SocketAddr` in the extensions), whichever path refused it (an L1 answer
//! in `call`, or a load in the response future); none for a valid request.
#![allow(clippy::unwrap_used)]

mod support;

#[path = "../../cache-core/tests/support/capture.rs"]
mod capture;

use std::convert::Infallible;
use std::net::SocketAddr;

use apikey_cache_tower::ApiKeyLayer;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use capture::{assert_documented_fields, Captured};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::{anonymous, bearer, send, Fixture};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn peer() -> SocketAddr {
    "192.0.2.10:40123".parse().unwrap()
}

fn app(fx: &Fixture) -> Router {
    Router::new()
        .route("/v1/orders", get(|| async { "[]" }))
        .route_layer(ApiKeyLayer::new(fx.cache.clone()).require(["orders:read"]))
}

/// As served by `into_make_service_with_connect_info::<SocketAddr>()`.
fn connected(mut req: Request<axum::body::Body>) -> Request<axum::body::Body> {
    req.extensions_mut().insert(ConnectInfo(peer()));
    req
}

#[tokio::test]
async fn each_refused_request_writes_one_event_with_route_method_and_client() {
    let (log, _guard) = Captured::install();
    let fx = Fixture::new();
    let app = app(&fx);
    let unknown = "ak_tower_audit_unknown_key";

    // A miss: refused by the load, in the response future.
    let res = send(&app, connected(bearer("GET", "/v1/orders?page=3", unknown))).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(log.audit("auth_failed").len(), 1);
    // The same key again: refused from L1, in `call`.
    let res = send(&app, connected(bearer("GET", "/v1/orders", unknown))).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    // No key at all.
    let res = send(&app, connected(anonymous("GET", "/v1/orders"))).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);

    let events = log.audit("auth_failed");
    assert_eq!(events.len(), 3, "{events:#?}");
    let fingerprint = fx.cache.hash_key(unknown).fingerprint();
    for (e, fp) in events
        .iter()
        .zip([Some(&fingerprint), Some(&fingerprint), None])
    {
        assert_documented_fields(e);
        let f = &e["fields"];
        assert_eq!(f["route"], "/v1/orders");
        assert_eq!(f["method"], "GET");
        assert_eq!(f["client"], "192.0.2.10:40123");
        assert_eq!(f["status"], 401);
        match fp {
            Some(fp) => {
                assert_eq!(f["outcome"], "invalid_api_key");
                assert_eq!(f["fingerprint"], fp.as_str());
            }
            None => {
                assert_eq!(f["outcome"], "missing_api_key");
                assert!(f.get("fingerprint").is_none());
            }
        }
    }
    assert!(!log.text().contains(unknown));
}

#[tokio::test]
async fn a_valid_request_writes_nothing() {
    let (log, _guard) = Captured::install();
    let fx = Fixture::new();
    let app = app(&fx);
    let key = fx.key(&["orders:read"]).await;
    // A miss, then an L1 hit.
    for _ in 0..2 {
        let res = send(&app, connected(bearer("GET", "/v1/orders", &key.plaintext))).await;
        assert_eq!(res.status, StatusCode::OK);
    }
    assert!(log.audit("auth_failed").is_empty());
    // The capture works: a refusal on the same app is seen.
    let res = send(
        &app,
        connected(bearer("POST", "/v1/orders", &key.plaintext)),
    )
    .await;
    assert_eq!(
        res.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "not behind the layer"
    );
    let wrong_scope = fx.key(&["other"]).await;
    let res = send(
        &app,
        connected(bearer("GET", "/v1/orders", &wrong_scope.plaintext)),
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let events = log.audit("auth_failed");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["fields"]["outcome"], "insufficient_scope");
}

#[tokio::test]
async fn a_bare_socket_addr_is_the_client_of_a_plain_tower_service() {
    let (log, _guard) = Captured::install();
    let fx = Fixture::new();
    let svc = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(fx.cache.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    let mut req = Request::builder()
        .method("DELETE")
        .uri("http://example.com/things/7?x=1")
        .header("x-api-key", "ak_plain_tower_unknown")
        .body(Full::default())
        .unwrap();
    req.extensions_mut().insert(peer());
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Without any address: the field is left out.
    let req = Request::builder()
        .uri("/things")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let events = log.audit("auth_failed");
    assert_eq!(events.len(), 2);
    let f = &events[0]["fields"];
    assert_eq!(f["route"], "/things/7");
    assert_eq!(f["method"], "DELETE");
    assert_eq!(f["client"], "192.0.2.10:40123");
    assert!(events[1]["fields"].get("client").is_none());
}
