//! The one typed answer per request, and its HTTP rendering.
//!
//! Both web adapters call [`Outcome::rejection`] so a rejected request looks
//! the same whichever framework serves it.
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

    /// A dense index of the variant, `0..LABELS.len()`.
    pub const fn index(&self) -> usize {
        match self {
            Self::Valid(_) => 0,
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

    /// The HTTP response for a rejected request; `None` when valid.
    pub fn rejection(&self) -> Option<Rejection> {
        const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;
        let (status, error, message, www) = match self {
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
        };
        let mut body = serde_json::json!({ "error": error, "message": message });
        if let Self::InsufficientScope { missing } = self {
            body["missing_scopes"] = serde_json::json!(missing);
        }
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(www) = www {
            headers.push(("www-authenticate", www));
        }
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
        Some(Rejection {
            status,
            error,
            body: body.to_string(),
            headers,
        })
    }
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
    fn unknown_and_malformed_look_the_same() {
        assert_eq!(
            Outcome::Unknown.rejection(),
            Outcome::Malformed(Malformed::InvalidByte).rejection()
        );
    }
}
