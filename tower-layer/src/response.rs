//! Turning the core's framework-neutral [`Rejection`] (or, for a gRPC
//! request, its [`GrpcRejection`]) into an `http::Response`. The outcome
//! table itself lives in the core ([`Outcome::rejection`],
//! [`Outcome::grpc_rejection`]) so every adapter answers alike.

use apikey_cache::{GrpcRejection, Outcome, Rejection};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// How a refused request is answered, told by its `content-type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Plain HTTP: the JSON rejection.
    Http,
    /// gRPC (`application/grpc`, `+proto`, `+json`, ...): its client
    /// understands only a gRPC status, not a 401.
    Grpc,
    /// gRPC-Web (`application/grpc-web`, `-text`, `+proto`, ...), as sent by
    /// browsers through a gRPC-Web proxy or tonic-web: a gRPC status too,
    /// with the request's own content type echoed, since gRPC-Web clients
    /// refuse a response whose type is not theirs.
    GrpcWeb(HeaderValue),
}

impl Protocol {
    /// Reads the request's `content-type` (only on the rejection path).
    pub(crate) fn of<B>(req: &http::Request<B>) -> Self {
        match req.headers().get(http::header::CONTENT_TYPE) {
            Some(v) if v.as_bytes().starts_with(b"application/grpc-web") => {
                Self::GrpcWeb(v.clone())
            }
            Some(v) if v.as_bytes().starts_with(b"application/grpc") => Self::Grpc,
            _ => Self::Http,
        }
    }
}

/// The response for a refused request: a trailers-only gRPC status for
/// gRPC and gRPC-Web, else the JSON rejection.
pub(crate) fn rejection_response(outcome: &Outcome, protocol: Protocol) -> Response<Full<Bytes>> {
    if protocol != Protocol::Http {
        return match outcome
            .grpc_rejection()
            .or_else(|| Outcome::Unavailable.grpc_rejection())
        {
            Some(rejection) => {
                let mut res = render_grpc(rejection);
                if let Protocol::GrpcWeb(content_type) = protocol {
                    // gRPC-Web's trailers-only answer is the same headers
                    // (its spec: "trailers may be sent together with
                    // response headers, with no message in the body").
                    res.headers_mut()
                        .insert(http::header::CONTENT_TYPE, content_type);
                }
                res
            }
            None => {
                let mut res = Response::new(Full::default());
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                res
            }
        };
    }
    // Only `Valid` has no rejection, and callers never pass it; if a future
    // core variant did, refusing is the safe reading.
    match outcome
        .rejection()
        .or_else(|| Outcome::Unavailable.rejection())
    {
        Some(rejection) => render(rejection),
        None => {
            let mut res = Response::new(Full::default());
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            res
        }
    }
}

fn render(rejection: Rejection) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(rejection.body)));
    // An out-of-range status from the core would be a bug there; still a
    // refusal here.
    *res.status_mut() =
        StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set_headers(&mut res, rejection.headers);
    res
}

/// Trailers-only: HTTP 200 and the status in the headers, no body, which
/// every gRPC client reads as the call's final status.
fn render_grpc(rejection: GrpcRejection) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::default());
    set_headers(&mut res, rejection.headers);
    res
}

fn set_headers(res: &mut Response<Full<Bytes>>, pairs: Vec<(&'static str, String)>) {
    let headers = res.headers_mut();
    headers.reserve(pairs.len());
    for (name, value) in pairs {
        // Not `HeaderName::from_static`, which panics on a bad name: the
        // core's names are lowercase constants, but no request may ever
        // reach a panic.
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::warn!(
                header = name,
                "dropping an unrepresentable rejection header"
            ),
        }
    }
}

#[cfg(feature = "axum")]
const LAYER_MISSING: &str = r#"{"error":"api_key_layer_missing","message":"the API key layer is not applied to this route"}"#;

/// The 500 of the extractor when no [`ApiKeyLayer`](crate::ApiKeyLayer)
/// ran before it.
#[cfg(feature = "axum")]
pub(crate) fn layer_missing_response() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(LAYER_MISSING.as_bytes())));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_rejection_renders_with_its_headers() {
        let outcomes = [
            Outcome::Missing,
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
            let res = rejection_response(&outcome, Protocol::Http);
            assert_eq!(res.status().as_u16(), expected.status);
            for (name, value) in &expected.headers {
                assert_eq!(res.headers()[*name], value.as_str(), "{outcome:?}");
            }
        }
    }

    #[test]
    fn grpc_rejections_are_trailers_only() {
        use http_body::Body as _;
        for (outcome, code) in [
            (Outcome::Missing, "16"),
            (Outcome::Revoked, "16"),
            (
                Outcome::InsufficientScope {
                    missing: vec!["a:b".into()],
                },
                "7",
            ),
            (Outcome::Unavailable, "14"),
        ] {
            let res = rejection_response(&outcome, Protocol::Grpc);
            assert_eq!(res.status(), StatusCode::OK, "{outcome:?}");
            assert_eq!(res.headers()["content-type"], "application/grpc");
            assert_eq!(res.headers()["grpc-status"], code);
            assert!(res.headers().contains_key("grpc-message"));
            assert!(!res.headers().contains_key("www-authenticate"));
            assert!(res.body().is_end_stream(), "no body: {outcome:?}");
        }
    }

    #[test]
    fn grpc_is_told_by_content_type() {
        let req = |ct: &str| {
            http::Request::builder()
                .header("content-type", ct)
                .body(())
                .unwrap()
        };
        assert_eq!(Protocol::of(&req("application/grpc")), Protocol::Grpc);
        assert_eq!(Protocol::of(&req("application/grpc+proto")), Protocol::Grpc);
        for web in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ] {
            assert_eq!(
                Protocol::of(&req(web)),
                Protocol::GrpcWeb(HeaderValue::from_static(web))
            );
        }
        assert_eq!(Protocol::of(&req("application/json")), Protocol::Http);
        assert_eq!(Protocol::of(&http::Request::new(())), Protocol::Http);
    }

    #[test]
    fn grpc_web_rejections_echo_the_request_content_type() {
        use http_body::Body as _;
        for web in ["application/grpc-web+proto", "application/grpc-web-text"] {
            let protocol = Protocol::GrpcWeb(HeaderValue::from_static(web));
            let res = rejection_response(&Outcome::Revoked, protocol);
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["content-type"], web);
            assert_eq!(res.headers()["grpc-status"], "16");
            assert!(res.headers().contains_key("grpc-message"));
            assert!(res.body().is_end_stream());
        }
    }

    #[cfg(feature = "axum")]
    #[test]
    fn the_missing_layer_body_is_json() {
        let res = layer_missing_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            res.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let body: serde_json::Value = serde_json::from_slice(LAYER_MISSING.as_bytes()).unwrap();
        assert_eq!(body["error"], "api_key_layer_missing");
    }
}
