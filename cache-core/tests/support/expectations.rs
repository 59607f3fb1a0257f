//! The design's outcome table as test expectations, framework-neutral: a
//! status, a body and a header lookup are all it reads, so every adapter's
//! tests include this file (`#[path = "..."] mod expectations;`: the tower
//! layer's and the actix middleware's) and pin the same rows. Written out
//! by hand, not derived from the core, so a change to the core's table
//! fails here.
//!
//! Times are exact because the fixtures run on a `ManualClock`: a 1-per-60 s
//! rate limit refused right after its one request waits 60 s; a monthly
//! quota refused at 23:00 on the month's last day resets in 3600 s.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

/// One row of the table: what a rejected request must look like.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub status: u16,
    pub error: &'static str,
    /// `WWW-Authenticate`, `None` when it must be absent.
    pub www_authenticate: Option<&'static str>,
    /// `Retry-After`, `None` when it must be absent.
    pub retry_after: Option<&'static str>,
    /// `RateLimit-Limit`, `-Remaining`, `-Reset`; `None` when all three
    /// must be absent.
    pub rate_limit: Option<[&'static str; 3]>,
    /// `missing_scopes` in the body; `None` when it must be absent.
    pub missing_scopes: Option<&'static [&'static str]>,
}

const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;

const fn unauthorized(error: &'static str, www: &'static str) -> Expected {
    Expected {
        status: 401,
        error,
        www_authenticate: Some(www),
        retry_after: None,
        rate_limit: None,
        missing_scopes: None,
    }
}

pub const MISSING: Expected = unauthorized("missing_api_key", "Bearer");
/// Malformed and unknown keys look the same to the client.
pub const INVALID: Expected = unauthorized("invalid_api_key", INVALID_TOKEN);
pub const REVOKED: Expected = unauthorized("revoked_api_key", INVALID_TOKEN);
pub const DISABLED: Expected = unauthorized("disabled_api_key", INVALID_TOKEN);
pub const EXPIRED: Expected = unauthorized("expired_api_key", INVALID_TOKEN);

/// A key granted `orders:read` on a route requiring `orders:read`,
/// `orders:write` and `admin`.
pub const INSUFFICIENT_SCOPE: Expected = Expected {
    status: 403,
    error: "insufficient_scope",
    www_authenticate: Some(r#"Bearer error="insufficient_scope", scope="orders:write admin""#),
    retry_after: None,
    rate_limit: None,
    missing_scopes: Some(&["orders:write", "admin"]),
};

/// A key with `RateLimit::new(1, 60 s)`, on its second request at the
/// same instant.
pub const RATE_LIMITED: Expected = Expected {
    status: 429,
    error: "rate_limited",
    www_authenticate: None,
    retry_after: Some("60"),
    rate_limit: Some(["1", "0", "60"]),
    missing_scopes: None,
};

/// A key with a monthly quota of 1, on its second request at 23:00 UTC on
/// the last day of a month.
pub const QUOTA_EXCEEDED: Expected = Expected {
    status: 429,
    error: "quota_exceeded",
    www_authenticate: None,
    retry_after: Some("3600"),
    rate_limit: None,
    missing_scopes: None,
};

/// The store is down and nothing is cached: fail closed.
pub const UNAVAILABLE: Expected = Expected {
    status: 503,
    error: "auth_unavailable",
    www_authenticate: None,
    retry_after: Some("1"),
    rate_limit: None,
    missing_scopes: None,
};

impl Expected {
    /// Checks a response against this row, header by header.
    pub fn check(
        &self,
        status: u16,
        header: impl Fn(&str) -> Option<String>,
        body: &serde_json::Value,
    ) {
        let ctx = format!("{} ({status} {body})", self.error);
        assert_eq!(status, self.status, "status of {ctx}");
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/json"),
            "{ctx}"
        );
        assert_eq!(body["error"], self.error, "{ctx}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message of {ctx}"
        );
        assert_eq!(
            header("www-authenticate").as_deref(),
            self.www_authenticate,
            "WWW-Authenticate of {ctx}"
        );
        assert_eq!(
            header("retry-after").as_deref(),
            self.retry_after,
            "Retry-After of {ctx}"
        );
        let rate_limit = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];
        match self.rate_limit {
            Some(values) => {
                for (name, value) in rate_limit.iter().zip(values) {
                    assert_eq!(header(name).as_deref(), Some(value), "{name} of {ctx}");
                }
            }
            None => {
                for name in rate_limit {
                    assert_eq!(header(name), None, "{name} of {ctx}");
                }
            }
        }
        match self.missing_scopes {
            Some(missing) => {
                assert_eq!(body["missing_scopes"], serde_json::json!(missing), "{ctx}")
            }
            None => assert!(body.get("missing_scopes").is_none(), "{ctx}"),
        }
    }
}
