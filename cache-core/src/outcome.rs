//! The one typed answer per request, and its HTTP and gRPC renderings.
//!
//! Both web adapters call [`Outcome::rejection`] so a rejected request looks
//! the same whichever framework serves it; gRPC requests get
//! [`Outcome::grpc_rejection`], the same table as gRPC statuses.
//!
//! ```
//! use apikey_cache::Outcome;
//!
//! let r = Outcome::Missing.rejection().expect("missing is a rejection");
//! assert_eq!(r.status, 401);
//! assert_eq!(r.error, "missing_api_key");
//! assert!(r.headers.iter().any(|(k, v)| *k == "www-authenticate" && v == "Bearer"));
//! assert!(r.body.contains(r#""error":"missing_api_key""#));
//! ```

use std::ops::Deref;
use std::sync::Arc;

use crate::l1::Found;
use crate::{KeyRecord, Malformed, RateLimitInfo};

/// A key that passed every check, as handlers see it. Cheap to clone.
///
/// ```
/// use std::sync::Arc;
/// use apikey_cache::{KeyHasher, KeyId, KeyRecord, Scopes, VerifiedKey};
///
/// let hash = KeyHasher::new(None).hash(b"ak_x");
/// let key = VerifiedKey::new(KeyRecord::new(KeyId::from("k1"), hash, "acme", Scopes::new(["a"])));
/// assert_eq!(key.owner, "acme");
/// ```
#[derive(Clone)]
pub struct VerifiedKey(Arc<Found>);

impl VerifiedKey {
    /// Wraps a record (for tests and hand-made keys: requests counted
    /// through it reach no usage counter).
    pub fn new(record: KeyRecord) -> Self {
        Self(Arc::new(Found::new(record, Arc::default())))
    }

    pub(crate) fn from_found(found: Arc<Found>) -> Self {
        Self(found)
    }

    /// The record.
    pub fn record(&self) -> &KeyRecord {
        &self.0.record
    }
}

impl Deref for VerifiedKey {
    type Target = KeyRecord;
    fn deref(&self) -> &KeyRecord {
        &self.0.record
    }
}

impl std::fmt::Debug for VerifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("VerifiedKey").field(&self.0.record).finish()
    }
}

impl PartialEq for VerifiedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.record == other.0.record
    }
}

impl Eq for VerifiedKey {}

/// The result of verifying one request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every check passed.
    Valid(VerifiedKey),
    /// No key in the request.
    Missing,
    /// Something that cannot be a key (answered like [`Outcome::Unknown`]).
    Malformed(Malformed),
    /// No such key.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The key is disabled.
    Disabled,
    /// The key's `expires_at` has passed.
    Expired,
    /// The key lacks some required scopes.
    InsufficientScope {
        /// The required scopes the key does not grant.
        missing: Vec<String>,
    },
    /// The store failed and no cache could answer: fail closed.
    Unavailable,
    /// The key's rate limit is used up for now.
    RateLimited(RateLimitInfo),
    /// The key's monthly quota is used up.
    QuotaExceeded {
        /// Requests allowed per calendar month.
        quota: u64,
        /// Until the quota resets (the next month, UTC).
        retry_after: std::time::Duration,
    },
}

impl Outcome {
    /// Whether the request may proceed.
    pub fn is_valid(&self) -> bool {
        matches!(self, Self::Valid(_))
    }

    /// The verified key, if valid.
    pub fn verified(&self) -> Option<&VerifiedKey> {
        match self {
            Self::Valid(k) => Some(k),
            _ => None,
        }
    }

    /// Every label of [`Outcome::label`], in [`Outcome::index`] order.
    pub const LABELS: [&'static str; 11] = [
        "valid",
        "missing",
        "malformed",
        "unknown",
        "revoked",
        "disabled",
        "expired",
        "insufficient_scope",
        "unavailable",
        "rate_limited",
        "quota_exceeded",
    ];

    /// [`index`](Self::index) of a valid outcome.
    pub(crate) const VALID_INDEX: usize = 0;

