//! An in-process store: for tests, examples and benchmarks.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{
    CreatedKey, KeyAdmin, KeyDetails, KeyStore, NewKey, RecentCursor, RecentKey, StoreError,
    UsageBatch,
};
use crate::{KeyHash, KeyHasher, KeyId, KeyRecord, KeyStatus};

#[derive(Default)]
struct Inner {
    /// ahash: every usage flush looks up each key used since the last one.
    by_id: HashMap<KeyId, Row, ahash::RandomState>,
    by_hash: HashMap<KeyHash, KeyId>,
    applied_batches: HashSet<uuid::Uuid>,
}

struct Row {
    record: KeyRecord,
    total_requests: u64,
    last_used_at: Option<OffsetDateTime>,
}

/// A [`KeyStore`] + [`KeyAdmin`] held in memory. Nothing survives the process.
///
/// ```
/// use apikey_cache::{KeyHasher, KeyId, KeyRecord, KeyStore, MemoryStore, Scopes};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let hash = KeyHasher::new(None).hash(b"ak_test");
/// store.insert(KeyRecord::new(KeyId::from("k1"), hash, "acme", Scopes::new(["*"])));
/// assert!(store.find_by_hash(&hash).await.unwrap().is_some());
/// # });
/// ```
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.lock().by_id.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters to a test store; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts or replaces a record.
    pub fn insert(&self, record: KeyRecord) {
        let mut inner = self.lock();
        let (total_requests, last_used_at) = match inner.by_id.get(&record.id) {
            Some(old) => (old.total_requests, old.last_used_at),
            None => (0, None),
        };
        if let Some(old) = inner.by_id.get(&record.id).map(|r| r.record.hash) {
            inner.by_hash.remove(&old);
        }
        inner.by_hash.insert(record.hash, record.id.clone());
        inner.by_id.insert(
            record.id.clone(),
            Row {
                record,
                total_requests,
                last_used_at,
            },
        );
    }

    /// Applies `f` to the record with id `id`; the updated record.
    pub fn update(&self, id: &KeyId, f: impl FnOnce(&mut KeyRecord)) -> Option<KeyRecord> {
        let mut inner = self.lock();
        let row = inner.by_id.get_mut(id)?;
        f(&mut row.record);
        row.record.updated_at = OffsetDateTime::now_utc();
        Some(row.record.clone())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .by_hash
            .get(hash)
            .and_then(|id| inner.by_id.get(id))
            .map(|r| r.record.clone()))
    }

    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.lock().by_id.get(id).map(|r| r.record.clone()))
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let mut out: Vec<_> = self
            .lock()
            .by_id
            .values()
            .filter(|r| r.record.owner == owner)
            .map(|r| r.record.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if !inner.applied_batches.insert(batch.id) {
            return Ok(());
        }
        for d in &batch.deltas {
            if let Some(row) = inner.by_id.get_mut(&d.key_id) {
                row.total_requests += d.requests;
                row.last_used_at = Some(match row.last_used_at {
                    Some(prev) if prev > d.last_used_at => prev,
                    _ => d.last_used_at,
                });
            }
        }
        Ok(())
    }

    /// A scan of every key: fine for the sizes a memory store holds.
    async fn recently_used(
        &self,
        limit: usize,
        after: Option<&RecentCursor>,
    ) -> Result<Vec<RecentKey>, StoreError> {
        let inner = self.lock();
        let mut used: Vec<RecentKey> = inner
            .by_id
            .values()
            .filter_map(|row| {
                let at = row.last_used_at?;
                let wanted = after.is_none_or(|c| c.precedes(at, &row.record.hash));
                wanted.then(|| RecentKey::new(row.record.clone(), at))
            })
            .collect();
        used.sort_by(|a, b| {
            (b.last_used_at, b.record.hash.as_bytes())
                .cmp(&(a.last_used_at, a.record.hash.as_bytes()))
        });
        used.truncate(limit);
        Ok(used)
    }
}

#[async_trait]
impl KeyAdmin for MemoryStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create_key(&self, hasher: &KeyHasher, new: NewKey) -> Result<CreatedKey, StoreError> {
        let issued = new.issue(hasher, OffsetDateTime::now_utc())?;
        self.insert(issued.record.clone());
        Ok(issued)
    }

    async fn import_key(&self, record: &KeyRecord) -> Result<KeyRecord, StoreError> {
        self.insert(record.clone());
        Ok(record.clone())
    }

    async fn revoke_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.update(id, |r| r.status = KeyStatus::Revoked))
    }

    async fn revoke_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut inner = self.lock();
        let mut out = Vec::new();
        for row in inner.by_id.values_mut() {
            if row.record.owner == owner && row.record.status != KeyStatus::Revoked {
                row.record.status = KeyStatus::Revoked;
                row.record.updated_at = now;
                out.push(row.record.clone());
            }
        }
        Ok(out)
    }

    async fn set_expires_at(
        &self,
        id: &KeyId,
        at: Option<OffsetDateTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.update(id, |r| r.expires_at = at))
    }

    async fn key_details(&self, id: &KeyId) -> Result<Option<KeyDetails>, StoreError> {
        Ok(self
            .lock()
            .by_id
            .get(id)
            .map(|r| KeyDetails::new(r.record.clone(), r.total_requests, r.last_used_at)))
    }
}
