//! Issuing and withdrawing keys: what an admin API needs from a store.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{KeyStore, StoreError};
use crate::{KeyId, KeyRecord, RateLimit};

/// What to issue.
///
/// ```
/// use std::time::Duration;
/// use apikey_cache::{NewKey, RateLimit};
///
/// let new = NewKey::new("acme", ["orders:read", "orders:write"])
///     .rate_limit(RateLimit::new(100, Duration::from_secs(60)))
///     .monthly_quota(1_000_000);
/// assert_eq!(new.owner, "acme");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewKey {
    /// Owner (account, tenant).
    pub owner: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Optional expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// Optional rate limit; `create_key` refuses one that cannot be
    /// enforced exactly ([`RateLimit::validate`]).
    pub rate_limit: Option<RateLimit>,
    /// Optional monthly quota. `Some(0)` means zero (every request answers
    /// `quota_exceeded`), never unlimited.
    pub monthly_quota: Option<u64>,
}

impl NewKey {
    /// A key for `owner` with `scopes`, no expiry, limit or quota.
    pub fn new<I, S>(owner: impl Into<String>, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            owner: owner.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            expires_at: None,
            rate_limit: None,
            monthly_quota: None,
        }
    }

    /// Sets the expiry.
    pub fn expires_at(mut self, at: OffsetDateTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the rate limit.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets the monthly quota (0 means zero, not unlimited).
    pub fn monthly_quota(mut self, quota: u64) -> Self {
        self.monthly_quota = Some(quota);
        self
    }
}

impl NewKey {
    /// Generates the key and builds its record, created at `now`: what every
    /// store's `create_key` does before writing. Refuses a rate limit that
    /// cannot be enforced exactly, before anything is written.
    pub(crate) fn issue(
        self,
        hasher: &crate::KeyHasher,
        now: OffsetDateTime,
    ) -> Result<CreatedKey, StoreError> {
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        let plaintext = crate::generate_api_key()?;
        let mut record = KeyRecord::new(
            KeyId::generate(),
            hasher.hash(plaintext.as_bytes()),
            self.owner,
            crate::Scopes::new(self.scopes),
        );
        record.expires_at = self.expires_at;
        record.rate_limit = self.rate_limit;
        record.monthly_quota = self.monthly_quota;
        record.created_at = now;
        record.updated_at = now;
        Ok(CreatedKey { record, plaintext })
    }
}

/// A freshly issued key: the only time its plaintext exists outside the
/// caller's hands.
#[derive(Clone)]
#[non_exhaustive]
pub struct CreatedKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The plaintext key, to be shown to its owner once.
    pub plaintext: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("record", &self.record)
            .field("plaintext", &"<redacted>")
            .finish()
    }
}

/// A record with its durable usage totals.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyDetails {
    /// The record.
    pub record: KeyRecord,
    /// Requests flushed to the store so far.
    pub total_requests: u64,
    /// The latest flushed request time.
    pub last_used_at: Option<OffsetDateTime>,
}

impl KeyDetails {
    /// Bundles a record with its totals.
    pub fn new(
        record: KeyRecord,
        total_requests: u64,
        last_used_at: Option<OffsetDateTime>,
    ) -> Self {
        Self {
            record,
            total_requests,
            last_used_at,
        }
    }
}

/// Admin operations of the ready-made stores. After a change that withdraws
/// or narrows a key, call the cache's `invalidate` with the returned record's
/// hash so no cache tier keeps serving the old record.
#[async_trait]
pub trait KeyAdmin: KeyStore {
    /// Creates the schema if needed (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Generates a key, stores its hash and returns the plaintext once.
    async fn create_key(
        &self,
        hasher: &crate::KeyHasher,
        new: NewKey,
    ) -> Result<CreatedKey, StoreError>;

    /// Marks a key revoked; the updated record, or `None` if there is no such key.
    async fn revoke_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Stores a record whose hash was computed elsewhere (importing keys
    /// issued by another system), or replaces the record with the same id
    /// while keeping its usage totals. Returns the record as reads will
    /// return it (stores may round timestamps).
    async fn import_key(&self, record: &KeyRecord) -> Result<KeyRecord, StoreError>;

    /// Revokes every active or disabled key of `owner`; the revoked records.
    async fn revoke_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError>;

    /// Sets or clears a key's expiry (key rotation); the updated record.
    async fn set_expires_at(
        &self,
        id: &KeyId,
        at: Option<OffsetDateTime>,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// A record with its usage totals.
    async fn key_details(&self, id: &KeyId) -> Result<Option<KeyDetails>, StoreError>;
}