    /// A dense index of the variant, `0..LABELS.len()`.
    pub const fn index(&self) -> usize {
        match self {
            Self::Valid(_) => Self::VALID_INDEX,
            Self::Missing => 1,
            Self::Malformed(_) => 2,
            Self::Unknown => 3,
            Self::Revoked => 4,
            Self::Disabled => 5,
            Self::Expired => 6,
            Self::InsufficientScope { .. } => 7,
            Self::Unavailable => 8,
            Self::RateLimited(_) => 9,
            Self::QuotaExceeded { .. } => 10,
        }
    }

    /// A short stable label, e.g. for the `outcome` metric label.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Valid(_) => "valid",
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
            Self::Expired => "expired",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::Unavailable => "unavailable",
            Self::RateLimited(_) => "rate_limited",
            Self::QuotaExceeded { .. } => "quota_exceeded",
        }
    }

    /// The design's outcome table, one row per rejection: HTTP status,
    /// `error`, `message` and `WWW-Authenticate`. Both renderings read it,
    /// so HTTP and gRPC clients are told the same thing.
    fn row(&self) -> Option<(u16, &'static str, &'static str, Option<String>)> {
        const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;
        Some(match self {
            Self::Valid(_) => return None,
            Self::Missing => (
                401,
                "missing_api_key",
                "an API key is required",
                Some("Bearer".to_owned()),
            ),
            Self::Malformed(_) | Self::Unknown => (
                401,
                "invalid_api_key",
                "the API key is not valid",
                Some(INVALID_TOKEN.to_owned()),
            ),
            Self::Revoked => (
                401,
                "revoked_api_key",
                "the API key was revoked",
                Some(INVALID_TOKEN.to_owned()),
            ),
            Self::Disabled => (
                401,
                "disabled_api_key",
                "the API key is disabled",
                Some(INVALID_TOKEN.to_owned()),
            ),
            Self::Expired => (
                401,
                "expired_api_key",
                "the API key has expired",
                Some(INVALID_TOKEN.to_owned()),
            ),
            Self::InsufficientScope { missing } => (
                403,
                "insufficient_scope",
                "the API key lacks required scopes",
                Some(format!(
                    r#"Bearer error="insufficient_scope", scope="{}""#,
                    missing.join(" ").replace(['"', '\\'], "")
                )),
            ),
            Self::Unavailable => (
                503,
                "auth_unavailable",
                "authentication is temporarily unavailable",
                None,
            ),
            Self::RateLimited(_) => (
                429,
                "rate_limited",
                "the API key's rate limit is exceeded",
                None,
            ),
            Self::QuotaExceeded { .. } => (
                429,
                "quota_exceeded",
                "the API key's monthly quota is used up",
                None,
            ),
        })
    }

    /// The stable `error` code a rejection answers with (e.g.
    /// `revoked_api_key`); `None` when valid.
    ///
    /// ```
    /// use apikey_cache::Outcome;
    /// assert_eq!(Outcome::Revoked.error_code(), Some("revoked_api_key"));
    /// assert_eq!(Outcome::Unknown.error_code(), Some("invalid_api_key"));
    /// ```
    pub fn error_code(&self) -> Option<&'static str> {
        self.status_and_code().map(|(_, code)| code)
    }

    /// The HTTP status and `error` code of a rejection.
    pub(crate) fn status_and_code(&self) -> Option<(u16, &'static str)> {
        self.row().map(|(status, code, _, _)| (status, code))
    }

    /// The HTTP response for a rejected request; `None` when valid.
    pub fn rejection(&self) -> Option<Rejection> {
        let (status, error, message, www) = self.row()?;
        let mut body = serde_json::json!({ "error": error, "message": message });
        if let Self::InsufficientScope { missing } = self {
            body["missing_scopes"] = serde_json::json!(missing);
        }
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(www) = www {
            headers.push(("www-authenticate", www));
        }
        self.push_retry_headers(&mut headers);
        Some(Rejection {
            status,
            error,
            body: body.to_string(),
            headers,
        })
    }

    /// The gRPC status for a rejected request; `None` when valid.
    ///
    /// The code follows the HTTP status of [`Outcome::rejection`] (401 ->
    /// 16 `UNAUTHENTICATED`, 403 -> 7 `PERMISSION_DENIED`, 429 -> 8
    /// `RESOURCE_EXHAUSTED`, 503 -> 14 `UNAVAILABLE`) and the message is the
    /// JSON body's `message` (with the missing scopes for code 7). The
    /// headers make a trailers-only response: `content-type`, `grpc-status`,
    /// `grpc-message` (percent-encoded as the gRPC spec requires) and, as
    /// metadata, the same `retry-after` / `ratelimit-*` as the HTTP answer.
    ///
    /// ```
    /// use apikey_cache::Outcome;
    ///
    /// let r = Outcome::InsufficientScope { missing: vec!["greet".into()] }
    ///     .grpc_rejection()
    ///     .expect("a rejection");
    /// assert_eq!(r.code, 7);
    /// assert_eq!(r.message, "the API key lacks required scopes: greet");
    /// assert!(r.headers.iter().any(|(k, v)| *k == "grpc-status" && v == "7"));
    /// assert!(Outcome::Missing.grpc_rejection().is_some_and(|r| r.code == 16));
    /// ```
    pub fn grpc_rejection(&self) -> Option<GrpcRejection> {
        let (status, _, message, _) = self.row()?;
        let code = match status {
            401 => GrpcRejection::UNAUTHENTICATED,
            403 => GrpcRejection::PERMISSION_DENIED,
            429 => GrpcRejection::RESOURCE_EXHAUSTED,
            // 503, and anything the table may grow: fail closed, retryable.
            _ => GrpcRejection::UNAVAILABLE,
        };
        let message = match self {
            Self::InsufficientScope { missing } => format!("{message}: {}", missing.join(" ")),
            _ => message.to_owned(),
        };
        let mut headers = vec![
            ("content-type", "application/grpc".to_owned()),
            ("grpc-status", code.to_string()),
            ("grpc-message", percent_encode_grpc_message(&message)),
        ];
        self.push_retry_headers(&mut headers);
        Some(GrpcRejection {
            code,
            message,
            headers,
        })
    }

    /// `Retry-After` and the `RateLimit-*` headers, for whichever rendering.
    fn push_retry_headers(&self, headers: &mut Vec<(&'static str, String)>) {
        // Whole seconds, rounded up: a client that waits exactly this long
        // must not be refused again.
        let secs = |d: std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        match self {
            Self::Unavailable => headers.push(("retry-after", "1".to_owned())),
            Self::RateLimited(info) => {
                headers.push(("retry-after", secs(info.retry_after).max(1).to_string()));
                headers.push(("ratelimit-limit", info.limit.to_string()));
                headers.push(("ratelimit-remaining", info.remaining.to_string()));
                headers.push(("ratelimit-reset", secs(info.reset_after).to_string()));
            }
            Self::QuotaExceeded { retry_after, .. } => {
                headers.push(("retry-after", secs(*retry_after).max(1).to_string()));
            }
            _ => {}
        }
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII
/// (0x20..=0x7E), and `%` itself, becomes `%XX` (gRPC over HTTP/2 spec).
/// Scopes come from configuration and may be any UTF-8.
fn percent_encode_grpc_message(message: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7E).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A framework-neutral gRPC status for a rejected request, rendered as a
/// trailers-only response (HTTP 200, no body) by adapters that see
/// `content-type: application/grpc*`.
///
/// ```
/// use apikey_cache::{GrpcRejection, Outcome};
///
/// let r = Outcome::Unavailable.grpc_rejection().expect("a rejection");
/// assert_eq!(r.code, GrpcRejection::UNAVAILABLE);
/// assert!(r.headers.iter().any(|(k, v)| *k == "content-type" && v == "application/grpc"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcRejection {
    /// The `grpc-status` code, e.g. [`GrpcRejection::UNAUTHENTICATED`].
    pub code: i32,
    /// The status message, not yet percent-encoded.
    pub message: String,
    /// Headers to set, names in lowercase: `content-type`, `grpc-status`,
    /// `grpc-message` (encoded), and `retry-after` / `ratelimit-*` when
    /// the HTTP answer has them.
    pub headers: Vec<(&'static str, String)>,
}

impl GrpcRejection {
    /// Code 7: the key lacks required scopes.
    ///
    /// ```
    /// assert_eq!(apikey_cache::GrpcRejection::PERMISSION_DENIED, 7);
    /// ```
    pub const PERMISSION_DENIED: i32 = 7;
    /// Code 8: rate limit or monthly quota used up.
    ///
    /// ```
    /// assert_eq!(apikey_cache::GrpcRejection::RESOURCE_EXHAUSTED, 8);
    /// ```
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// Code 14: the store is down and no cache could answer.
    ///
    /// ```
    /// assert_eq!(apikey_cache::GrpcRejection::UNAVAILABLE, 14);
    /// ```
    pub const UNAVAILABLE: i32 = 14;
    /// Code 16: no key, or a key that is not (or no longer) valid.
    ///
    /// ```
    /// assert_eq!(apikey_cache::GrpcRejection::UNAUTHENTICATED, 16);
    /// ```
    pub const UNAUTHENTICATED: i32 = 16;
}

/// A framework-neutral HTTP response for a rejected request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// HTTP status code.
    pub status: u16,
    /// The `error` field of the body, e.g. `invalid_api_key`.
    pub error: &'static str,
    /// The JSON body: `{"error": "...", "message": "..."}` (plus
    /// `missing_scopes` for 403).
    pub body: String,
    /// Headers to set, names in lowercase.
    pub headers: Vec<(&'static str, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header<'a>(r: &'a Rejection, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn table_of_the_design() {
        let cases = [
            (Outcome::Missing, 401, "missing_api_key"),
            (
                Outcome::Malformed(Malformed::TooLong),
                401,
                "invalid_api_key",
            ),
            (Outcome::Unknown, 401, "invalid_api_key"),
            (Outcome::Revoked, 401, "revoked_api_key"),
            (Outcome::Disabled, 401, "disabled_api_key"),
            (Outcome::Expired, 401, "expired_api_key"),
            (
                Outcome::InsufficientScope {
                    missing: vec!["a".into()],
                },
                403,
                "insufficient_scope",
            ),
            (Outcome::Unavailable, 503, "auth_unavailable"),
            (
                Outcome::RateLimited(RateLimitInfo::new(
                    5,
                    0,
                    Duration::from_secs(60),
                    Duration::from_secs(12),
                )),
                429,
                "rate_limited",
            ),
            (
                Outcome::QuotaExceeded {
                    quota: 10,
                    retry_after: Duration::from_secs(3600),
                },
                429,
                "quota_exceeded",
            ),
        ];
        for (outcome, status, error) in cases {
            let r = outcome.rejection().unwrap();
            assert_eq!((r.status, r.error), (status, error), "{outcome:?}");
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["error"], error);
            assert!(body["message"].is_string());
            assert_eq!(header(&r, "content-type"), Some("application/json"));
        }
    }

    #[test]
    fn rate_limit_headers() {
        let r = Outcome::RateLimited(RateLimitInfo::new(
            100,
            0,
            Duration::from_millis(59_001),
            Duration::from_millis(600),
        ))
        .rejection()
        .unwrap();
        assert_eq!(header(&r, "retry-after"), Some("1"));
        assert_eq!(header(&r, "ratelimit-limit"), Some("100"));
        assert_eq!(header(&r, "ratelimit-remaining"), Some("0"));
        assert_eq!(header(&r, "ratelimit-reset"), Some("60"));
        let q = Outcome::QuotaExceeded {
            quota: 1,
            retry_after: Duration::from_secs(90),
        }
        .rejection()
        .unwrap();
        assert_eq!(header(&q, "retry-after"), Some("90"));
    }

    #[test]
    fn missing_scopes_are_listed() {
        let r = Outcome::InsufficientScope {
            missing: vec!["orders:write".into(), "x".into()],
        }
        .rejection()
        .unwrap();
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body["missing_scopes"],
            serde_json::json!(["orders:write", "x"])
        );
        assert_eq!(
            header(&r, "www-authenticate"),
            Some(r#"Bearer error="insufficient_scope", scope="orders:write x""#)
        );
    }

    #[test]
    fn labels_match_indexes() {
        for o in [
            Outcome::Missing,
            Outcome::Unknown,
            Outcome::Expired,
            Outcome::InsufficientScope { missing: vec![] },
            Outcome::Unavailable,
        ] {
            assert_eq!(Outcome::LABELS[o.index()], o.label());
        }
    }

    #[test]
    fn grpc_codes_for_every_outcome() {
        let rl = RateLimitInfo::new(1, 0, Duration::from_secs(60), Duration::from_millis(1500));
        let cases = [
            (Outcome::Missing, 16),
            (Outcome::Malformed(Malformed::TooLong), 16),
            (Outcome::Unknown, 16),
            (Outcome::Revoked, 16),
            (Outcome::Disabled, 16),
            (Outcome::Expired, 16),
            (
                Outcome::InsufficientScope {
                    missing: vec!["a".into()],
                },
                7,
            ),
            (Outcome::RateLimited(rl), 8),
            (
                Outcome::QuotaExceeded {
                    quota: 10,
                    retry_after: Duration::from_secs(3600),
                },
                8,
            ),
            (Outcome::Unavailable, 14),
        ];
        for (outcome, code) in cases {
            let g = outcome.grpc_rejection().unwrap();
            let http = outcome.rejection().unwrap();
            let body: serde_json::Value = serde_json::from_str(&http.body).unwrap();
            assert_eq!(g.code, code, "{outcome:?}");
            // The same words as the JSON body.
            assert!(
                g.message.starts_with(body["message"].as_str().unwrap()),
                "{outcome:?}"
            );
            assert_eq!(
                header_of(&g.headers, "content-type"),
                Some("application/grpc")
            );
            assert_eq!(
                header_of(&g.headers, "grpc-status"),
                Some(code.to_string().as_str())
            );
            assert_eq!(
                header_of(&g.headers, "grpc-message"),
                Some(g.message.as_str()),
                "ASCII messages need no encoding"
            );
            assert_eq!(header_of(&g.headers, "www-authenticate"), None);
            // Retry hints travel as metadata, as in the HTTP answer.
            assert_eq!(
                header_of(&g.headers, "retry-after"),
                header(&http, "retry-after")
            );
        }
        assert_eq!(Outcome::Valid(valid_key()).grpc_rejection(), None);
    }

    #[test]
    fn grpc_message_lists_missing_scopes_percent_encoded() {
        let g = Outcome::InsufficientScope {
            missing: vec!["orders:write".into(), "caf\u{e9}%".into()],
        }
        .grpc_rejection()
        .unwrap();
        assert_eq!(
            g.message,
            "the API key lacks required scopes: orders:write caf\u{e9}%"
        );
        assert_eq!(
            header_of(&g.headers, "grpc-message"),
            Some("the API key lacks required scopes: orders:write caf%C3%A9%25")
        );
    }

    #[test]
    fn percent_encoding_follows_the_spec() {
        assert_eq!(percent_encode_grpc_message("a b~"), "a b~");
        assert_eq!(percent_encode_grpc_message("100%\n\u{7f}"), "100%25%0A%7F");
    }

    fn header_of<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn valid_key() -> VerifiedKey {
        let hash = crate::KeyHasher::new(None).hash(b"ak_x");
        VerifiedKey::new(KeyRecord::new(
            crate::KeyId::from("k1"),
            hash,
            "acme",
            crate::Scopes::new(["a"]),
        ))
    }

    #[test]
    fn unknown_and_malformed_look_the_same() {
        assert_eq!(
            Outcome::Unknown.rejection(),
            Outcome::Malformed(Malformed::InvalidByte).rejection()
        );
    }
}
