//! `actix-demo`: the design's HTTP contract served by actix-web 4 with
//! `apikey-cache-actix`. Same flags, defaults, routes, bodies, logs,
//! metrics and shutdown as `axum-demo`: everything but the framework glue
//! is in [`apikey_cache_examples::demo`], which both binaries share.
//!
//! ```text
//! APIKEY_BOOTSTRAP_ADMIN_KEY=ak_change_me cargo run -p apikey-cache-examples --bin actix-demo
//! ```
//!
//! Flags (each with an environment fallback): `--bind` (`BIND`, default
//! `127.0.0.1:8080`), `--database-url` (`DATABASE_URL`, default an SQLite
//! file `apikey-cache-demo.db` in the working directory; `postgres://` URLs
//! use PostgreSQL), `--redis-url` (`REDIS_URL`), `--bootstrap-admin-key`
//! (`APIKEY_BOOTSTRAP_ADMIN_KEY`), plus every `APIKEY_CACHE_*` variable.
//!
//! One `ApiKeyCache` is built before `HttpServer::new` and shared by every
//! worker. Each protected route has its own `ApiKeyAuth` through
//! `Route::wrap`, so an unknown path answers 404 and an unsupported method
//! 405, never 401. Around the whole app: a request id (`x-request-id`, kept
//! if the client sent one, a UUID otherwise, echoed on the response), a
//! trace span per request, a 64 KiB body limit and a 10 s timeout.
//!
//! SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (at most
//! 20 s), flush the usage counters to the store, exit 0 (1 if the flush
//! failed).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse, HttpServer, Route};
use apikey_cache_actix::{ApiKeyAuth, Authenticated};
use apikey_cache_examples::demo::args::DemoArgs;
use apikey_cache_examples::demo::contract::{
    parse_json, ApiError, CreateKeyRequest, RotateRequest, SetModeRequest, WhoamiResponse,
};
use apikey_cache_examples::demo::orders::NewOrder;
use apikey_cache_examples::demo::setup::{self, Demo, SetupError, DRAIN_DEADLINE};
use clap::Parser;
use tracing::Instrument;

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An [`ApiError`] as an actix response.
#[derive(Debug)]
struct Error(ApiError);

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl actix_web::ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(self.0.body())
    }
}

type Answer = Result<HttpResponse, Error>;

/// The body, or a JSON 400/413 for one that could not be read.
fn body(body: Result<web::Bytes, actix_web::Error>) -> Result<web::Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.as_response_error().status_code();
        let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_request"
        };
        ApiError::new(status.as_u16(), error, e.to_string())
    })
}

fn path(path: Result<web::Path<String>, actix_web::Error>) -> Result<String, ApiError> {
    path.map(web::Path::into_inner)
        .map_err(|e| ApiError::invalid(e.to_string()))
}

async fn whoami(Authenticated(key): Authenticated) -> HttpResponse {
    HttpResponse::Ok().json(WhoamiResponse::from(key.record()))
}

async fn list_orders(demo: web::Data<Demo>, Authenticated(key): Authenticated) -> HttpResponse {
    HttpResponse::Ok().json(demo.orders.list(&key.owner))
}

async fn create_order(
    demo: web::Data<Demo>,
    Authenticated(key): Authenticated,
    raw: Result<web::Bytes, actix_web::Error>,
) -> Answer {
    let new: NewOrder = parse_json(&body(raw)?)?;
    let order = demo.orders.try_create(&key.owner, key.id.as_str(), new)?;
    Ok(HttpResponse::Created().json(order))
}

async fn create_key(demo: web::Data<Demo>, raw: Result<web::Bytes, actix_web::Error>) -> Answer {
    let req: CreateKeyRequest = parse_json(&body(raw)?)?;
    let created = demo.admin.create_key(req).await?;
    Ok(HttpResponse::Created().json(created))
}

async fn key_details(
    demo: web::Data<Demo>,
    key_id: Result<web::Path<String>, actix_web::Error>,
) -> Answer {
    let details = demo.admin.key_details(&path(key_id)?).await?;
    Ok(HttpResponse::Ok().json(details))
}

