//! [`Dialect`]: what a database adds to the shared SQL store (column
//! types, the embedded schema, the one statement that cannot be shared).

use std::future::Future;

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Database, Encode, Type};
use time::OffsetDateTime;

use crate::store::StoreError;
use crate::{KeyId, Scopes};

/// A database the [`SqlStore`](super::SqlStore) runs on: how its schema
/// stores the values whose column types differ between databases, and the
/// usage update, which each database does its own way.
///
/// The statements themselves are shared (both databases take `$N`
/// parameters), so they live in [`SqlStore`](super::SqlStore).
pub(crate) trait Dialect: Database<Connection: Migrate> {
    /// An instant as bound to a statement.
    type Instant: for<'q> Encode<'q, Self> + Type<Self> + Send + 'static;

    /// A record's scopes as bound to a statement.
    type Scopes: for<'q> Encode<'q, Self> + Type<Self> + Send + 'static;

    /// A usage batch id as bound to a statement.
    type BatchId: for<'q> Encode<'q, Self> + Type<Self> + Send + 'static;

    /// The embedded migrations that create the schema.
    const MIGRATOR: Migrator;

    /// `t` as the schema keeps it (UTC, whole milliseconds).
    fn instant(t: OffsetDateTime) -> Self::Instant;

    /// `scopes` as the schema keeps them.
    fn scopes(scopes: &Scopes) -> Result<Self::Scopes, StoreError>;

    /// `id` as the schema keeps it.
    fn batch_id(id: uuid::Uuid) -> Self::BatchId;

    /// Reads the instant in `column` of key `id`'s row; a value that is no
    /// valid instant is [`StoreError::Corrupt`].
    fn get_instant(
        row: &Self::Row,
        id: &KeyId,
        column: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Reads the scopes of key `id`'s row; anything but a list of strings
    /// is [`StoreError::Corrupt`].
    fn get_scopes(row: &Self::Row, id: &KeyId) -> Result<Vec<String>, StoreError>;

    /// Adds `usage` (one entry per key, in key order) to the keys' totals
    /// within the transaction on `conn`. Totals saturate at `i64::MAX`;
    /// `last_used_at` only moves forward.
    fn add_usage(
        conn: &mut Self::Connection,
        usage: &[KeyUsage<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One key's share of a usage batch, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyUsage<'a> {
    /// The key.
    pub(crate) key_id: &'a KeyId,
    /// Requests to add (saturated to `i64::MAX`).
    pub(crate) requests: i64,
    /// The latest request time.
    pub(crate) last_used_at: OffsetDateTime,
}
