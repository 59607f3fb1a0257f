//! The admin operations of the contract, framework-neutral: change the store
//! first, then invalidate every cache tier. A demo's handlers only parse the
//! request, call one of these, and render the result.
//!
//! ```
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
//! use apikey_cache_examples::demo::admin::Admin;
//! use apikey_cache_examples::demo::contract::{parse_json, CreateKeyRequest};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = Arc::new(MemoryStore::new());
//! let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
//! let admin = Admin::new(cache, store);
//! let req: CreateKeyRequest = parse_json(br#"{"owner": "acme", "scopes": ["orders:read"]}"#)?;
//! let created = admin.create_key(req).await?;
//! admin.revoke_key(&created.key_id).await?;
//! assert_eq!(admin.key_details(&created.key_id).await?.status, "revoked");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Choices
//!
//! * Rotation refuses a key that is revoked, disabled or expired (409
//!   `key_not_active`): rotating must not revive a withdrawn key. The new key
//!   copies the old one's owner, scopes, rate limit, quota and expiry (a
//!   rotation replaces the secret, not the policy). The old key's expiry
//!   becomes `now + grace_seconds`, or stays earlier if it already was.
//! * If the invalidation after a rotation fails, the answer is a 503
//!   `invalidation_failed` that still carries the new `key_id` and `key`: the
//!   plaintext exists only in this answer.
//! * `fleet: true` without Redis is a 409 `fleet_mode_unavailable`; with
//!   Redis down it is a 503 `fleet_mode_failed`.
//! * Every issued key (`POST /admin/keys`, and the new key of a rotation)
//!   invalidates its owner's key list
//!   ([`ApiKeyCache::invalidate_owner_list`]); revocations and rotations
//!   drop the list through the key and owner invalidations they make
//!   anyway. If the list's invalidation cannot reach Redis the answer is
//!   still 201 (the key exists and its plaintext is only in this answer):
//!   this instance's list is right at once, the cache retries the rest in
//!   the background, and other instances' lists may miss the new key until
//!   it lands. A stale list never lets a key in: it is an admin read.

use std::sync::Arc;

use apikey_cache::{ApiKeyCache, KeyAdmin, KeyId, KeyStatus, NewKey};
use time::OffsetDateTime;

use super::contract::{
    validate_owner, ApiError, CreateKeyRequest, CreatedKeyResponse, KeyDetailsResponse,
    ModeResponse, OwnerKeyResponse, RevokedResponse, RotateRequest, SetModeRequest, MAX_GRACE_SECS,
};

/// The cache and the store's admin side, shared by every admin handler.
/// Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    cache: ApiKeyCache,
    store: Arc<dyn KeyAdmin>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn key_id(raw: &str) -> Result<KeyId, ApiError> {
    if raw.is_empty() || raw.len() > 128 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::not_found("no such key"));
    }
    Ok(KeyId::new(raw))
}

impl Admin {
    /// Admin operations over `cache` and the store behind it (`store` must be
    /// the store the cache reads).
    pub fn new(cache: ApiKeyCache, store: Arc<dyn KeyAdmin>) -> Self {
        Self { cache, store }
    }

