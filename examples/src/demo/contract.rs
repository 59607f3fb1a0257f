//! The JSON bodies of the demo contract, and the error every demo answers
//! with when a request is wrong.
//!
//! Framework-neutral: a demo parses bodies with [`parse_json`], turns
//! [`ApiError`] into its framework's response with [`ApiError::status`] and
//! [`ApiError::body`], and serializes the response types with serde.
//!
//! ```
//! use apikey_cache_examples::demo::contract::{parse_json, CreateKeyRequest};
//!
//! let req: CreateKeyRequest =
//!     parse_json(br#"{"owner": "acme", "scopes": ["orders:*"], "monthly_quota": 1000}"#).unwrap();
//! let new_key = req.into_new_key().unwrap();
//! assert_eq!(new_key.monthly_quota, Some(1000));
//!
//! let err = parse_json::<CreateKeyRequest>(b"{not json").unwrap_err();
//! assert_eq!(err.status(), 400);
//! assert_eq!(err.body()["error"], "invalid_request");
//! ```

use std::time::Duration;

use apikey_cache::{KeyDetails, KeyRecord, Mode, NewKey, OwnerKey, RateLimit};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Longest accepted owner name, in bytes.
pub const MAX_OWNER_LEN: usize = 128;
/// Longest accepted scope, in bytes.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most scopes on one key.
pub const MAX_SCOPES: usize = 64;
/// Longest accepted rate-limit window: a year (366 days).
pub const MAX_RATE_WINDOW_SECS: u64 = 366 * 86_400;
/// Longest accepted rotation grace period: 30 days.
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;

/// A request the demo refuses (or could not complete), as status and
/// `{"error": "...", "message": "..."}`, the shape of the core's rejections.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ApiError {
    status: u16,
    /// Stable machine-readable code, e.g. `invalid_request`.
    pub error: &'static str,
    /// Human-readable explanation (never a key, never a secret).
    pub message: String,
    /// Extra fields merged into the body.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with `status`, code `error` and `message`.
    pub fn new(status: u16, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// 400 `invalid_request`: a body or parameter the demo cannot use.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// 503 `store_unavailable`: the key store failed; nothing was changed
    /// that the caller can see, retry later. A rate limit the store refused
    /// (e.g. copied from an old key by a rotation) is a 400
    /// `invalid_request` instead: retrying would not help.
    pub fn store(e: &apikey_cache::StoreError) -> Self {
        if let apikey_cache::StoreError::InvalidRateLimit(e) = e {
            return Self::invalid(format!("rate_limit: {e}"));
        }
        tracing::error!(error = %e, "key store operation failed");
        Self::new(
            503,
            "store_unavailable",
            "the key store is unavailable; retry later",
        )
    }

    /// 503 `invalidation_failed`: the store was changed and this instance
    /// dropped the key, but Redis (and so the other instances) could not be
    /// told. The cache keeps retrying in the background; the caller should
    /// retry the same request (revocations are idempotent).
    pub fn invalidation(what: &str, e: &apikey_cache::InvalidateError) -> Self {
        tracing::error!(error = %e, what, "cache invalidation failed after a store change");
        Self::new(
            503,
            "invalidation_failed",
            format!(
                "{what} is stored, but the shared cache could not be invalidated ({e}); \
                 other instances may accept the old key until it is (the cache keeps \
                 retrying, and their entries expire within the L1 TTL): retry"
            ),
        )
    }

    /// Adds a field to the body.
    pub fn with(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(name.to_owned(), value.into());
        self
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "error": self.error, "message": self.message });
        if let Some(obj) = body.as_object_mut() {
            for (k, v) in &self.extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.error, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Parses a JSON body; anything unusable (not JSON, wrong types, unknown
/// fields) is a 400 `invalid_request` that says what was wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("bad JSON body: {e}")))
}

/// `rate_limit` of [`CreateKeyRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// Requests allowed per window (at least 1).
    pub requests: u32,
    /// Window length in seconds (1 to [`MAX_RATE_WINDOW_SECS`]).
    pub per_seconds: u64,
}

