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
    /// This instance dropped the entry, but Redis could not be updated.
    /// The cache keeps retrying in the background
    /// ([`ApiKeyCache::pending_invalidations`]); until it lands, other
    /// instances may serve the old record from their L1 (at most `l1_ttl`).
    #[error("redis could not be updated: {0}")]
    Redis(String),
    /// The store could not say which keys to drop.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Redis commands per pipeline when tombstoning many keys.
const TOMBSTONE_BATCH: usize = 100;

/// How often failed invalidations are retried.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Invalidations that did not reach Redis yet.
#[derive(Debug, Default)]
pub(crate) struct FailedInvalidations {
    hashes: std::collections::HashSet<KeyHash>,
    owners: std::collections::HashSet<String>,
}

/// Retries failed invalidations for as long as the cache lives.
pub(crate) async fn retrier(cache: std::sync::Weak<crate::cache::Inner>) {
    let mut tick = tokio::time::interval(RETRY_EVERY);
    loop {
        tick.tick().await;
        let Some(inner) = cache.upgrade() else { return };
        ApiKeyCache { inner }.retry_failed_invalidations().await;
    }
}

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
        if self.inner.l2.is_none() {
            return Ok(());
        }
        let result = self
            .invalidate_remote(std::slice::from_ref(hash), None)
            .await;
        if result.is_err() {
            self.remember_failed(std::slice::from_ref(hash), None);
        }
        result
    }

    /// Tombstones `hashes` in Redis, then publishes one event per hash, or
    /// one owner event if `owner` is given.
    async fn invalidate_remote(
        &self,
        hashes: &[KeyHash],
        owner: Option<&str>,
    ) -> Result<(), InvalidateError> {
        let Some(l2) = &self.inner.l2 else {
            return Ok(());
        };
        let redis_err = |e: crate::l2::L2Error| InvalidateError::Redis(e.to_string());
        for batch in hashes.chunks(TOMBSTONE_BATCH) {
            l2.tombstone_many(batch, self.inner.config.tombstone_ttl)
                .await
                .map_err(redis_err)?;
        }
        let channel = events::channel(&self.inner.config.key_prefix);
        let origin = &self.inner.instance_id;
        match owner {
            Some(o) => {
                let event = events::encode(origin, Action::Owner { o: o.to_owned() });
                l2.publish(&channel, event).await.map_err(redis_err)?;
            }
            None => {
                for hash in hashes {
                    let event = events::encode(origin, Action::Key { h: hash.to_hex() });
                    l2.publish(&channel, event).await.map_err(redis_err)?;
                }
            }
        }
        Ok(())
    }

    /// Keeps what could not reach Redis for the background retrier: until it
    /// lands, Redis may still hold the old record, and other instances would
    /// read it back once Redis answers again.
    fn remember_failed(&self, hashes: &[KeyHash], owner: Option<&str>) {
        let mut pending = self
            .inner
            .failed_invalidations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.hashes.extend(hashes.iter().copied());
        if let Some(o) = owner {
            pending.owners.insert(o.to_owned());
        }
        tracing::warn!(
            hashes = pending.hashes.len(),
            owners = pending.owners.len(),
            "invalidation did not reach redis; retrying in the background"
        );
    }

    /// Invalidations waiting to reach Redis.
    pub fn pending_invalidations(&self) -> usize {
        let pending = self
            .inner
            .failed_invalidations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.hashes.len() + pending.owners.len()
    }

    /// Delivers failed invalidations as soon as Redis takes them again.
    pub(crate) async fn retry_failed_invalidations(&self) {
        let taken = {
            let mut pending = self
                .inner
                .failed_invalidations
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if pending.hashes.is_empty() && pending.owners.is_empty() {
                return;
            }
            std::mem::take(&mut *pending)
        };
        let hashes: Vec<KeyHash> = taken.hashes.iter().copied().collect();
        let mut failed = FailedInvalidations::default();
        if self.invalidate_remote(&hashes, None).await.is_err() {
            failed.hashes = taken.hashes;
        }
        for owner in taken.owners {
            // The owner's hashes are in `hashes` already; only the event.
            if self.invalidate_remote(&[], Some(&owner)).await.is_err() {
                failed.owners.insert(owner);
            }
        }
        let mut pending = self
            .inner
            .failed_invalidations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.hashes.extend(failed.hashes);
        pending.owners.extend(failed.owners);
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
        if self.inner.l2.is_none() {
            return Ok(());
        }
        let records = tokio::time::timeout(
            self.inner.config.store_timeout,
            self.inner.store.list_by_owner(owner),
        )
        .await
        .map_err(|_| StoreError::Timeout)??;
        let hashes: Vec<KeyHash> = records.iter().map(|r| r.hash).collect();
        let result = self.invalidate_remote(&hashes, Some(owner)).await;
        if result.is_err() {
            self.remember_failed(&hashes, Some(owner));
        }
        result
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
