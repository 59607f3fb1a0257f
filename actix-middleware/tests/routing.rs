//! Where the middleware sits in an actix-web app: scopes per `Scope` and
//! `Resource`, outer middleware seeing rejections, and the synchronous hit
//! path against the asynchronous miss path.
#![allow(clippy::unwrap_used)]

mod support;

use std::future::{ready, Future};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use actix_web::dev::{fn_service, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN};
use actix_web::http::StatusCode;
use actix_web::middleware::Logger;
use actix_web::{test, web, App, HttpMessage, HttpResponse};
use apikey_cache::VerifiedKey;
use apikey_cache_actix::ApiKeyAuth;
use support::expectations::{INSUFFICIENT_SCOPE, MISSING};
use support::{anonymous, bearer, send, Fixture};

#[actix_web::test]
async fn scopes_per_scope_and_per_resource() {
    let f = Fixture::new();
    let reader = f.key(&["orders:read"]).await;
    let writer = f.key(&["orders:*"]).await;
    let app = test::init_service(
        App::new()
            .service(
                web::scope("/v1/orders")
                    .wrap(ApiKeyAuth::new(f.cache.clone()).require(["orders:read"]))
                    .route("", web::get().to(HttpResponse::Ok))
                    // Inside the scope, a resource that needs more: both
                    // wraps must pass.
                    .service(
                        web::resource("/new")
                            .wrap(ApiKeyAuth::new(f.cache.clone()).require(["orders:write"]))
                            .route(web::post().to(HttpResponse::Created)),
                    ),
            )
            .service(
                web::resource("/v1/admin")
                    .wrap(ApiKeyAuth::new(f.cache.clone()).require(["admin"]))
                    .route(web::get().to(HttpResponse::Ok)),
            )
            .route("/public", web::get().to(HttpResponse::Ok)),
    )
    .await;

    let post = |key: &str| bearer("/v1/orders/new", key).method(actix_web::http::Method::POST);
    assert_eq!(
        send(&app, bearer("/v1/orders", &reader.plaintext))
            .await
            .status,
        200
    );
    assert_eq!(
        send(&app, bearer("/v1/orders", &writer.plaintext))
            .await
            .status,
        200
    );
    let refused = send(&app, post(&reader.plaintext)).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.json()["missing_scopes"],
        serde_json::json!(["orders:write"])
    );
    assert_eq!(send(&app, post(&writer.plaintext)).await.status, 201);
    assert_eq!(
        send(&app, bearer("/v1/admin", &writer.plaintext))
            .await
            .status,
        403
    );
    send(&app, anonymous("/v1/admin")).await.expect(&MISSING);
    // Outside every wrap: no key needed, and unknown paths stay 404.
    assert_eq!(send(&app, anonymous("/public")).await.status, 200);
    assert_eq!(send(&app, anonymous("/nowhere")).await.status, 404);
}

#[actix_web::test]
async fn app_wide_wrap_with_scopes_and_the_default_service() {
    let f = Fixture::new();
    let key = f.key(&["orders:read"]).await;
    let app = test::init_service(
        App::new()
            .wrap(ApiKeyAuth::new(f.cache.clone()).require([
                "orders:read",
                "orders:write",
                "admin",
            ]))
            .route("/v1/whoami", web::get().to(HttpResponse::Ok)),
    )
    .await;
    send(&app, bearer("/v1/whoami", &key.plaintext))
        .await
        .expect(&INSUFFICIENT_SCOPE);
    // `App::wrap` covers the default service: no route probing without a key.
    send(&app, anonymous("/nowhere")).await.expect(&MISSING);
}

#[actix_web::test]
async fn outer_middleware_sees_and_decorates_rejections() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    let seen: Arc<Mutex<Vec<u16>>> = Arc::default();
    let record = seen.clone();
    let app = test::init_service(
        App::new()
            // Registered last, so outermost: sees every response, like a
            // CORS middleware adding its header to a 401.
            .wrap(Logger::default())
            .wrap_fn(move |req, srv| {
                let record = record.clone();
                let fut = srv.call(req);
                async move {
                    let mut res: ServiceResponse<_> = fut.await?;
                    record.lock().unwrap().push(res.status().as_u16());
                    res.headers_mut()
                        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
                    Ok(res)
                }
            })
            .service(
                web::scope("/v1")
                    .wrap(ApiKeyAuth::new(f.cache.clone()))
                    .route("/whoami", web::get().to(HttpResponse::Ok)),
            ),
    )
    .await;

    let missing = send(&app, anonymous("/v1/whoami")).await;
    missing.expect(&MISSING);
    assert_eq!(missing.header("access-control-allow-origin"), Some("*"));
    let unknown = send(&app, bearer("/v1/whoami", "ak_nope")).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.header("access-control-allow-origin"), Some("*"));
    let ok = send(&app, bearer("/v1/whoami", &key.plaintext)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(*seen.lock().unwrap(), [401, 401, 200]);
}

/// Polls `fut` once, without a runtime's help.
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let fut = pin!(fut);
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

#[actix_web::test]
async fn l1_hit_answers_on_the_first_poll_and_a_miss_waits_for_the_load() {
    let f = Fixture::new();
    let key = f.key(&["orders:read"]).await;
    // The middleware directly around an inner service that answers at
    // once (the key's owner): what `call` returns is all there is to poll.
    let inner = fn_service(|req: ServiceRequest| {
        let owner = req
            .extensions()
            .get::<VerifiedKey>()
            .map(|k| k.owner.clone())
            .unwrap_or_default();
        ready(Ok::<_, actix_web::Error>(
            req.into_response(HttpResponse::Ok().body(owner)),
        ))
    });
    let auth = ApiKeyAuth::new(f.cache.clone()).require(["orders:read"]);
    let mw = auth.new_transform(inner).await.unwrap();
    let req = || bearer("/", &key.plaintext).to_srv_request();

    // Miss: the load is a task of its own, so the first poll is pending.
    let mut miss = Box::pin(mw.call(req()));
    assert!(poll_once(miss.as_mut()).is_pending());
    let res = miss.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Hit: answered synchronously, the handler's response on the first poll.
    match poll_once(mw.call(req())) {
        Poll::Ready(Ok(res)) => {
            assert_eq!(res.status(), StatusCode::OK);
            let body = actix_web::body::to_bytes(res.into_body()).await.unwrap();
            assert_eq!(body, "acme");
        }
        Poll::Ready(Err(e)) => panic!("hit path failed: {e}"),
        Poll::Pending => panic!("an L1 hit must not wait"),
    }
    // A rejection from L1 is ready at once too.
    let anon = anonymous("/").to_srv_request();
    match poll_once(mw.call(anon)) {
        Poll::Ready(Ok(res)) => assert_eq!(res.status(), StatusCode::UNAUTHORIZED),
        _ => panic!("an early rejection must not wait"),
    }
    let stats = f.cache.stats();
    assert_eq!((stats.store_queries, stats.l1_hits), (1, 1));
}