/// `POST /admin/keys` body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CreateKeyRequest {
    /// Owner (account, tenant).
    pub owner: String,
    /// Granted scopes, e.g. `["orders:read"]`, `["orders:*"]`, `["*"]`.
    pub scopes: Vec<String>,
    /// Optional expiry (RFC 3339). One in the past is accepted: such a key
    /// is refused as expired from its first use.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Optional rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitBody>,
    /// Optional requests per calendar month (UTC), at least 1: a key with a
    /// quota of 0 could never be used, so the demo refuses it as a mistake
    /// (the core would store it and refuse every request as
    /// `quota_exceeded`).
    #[serde(default)]
    pub monthly_quota: Option<u64>,
}

impl CreateKeyRequest {
    /// Checks the fields and builds the core's [`NewKey`].
    pub fn into_new_key(self) -> Result<NewKey, ApiError> {
        validate_owner(&self.owner)?;
        validate_scopes(&self.scopes)?;
        let mut new = NewKey::new(self.owner, self.scopes);
        if let Some(at) = self.expires_at {
            new = new.expires_at(at);
        }
        if let Some(limit) = self.rate_limit {
            new = new.rate_limit(limit.into_rate_limit()?);
        }
        if let Some(quota) = self.monthly_quota {
            if quota == 0 {
                return Err(ApiError::invalid(
                    "monthly_quota must be at least 1 (a key with a quota of 0 could never be used)",
                ));
            }
            if i64::try_from(quota).is_err() {
                return Err(ApiError::invalid("monthly_quota is too large"));
            }
            new = new.monthly_quota(quota);
        }
        Ok(new)
    }
}

impl RateLimitBody {
    /// Checks the bounds and builds the core's [`RateLimit`], refusing one
    /// the core cannot enforce exactly ([`RateLimit::try_new`]).
    pub fn into_rate_limit(self) -> Result<RateLimit, ApiError> {
        if self.requests == 0 {
            return Err(ApiError::invalid("rate_limit.requests must be at least 1"));
        }
        if !(1..=MAX_RATE_WINDOW_SECS).contains(&self.per_seconds) {
            return Err(ApiError::invalid(format!(
                "rate_limit.per_seconds must be between 1 and {MAX_RATE_WINDOW_SECS}"
            )));
        }
        RateLimit::try_new(self.requests, Duration::from_secs(self.per_seconds))
            .map_err(|e| ApiError::invalid(format!("rate_limit: {e}")))
    }
}

/// Checks an owner name: 1 to [`MAX_OWNER_LEN`] bytes, no control characters.
pub fn validate_owner(owner: &str) -> Result<(), ApiError> {
    if owner.trim().is_empty() || owner.len() > MAX_OWNER_LEN {
        return Err(ApiError::invalid(format!(
            "owner must be 1 to {MAX_OWNER_LEN} bytes"
        )));
    }
    if owner.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "owner must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks scopes: at most [`MAX_SCOPES`], each 1 to [`MAX_SCOPE_LEN`]
/// visible ASCII characters.
pub fn validate_scopes(scopes: &[String]) -> Result<(), ApiError> {
    if scopes.len() > MAX_SCOPES {
        return Err(ApiError::invalid(format!("at most {MAX_SCOPES} scopes")));
    }
    for scope in scopes {
        if scope.is_empty()
            || scope.len() > MAX_SCOPE_LEN
            || !scope.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ApiError::invalid(format!(
                "scope {scope:?}: 1 to {MAX_SCOPE_LEN} visible ASCII characters expected"
            )));
        }
    }
    Ok(())
}

/// `201` of `POST /admin/keys` and of rotation: the only time the plaintext
/// is shown. Its `Debug` (logs, panic messages) redacts the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKeyResponse {
    /// The new key's id.
    pub key_id: String,
    /// The plaintext key.
    pub key: String,
}

