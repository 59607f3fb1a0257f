//! Turning the core's framework-neutral [`Rejection`] into an
//! `http::Response`. The outcome table itself lives in the core
//! ([`Outcome::rejection`]) so both adapters answer alike.

use apikey_cache::{Outcome, Rejection};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The response for a refused request.
pub(crate) fn rejection_response(outcome: &Outcome) -> Response<Full<Bytes>> {
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
    let headers = res.headers_mut();
    headers.reserve(rejection.headers.len());
    for (name, value) in rejection.headers {
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
    res
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
            let res = rejection_response(&outcome);
            assert_eq!(res.status().as_u16(), expected.status);
            for (name, value) in &expected.headers {
                assert_eq!(res.headers()[*name], value.as_str(), "{outcome:?}");
            }
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
