//! Invalidation: dropping keys from every tier on every instance.
//!
//! Each call runs in three steps:
//!
//! 1. At once, before its first await: this instance *holds* what the call
//!    covers (`guard.rs`: Redis's answers for it are not trusted) and drops
//!    it from L1 (a generation bump and the removal, with no fill in
//!    progress; see `cache.rs` for the refill race), and drops the keys'
//!    token leases (no leftover token is spent; they go back to the fleet
//!    in the background, `limits/lease.rs`). From here on this instance
//!    refuses the key.
//! 2. In a task of its own (`delivery.rs`), so that dropping the caller's
//!    future cannot stop it: tombstones in Redis that block refills, then
//!    the pub/sub event. Receivers drop their L1 entry and reload; by then
//!    Redis can only answer with the tombstone, so they ask the store.
//! 3. Once Redis has it all: a generation bump (a load that read Redis
//!    before the tombstone cannot keep what it inserts), then the hold ends.
//!    A delivery that fails is retried in the background until it lands;
//!    the hold stays meanwhile.

mod delivery;
mod guard;

use std::sync::atomic::Ordering;

pub(crate) use delivery::{retrier, Invalidations};
pub(crate) use guard::Target;

use crate::{ApiKeyCache, KeyHash, KeyId, StoreError};
use delivery::Job;

