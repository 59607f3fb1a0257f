//! [`ResponseBody`]: the inner service's body, or a rejection's JSON.
//!
//! ```
//! use apikey_cache_tower::ResponseBody;
//! use http_body::Body;
//! use http_body_util::Full;
//!
//! fn assert_body<B: Body>() {}
//! assert_body::<ResponseBody<Full<bytes::Bytes>>>();
//! assert_body::<ResponseBody<axum::body::Body>>();
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`ApiKey`](crate::ApiKey): the inner service's
    /// body `B` when the request got through, a short JSON body (empty for
    /// gRPC) when it was rejected. Errors are `B`'s (the JSON body cannot fail).
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use apikey_cache_tower::ResponseBody;
    ///
    /// // axum can serve it: `Router::layer` and `route_layer` accept the layer.
    /// fn assert_into_response<T: IntoResponse>() {}
    /// assert_into_response::<http::Response<ResponseBody<axum::body::Body>>>();
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Rejection {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    #[inline]
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn rejection(body: Full<Bytes>) -> Self {
        Self {
            kind: Kind::Rejection { body },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Rejection { .. } => f.write_str("ResponseBody::Rejection"),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Rejection { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(|never| match never {}))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rejection { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Rejection { body } => body.size_hint(),
        }
    }
}
