//! `apikey-cache-tower`: a [`tower`](https://docs.rs/tower) layer that
//! authenticates API keys with [`apikey_cache`], for axum, hyper, tonic or
//! any `http` service.
//!
//! ```
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey};
//! use apikey_cache_tower::{ApiKeyLayer, Authenticated};
//! use axum::{body::Body, routing::{get, post}, Json, Router};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//!
//! async fn whoami(Authenticated(key): Authenticated) -> Json<serde_json::Value> {
//!     Json(serde_json::json!({ "key_id": key.id.as_str(), "owner": key.owner }))
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! // Your database (SQLite and PostgreSQL stores come with `apikey_cache`).
//! let store = Arc::new(MemoryStore::new());
//! let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
//! let reader = store.create_key(cache.hasher(), NewKey::new("acme", ["orders:read"])).await?;
//!
//! // One layer per set of required scopes; `route_layer` so unknown paths
//! // still answer 404 rather than 401.
//! let read = Router::new()
//!     .route("/v1/whoami", get(whoami))
//!     .route("/v1/orders", get(|| async { "[]" }))
//!     .route_layer(ApiKeyLayer::new(cache.clone()).require(["orders:read"]));
//! let write = Router::new()
//!     .route("/v1/orders/new", post(|| async { StatusCode::CREATED }))
//!     .route_layer(ApiKeyLayer::new(cache).require(["orders:write"]));
//! let app = read.merge(write);
//!
//! let call = |method: &str, path: &str| {
//!     Request::builder()
//!         .method(method)
//!         .uri(path)
//!         .header("authorization", format!("Bearer {}", reader.plaintext))
//!         .body(Body::empty())
//! };
//! let res = app.clone().oneshot(call("GET", "/v1/whoami")?).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! let res = app.clone().oneshot(call("POST", "/v1/orders/new")?).await?;
//! assert_eq!(res.status(), StatusCode::FORBIDDEN); // lacks orders:write
//! let res = app.oneshot(Request::get("/v1/orders").body(Body::empty())?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED); // no key
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # What a request gets
//!
//! The key is read from `Authorization: Bearer <key>`, then `X-API-Key` (the
//! cache's [`KeyExtractor`](apikey_cache::KeyExtractor) decides; a
//! configured query-parameter source is honoured too). A valid key that
//! grants every required scope reaches the inner service with an
//! [`apikey_cache::VerifiedKey`] in the request extensions, also available
//! through the [`Authenticated`] extractor. Anything else is answered by the
//! layer with the response of [`Outcome::rejection`](apikey_cache::Outcome::rejection),
//! the one table both web adapters share: status (401, 403, 429, 503),
//! `content-type: application/json`, a body
//! `{"error": "...", "message": "..."}` and headers such as
//! `WWW-Authenticate` or `Retry-After`.
//!
//! A gRPC request (`content-type: application/grpc*`, so tonic services
//! work behind the layer) is refused with
//! [`Outcome::grpc_rejection`](apikey_cache::Outcome::grpc_rejection)
//! instead: a trailers-only response, HTTP 200 with `grpc-status` (16, 7, 8
//! or 14) and `grpc-message` and no body, which tonic clients read as a
//! `Status`. gRPC-Web requests (`application/grpc-web*`, from browsers
//! through tonic-web or a proxy) get the same trailers-only status, with
//! their own content type echoed back.
//!
//! A rejection is a response, not an error: the service's `Error` is the
//! inner service's, so axum's `Router::layer` and `route_layer` take it as is.
//!
//! # Audit events
//!
//! Every refused request is reported through the core's
//! [`ApiKeyCache::audit_auth_failed`](apikey_cache::ApiKeyCache::audit_auth_failed):
//! an `auth_failed` event on the `apikey_cache::audit` target with the
//! outcome, the key's fingerprint, the method, the path (no query string)
//! and the client address, rate-limited by the core (see
//! [`apikey_cache::audit`]). The client address is axum's
//! `ConnectInfo<SocketAddr>` when the app is served with
//! `into_make_service_with_connect_info::<SocketAddr>()`, else a bare
//! `SocketAddr` in the request extensions (insert one from a hyper or
//! tonic server), else left out. Valid requests write nothing.
//!
//! # The hot path
//!
//! A key held by the in-process cache is answered synchronously inside
//! `call`: no future of the layer's own, no boxing, no clone of the inner
//! service or of the required scopes; the one allocation is the extensions
//! entry for the [`VerifiedKey`](apikey_cache::VerifiedKey). Cloning the
//! service (axum does, per request) costs one `Arc` increment. Only a cache
//! miss, or a key with a rate limit or quota to consult, boxes a load
//! (shared with every concurrent request for the same key), keeps the
//! request in the response future, and calls the inner service when the
//! load answers.
//!
//! # Layout
//!
//! * `layer.rs`: [`ApiKeyLayer`], the configuration.
//! * `service.rs`: [`ApiKey`], the service; the synchronous hit path.
//! * `future.rs`: [`ResponseFuture`]; the miss path's state machine.
//! * `body.rs`: [`ResponseBody`], the inner body or the rejection's JSON.
//! * `extract.rs` (feature `axum`, on by default): [`Authenticated`] and
//!   [`ApiKeyLayerMissing`].
//! * `response.rs`: a core [`Rejection`](apikey_cache::Rejection) (or
//!   [`GrpcRejection`](apikey_cache::GrpcRejection)) as an `http::Response`.
//!
//! # Choices where the design was silent
//!
//! * `require` replaces the scopes set before rather than adding to them.
//! * With `Router::layer` (rather than `route_layer`) axum runs the layer on
//!   its fallback too, so unknown paths answer 401 to requests without a
//!   valid key: no route probing without a key.
//! * The response body's data type is [`bytes::Bytes`], which every axum,
//!   hyper and tonic body uses.
//! * One path, different scopes per method (`GET /orders` reads, `POST
//!   /orders` writes): put the layers on the method routers,
//!   `get(list).route_layer(read).merge(post(create).route_layer(write))`.
//!   Two `Router::route_layer`s merged on the same path would also wrap each
//!   other's 405 fallback, so an unknown method could answer 403.
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]

mod body;
#[cfg(feature = "axum")]
mod extract;
mod future;
#[cfg(feature = "axum")]
mod health;
mod layer;
mod response;
mod service;

pub use body::ResponseBody;
#[cfg(feature = "axum")]
pub use extract::{ApiKeyLayerMissing, Authenticated};
pub use future::ResponseFuture;
#[cfg(feature = "axum")]
pub use health::{health_router, HEALTH_PATH};
pub use layer::ApiKeyLayer;
pub use service::ApiKey;

// The README's code blocks, compiled (and run unless `no_run`) as doc
// tests so the snippet users copy keeps building.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
