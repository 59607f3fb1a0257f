//! `axum-demo`: the design's HTTP contract served by axum 0.8 with
//! `apikey-cache-tower`.
//!
//! ```text
//! APIKEY_BOOTSTRAP_ADMIN_KEY=ak_change_me cargo run -p apikey-cache-examples --bin axum-demo
//! ```
//!
//! Flags (each with an environment fallback): `--bind` (`BIND`, default
//! `127.0.0.1:8080`), `--database-url` (`DATABASE_URL`, default an SQLite
//! file `apikey-cache-demo.db` in the working directory; `postgres://` URLs
//! use PostgreSQL), `--redis-url` (`REDIS_URL`), `--bootstrap-admin-key`
//! (`APIKEY_BOOTSTRAP_ADMIN_KEY`), plus every `APIKEY_CACHE_*` variable.
//!
//! Each protected group of routes has its own `ApiKeyLayer` through
//! `route_layer`, so an unknown path answers 404, not 401. Around the whole
//! app, outermost first: a request id (`x-request-id`, kept if the client
//! sent one, a UUID otherwise, echoed on the response), a trace span per
//! request, a 64 KiB body limit and a 10 s timeout.
//!
//! SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (at most
//! 20 s), flush the usage counters to the store, exit 0 (1 if the flush
//! failed).

use std::process::ExitCode;
use std::time::Duration;

use apikey_cache_examples::demo::args::DemoArgs;
use apikey_cache_examples::demo::contract::{
    parse_json, ApiError, CreateKeyRequest, RotateRequest, SetModeRequest, WhoamiResponse,
};
use apikey_cache_examples::demo::orders::NewOrder;
use apikey_cache_examples::demo::setup::{self, Demo, SetupError, DRAIN_DEADLINE};
use apikey_cache_tower::{health_router, ApiKeyLayer, Authenticated};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderName, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use clap::Parser;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An [`ApiError`] as an axum response.
struct Error(ApiError);

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0.body())).into_response()
    }
}

type Answer<T> = Result<T, Error>;

/// The body, or a JSON 400/413 for one that could not be read.
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_request"
        };
        ApiError::new(status.as_u16(), error, rejection.body_text())
    })
}

fn path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|rejection| ApiError::invalid(rejection.body_text()))
}

async fn whoami(Authenticated(key): Authenticated) -> Json<WhoamiResponse> {
    Json(WhoamiResponse::from(key.record()))
}

async fn list_orders(
    State(demo): State<Demo>,
    Authenticated(key): Authenticated,
) -> impl IntoResponse {
    Json(demo.orders.list(&key.owner))
}

async fn create_order(
    State(demo): State<Demo>,
    Authenticated(key): Authenticated,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<impl IntoResponse> {
    let new: NewOrder = parse_json(&body(raw)?)?;
    let order = demo.orders.try_create(&key.owner, key.id.as_str(), new)?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn create_key(
    State(demo): State<Demo>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<impl IntoResponse> {
    let req: CreateKeyRequest = parse_json(&body(raw)?)?;
    let created = demo.admin.create_key(req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn key_details(
    State(demo): State<Demo>,
    key_id: Result<Path<String>, PathRejection>,
) -> Answer<impl IntoResponse> {
    Ok(Json(demo.admin.key_details(&path(key_id)?).await?))
}

async fn revoke_key(
    State(demo): State<Demo>,
    key_id: Result<Path<String>, PathRejection>,
) -> Answer<StatusCode> {
    demo.admin.revoke_key(&path(key_id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_owner(
    State(demo): State<Demo>,
    owner: Result<Path<String>, PathRejection>,
) -> Answer<impl IntoResponse> {
    Ok(Json(demo.admin.revoke_owner(&path(owner)?).await?))
}

async fn list_owner_keys(
    State(demo): State<Demo>,
    owner: Result<Path<String>, PathRejection>,
) -> Answer<impl IntoResponse> {
    Ok(Json(demo.admin.list_owner_keys(&path(owner)?).await?))
}

async fn rotate_key(
    State(demo): State<Demo>,
    key_id: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<impl IntoResponse> {
    let key_id = path(key_id)?;
    let req: RotateRequest = parse_json(&body(raw)?)?;
    let created = demo.admin.rotate_key(&key_id, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn set_mode(
    State(demo): State<Demo>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<impl IntoResponse> {
    let req: SetModeRequest = parse_json(&body(raw)?)?;
    Ok(Json(demo.admin.set_mode(req).await?))
}

async fn metrics(State(demo): State<Demo>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        demo.render_metrics(),
    )
}

async fn not_found() -> Error {
    Error(ApiError::not_found("no such route"))
}

/// The whole app: routes, their key layers, and the production stack.
fn app(demo: Demo) -> Router {
    let cache = demo.cache().clone();
    let any_key = Router::new()
        .route("/v1/whoami", get(whoami))
        .route_layer(ApiKeyLayer::new(cache.clone()));
    // One path, two scope sets: a layer per method. `MethodRouter::route_layer`
    // leaves the 405 fallback alone, so `DELETE /v1/orders` is a 405 rather
    // than a scope error from whichever layer wrapped the fallback.
    let orders = Router::new().route(
        "/v1/orders",
        get(list_orders)
            .route_layer(ApiKeyLayer::new(cache.clone()).require(["orders:read"]))
            .merge(
                post(create_order)
                    .route_layer(ApiKeyLayer::new(cache.clone()).require(["orders:write"])),
            ),
    );
    let admin = Router::new()
        .route("/admin/keys", post(create_key))
        .route("/admin/keys/{key_id}", get(key_details).delete(revoke_key))
        .route("/admin/keys/{key_id}/rotate", post(rotate_key))
        .route("/admin/owners/{owner}/revoke", post(revoke_owner))
        .route("/admin/owners/{owner}/keys", get(list_owner_keys))
        .route("/admin/cache/mode", put(set_mode))
        .route_layer(ApiKeyLayer::new(cache.clone()).require(["admin"]));

    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                // The path only: no query string, and no headers (the key
                // travels in one).
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = req.uri().path(),
                        request_id = id,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        // Innermost, since its timeout response needs a `Default` body.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));

    Router::new()
        .merge(any_key)
        .merge(orders)
        .merge(admin)
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(demo)
        .merge(health_router(cache))
        .layer(stack)
}

async fn serve(demo: Demo, bind: std::net::SocketAddr) -> Result<(), SetupError> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| SetupError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SetupError::Bind { addr: bind, source })?;
    tracing::info!(%addr, "listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        setup::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone: stop as well.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // With the peer address in every request (`ConnectInfo`): the client of
    // the audit events.
    let server = axum::serve(
        listener,
        app(demo).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let drain_deadline = async {
        stopped(stop_rx).await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                tracing::error!(error = %e, "server error");
            }
            tracing::info!("server stopped; in-flight requests finished");
        }
        () = drain_deadline => {
            tracing::warn!(
                deadline_s = DRAIN_DEADLINE.as_secs(),
                "in-flight requests did not finish in time; closing them"
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = DemoArgs::parse();
    setup::init_tracing();
    setup::run(&args, serve).await
}
