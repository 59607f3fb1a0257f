//! The middleware's audit events: one `auth_failed` per refused request,
//! with the route, method and peer address, whichever path refused it (an
//! L1 answer in `call`, or a load in the response future); none for a
//! valid request.
#![allow(clippy::unwrap_used)]

mod support;

#[path = "../../cache-core/tests/support/capture.rs"]
mod capture;

use std::net::SocketAddr;

use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use actix_web::{test, web, App, HttpResponse};
use apikey_cache_actix::ApiKeyAuth;
use capture::{assert_documented_fields, Captured};
use support::{anonymous, bearer, send, Fixture};

fn peer() -> SocketAddr {
    "198.51.100.4:52100".parse().unwrap()
}

macro_rules! app {
    ($cache:expr) => {
        test::init_service(
            App::new().service(
                web::scope("/v1")
                    .wrap(ApiKeyAuth::new($cache).require(["orders:read"]))
                    .route("/orders", web::get().to(HttpResponse::Ok))
                    .route("/orders", web::post().to(HttpResponse::Created)),
            ),
        )
        .await
    };
}

fn from_peer(req: TestRequest) -> TestRequest {
    req.peer_addr(peer())
}

#[actix_web::test]
async fn each_refused_request_writes_one_event_with_route_method_and_client() {
    let (log, _guard) = Captured::install();
    let fx = Fixture::new();
    let app = app!(fx.cache.clone());
    let unknown = "ak_actix_audit_unknown_key";

    // A miss: refused by the load, in the response future.
    let res = send(&app, from_peer(bearer("/v1/orders?page=3", unknown))).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(log.audit("auth_failed").len(), 1);
    // The same key again: refused from L1, in `call`.
    let res = send(&app, from_peer(bearer("/v1/orders", unknown))).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    // No key at all, another method.
    let res = send(
        &app,
        from_peer(anonymous("/v1/orders").method(actix_web::http::Method::POST)),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);

    let events = log.audit("auth_failed");
    assert_eq!(events.len(), 3, "{events:#?}");
    let fingerprint = fx.cache.hash_key(unknown).fingerprint();
    for (e, (method, fp)) in events.iter().zip([
        ("GET", Some(&fingerprint)),
        ("GET", Some(&fingerprint)),
        ("POST", None),
    ]) {
        assert_documented_fields(e);
        let f = &e["fields"];
        assert_eq!(f["route"], "/v1/orders");
        assert_eq!(f["method"], method);
        assert_eq!(f["client"], "198.51.100.4:52100");
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

#[actix_web::test]
async fn a_valid_request_writes_nothing() {
    let (log, _guard) = Captured::install();
    let fx = Fixture::new();
    let app = app!(fx.cache.clone());
    let key = fx.key(&["orders:read"]).await;
    // A miss, then an L1 hit.
    for _ in 0..2 {
        let res = send(&app, from_peer(bearer("/v1/orders", &key.plaintext))).await;
        assert_eq!(res.status, StatusCode::OK);
    }
    assert!(log.audit("auth_failed").is_empty());
    // The capture works: a refusal on the same app is seen, without a
    // client field when the peer is unknown.
    let revoked = fx.key(&["orders:read"]).await;
    apikey_cache::KeyAdmin::revoke_key(&*fx.store, &revoked.record.id)
        .await
        .unwrap();
    let res = send(&app, bearer("/v1/orders", &revoked.plaintext)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let events = log.audit("auth_failed");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["fields"]["outcome"], "revoked_api_key");
    assert_eq!(
        events[0]["fields"]["fingerprint"],
        revoked.record.hash.fingerprint()
    );
    assert!(events[0]["fields"].get("client").is_none());
}