async fn revoke_key(
    demo: web::Data<Demo>,
    key_id: Result<web::Path<String>, actix_web::Error>,
) -> Answer {
    demo.admin.revoke_key(&path(key_id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn revoke_owner(
    demo: web::Data<Demo>,
    owner: Result<web::Path<String>, actix_web::Error>,
) -> Answer {
    let revoked = demo.admin.revoke_owner(&path(owner)?).await?;
    Ok(HttpResponse::Ok().json(revoked))
}

async fn list_owner_keys(
    demo: web::Data<Demo>,
    owner: Result<web::Path<String>, actix_web::Error>,
) -> Answer {
    let keys = demo.admin.list_owner_keys(&path(owner)?).await?;
    Ok(HttpResponse::Ok().json(keys))
}

async fn rotate_key(
    demo: web::Data<Demo>,
    key_id: Result<web::Path<String>, actix_web::Error>,
    raw: Result<web::Bytes, actix_web::Error>,
) -> Answer {
    let key_id = path(key_id)?;
    let req: RotateRequest = parse_json(&body(raw)?)?;
    let created = demo.admin.rotate_key(&key_id, req).await?;
    Ok(HttpResponse::Created().json(created))
}

async fn set_mode(demo: web::Data<Demo>, raw: Result<web::Bytes, actix_web::Error>) -> Answer {
    let req: SetModeRequest = parse_json(&body(raw)?)?;
    Ok(HttpResponse::Ok().json(demo.admin.set_mode(req).await?))
}

async fn metrics(demo: web::Data<Demo>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"))
        .body(demo.render_metrics())
}

async fn not_found() -> HttpResponse {
    use actix_web::ResponseError as _;
    Error(ApiError::not_found("no such route")).error_response()
}

/// An error from inside the app (or the timeout), answered with the
/// request id like every other response.
#[derive(Debug)]
struct Failed {
    error: actix_web::Error,
    request_id: HeaderValue,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl actix_web::ResponseError for Failed {
    fn status_code(&self) -> StatusCode {
        self.error.as_response_error().status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = self.error.error_response();
        res.headers_mut()
            .insert(REQUEST_ID, self.request_id.clone());
        res
    }
}

/// The request id, a span per request, the timeout, and the response log:
/// what `axum-demo` gets from tower-http's request-id, trace and timeout
/// layers.
async fn request_context(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let request_id = match req.headers().get(&REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let made = uuid::Uuid::new_v4().to_string();
            // A UUID is always a valid header value.
            HeaderValue::from_str(&made).unwrap_or(HeaderValue::from_static("-"))
        }
    };
    req.headers_mut().insert(REQUEST_ID, request_id.clone());
    // The path only: no query string, and no headers (the key travels in
    // one).
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = req.path(),
        request_id = request_id.to_str().unwrap_or(""),
    );
    let started = Instant::now();
    // No clone of the request is kept across `next.call`: routing needs
    // the only reference. So a timeout or an error is answered through
    // `Failed` rather than as a `ServiceResponse` built here.
    let answered = actix_web::rt::time::timeout(REQUEST_TIMEOUT, next.call(req))
        .instrument(span.clone())
        .await;
    let answered = match answered {
        Ok(Ok(mut res)) => {
            res.headers_mut().insert(REQUEST_ID, request_id);
            Ok(res.map_into_boxed_body())
        }
        Ok(Err(error)) => Err(Failed { error, request_id }),
        Err(_elapsed) => Err(Failed {
            error: actix_web::error::InternalError::from_response(
                "request timed out",
                HttpResponse::new(StatusCode::REQUEST_TIMEOUT),
            )
            .into(),
            request_id,
        }),
    };
    let status = match &answered {
        Ok(res) => res.status(),
        Err(failed) => actix_web::ResponseError::status_code(failed),
    };
    span.in_scope(|| {
        tracing::info!(
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            status = status.as_u16(),
            "finished processing request"
        );
    });
    answered.map_err(actix_web::Error::from)
}

/// `route` behind a key with `scopes`. Per route rather than per resource,
/// so a method the resource does not serve is a 405 without a key.
fn keyed(route: Route, demo: &Demo, scopes: &[&'static str]) -> Route {
    route.wrap(ApiKeyAuth::new(demo.cache().clone()).require(scopes.iter().copied()))
}

/// The routes, their key checks and the production stack.
fn configure(demo: &Demo) -> impl FnOnce(&mut web::ServiceConfig) + '_ {
    move |cfg| {
        cfg.service(web::resource("/v1/whoami").route(keyed(web::get().to(whoami), demo, &[])))
            .service(
                web::resource("/v1/orders")
                    .route(keyed(web::get().to(list_orders), demo, &["orders:read"]))
                    .route(keyed(web::post().to(create_order), demo, &["orders:write"])),
            )
            .service(web::resource("/admin/keys").route(keyed(
                web::post().to(create_key),
                demo,
                &["admin"],
            )))
            .service(
                web::resource("/admin/keys/{key_id}")
                    .route(keyed(web::get().to(key_details), demo, &["admin"]))
                    .route(keyed(web::delete().to(revoke_key), demo, &["admin"])),
            )
            .service(web::resource("/admin/keys/{key_id}/rotate").route(keyed(
                web::post().to(rotate_key),
                demo,
                &["admin"],
            )))
            .service(web::resource("/admin/owners/{owner}/revoke").route(keyed(
                web::post().to(revoke_owner),
                demo,
                &["admin"],
            )))
            .service(web::resource("/admin/owners/{owner}/keys").route(keyed(
                web::get().to(list_owner_keys),
                demo,
                &["admin"],
            )))
            .service(web::resource("/admin/cache/mode").route(keyed(
                web::put().to(set_mode),
                demo,
                &["admin"],
            )))
            .route("/metrics", web::get().to(metrics))
            .configure(apikey_cache_actix::health(demo.cache().clone()));
    }
}

async fn serve(demo: Demo, bind: std::net::SocketAddr) -> Result<(), SetupError> {
    let bind_err = |source| SetupError::Bind { addr: bind, source };
    let listener = std::net::TcpListener::bind(bind).map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let data = web::Data::new(demo.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(BODY_LIMIT))
            .configure(configure(&demo))
            .default_service(web::to(not_found))
            .wrap(from_fn(request_context))
    })
    // Signals are ours (`setup::shutdown_signal`), so both demos log and
    // drain alike.
    .disable_signals()
    .shutdown_timeout(DRAIN_DEADLINE.as_secs())
    .listen(listener)
    .map_err(bind_err)?
    .run();
    tracing::info!(%addr, "listening");

    let handle = server.handle();
    actix_web::rt::spawn(async move {
        setup::shutdown_signal().await;
        // Graceful: stop accepting at once, give workers DRAIN_DEADLINE.
        handle.stop(true).await;
    });
    match server.await {
        Ok(()) => tracing::info!("server stopped; in-flight requests finished"),
        Err(e) => tracing::error!(error = %e, "server error"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = DemoArgs::parse();
    setup::init_tracing();
    // The cache and its background tasks live on this system's runtime;
    // the workers (threads of their own) share it by cloning.
    actix_web::rt::System::new().block_on(setup::run(&args, serve))
}
