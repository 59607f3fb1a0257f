//! [`ApiKeyAuth`], the `Transform`; [`ApiKeyAuthMiddleware`], the service it
//! builds around each wrapped `App`, `Scope` or `Resource`; and
//! [`ResponseFuture`], that service's future.
//!
//! ```
//! use std::sync::Arc;
//! use actix_web::{test, web, App, HttpResponse};
//! use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey};
//! use apikey_cache_actix::ApiKeyAuth;
//!
//! # actix_web::rt::System::new().block_on(async {
//! let store = Arc::new(MemoryStore::new());
//! let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
//! let issued = store.create_key(cache.hasher(), NewKey::new("acme", ["orders:read"])).await?;
//!
//! let app = test::init_service(
//!     App::new().service(
//!         web::scope("/v1")
//!             .wrap(ApiKeyAuth::new(cache.clone()).require(["orders:read"]))
//!             .route("/orders", web::get().to(HttpResponse::Ok)),
//!     ),
//! )
//! .await;
//! let req = test::TestRequest::get()
//!     .uri("/v1/orders")
//!     .insert_header(("x-api-key", issued.plaintext.as_str()))
//!     .to_request();
//! assert_eq!(test::call_service(&app, req).await.status(), 200);
//! let req = test::TestRequest::get().uri("/v1/orders").to_request();
//! assert_eq!(test::call_service(&app, req).await.status(), 401);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{Error, HttpMessage, HttpResponse};
use apikey_cache::audit::RequestInfo;
use apikey_cache::{ApiKeyCache, Outcome, Rejection, RequiredScopes};
use pin_project_lite::pin_project;

use crate::ActixHeaders;

/// The middleware: verifies each request's API key with an
/// [`ApiKeyCache`], then calls the wrapped service with the
/// [`VerifiedKey`](apikey_cache::VerifiedKey) in the request extensions, or
/// answers the rejection itself.
///
/// Wrap an `App`, a `Scope` or a `Resource`; each wrap has its own required
/// scopes. Build it inside the `HttpServer::new` closure from a cache
/// created outside it: every worker then shares one cache.
///
/// Rejections are `Ok` responses (the core's
/// [`Outcome::rejection`](apikey_cache::Outcome::rejection): status, JSON
/// body, `WWW-Authenticate`, `Retry-After`, `RateLimit-*`), never `Err`, so
/// middleware wrapped around this one (logging, CORS) sees and can decorate
/// them like any other response.
///
/// ```
/// use std::sync::Arc;
/// use actix_web::{web, App, HttpResponse};
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
/// use apikey_cache_actix::ApiKeyAuth;
///
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
/// let app = App::new()
///     .service(
///         web::resource("/v1/orders")
///             .wrap(ApiKeyAuth::new(cache.clone()).require(["orders:read"]))
///             .route(web::get().to(HttpResponse::Ok)),
///     )
///     .service(
///         web::resource("/v1/orders/new")
///             .wrap(ApiKeyAuth::new(cache).require(["orders:write"]))
///             .route(web::post().to(HttpResponse::Created)),
///     );
/// ```
#[derive(Debug, Clone)]
pub struct ApiKeyAuth {
    cache: ApiKeyCache,
    required: RequiredScopes,
}

impl ApiKeyAuth {
    /// Requires a valid key and no particular scope.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// use apikey_cache_actix::ApiKeyAuth;
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// let app = actix_web::App::new().wrap(ApiKeyAuth::new(cache));
    /// ```
    pub fn new(cache: ApiKeyCache) -> Self {
        Self {
            cache,
            required: RequiredScopes::none(),
        }
    }

    /// Requires every scope in `scopes` (a key scope `orders:*` grants
    /// `orders:read`; `*` grants all). Replaces the scopes set before.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// use apikey_cache_actix::ApiKeyAuth;
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// let auth = ApiKeyAuth::new(cache).require(["orders:read", "orders:write"]);
    /// assert_eq!(auth.required().iter().collect::<Vec<_>>(), ["orders:read", "orders:write"]);
    /// ```
    pub fn require<I, T>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        Self {
            cache: self.cache,
            // Built once here, not per worker: clones share the id that lets
            // a cached record remember it satisfies this set.
            required: RequiredScopes::new(scopes),
        }
    }

    /// The scopes every request must be granted.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// use apikey_cache_actix::ApiKeyAuth;
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// assert!(ApiKeyAuth::new(cache).required().is_empty());
    /// ```
    pub fn required(&self) -> &RequiredScopes {
        &self.required
    }
}

