//! The database behind the cache: the [`KeyStore`] trait a host implements,
//! and ready-made stores.
//!
//! The cache only reads through [`KeyStore`] and writes usage batches; the
//! admin operations a host needs to issue and withdraw keys are on
//! [`KeyAdmin`], implemented by the ready-made stores:
//!
//! * [`SqliteStore`] (feature `sqlite`): the embedded default.
//! * [`PostgresStore`] (feature `postgres`): for production fleets.
//! * [`MemoryStore`]: in-process, for tests and examples.
//!
//! The two SQL stores are one implementation (`sql/`); `sqlite.rs` and
//! `postgres.rs` hold only their connection set-up and dialect (column
//! types, migrations, the usage update).
//!
//! ```
//! use apikey_cache::{KeyAdmin, KeyHasher, KeyStore, MemoryStore, NewKey};
//!
//! # tokio_test_block_on(async {
//! let store = MemoryStore::new();
//! let hasher = KeyHasher::new(None);
//! let created = store.create_key(&hasher, NewKey::new("acme", ["orders:read"])).await?;
//! let found = store.find_by_hash(&hasher.hash(created.plaintext.as_bytes())).await?;
//! assert_eq!(found.map(|r| r.id), Some(created.record.id));
//! # Ok::<(), apikey_cache::StoreError>(())
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

mod admin;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

use async_trait::async_trait;
use time::OffsetDateTime;

pub use admin::{CreatedKey, KeyAdmin, KeyDetails, NewKey};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use crate::{KeyHash, KeyId, KeyRecord};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("key store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store did not answer in time.
    #[error("key store timed out")]
    Timeout,
    /// A row could not be turned into a [`KeyRecord`].
    #[error("bad data in key store: {0}")]
    Corrupt(String),
    /// The key generator failed.
    #[error(transparent)]
    KeyGen(#[from] crate::KeyGenError),
    /// A new key's rate limit cannot be enforced exactly; nothing was
    /// written.
    #[error("invalid rate limit: {0}")]
    InvalidRateLimit(#[from] crate::RateLimitError),
    /// The store does not implement this operation (a [`KeyStore`] method
    /// with a default body, such as [`KeyStore::recently_used`]).
    #[error("not supported by this key store: {0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// Wraps any error as [`StoreError::Unavailable`].
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(e))
    }
}

/// Requests counted for one key since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key.
    pub key_id: KeyId,
    /// Requests to add to its total.
    pub requests: u64,
    /// The latest request time in this delta.
    pub last_used_at: OffsetDateTime,
}

/// A batch of usage deltas with an id the store deduplicates: applying the
/// same batch twice must count it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBatch {
    /// Unique per batch; a retry reuses it.
    pub id: uuid::Uuid,
    /// One entry per key.
    pub deltas: Vec<UsageDelta>,
}

/// One key in most-recently-used order: its record and when it was last
/// used (as the usage flush keeps it). See [`KeyStore::recently_used`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecentKey {
    /// The key's record, whatever its status.
    pub record: KeyRecord,
    /// The key's `last_used_at`.
    pub last_used_at: OffsetDateTime,
}

impl RecentKey {
    /// Bundles a record with its last use.
    pub fn new(record: KeyRecord, last_used_at: OffsetDateTime) -> Self {
        Self {
            record,
            last_used_at,
        }
    }

    /// Where the page after this key starts.
    pub fn cursor(&self) -> RecentCursor {
        RecentCursor::new(self.last_used_at, self.record.hash)
    }
}

/// A position in most-recently-used order: the page after it holds the keys
/// that come after `(last_used_at, hash)` when keys are sorted by
/// `last_used_at` descending, then by hash descending (bytewise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecentCursor {
    /// The last key's `last_used_at`.
    pub last_used_at: OffsetDateTime,
    /// The last key's hash: ties on `last_used_at` are broken by hash, which
    /// is unique and compares the same in every database (bytes).
    pub hash: KeyHash,
}

impl RecentCursor {
    /// The position just after the key `(last_used_at, hash)`.
    pub fn new(last_used_at: OffsetDateTime, hash: KeyHash) -> Self {
        Self { last_used_at, hash }
    }

    /// Whether a key `(last_used_at, hash)` comes after this position.
    pub fn precedes(&self, last_used_at: OffsetDateTime, hash: &KeyHash) -> bool {
        (last_used_at, hash.as_bytes()) < (self.last_used_at, self.hash.as_bytes())
    }
}

/// The source of truth the cache reads through. Implement it over your own
/// database, or use one of the ready-made stores.
///
/// Implementations should fail fast (a bounded connection-acquire timeout)
/// rather than queue forever: the cache turns a failure into a cached answer
/// or a 503, never into an accepted request.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record whose hash is `hash`, if any (whatever its status).
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError>;

    /// The record with id `id`, if any.
    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Every record of `owner`.
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError>;

    /// Adds a usage batch to the durable totals, exactly once per batch id.
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError>;

    /// Up to `limit` keys that have been used (`last_used_at` set), most
    /// recently used first (ties broken by hash, descending, bytewise),
    /// starting after `after` (the [`RecentKey::cursor`] of the previous
    /// page's last key) or from the top. Keys of any status are listed.
    /// One query per call: cache warming
    /// ([`CacheConfig::warm_keys`](crate::CacheConfig::warm_keys)) pages
    /// through it in batches.
    ///
    /// The default implementation answers [`StoreError::Unsupported`], so a
    /// store written before this method existed still compiles; warming over
    /// such a store reports `failed` (and logs why) while everything else
    /// works as before.
    async fn recently_used(
        &self,
        limit: usize,
        after: Option<&RecentCursor>,
    ) -> Result<Vec<RecentKey>, StoreError> {
        let _ = (limit, after);
        Err(StoreError::Unsupported("recently_used"))
    }
}

#[async_trait]
impl<T: KeyStore + ?Sized> KeyStore for std::sync::Arc<T> {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        (**self).find_by_hash(hash).await
    }
    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        (**self).find_by_id(id).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        (**self).list_by_owner(owner).await
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        (**self).record_usage(batch).await
    }
    async fn recently_used(
        &self,
        limit: usize,
        after: Option<&RecentCursor>,
    ) -> Result<Vec<RecentKey>, StoreError> {
        (**self).recently_used(limit, after).await
    }
}
