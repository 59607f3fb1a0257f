//! A store wrapper that counts lookups and can hold them, to observe single
//! flight and to race loads against invalidations.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    async_trait, KeyHash, KeyId, KeyRecord, KeyStore, RecentCursor, RecentKey, StoreError,
    UsageBatch,
};
use tokio::sync::Notify;

pub struct CountingStore<S: ?Sized> {
    pub inner: Arc<S>,
    lookups: AtomicUsize,
    delay: std::sync::Mutex<Duration>,
    fail: AtomicBool,
    held: AtomicBool,
    parked: AtomicUsize,
    release: Notify,
}

impl<S: KeyStore + ?Sized> CountingStore<S> {
    pub fn new(inner: Arc<S>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            lookups: AtomicUsize::new(0),
            delay: std::sync::Mutex::new(Duration::ZERO),
            fail: AtomicBool::new(false),
            held: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            release: Notify::new(),
        })
    }

    /// Hash lookups so far.
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Every lookup sleeps this long first.
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    /// Every lookup fails while set.
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// Lookups that start while held wait (after reading!) until `release`.
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Lookups that have read their answer and are waiting for `release`.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.release.notify_waiters();
    }
}

#[async_trait]
impl<S: KeyStore + ?Sized> KeyStore for CountingStore<S> {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable(std::io::Error::other(
                "store down (test)",
            )));
        }
        let found = self.inner.find_by_hash(hash).await;
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
        found
    }
    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.find_by_id(id).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list_by_owner(owner).await
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        self.inner.record_usage(batch).await
    }
    async fn recently_used(
        &self,
        limit: usize,
        after: Option<&RecentCursor>,
    ) -> Result<Vec<RecentKey>, StoreError> {
        self.inner.recently_used(limit, after).await
    }
}