impl<S, B> Transform<S, ServiceRequest> for ApiKeyAuth
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = ApiKeyAuthMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ApiKeyAuthMiddleware {
            service: Rc::new(service),
            cache: self.cache.clone(),
            required: self.required.clone(),
        }))
    }
}

/// The service [`ApiKeyAuth`] wraps around the inner service; built by
/// actix-web (one per worker and wrap), not by hand.
///
/// ```
/// use std::sync::Arc;
/// use actix_web::{dev::{Service, Transform}, test, HttpResponse};
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
/// use apikey_cache_actix::{ApiKeyAuth, ApiKeyAuthMiddleware};
///
/// # actix_web::rt::System::new().block_on(async {
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
/// let inner = test::simple_service(actix_web::http::StatusCode::OK);
/// let svc: ApiKeyAuthMiddleware<_> = ApiKeyAuth::new(cache).new_transform(inner).await.unwrap();
/// let res = svc.call(test::TestRequest::default().to_srv_request()).await.unwrap();
/// assert_eq!(res.status(), 401);
/// # });
/// ```
pub struct ApiKeyAuthMiddleware<S> {
    // `Rc` so the miss path can call the service after the load without
    // cloning the service itself; the hit path calls it in place.
    service: Rc<S>,
    cache: ApiKeyCache,
    required: RequiredScopes,
}

impl<S> std::fmt::Debug for ApiKeyAuthMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyAuthMiddleware")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<ServiceRequest> for ApiKeyAuthMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let source = ActixHeaders::from_request(req.request());
        match self.cache.verify_now(&source, &self.required) {
            // The hit path: no box, no `Rc` clone, one extensions insert.
            Ok(Outcome::Valid(key)) => {
                req.extensions_mut().insert(key);
                ResponseFuture::inner(self.service.call(req))
            }
            Ok(rejected) => {
                audit_rejection(&self.cache, &rejected, &req);
                ResponseFuture::rejected(req, &rejected)
            }
            // A miss (or a key whose rate limit or quota needs a look): the
            // core's boxed load, then the inner service.
            Err(hash) => ResponseFuture::verifying(
                self.cache.verify_owned(hash, self.required.clone()),
                Rc::clone(&self.service),
                req,
                self.cache.clone(),
            ),
        }
    }
}

type Verify = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

