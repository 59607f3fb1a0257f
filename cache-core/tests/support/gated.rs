//! A store wrapper whose calls can be held at a gate or made to fail, to
//! race invalidations and loads step by step.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    async_trait, KeyHash, KeyId, KeyRecord, KeyStore, RecentCursor, RecentKey, StoreError,
    UsageBatch,
};
use tokio::sync::Notify;

/// A point calls wait at while it is held.
#[derive(Default)]
pub struct Gate {
    held: AtomicBool,
    parked: AtomicUsize,
    passed: AtomicUsize,
    fail: AtomicBool,
    release: Notify,
}

impl Gate {
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.release.notify_waiters();
    }

    /// Calls make the store fail while set.
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// Calls waiting at the gate now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    /// Calls that went through the gate so far.
    pub fn passed(&self) -> usize {
        self.passed.load(Ordering::SeqCst)
    }

    /// Waits (at most 10 s) until `n` calls are parked at the gate.
    pub async fn until_parked(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.parked() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing parked at the gate"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn pass(&self) -> Result<(), StoreError> {
        self.passed.fetch_add(1, Ordering::SeqCst);
        if self.held.load(Ordering::SeqCst) {
            let released = self.release.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            self.parked.fetch_add(1, Ordering::SeqCst);
            if self.held.load(Ordering::SeqCst) {
                released.await;
            }
            self.parked.fetch_sub(1, Ordering::SeqCst);
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable(std::io::Error::other(
                "store down (test)",
            )));
        }
        Ok(())
    }
}

/// Gates: `by_hash`, `listed` and `recent` after the read (the answer is
/// already the old one), the others before it. `listing` and `listed`
/// both gate `list_by_owner`.
pub struct GatedStore {
    pub inner: Arc<dyn KeyStore>,
    pub by_hash: Gate,
    pub by_id: Gate,
    pub listing: Gate,
    pub listed: Gate,
    pub usage: Gate,
    /// `recently_used` (cache warming's batches).
    pub recent: Gate,
    /// The `limit` of every `recently_used` call, in order.
    recent_limits: std::sync::Mutex<Vec<usize>>,
}

impl GatedStore {
    pub fn new(inner: Arc<dyn KeyStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            by_hash: Gate::default(),
            by_id: Gate::default(),
            listing: Gate::default(),
            listed: Gate::default(),
            usage: Gate::default(),
            recent: Gate::default(),
            recent_limits: Default::default(),
        })
    }

    /// The `limit` of every `recently_used` call so far, in order.
    pub fn recent_limits(&self) -> Vec<usize> {
        self.recent_limits.lock().unwrap().clone()
    }
}

#[async_trait]
impl KeyStore for GatedStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let found = self.inner.find_by_hash(hash).await;
        self.by_hash.pass().await?;
        found
    }
    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.by_id.pass().await?;
        self.inner.find_by_id(id).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.listing.pass().await?;
        let listed = self.inner.list_by_owner(owner).await;
        self.listed.pass().await?;
        listed
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        self.usage.pass().await?;
        self.inner.record_usage(batch).await
    }
    async fn recently_used(
        &self,
        limit: usize,
        after: Option<&RecentCursor>,
    ) -> Result<Vec<RecentKey>, StoreError> {
        self.recent_limits.lock().unwrap().push(limit);
        let found = self.inner.recently_used(limit, after).await;
        self.recent.pass().await?;
        found
    }
}
