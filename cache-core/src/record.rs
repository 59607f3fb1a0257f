//! What the store knows about a key.
//!
//! ```
//! use apikey_cache::{KeyHasher, KeyId, KeyRecord, KeyStatus, Scopes};
//!
//! let hash = KeyHasher::new(None).hash(b"ak_example");
//! let mut record = KeyRecord::new(KeyId::from("key_1"), hash, "acme", Scopes::new(["orders:read"]));
//! record.expires_at = Some(time::macros::datetime!(2030-01-01 0:00 UTC));
//! assert_eq!(record.status, KeyStatus::Active);
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{KeyHash, Scopes};

/// A key's stable identifier (not secret; safe to log and show).
///
/// Cheap to clone (a shared, immutable string): the usage counters hand it
/// from map to batch on every flush. Serialized as a plain string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// Wraps an identifier.
    pub fn new(id: impl Into<String>) -> Self {
        Self(Arc::from(id.into()))
    }

    /// A fresh random identifier: `key_` + a UUID v4 in simple form.
    pub fn generate() -> Self {
        Self::new(format!("key_{}", uuid::Uuid::new_v4().simple()))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for KeyId {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl From<String> for KeyId {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = KeyId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key id (a string)")
            }
            // Straight into the shared string, without a `String` first.
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyId, E> {
                Ok(KeyId::from(v))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Lifecycle state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Usable (subject to expiry).
    Active,
    /// Permanently withdrawn.
    Revoked,
    /// Switched off; may be switched on again.
    Disabled,
}

impl KeyStatus {
    /// The lowercase name used in storage and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
        }
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string that is not `active`, `revoked` or `disabled`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown key status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for KeyStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "revoked" => Ok(Self::Revoked),
            "disabled" => Ok(Self::Disabled),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

/// A per-key request rate: `requests` per `per`.
///
/// Enforced exactly (GCRA, see `limits.rs`): a burst of `requests` at once,
/// then the `k`-th further request at the first whole millisecond at or after
/// `k × per / requests`, so no rounding of the emission interval lets more
/// through over a period. [`RateLimit::try_new`] refuses what cannot be
/// enforced exactly; [`RateLimit::new`] does not check, and a record that
/// reaches the limiter with such a limit is clamped towards stricter (see
/// [`RateLimitError`]).
///
/// The period is kept in whole seconds by the SQL stores and in the shared
/// cache's copy of a record (`per_seconds`), so `try_new` wants whole
/// seconds: a finer period would be truncated on its way through them.
///
/// ```
/// use std::time::Duration;
/// use apikey_cache::RateLimit;
///
/// let limit = RateLimit::try_new(700, Duration::from_secs(1)).unwrap();
/// assert_eq!(limit.per_seconds(), 1);
/// assert!(RateLimit::try_new(0, Duration::from_secs(1)).is_err());
/// assert!(RateLimit::try_new(1, Duration::from_millis(1500)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// Window length.
    #[serde(rename = "per_seconds", with = "secs")]
    pub per: Duration,
}

/// Why a [`RateLimit`] cannot be enforced exactly.
///
/// The limiter counts time in whole milliseconds and keeps its state scaled
/// by `requests`, in numbers that Redis's Lua (doubles) holds exactly only up
/// to 2^53; stores and the shared cache keep the period in whole seconds.
/// A limit that still reaches the limiter (built with
/// [`RateLimit::new`], or read from a store) is clamped rather than refused:
/// zero requests refuse every request; the period is rounded up to whole
/// milliseconds (at least 1) and capped at 2^53 ms; then `requests` is
/// lowered until `requests × period_ms ≤ 2^53`. Every clamp is stricter than
/// the limit asked for, never looser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// Zero requests per period: a key that could never be used.
    #[error("a rate limit must allow at least 1 request")]
    ZeroRequests,
    /// The period is not a whole number of seconds, at least 1: stores and
    /// the shared cache would truncate it.
    #[error("the rate limit period must be a whole number of seconds, at least 1 (got {0:?})")]
    Period(Duration),
    /// `requests × period in ms` exceeds 2^53.
    #[error(
        "{requests} requests per {period_ms} ms cannot be enforced exactly: \
         requests x period in ms must be at most 2^53"
    )]
    TooLarge {
        /// Requests per period.
        requests: u32,
        /// The period, in ms.
        period_ms: u128,
    },
}

