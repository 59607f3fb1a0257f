//! [`ApiKey`]: the service that verifies a request's key, then calls the
//! inner service or answers with the rejection.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
//! use apikey_cache_tower::ApiKeyLayer;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
//! let svc = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::new(cache))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//!     }));
//!
//! // No key: the inner service is not called.
//! let res = svc.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use apikey_cache::audit::RequestInfo;
use apikey_cache::{ApiKeyCache, HeaderLookup, HeaderSource, Outcome};
use http::{Request, Response};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::Shared;
use crate::response::Protocol;
use crate::ResponseBody;

/// Middleware that authenticates requests with an API key. Built by
/// [`ApiKeyLayer`](crate::ApiKeyLayer).
///
/// A rejection is a response, not an error: `Error` is the inner service's
/// error, so axum can mount the service unchanged. On success the request
/// reaches the inner service with an [`apikey_cache::VerifiedKey`] in its
/// extensions.
///
/// ```
/// use std::convert::Infallible;
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
/// use apikey_cache_tower::{ApiKey, ApiKeyLayer};
/// use http::{Request, Response};
/// use tower::{service_fn, Layer};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
/// let inner = service_fn(|_req: Request<String>| async {
///     Ok::<_, Infallible>(Response::new(String::from("ok")))
/// });
/// let svc: ApiKey<_> = ApiKeyLayer::new(cache).layer(inner);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ApiKey<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ApiKey<S> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// # use apikey_cache_tower::ApiKeyLayer;
    /// # use tower::Layer;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
    /// let svc = ApiKeyLayer::new(cache).layer(7_u32);
    /// assert_eq!(*svc.get_ref(), 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// # use apikey_cache_tower::ApiKeyLayer;
    /// # use tower::Layer;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
    /// let mut svc = ApiKeyLayer::new(cache).layer(7_u32);
    /// *svc.get_mut() += 1;
    /// assert_eq!(*svc.get_ref(), 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// # use apikey_cache_tower::ApiKeyLayer;
    /// # use tower::Layer;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
    /// let svc = ApiKeyLayer::new(cache).layer(7_u32);
    /// assert_eq!(svc.into_inner(), 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKey<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        match shared
            .cache
            .verify_now(&RequestSource(&req), &shared.required)
        {
            // The hit path: no future of our own, no clone of the inner
            // service (it is called now, while the readiness it reported
            // still holds), one extensions insert.
            Ok(Outcome::Valid(key)) => {
                req.extensions_mut().insert(key);
                ResponseFuture::inner(self.inner.call(req))
            }
            Ok(rejected) => {
                audit_rejection(&shared.cache, &rejected, &req);
                ResponseFuture::rejected(rejected, Protocol::of(&req))
            }
            Err(hash) => {
                // The call happens after the load, so take the service that
                // was driven to readiness and leave a fresh clone for the
                // next `poll_ready` (tower's readiness caveat).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let verify = shared.cache.verify_owned(hash, shared.required.clone());
                ResponseFuture::verifying(verify, inner, req, shared.cache.clone())
            }
        }
    }
}

/// The `auth_failed` audit event of a refused request (rejection paths
/// only; the core's rate limit decides whether it is written, and the
/// route and client are read only if it is).
pub(crate) fn audit_rejection<B>(cache: &ApiKeyCache, outcome: &Outcome, req: &Request<B>) {
    cache.audit_auth_failed(outcome, &RequestSource(req), || {
        RequestInfo::new(req.method().as_str(), req.uri().path()).client(client_addr(req))
    });
}

/// The peer address, where the server put it in the request extensions:
/// axum's `ConnectInfo<SocketAddr>` (served with
/// `into_make_service_with_connect_info::<SocketAddr>()`; feature `axum`),
/// or a bare `SocketAddr` (for hyper or tonic servers that insert one).
pub(crate) fn client_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let extensions = req.extensions();
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    extensions.get::<SocketAddr>().copied()
}

/// A request as a key source: headers, and the query string for
/// `KeySource::Query` (off by default in the core).
pub(crate) struct RequestSource<'a, B>(pub(crate) &'a Request<B>);

impl<B> HeaderSource for RequestSource<'_, B> {
    #[inline]
    fn header(&self, name: &str) -> HeaderLookup<'_> {
        self.0.headers().header(name)
    }

    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }
}