pin_project! {
    /// The future of [`ApiKeyAuthMiddleware`]: the inner service's future
    /// (an L1 hit, or a load that found the key valid), a pending load
    /// (the request and an `Rc` of the inner service wait in it), or a
    /// rejection ready at once.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use actix_web::{dev::{Service, Transform}, test};
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// use apikey_cache_actix::{ApiKeyAuth, ResponseFuture};
    ///
    /// # actix_web::rt::System::new().block_on(async {
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// let svc = ApiKeyAuth::new(cache)
    ///     .new_transform(test::simple_service(actix_web::http::StatusCode::OK))
    ///     .await
    ///     .unwrap();
    /// let req = test::TestRequest::default().insert_header(("x-api-key", "ak_unknown")).to_srv_request();
    /// let future: ResponseFuture<_, _> = svc.call(req);
    /// assert_eq!(future.await.unwrap().status(), 401);
    /// # });
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, B>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    {
        Inner {
            #[pin]
            future: S::Future,
        },
        Verifying {
            verify: Verify,
            // The cache is for the audit event of a refusal.
            pending: Option<(Rc<S>, ServiceRequest, ApiKeyCache)>,
        },
        Rejected {
            response: Option<ServiceResponse<EitherBody<B>>>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    #[inline]
    fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    fn rejected(req: ServiceRequest, outcome: &Outcome) -> Self {
        let response = req
            .into_response(rejection_response(outcome))
            .map_into_right_body();
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    fn verifying(verify: Verify, service: Rc<S>, req: ServiceRequest, cache: ApiKeyCache) -> Self {
        Self {
            state: State::Verifying {
                verify,
                pending: Some((service, req, cache)),
            },
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future } => {
                    return future.poll(cx).map_ok(ServiceResponse::map_into_left_body);
                }
                StateProj::Verifying { verify, pending } => {
                    let outcome = std::task::ready!(verify.as_mut().poll(cx));
                    let Some((service, req, cache)) = pending.take() else {
                        // Only gone once this arm has moved on, which the
                        // state change rules out: nothing to answer with.
                        return Poll::Ready(Err(actix_web::error::ErrorInternalServerError(
                            "api key middleware polled after completion",
                        )));
                    };
                    let next = match outcome {
                        Outcome::Valid(key) => {
                            req.extensions_mut().insert(key);
                            State::Inner {
                                future: service.call(req),
                            }
                        }
                        rejected => {
                            audit_rejection(&cache, &rejected, &req);
                            let response = req
                                .into_response(rejection_response(&rejected))
                                .map_into_right_body();
                            State::Rejected {
                                response: Some(response),
                            }
                        }
                    };
                    state.set(next);
                }
                StateProj::Rejected { response } => {
                    return Poll::Ready(response.take().ok_or_else(|| {
                        // Polled again after completion: a caller bug, and
                        // the request is gone; an error rather than a panic.
                        actix_web::error::ErrorInternalServerError(
                            "api key middleware polled after completion",
                        )
                    }));
                }
            }
        }
    }
}

/// The `auth_failed` audit event of a refused request (rejection paths
/// only; the core's rate limit decides whether it is written, and the
/// route and peer address are read only if it is).
fn audit_rejection(cache: &ApiKeyCache, outcome: &Outcome, req: &ServiceRequest) {
    let source = ActixHeaders::from_request(req.request());
    cache.audit_auth_failed(outcome, &source, || {
        RequestInfo::new(req.method().as_str(), req.path()).client(req.peer_addr())
    });
}

/// The response for a refused request: the core's one table, rendered.
pub(crate) fn rejection_response(outcome: &Outcome) -> HttpResponse {
    // Only `Valid` has no rejection and callers never pass it; if a future
    // core variant did, refusing is the safe reading.
    match outcome
        .rejection()
        .or_else(|| Outcome::Unavailable.rejection())
    {
        Some(rejection) => render(rejection),
        None => HttpResponse::InternalServerError().finish(),
    }
}

fn render(rejection: Rejection) -> HttpResponse {
    // An out-of-range status from the core would be a bug there; still a
    // refusal here.
    let status =
        StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::with_body(status, rejection.body);
    let headers = res.headers_mut();
    for (name, value) in rejection.headers {
        // Not `HeaderName::from_static`, which panics on a bad name: no
        // request may ever reach a panic.
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            (Ok(name), Ok(value)) => headers.append(name, value),
            _ => tracing::warn!(
                header = name,
                "dropping an unrepresentable rejection header"
            ),
        }
    }
    res.map_into_boxed_body()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use apikey_cache::Malformed;

    #[test]
    fn every_rejection_renders_the_core_table() {
        let outcomes = [
            Outcome::Missing,
            Outcome::Malformed(Malformed::TooLong),
            Outcome::Unknown,
            Outcome::Revoked,
            Outcome::Disabled,
            Outcome::Expired,
            Outcome::InsufficientScope {
                missing: vec!["a:b".into()],
            },
            Outcome::Unavailable,
        ];
        for outcome in outcomes {
            let expected = outcome.rejection().unwrap();
            let res = rejection_response(&outcome);
            assert_eq!(res.status().as_u16(), expected.status, "{outcome:?}");
            for (name, value) in &expected.headers {
                assert_eq!(
                    res.headers().get(*name).unwrap(),
                    value.as_str(),
                    "{outcome:?}"
                );
            }
            assert_eq!(res.headers().len(), expected.headers.len(), "{outcome:?}");
        }
    }
}
