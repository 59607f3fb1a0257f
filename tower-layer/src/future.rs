//! [`ResponseFuture`]: the response future of [`ApiKey`](crate::ApiKey).
//!
//! Three states: the inner service's future (the key was answered from the
//! in-process cache, or loaded and valid), a pending load (the request and
//! the inner service wait in the future), or a rejection.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
//! use apikey_cache_tower::{ApiKeyLayer, ResponseFuture};
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
//! let mut svc = ApiKeyLayer::new(cache).layer(service_fn(|_req: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::new()))
//! }));
//! let req = Request::builder().header("x-api-key", "ak_unknown").body(String::new())?;
//! let future = svc.ready().await?.call(req);
//! let res = future.await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use apikey_cache::{ApiKeyCache, Outcome};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::response::{rejection_response, Protocol};
use crate::service::audit_rejection;
use crate::ResponseBody;

type Verify = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

pin_project! {
    /// Response future of [`ApiKey`](crate::ApiKey): resolves to the inner
    /// service's response, or to the rejection.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use std::sync::Arc;
    /// # use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// # use apikey_cache_tower::{ApiKeyLayer, ResponseFuture};
    /// # use http::{Request, Response};
    /// # use tower::{service_fn, Layer, Service, ServiceExt};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
    /// # let mut svc = ApiKeyLayer::new(cache).layer(service_fn(|_req: Request<String>| async {
    /// #     Ok::<_, Infallible>(Response::new(String::new()))
    /// # }));
    /// let future: ResponseFuture<_, String> = svc.ready().await?.call(Request::new(String::new()));
    /// assert_eq!(future.await?.status(), 401);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Inner {
            #[pin]
            future: S::Future,
        },
        // Boxed so the request and service do not make every future (the
        // hit path's too) as large as themselves; the miss path allocates
        // for the load anyway.
        Verifying {
            verify: Verify,
            pending: Option<Box<Pending<S, ReqBody>>>,
        },
        Rejected {
            outcome: Option<Outcome>,
            // Whether to answer with a gRPC status (read off the request
            // only on this path, so the hit path never looks).
            protocol: Protocol,
        },
    }
}

struct Pending<S, ReqBody> {
    service: S,
    request: Request<ReqBody>,
    // For the audit event of a refusal.
    cache: ApiKeyCache,
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    #[inline]
    pub(crate) fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn rejected(outcome: Outcome, protocol: Protocol) -> Self {
        Self {
            state: State::Rejected {
                outcome: Some(outcome),
                protocol,
            },
        }
    }

    pub(crate) fn verifying(
        verify: Verify,
        service: S,
        request: Request<ReqBody>,
        cache: ApiKeyCache,
    ) -> Self {
        Self {
            state: State::Verifying {
                verify,
                pending: Some(Box::new(Pending {
                    service,
                    request,
                    cache,
                })),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Verifying { verify, pending } => {
                    let outcome = ready!(verify.as_mut().poll(cx));
                    let next = match (outcome, pending.take()) {
                        (Outcome::Valid(key), Some(pending)) => {
                            let Pending {
                                mut service,
                                mut request,
                                ..
                            } = *pending;
                            request.extensions_mut().insert(key);
                            State::Inner {
                                future: service.call(request),
                            }
                        }
                        // `pending` is only gone after this arm already ran,
                        // which the state change rules out; fail closed.
                        (Outcome::Valid(_), None) => State::Rejected {
                            outcome: Some(Outcome::Unavailable),
                            protocol: Protocol::Http,
                        },
                        (rejected, pending) => {
                            if let Some(p) = &pending {
                                audit_rejection(&p.cache, &rejected, &p.request);
                            }
                            State::Rejected {
                                outcome: Some(rejected),
                                protocol: pending
                                    .map_or(Protocol::Http, |p| Protocol::of(&p.request)),
                            }
                        }
                    };
                    state.set(next);
                }
                StateProj::Rejected { outcome, protocol } => {
                    // Polled again after completion: a caller bug; answer
                    // the fail-closed 503 rather than panic.
                    let outcome = outcome.take().unwrap_or(Outcome::Unavailable);
                    let response =
                        rejection_response(&outcome, std::mem::replace(protocol, Protocol::Http));
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
            }
        }
    }
}