impl std::fmt::Debug for CreatedKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKeyResponse")
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// `GET /admin/keys/{key_id}`: the record as the store has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyDetailsResponse {
    /// Id.
    pub key_id: String,
    /// Owner.
    pub owner: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `active`, `revoked` or `disabled`.
    pub status: String,
    /// Expiry (RFC 3339) or `null`.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Requests flushed to the store so far.
    pub total_requests: u64,
    /// Latest flushed request (RFC 3339) or `null`.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// The rate limit, if any.
    pub rate_limit: Option<RateLimitBody>,
    /// The monthly quota, if any.
    pub monthly_quota: Option<u64>,
}

impl From<KeyDetails> for KeyDetailsResponse {
    fn from(d: KeyDetails) -> Self {
        let r = d.record;
        Self {
            key_id: r.id.to_string(),
            owner: r.owner,
            scopes: r.scopes.as_slice().to_vec(),
            status: r.status.as_str().to_owned(),
            expires_at: r.expires_at,
            total_requests: d.total_requests,
            last_used_at: d.last_used_at,
            rate_limit: r.rate_limit.map(|l| RateLimitBody {
                requests: l.requests,
                per_seconds: l.per_seconds(),
            }),
            monthly_quota: r.monthly_quota,
        }
    }
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoamiResponse {
    /// The key's id.
    pub key_id: String,
    /// The key's owner.
    pub owner: String,
    /// The key's scopes.
    pub scopes: Vec<String>,
}

impl From<&KeyRecord> for WhoamiResponse {
    fn from(r: &KeyRecord) -> Self {
        Self {
            key_id: r.id.to_string(),
            owner: r.owner.clone(),
            scopes: r.scopes.as_slice().to_vec(),
        }
    }
}

/// One item of `GET /admin/owners/{owner}/keys`: a key of the owner as the
/// owner key-list cache has it (no hash, no plaintext).
///
/// ```
/// use apikey_cache::{KeyHasher, KeyId, KeyRecord, OwnerKey, Scopes};
/// use apikey_cache_examples::demo::contract::OwnerKeyResponse;
///
/// let hash = KeyHasher::new(None).hash(b"ak_example");
/// let record = KeyRecord::new(KeyId::from("key_1"), hash, "acme", Scopes::new(["a"]));
/// let item = OwnerKeyResponse::from(OwnerKey::from(&record));
/// assert_eq!(
///     serde_json::to_value(&item).unwrap(),
///     serde_json::json!({"key_id": "key_1", "scopes": ["a"], "status": "active", "expires_at": null})
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OwnerKeyResponse {
    /// Id.
    pub key_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `active`, `revoked` or `disabled` (an expired key stays `active`:
    /// see `expires_at`).
    pub status: String,
    /// Expiry (RFC 3339) or `null`.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

impl From<OwnerKey> for OwnerKeyResponse {
    fn from(k: OwnerKey) -> Self {
        Self {
            key_id: k.key_id.to_string(),
            scopes: k.scopes.as_slice().to_vec(),
            status: k.status.as_str().to_owned(),
            expires_at: k.expires_at,
        }
    }
}

/// `POST /admin/owners/{owner}/revoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedResponse {
    /// Keys revoked by this call.
    pub revoked: usize,
}

/// `POST /admin/keys/{key_id}/rotate` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RotateRequest {
    /// How long the old key keeps working (0 to [`MAX_GRACE_SECS`]).
    #[serde(default)]
    pub grace_seconds: u64,
}

/// `PUT /admin/cache/mode` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SetModeRequest {
    /// `normal` or `database_only`.
    #[serde(deserialize_with = "de_mode")]
    pub mode: Mode,
    /// Every instance sharing the Redis (needs Redis), or this one only.
    #[serde(default)]
    pub fleet: bool,
}

fn de_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "normal" => Ok(Mode::Normal),
        "database_only" => Ok(Mode::DatabaseOnly),
        other => Err(serde::de::Error::custom(format!(
            "unknown mode {other:?}: expected \"normal\" or \"database_only\""
        ))),
    }
}

