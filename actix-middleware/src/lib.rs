//! `apikey-cache-actix`: an [actix-web](https://docs.rs/actix-web) middleware
//! that authenticates API keys with [`apikey_cache`], an extractor for the
//! verified key, and a `/health/cache` service.
//!
//! Create **one** [`ApiKeyCache`](apikey_cache::ApiKeyCache) outside
//! `HttpServer::new` and clone it into the app factory: it is
//! `Clone + Send + Sync` (clones share everything), so every worker uses the
//! same in-process cache, Redis connection, usage counters and limiters.
//! A cache built inside the factory would be one per worker: N times the
//! memory and store queries, and rate limits that each worker counts apart.
//!
//! ```no_run
//! use std::sync::Arc;
//! use actix_web::{middleware::Logger, web, App, HttpServer};
//! use apikey_cache::{ApiKeyCache, CacheConfig, SqliteStore};
//! use apikey_cache_actix::{ApiKeyAuth, Authenticated};
//!
//! async fn whoami(Authenticated(key): Authenticated) -> String {
//!     format!("{} ({})", key.owner, key.id.as_str())
//! }
//!
//! #[actix_web::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Built inside the runtime (it starts its background tasks there),
//!     // once, before the workers.
//!     let store = Arc::new(SqliteStore::connect("sqlite://keys.db").await?);
//!     let cache = ApiKeyCache::new(CacheConfig::from_env()?, store)?;
//!
//!     HttpServer::new(move || {
//!         App::new()
//!             .wrap(Logger::default())
//!             // Probes carry no key: mounted outside the middleware.
//!             .configure(apikey_cache_actix::health(cache.clone()))
//!             .service(
//!                 web::scope("/v1")
//!                     .wrap(ApiKeyAuth::new(cache.clone()).require(["orders:read"]))
//!                     .route("/whoami", web::get().to(whoami)),
//!             )
//!     })
//!     .bind(("0.0.0.0", 8080))?
//!     .run()
//!     .await?;
//!     Ok(())
//! }
//! ```
//!
//! The same app in a test, runnable:
//!
//! ```
//! use std::sync::Arc;
//! use actix_web::{test, web, App, HttpResponse};
//! use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey};
//! use apikey_cache_actix::{ApiKeyAuth, Authenticated};
//!
//! # actix_web::rt::System::new().block_on(async {
//! let store = Arc::new(MemoryStore::new());
//! let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
//! let reader = store.create_key(cache.hasher(), NewKey::new("acme", ["orders:read"])).await?;
//!
//! let app = test::init_service(
//!     App::new()
//!         .configure(apikey_cache_actix::health(cache.clone()))
//!         .service(
//!             web::scope("/v1")
//!                 .wrap(ApiKeyAuth::new(cache.clone()).require(["orders:read"]))
//!                 .route("/whoami", web::get().to(|k: Authenticated| async move { k.owner.clone() }))
//!                 .service(
//!                     // A stricter resource inside the scope: both must pass.
//!                     web::resource("/orders/new")
//!                         .wrap(ApiKeyAuth::new(cache.clone()).require(["orders:write"]))
//!                         .route(web::post().to(HttpResponse::Created)),
//!                 ),
//!         ),
//! )
//! .await;
//!
//! let call = |req: test::TestRequest| {
//!     req.insert_header(("authorization", format!("Bearer {}", reader.plaintext))).to_request()
//! };
//! let res = test::call_service(&app, call(test::TestRequest::get().uri("/v1/whoami"))).await;
//! assert_eq!(res.status(), 200);
//! let res = test::call_service(&app, call(test::TestRequest::post().uri("/v1/orders/new"))).await;
//! assert_eq!(res.status(), 403); // lacks orders:write
//! let res = test::call_service(&app, test::TestRequest::get().uri("/v1/whoami").to_request()).await;
//! assert_eq!(res.status(), 401); // no key
//! let res = test::call_service(&app, test::TestRequest::get().uri("/health/cache").to_request()).await;
//! assert_eq!(res.status(), 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # What a request gets
//!
//! The key is read from `Authorization: Bearer <key>`, then `X-API-Key` (the
//! cache's [`KeyExtractor`](apikey_cache::KeyExtractor) decides; a
//! configured query-parameter source is honoured too). A valid key that
//! grants every required scope reaches the wrapped service with an
//! [`apikey_cache::VerifiedKey`] in the request extensions, also available
//! through the [`Authenticated`] extractor. Anything else is answered by the
//! middleware with the response of
//! [`Outcome::rejection`](apikey_cache::Outcome::rejection), the one table
//! both web adapters share: status (401, 403, 429, 503),
//! `content-type: application/json`, a body
//! `{"error": "...", "message": "..."}` and headers such as
//! `WWW-Authenticate`, `Retry-After` or `RateLimit-*`.
//!
//! A rejection is an `Ok` response (through `EitherBody`), not an `Err`:
//! middleware wrapped outside this one (`Logger`, CORS) sees it like any
//! other response.
//!
//! # Audit events
//!
//! Every refused request is reported through the core's
//! [`ApiKeyCache::audit_auth_failed`](apikey_cache::ApiKeyCache::audit_auth_failed):
//! an `auth_failed` event on the `apikey_cache::audit` target with the
//! outcome, the key's fingerprint, the method, the path (no query string)
//! and the peer address (`ServiceRequest::peer_addr`), rate-limited by the
//! core (see [`apikey_cache::audit`]). Valid requests write nothing.
//!
//! # The hot path
//!
//! A key held by the in-process cache is answered synchronously inside
//! `call` ([`ApiKeyCache::verify_now`](apikey_cache::ApiKeyCache::verify_now)):
//! the inner service is called at once and its future is returned in place
//! (no box, no `Rc` clone); the one allocation is the extensions entry for
//! the key. Only a cache miss, or a key with a rate limit or quota to
//! consult, takes the core's boxed load
//! ([`verify_owned`](apikey_cache::ApiKeyCache::verify_owned), shared with
//! every concurrent request for the same key) and keeps the request and an
//! `Rc` of the inner service in the [`ResponseFuture`] until it answers.
//!
//! # Layout
//!
//! * `middleware.rs`: [`ApiKeyAuth`] (the `Transform`),
//!   [`ApiKeyAuthMiddleware`] (the service), [`ResponseFuture`], and the
//!   rendering of a core [`Rejection`](apikey_cache::Rejection) as an
//!   `HttpResponse`.
//! * `extract.rs`: [`Authenticated`] and [`ApiKeyAuthMissing`].
//! * `health.rs`: [`health()`] and [`HEALTH_PATH`].
//! * `headers.rs`: [`ActixHeaders`], actix's `HeaderMap` as the core's
//!   [`HeaderSource`](apikey_cache::HeaderSource).
//!
//! # Choices where the design was silent
//!
//! * `require` replaces the scopes set before rather than adding to them;
//!   nested wraps (an `App` and a `Resource`) each check their own scopes,
//!   so a request must satisfy both.
//! * `App::wrap` runs the middleware on the default service too: unknown
//!   paths answer 401 to requests without a valid key (no route probing
//!   without a key). Wrap a `Scope` to keep 404s for everything else.
//! * The extractor's 500 body uses the tower adapter's `error`,
//!   `api_key_layer_missing`, so both adapters answer alike.
//! * The health service answers `HEAD` as well as `GET` (axum's `get` does).
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]

mod extract;
mod headers;
mod health;
mod middleware;

pub use extract::{ApiKeyAuthMissing, Authenticated};
pub use headers::ActixHeaders;
pub use health::{health, HEALTH_PATH};
pub use middleware::{ApiKeyAuth, ApiKeyAuthMiddleware, ResponseFuture};
