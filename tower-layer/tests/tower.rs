//! The layer over plain tower services, without axum.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use apikey_cache::VerifiedKey;
use apikey_cache_tower::ApiKeyLayer;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::Fixture;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

async fn owner(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.extensions().get::<VerifiedKey>() {
        Some(key) => key.owner.clone(),
        None => "no key".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

fn with_key(key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap()
}

async fn body_of<B>(res: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn service_fn_inner_service() {
    let f = Fixture::new();
    let key = f.key(&["a"]).await;
    let svc = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(f.cache.clone()).require(["a"]))
        .service(service_fn(owner));

    // Miss, then hit.
    for _ in 0..2 {
        let res = svc.clone().oneshot(with_key(&key.plaintext)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_of(res).await, "acme");
    }
    let res = svc
        .clone()
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&body_of(res).await).unwrap();
    assert_eq!(body["error"], "missing_api_key");
}

/// The miss path calls the inner service later, from the response future:
/// it must be the instance that was driven to readiness. `ConcurrencyLimit`
/// panics when called without a permit from `poll_ready`.
#[tokio::test]
async fn miss_path_honours_inner_readiness() {
    let f = Fixture::new();
    let keys = [f.key(&[]).await, f.key(&[]).await, f.key(&[]).await];
    let mut svc = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(f.cache.clone()))
        .concurrency_limit(1)
        .service(service_fn(owner));

    let mut pending = Vec::new();
    for key in &keys {
        // With a limit of 1, the second `ready` waits for the first
        // response; run the first to completion before asking.
        let fut = svc.ready().await.unwrap().call(with_key(&key.plaintext));
        pending.push(
            tokio::time::timeout(Duration::from_secs(5), fut)
                .await
                .unwrap(),
        );
    }
    for res in pending {
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_of(res).await, "acme");
    }
}

#[tokio::test]
async fn rejected_request_never_reaches_the_inner_service() {
    let f = Fixture::new();
    let svc = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(f.cache.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            panic!("the inner service ran for a rejected request");
            #[allow(unreachable_code)]
            Ok::<Response<Full<Bytes>>, Infallible>(Response::new(Full::default()))
        }));
    for req in [Request::new(Full::default()), with_key("ak_unknown_key")] {
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    let svc = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(f.cache.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>("inner failed")
        }));
    let err = svc.oneshot(with_key(&key.plaintext)).await.unwrap_err();
    assert_eq!(err, "inner failed");
}
