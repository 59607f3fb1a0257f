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
}