/// `200` of `PUT /admin/cache/mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeResponse {
    /// The effective mode of this instance now.
    pub mode: String,
    /// This instance's own mode.
    pub local_mode: String,
    /// The fleet-wide mode as this instance last saw it.
    pub fleet_mode: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn create(json: &str) -> Result<NewKey, ApiError> {
        parse_json::<CreateKeyRequest>(json.as_bytes())?.into_new_key()
    }

    #[test]
    fn created_key_debug_redacts_the_key() {
        let created = CreatedKeyResponse {
            key_id: "key_1".into(),
            key: "ak_live_s3cr3t_value".into(),
        };
        for shown in [format!("{created:?}"), format!("{created:#?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("key_1"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn create_key_bodies() {
        let new = create(
            r#"{"owner":"acme","scopes":["a"],"expires_at":"2030-01-01T00:00:00Z",
                "rate_limit":{"requests":3,"per_seconds":60},"monthly_quota":2}"#,
        )
        .unwrap();
        assert_eq!(
            new.rate_limit,
            Some(RateLimit::new(3, Duration::from_secs(60)))
        );
        assert_eq!(new.monthly_quota, Some(2));
        assert!(new.expires_at.is_some());

        for bad in [
            "",
            "[]",
            r#"{"owner":"acme"}"#,
            r#"{"owner":"","scopes":[]}"#,
            r#"{"owner":"acme","scopes":["a b"]}"#,
            r#"{"owner":"acme","scopes":[""]}"#,
            r#"{"owner":"acme","scopes":[],"scope":[]}"#,
            r#"{"owner":"acme","scopes":[],"expires_at":"tomorrow"}"#,
            r#"{"owner":"acme","scopes":[],"rate_limit":{"requests":0,"per_seconds":1}}"#,
            r#"{"owner":"acme","scopes":[],"rate_limit":{"requests":1,"per_seconds":0}}"#,
            r#"{"owner":"acme","scopes":[],"monthly_quota":-1}"#,
            r#"{"owner":"acme","scopes":[],"monthly_quota":18446744073709551615}"#,
            r#"{"owner":"acme","scopes":[],"monthly_quota":0}"#,
            // 2^32 - 1 per 366 days is more than the core enforces exactly.
            r#"{"owner":"acme","scopes":[],"rate_limit":{"requests":4294967295,"per_seconds":31622400}}"#,
        ] {
            let err = create(bad).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
            assert_eq!(err.body()["error"], "invalid_request");
        }
    }

    #[test]
    fn quota_zero_and_inexact_limits_say_why() {
        let err = create(r#"{"owner":"acme","scopes":[],"monthly_quota":0}"#).unwrap_err();
        assert!(
            err.to_string().contains("monthly_quota must be at least 1"),
            "{err}"
        );
        let err = create(
            r#"{"owner":"acme","scopes":[],"rate_limit":{"requests":4294967295,"per_seconds":2098}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("at most 2^53"), "{err}");
        assert!(create(
            r#"{"owner":"acme","scopes":[],"rate_limit":{"requests":4294967295,"per_seconds":2097}}"#
        )
        .is_ok());
        let refused =
            apikey_cache::StoreError::InvalidRateLimit(apikey_cache::RateLimitError::ZeroRequests);
        assert_eq!(ApiError::store(&refused).status(), 400);
    }

    #[test]
    fn mode_bodies() {
        let m: SetModeRequest = parse_json(br#"{"mode":"database_only"}"#).unwrap();
        assert_eq!((m.mode, m.fleet), (Mode::DatabaseOnly, false));
        assert!(parse_json::<SetModeRequest>(br#"{"mode":"fast"}"#).is_err());
    }

    #[test]
    fn error_body_has_extras() {
        let e = ApiError::new(503, "x", "y").with("key_id", "k");
        assert_eq!(
            e.body(),
            serde_json::json!({"error":"x","message":"y","key_id":"k"})
        );
    }
}