    /// The cache.
    pub fn cache(&self) -> &ApiKeyCache {
        &self.cache
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyAdmin> {
        &self.store
    }

    /// `POST /admin/keys`.
    pub async fn create_key(&self, req: CreateKeyRequest) -> Result<CreatedKeyResponse, ApiError> {
        let new = req.into_new_key()?;
        self.issue(new).await
    }

    async fn issue(&self, new: NewKey) -> Result<CreatedKeyResponse, ApiError> {
        let created = self
            .store
            .create_key(self.cache.hasher(), new)
            .await
            .map_err(|e| ApiError::store(&e))?;
        tracing::info!(
            key_id = %created.record.id,
            owner = %created.record.owner,
            key = %created.record.hash.fingerprint(),
            "key issued"
        );
        if let Err(e) = self
            .cache
            .invalidate_owner_list(&created.record.owner)
            .await
        {
            tracing::warn!(
                owner = %created.record.owner,
                error = %e,
                "the owner's key list could not be invalidated in redis; retrying in the background"
            );
        }
        Ok(CreatedKeyResponse {
            key_id: created.record.id.to_string(),
            key: created.plaintext,
        })
    }

    /// `GET /admin/keys/{key_id}`.
    pub async fn key_details(&self, id: &str) -> Result<KeyDetailsResponse, ApiError> {
        let id = key_id(id)?;
        match self.store.key_details(&id).await {
            Ok(Some(details)) => Ok(details.into()),
            Ok(None) => Err(ApiError::not_found("no such key")),
            Err(e) => Err(ApiError::store(&e)),
        }
    }

    /// `DELETE /admin/keys/{key_id}`: revoked in the store, then invalidated
    /// everywhere. Revoking a revoked key again is fine (and retries the
    /// invalidation).
    pub async fn revoke_key(&self, id: &str) -> Result<(), ApiError> {
        let id = key_id(id)?;
        let record = match self.store.revoke_key(&id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(ApiError::not_found("no such key")),
            Err(e) => return Err(ApiError::store(&e)),
        };
        tracing::info!(key_id = %id, key = %record.hash.fingerprint(), "key revoked");
        self.cache
            .invalidate(&record.hash)
            .await
            .map_err(|e| ApiError::invalidation("the revocation", &e))
    }

    /// `POST /admin/owners/{owner}/revoke`. The owner from the path is
    /// checked like the body's `owner` (a NUL byte would otherwise reach
    /// the database and come back as a 503).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// use apikey_cache_examples::demo::admin::Admin;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = Arc::new(MemoryStore::new());
    /// let admin = Admin::new(ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap(), store);
    /// let err = admin.revoke_owner("acme\0corp").await.unwrap_err();
    /// assert_eq!(err.status(), 400);
    /// assert_eq!(admin.revoke_owner("acme").await.unwrap().revoked, 0);
    /// # });
    /// ```
    pub async fn revoke_owner(&self, owner: &str) -> Result<RevokedResponse, ApiError> {
        validate_owner(owner)?;
        let revoked = self
            .store
            .revoke_owner(owner)
            .await
            .map_err(|e| ApiError::store(&e))?;
        tracing::info!(owner, revoked = revoked.len(), "owner revoked");
        self.cache
            .invalidate_owner(owner)
            .await
            .map_err(|e| ApiError::invalidation("the revocation", &e))?;
        Ok(RevokedResponse {
            revoked: revoked.len(),
        })
    }

    /// `GET /admin/owners/{owner}/keys`: the owner's keys from the owner
    /// key-list cache ([`ApiKeyCache::list_owner_keys`]), in key id order.
    /// The owner is checked like the body's `owner` (400); a store failure
    /// with nothing cached is a 503, never an empty list.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// use apikey_cache_examples::demo::admin::Admin;
    /// use apikey_cache_examples::demo::contract::{parse_json, CreateKeyRequest};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = Arc::new(MemoryStore::new());
    /// let admin = Admin::new(ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap(), store);
    /// assert!(admin.list_owner_keys("acme").await.unwrap().is_empty());
    /// let req: CreateKeyRequest = parse_json(br#"{"owner": "acme", "scopes": ["a"]}"#).unwrap();
    /// let created = admin.create_key(req).await.unwrap();
    /// let listed = admin.list_owner_keys("acme").await.unwrap();
    /// assert_eq!((listed[0].key_id.as_str(), listed[0].status.as_str()), (created.key_id.as_str(), "active"));
    /// admin.revoke_key(&created.key_id).await.unwrap();
    /// assert_eq!(admin.list_owner_keys("acme").await.unwrap()[0].status, "revoked");
    /// assert_eq!(admin.list_owner_keys("acme\0corp").await.unwrap_err().status(), 400);
    /// # });
    /// ```
    pub async fn list_owner_keys(&self, owner: &str) -> Result<Vec<OwnerKeyResponse>, ApiError> {
        validate_owner(owner)?;
        let keys = self
            .cache
            .list_owner_keys(owner)
            .await
            .map_err(|e| ApiError::store(&e))?;
        Ok(keys.into_iter().map(OwnerKeyResponse::from).collect())
    }

    /// `POST /admin/keys/{key_id}/rotate`.
    pub async fn rotate_key(
        &self,
        id: &str,
        req: RotateRequest,
    ) -> Result<CreatedKeyResponse, ApiError> {
        if req.grace_seconds > MAX_GRACE_SECS {
            return Err(ApiError::invalid(format!(
                "grace_seconds must be at most {MAX_GRACE_SECS}"
            )));
        }
        let id = key_id(id)?;
        let old = match self.store.find_by_id(&id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(ApiError::not_found("no such key")),
            Err(e) => return Err(ApiError::store(&e)),
        };
        let now = OffsetDateTime::now_utc();
        if old.status != KeyStatus::Active || old.is_expired_at(now) {
            let state = if old.status == KeyStatus::Active {
                "expired"
            } else {
                old.status.as_str()
            };
            return Err(ApiError::new(
                409,
                "key_not_active",
                format!("the key is {state}; only an active key can be rotated"),
            ));
        }
        // Bounded by MAX_GRACE_SECS above, so neither step can overflow.
        let grace = i64::try_from(req.grace_seconds).unwrap_or(i64::MAX);
        let grace_end = now
            .checked_add(time::Duration::seconds(grace))
            .ok_or_else(|| ApiError::invalid("grace_seconds is too large"))?;
        let mut new = NewKey::new(old.owner.clone(), old.scopes.as_slice().iter().cloned());
        if let Some(at) = old.expires_at {
            new = new.expires_at(at);
        }
        if let Some(limit) = old.rate_limit {
            new = new.rate_limit(limit);
        }
        if let Some(quota) = old.monthly_quota {
            new = new.monthly_quota(quota);
        }
        let created = self.issue(new).await?;
        let old_end = old.expires_at.map_or(grace_end, |at| at.min(grace_end));
        let updated = match self.store.set_expires_at(&id, Some(old_end)).await {
            Ok(Some(record)) => record,
            // Deleted between the two calls: nothing left to expire.
            Ok(None) => return Ok(created),
            Err(e) => {
                return Err(ApiError::store(&e)
                    .with("key_id", created.key_id)
                    .with("key", created.key))
            }
        };
        tracing::info!(
            old_key_id = %id,
            new_key_id = %created.key_id,
            grace_seconds = req.grace_seconds,
            "key rotated"
        );
        match self.cache.invalidate(&updated.hash).await {
            Ok(()) => Ok(created),
            Err(e) => Err(ApiError::invalidation("the old key's new expiry", &e)
                .with("key_id", created.key_id)
                .with("key", created.key)),
        }
    }

    /// `PUT /admin/cache/mode`.
    pub async fn set_mode(&self, req: SetModeRequest) -> Result<ModeResponse, ApiError> {
        if req.fleet {
            if self.cache.config().redis_url.is_none() {
                return Err(ApiError::new(
                    409,
                    "fleet_mode_unavailable",
                    "no Redis is configured: the fleet-wide mode cannot be shared; \
                     use \"fleet\": false for this instance",
                ));
            }
            self.cache.set_fleet_mode(req.mode).await.map_err(|e| {
                tracing::error!(error = %e, mode = req.mode.as_str(), "fleet mode change failed");
                ApiError::new(
                    503,
                    "fleet_mode_failed",
                    format!("the fleet-wide mode could not be set ({e}); retry"),
                )
            })?;
        } else {
            self.cache.set_mode(req.mode);
        }
        tracing::warn!(
            mode = req.mode.as_str(),
            fleet = req.fleet,
            "cache mode set"
        );
        Ok(self.mode())
    }

    /// The modes now.
    pub fn mode(&self) -> ModeResponse {
        ModeResponse {
            mode: self.cache.mode().as_str().to_owned(),
            local_mode: self.cache.local_mode().as_str().to_owned(),
            fleet_mode: self.cache.fleet_mode().as_str().to_owned(),
        }
    }
}