/// An invalidation could not reach every tier.
///
/// This instance refuses the key whatever the error: the entry was dropped
/// locally and Redis's copy is not trusted here until the invalidation
/// lands. It keeps being retried in the background
/// ([`ApiKeyCache::pending_invalidations`]); until then, other instances
/// may serve the old record from their L1 (at most `l1_ttl`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidateError {
    /// Redis could not be updated.
    #[error("redis could not be updated: {0}")]
    Redis(String),
    /// The store could not say which keys to drop.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiKeyCache {
    /// Drops `hash` from every tier on every instance: this instance's L1 at
    /// once, Redis (a tombstone that blocks refills for `tombstone_ttl`),
    /// then every other instance's L1 through a pub/sub event.
    ///
    /// Cached owner key lists that hold the key are dropped too (see
    /// [`list_owner_keys`](Self::list_owner_keys)); the owner need not be
    /// known.
    ///
    /// Call it after changing a key in the store. This instance refuses the
    /// key from the moment of the call, even if the returned future is
    /// dropped: the Redis part runs in a task of its own, and on `Err` it is
    /// retried in the background until it lands.
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
    pub fn invalidate(
        &self,
        hash: &KeyHash,
    ) -> impl std::future::Future<Output = Result<(), InvalidateError>> + Send + 'static {
        self.start(Job::Keys(vec![*hash]))
    }

    /// [`invalidate`](Self::invalidate) by key id. This instance drops every
    /// L1 entry with that id at once (a scan of L1); the store is asked for
    /// the key's hash to tombstone it in Redis. Unknown ids are not an
    /// error: there is nothing to drop. Cached owner key lists that hold the
    /// key are dropped too.
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
    /// cache.invalidate_key_id(&key.record.id).await.unwrap();
    /// assert_eq!(cache.verify_key(&key.plaintext, &RequiredScopes::none()).await, Outcome::Revoked);
    /// # });
    /// ```
    pub fn invalidate_key_id(
        &self,
        id: &KeyId,
    ) -> impl std::future::Future<Output = Result<(), InvalidateError>> + Send + 'static {
        self.start(Job::KeyId(id.clone()))
    }

    /// Drops every cached key of `owner` on every instance (a suspended
    /// account, a departing tenant) with one pub/sub event, however many keys
    /// the owner has. This instance drops the owner's L1 entries at once (a
    /// scan of L1); Redis entries are tombstoned by hash, from the store's
    /// list of the owner's keys, in pipelined batches. If the store cannot
    /// list them, the owner event is still published (every instance drops
    /// the owner's entries and distrusts Redis's copies of them for
    /// `tombstone_ttl`), and listing is retried, with the event repeated,
    /// until the tombstones land.
    ///
    /// The owner's key list ([`list_owner_keys`](Self::list_owner_keys)) is
    /// dropped on every instance and tombstoned in Redis too.
    ///
    /// Revoke the keys in the store first (e.g. `KeyAdmin::revoke_owner`).
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
    /// store.revoke_owner("acme").await.unwrap();
    /// cache.invalidate_owner("acme").await.unwrap();
    /// assert_eq!(cache.verify_key(&key.plaintext, &RequiredScopes::none()).await, Outcome::Revoked);
    /// # });
    /// ```
    pub fn invalidate_owner(
        &self,
        owner: &str,
    ) -> impl std::future::Future<Output = Result<(), InvalidateError>> + Send + 'static {
        self.start(Job::Owner(owner.to_owned(), None))
    }

    /// Drops `owner`'s key list (see
    /// [`list_owner_keys`](Self::list_owner_keys)) from every tier on every
    /// instance: this instance's L1 at once, Redis (a tombstone that blocks
    /// refills for `tombstone_ttl`), then every other instance's L1 through
    /// a pub/sub event. The owner's keys themselves stay cached.
    ///
    /// **Call it after issuing a key** (`KeyAdmin::create_key`): a new key
    /// changes no cached key, so nothing else tells the lists. Revocations
    /// and other changes go through [`invalidate`](Self::invalidate),
    /// [`invalidate_key_id`](Self::invalidate_key_id) or
    /// [`invalidate_owner`](Self::invalidate_owner), which drop the lists
    /// holding the key themselves. Cancel-safe and retried like them.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey};
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
    /// assert!(cache.list_owner_keys("acme").await.unwrap().is_empty());
    /// store.create_key(cache.hasher(), NewKey::new("acme", ["a"])).await.unwrap();
    /// cache.invalidate_owner_list("acme").await.unwrap();
    /// assert_eq!(cache.list_owner_keys("acme").await.unwrap().len(), 1);
    /// # });
    /// ```
    pub fn invalidate_owner_list(
        &self,
        owner: &str,
    ) -> impl std::future::Future<Output = Result<(), InvalidateError>> + Send + 'static {
        self.start(Job::OwnerList(owner.to_owned()))
    }

    /// Invalidations started on this instance whose Redis part has not
    /// landed yet (running, or waiting to be retried). While it is above
    /// zero, some instances may still serve a key this one refuses.
    pub fn pending_invalidations(&self) -> usize {
        self.inner.invalidations.open()
    }

    /// Drops `hash` from this instance's L1 only.
    pub(crate) fn invalidate_local(&self, hash: &KeyHash, source: &'static str) {
        self.invalidating(|l1| {
            self.inner.flights.forget(hash);
            l1.remove(hash);
        });
        self.inner.limiter.leases.drop_hash(hash);
        self.inner.owner_lists.drop_hash(hash);
        self.count_invalidation(source);
        self.inner.audit.key_invalidated(Some(hash), None, source);
    }

    /// Drops every L1 entry of `owner` on this instance.
    pub(crate) fn invalidate_owner_local(&self, owner: &str, source: &'static str) {
        let dropped = self.invalidating(|l1| {
            // Loads in flight do not know their owner until they finish;
            // detach them all (the generation bump keeps their results out
            // of L1).
            self.inner.flights.forget_all();
            l1.remove_if(|entry| entry.record().is_some_and(|r| r.owner == owner))
        });
        self.inner
            .limiter
            .leases
            .drop_where(|key| key.owner == owner);
        self.inner.owner_lists.drop_owner(owner);
        self.count_invalidation(source);
        self.inner.audit.owner_invalidated(
            owner,
            u64::try_from(dropped).unwrap_or(u64::MAX),
            source,
        );
    }

    /// Drops every L1 entry of key `id` on this instance (a scan: the hash
    /// is not known yet).
    pub(crate) fn invalidate_id_local(&self, id: &KeyId, source: &'static str) {
        self.invalidating(|l1| {
            self.inner.flights.forget_all();
            l1.remove_if(|entry| entry.record().is_some_and(|r| r.id == *id));
        });
        self.inner.limiter.leases.drop_where(|key| key.id == *id);
        self.inner.owner_lists.drop_id(id);
        self.count_invalidation(source);
        self.inner.audit.key_invalidated(None, Some(id), source);
    }

    /// Drops `owner`'s key list on this instance.
    pub(crate) fn invalidate_owner_list_local(&self, owner: &str) {
        self.inner.owner_lists.drop_owner(owner);
    }

    /// Empties this instance's L1.
    pub(crate) fn clear_local(&self) {
        self.invalidating(|l1| {
            self.inner.flights.forget_all();
            l1.clear();
        });
        self.inner.owner_lists.clear();
    }

    /// The subscriber (re)connected: events may have been missed.
    pub(crate) fn resync(&self, first: bool) {
        self.clear_local();
        if !first {
            // Redis may have restarted, and lost what it knew of this
            // instance's token leases: their tokens are no longer charged
            // there, so none is spent.
            self.inner.limiter.leases.retire_all();
            let resyncs = self.inner.events.resyncs.fetch_add(1, Ordering::Relaxed) + 1;
            self.inner.audit.resync(resyncs);
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
