//! Invalidation: dropping keys from every tier on every instance.
//!
//! Order matters for each call: first this instance's L1 (generation bump,
//! then removal; see `cache.rs` for the refill race), then Redis (tombstones
//! that block refills), and only then the pub/sub event. Receivers drop
//! their L1 entry and reload; by then Redis can only answer with the
//! tombstone, so they ask the store and see the new record.

use std::sync::atomic::Ordering;

use crate::events::{self, Action};
use crate::l1::Entry;
use crate::{ApiKeyCache, KeyHash, KeyId, StoreError};

/// An invalidation could not reach every tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidateError {
    /// This instance dropped the entry, but Redis could not be updated:
    /// other instances may keep serving the old record from their L1 (until
    /// `l1_ttl`) or from Redis (until `l2_ttl`). Retry the call.
    #[error("redis could not be updated: {0}")]
    Redis(String),
    /// The store could not say which keys to drop.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Redis commands per pipeline when tombstoning many keys.
const TOMBSTONE_BATCH: usize = 100;

impl ApiKeyCache {
    /// Drops `hash` from every tier on every instance: this instance's L1 at
    /// once, Redis (a tombstone that blocks refills for `tombstone_ttl`),
    /// then every other instance's L1 through a pub/sub event.
    ///
    /// Call it after changing a key in the store. On `Err`, retry.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey, Outcome, RequiredScopes};
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
    /// let key = store.create_key(cache.hasher(), NewKey::new("acme", ["a"])).await.unwrap();
    /// assert!(cache.verify_key(&key.plaintext, &RequiredScopes::none()).await.is_valid());
    /// store.revoke_key(&key.record.id).await.unwrap();
    /// cache.invalidate(&key.record.hash).await.unwrap();
    /// assert_eq!(cache.verify_key(&key.plaintext, &RequiredScopes::none()).await, Outcome::Revoked);
    /// # });
    /// ```
    pub async fn invalidate(&self, hash: &KeyHash) -> Result<(), InvalidateError> {
        self.invalidate_local(hash, "local");
        let Some(l2) = &self.inner.l2 else {
            return Ok(());
        };
        let redis_err = |e: crate::l2::L2Error| InvalidateError::Redis(e.to_string());
        l2.tombstone(hash, self.inner.config.tombstone_ttl)
            .await
            .map_err(redis_err)?;
        let event = events::encode(&self.inner.instance_id, Action::Key { h: hash.to_hex() });
        l2.publish(&events::channel(&self.inner.config.key_prefix), event)
            .await
            .map_err(redis_err)
    }

    /// [`invalidate`](Self::invalidate) by key id (one store lookup for the
    /// hash). Unknown ids are not an error: there is nothing to drop.
    pub async fn invalidate_key_id(&self, id: &KeyId) -> Result<(), InvalidateError> {
        let record = tokio::time::timeout(
            self.inner.config.store_timeout,
            self.inner.store.find_by_id(id),
        )
        .await
        .map_err(|_| StoreError::Timeout)??;
        match record {
            Some(r) => self.invalidate(&r.hash).await,
            None => Ok(()),
        }
    }

    /// Drops every cached key of `owner` on every instance (a suspended
    /// account, a departing tenant) with one pub/sub event, however many keys
    /// the owner has. Redis entries are tombstoned by hash, from the store's
    /// list of the owner's keys, in pipelined batches.
    ///
    /// Revoke the keys in the store first (e.g. `KeyAdmin::revoke_owner`).
    pub async fn invalidate_owner(&self, owner: &str) -> Result<(), InvalidateError> {
        self.invalidate_owner_local(owner, "local");
        let Some(l2) = &self.inner.l2 else {
            return Ok(());
        };
        let records = tokio::time::timeout(
            self.inner.config.store_timeout,
            self.inner.store.list_by_owner(owner),
        )
        .await
        .map_err(|_| StoreError::Timeout)??;
        let hashes: Vec<KeyHash> = records.iter().map(|r| r.hash).collect();
        for batch in hashes.chunks(TOMBSTONE_BATCH) {
            l2.tombstone_many(batch, self.inner.config.tombstone_ttl)
                .await
                .map_err(|e| InvalidateError::Redis(e.to_string()))?;
        }
        let event = events::encode(
            &self.inner.instance_id,
            Action::Owner {
                o: owner.to_owned(),
            },
        );
        l2.publish(&events::channel(&self.inner.config.key_prefix), event)
            .await
            .map_err(|e| InvalidateError::Redis(e.to_string()))
    }

    /// Drops `hash` from this instance's L1 only.
    pub(crate) fn invalidate_local(&self, hash: &KeyHash, source: &'static str) {
        let inner = &*self.inner;
        // Bump first, remove second: see the refill race in `cache.rs`.
        inner.generation.fetch_add(1, Ordering::SeqCst);
        inner.flights.forget(hash);
        inner.l1.remove(hash);
        self.count_invalidation(source);
    }

    /// Drops every L1 entry of `owner` on this instance.
    pub(crate) fn invalidate_owner_local(&self, owner: &str, source: &'static str) {
        let inner = &*self.inner;
        inner.generation.fetch_add(1, Ordering::SeqCst);
        // Loads in flight do not know their owner until they finish; detach
        // them all (the generation bump keeps their results out of L1).
        inner.flights.forget_all();
        let dropped = inner.l1.remove_if(|entry| match entry {
            Entry::Found(f, _) => f.record.owner == owner,
            Entry::NotFound { .. } => false,
        });
        tracing::info!(owner, dropped, source, "owner invalidated");
        self.count_invalidation(source);
    }

    /// Empties this instance's L1.
    pub(crate) fn clear_local(&self) {
        let inner = &*self.inner;
        inner.generation.fetch_add(1, Ordering::SeqCst);
        inner.flights.forget_all();
        inner.l1.clear();
    }

    /// The subscriber (re)connected: events may have been missed.
    pub(crate) fn resync(&self, first: bool) {
        self.clear_local();
        if !first {
            self.inner.events.resyncs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("invalidation subscriber reconnected; local cache cleared");
        }
    }

    fn count_invalidation(&self, source: &'static str) {
        let stats = &self.inner.stats;
        match source {
            "remote" => stats.invalidations_remote.fetch_add(1, Ordering::Relaxed),
            _ => stats.invalidations_local.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Drops this instance's whole L1 (Redis and other instances are left
    /// alone).
    pub fn clear_l1(&self) {
        self.clear_local();
    }
}