impl RateLimit {
    /// The largest `requests × period in ms` enforced exactly: 2^53, the
    /// largest integer below which every integer is a Lua (double) number.
    pub const MAX_REQUESTS_TIMES_MS: u64 = 1 << 53;

    /// `requests` per `per`, unchecked (see [`RateLimit::try_new`]).
    pub const fn new(requests: u32, per: Duration) -> Self {
        Self { requests, per }
    }

    /// `requests` per `per`, if that can be enforced exactly: at least one
    /// request, a period of whole seconds (at least 1), and
    /// `requests × period in ms ≤ 2^53` (e.g. up to 100 million per day, or
    /// `u32::MAX` per 2097 s).
    pub fn try_new(requests: u32, per: Duration) -> Result<Self, RateLimitError> {
        let limit = Self::new(requests, per);
        limit.validate().map(|()| limit)
    }

    /// Whether this limit can be enforced exactly (see [`RateLimit::try_new`]).
    pub fn validate(&self) -> Result<(), RateLimitError> {
        if self.requests == 0 {
            return Err(RateLimitError::ZeroRequests);
        }
        if self.per.as_secs() == 0 || self.per.subsec_nanos() != 0 {
            return Err(RateLimitError::Period(self.per));
        }
        let period_ms = self.per.as_millis();
        if period_ms * u128::from(self.requests) > u128::from(Self::MAX_REQUESTS_TIMES_MS) {
            return Err(RateLimitError::TooLarge {
                requests: self.requests,
                period_ms,
            });
        }
        Ok(())
    }

    /// The window in whole seconds.
    pub const fn per_seconds(&self) -> u64 {
        self.per.as_secs()
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Everything the cache needs to decide on a key, as loaded from the store.
///
/// The struct is `#[non_exhaustive]`: build it with [`KeyRecord::new`] and set
/// the optional fields afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Stable identifier.
    pub id: KeyId,
    /// Hash of the key (never the plaintext).
    pub hash: KeyHash,
    /// The account or tenant the key belongs to.
    pub owner: String,
    /// Granted scopes.
    pub scopes: Scopes,
    /// Lifecycle state.
    pub status: KeyStatus,
    /// After this instant the key is refused as expired.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Optional per-key rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Optional requests per calendar month (UTC). `Some(0)` means zero:
    /// every request is refused as `quota_exceeded` (it never means
    /// unlimited; `None` does).
    pub monthly_quota: Option<u64>,
    /// When the key was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the record last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl KeyRecord {
    /// An active key with no expiry, limit or quota, created now.
    pub fn new(id: KeyId, hash: KeyHash, owner: impl Into<String>, scopes: Scopes) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            id,
            hash,
            owner: owner.into(),
            scopes,
            status: KeyStatus::Active,
            expires_at: None,
            rate_limit: None,
            monthly_quota: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Whether `expires_at` has passed at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        KeyHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_a_plain_string_in_serde_and_cheap_to_clone() {
        let id = KeyId::from("key_1");
        assert_eq!(serde_json::to_string(&id).unwrap_or_default(), r#""key_1""#);
        let back: KeyId = serde_json::from_str(r#""key_\u0031""#).expect("escaped");
        assert_eq!(back, id);
        assert!(serde_json::from_str::<KeyId>("1").is_err());
        let clone = id.clone();
        assert!(
            std::ptr::eq(clone.as_str(), id.as_str()),
            "shared, not copied"
        );
        assert_eq!(KeyId::new(String::from("key_1")), id);
        assert_eq!(format!("{id} {id:?}"), r#"key_1 "key_1""#);
    }
}
