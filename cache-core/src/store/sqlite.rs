//! The SQLite key store (feature `sqlite`): connection set-up and the
//! SQLite [`Dialect`]; the store's logic is the shared [`SqlStore`].
//!
//! Schema (see `migrations/sqlite`): instants are `INTEGER` unix milliseconds
//! (UTC), scopes a JSON array in `TEXT`, hashes a 32-byte `BLOB`, batch ids
//! hyphenated `TEXT`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::Sqlite;
use time::OffsetDateTime;

use super::sql::{self, corrupt, map_err, Dialect, KeyUsage, SqlStore};
use super::StoreError;
use crate::{KeyId, KeyRecord, Scopes};

/// A [`KeyStore`] + [`KeyAdmin`] over SQLite, through a `sqlx` pool.
///
/// [`connect`](Self::connect) opens (and creates, if missing) the database
/// file in WAL mode with a busy timeout; it does not create the schema: call
/// [`KeyAdmin::migrate`] once at start-up. It is idempotent: it applies the
/// embedded migrations (`migrations/sqlite`) not yet recorded in `sqlx`'s
/// `_sqlx_migrations` table, and ignores versions applied by another
/// migrator sharing the database.
///
/// `sqlite::memory:` URLs get a private in-memory database held by a single
/// pooled connection that is never closed, so every operation sees the same
/// data for as long as the store lives.
///
/// ```
/// use apikey_cache::{KeyAdmin, KeyHasher, KeyStore, NewKey, SqliteStore};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// rt.block_on(async {
///     let store = SqliteStore::connect("sqlite::memory:").await?;
///     store.migrate().await?;
///
///     let hasher = KeyHasher::new(None);
///     let created = store.create_key(&hasher, NewKey::new("acme", ["orders:read"])).await?;
///     let hash = hasher.hash(created.plaintext.as_bytes());
///     assert_eq!(store.find_by_hash(&hash).await?, Some(created.record.clone()));
///
///     let revoked = store.revoke_key(&created.record.id).await?;
///     assert_eq!(revoked.map(|r| r.status), Some(apikey_cache::KeyStatus::Revoked));
///     Ok::<_, apikey_cache::StoreError>(())
/// })?;
/// # Ok(())
/// # }
/// ```
///
/// [`KeyStore`]: crate::KeyStore
/// [`KeyAdmin`]: crate::KeyAdmin
/// [`KeyAdmin::migrate`]: crate::KeyAdmin::migrate
#[derive(Debug, Clone)]
pub struct SqliteStore {
    sql: SqlStore<Sqlite>,
}

sql::forward_to_sql_store!(SqliteStore);

impl SqliteStore {
    /// The default bound on waiting for a pooled connection: past it an
    /// operation fails with [`StoreError::Timeout`] instead of queueing.
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

    /// The default pool size for file databases.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

    /// How long a statement waits for another connection's write lock
    /// before failing with `SQLITE_BUSY`.
    pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

    /// Opens the database at `url` with [`pool_options`](Self::pool_options).
    ///
    /// `url` is `sqlite://path/to/file.db` (created if missing) or
    /// `sqlite::memory:`. Fails with [`StoreError::Unavailable`] if the URL
    /// is malformed or the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, Self::pool_options()).await
    }

    /// Opens the database at `url` with a pool configured by `options`
    /// (start from [`pool_options`](Self::pool_options) to keep the
    /// fail-fast defaults).
    ///
    /// Whatever `options` say, the file is created if missing, uses WAL
    /// journaling and waits [`BUSY_TIMEOUT`](Self::BUSY_TIMEOUT) for locks;
    /// an in-memory database is held by exactly one connection that never
    /// expires. For full control build a pool yourself and use
    /// [`from_pool`](Self::from_pool).
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey_cache::SqliteStore;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let options = SqliteStore::pool_options()
    ///     .max_connections(4)
    ///     .acquire_timeout(Duration::from_millis(500));
    /// let _store = SqliteStore::connect_with("sqlite::memory:", options).await?;
    /// # Ok::<_, apikey_cache::StoreError>(())
    /// # })?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub async fn connect_with(url: &str, options: SqlitePoolOptions) -> Result<Self, StoreError> {
        let in_memory = is_in_memory(url);
        let mut connect = SqliteConnectOptions::from_str(url)
            .map_err(map_err)?
            .create_if_missing(true)
            .busy_timeout(Self::BUSY_TIMEOUT);
        let options = if in_memory {
            // Every connection would otherwise be (or, when the last one
            // closes, lose) its own database.
            options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            connect = connect.journal_mode(SqliteJournalMode::Wal);
            options
        };
        let pool = options.connect_with(connect).await.map_err(map_err)?;
        Ok(Self::from_pool(pool))
    }

    /// The pool settings [`connect`](Self::connect) uses:
    /// [`DEFAULT_MAX_CONNECTIONS`](Self::DEFAULT_MAX_CONNECTIONS) and
    /// [`DEFAULT_ACQUIRE_TIMEOUT`](Self::DEFAULT_ACQUIRE_TIMEOUT).
    pub fn pool_options() -> SqlitePoolOptions {
        SqlitePoolOptions::new()
            .max_connections(Self::DEFAULT_MAX_CONNECTIONS)
            .acquire_timeout(Self::DEFAULT_ACQUIRE_TIMEOUT)
    }

    /// Wraps an existing pool. Give it a bounded `acquire_timeout` so the
    /// store fails fast when the database is unusable.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self {
            sql: SqlStore::new(pool),
        }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        self.sql.pool()
    }

    /// Inserts `record` as it is, or replaces the record with the same id
    /// (keeping that key's usage totals), like [`MemoryStore::insert`]: for
    /// importing keys issued elsewhere.
    ///
    /// The store keeps instants to the millisecond (in UTC) and rate-limit
    /// windows in whole seconds; the returned record is what reads will
    /// return. Fails with [`StoreError::Unavailable`] if another key already
    /// has `record.hash`.
    ///
    /// [`MemoryStore::insert`]: crate::MemoryStore::insert
    pub async fn import_key(&self, record: &KeyRecord) -> Result<KeyRecord, StoreError> {
        self.sql.import_key(record).await
    }
}

impl Dialect for Sqlite {
    type Instant = i64;
    type Scopes = String;
    type BatchId = String;

    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

    fn instant(t: OffsetDateTime) -> i64 {
        to_ms(t)
    }

    fn scopes(scopes: &Scopes) -> Result<String, StoreError> {
        serde_json::to_string(scopes.as_slice()).map_err(StoreError::unavailable)
    }

    fn batch_id(id: uuid::Uuid) -> String {
        id.hyphenated().to_string()
    }

    fn get_instant(
        row: &SqliteRow,
        id: &KeyId,
        column: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        sql::get::<Self, Option<i64>>(row, column)?
            .map(|ms| from_ms(id, column, ms))
            .transpose()
    }

    fn get_scopes(row: &SqliteRow, id: &KeyId) -> Result<Vec<String>, StoreError> {
        let json: String = sql::get::<Self, _>(row, "scopes")?;
        serde_json::from_str(&json)
            .map_err(|e| corrupt(id, format!("scopes are not a JSON array of strings: {e}")))
    }

    /// One `UPDATE` per key: SQLite has no arrays to bind, and a write
    /// transaction holds the database lock anyway.
    async fn add_usage(
        conn: &mut SqliteConnection,
        usage: &[KeyUsage<'_>],
    ) -> Result<(), StoreError> {
        for u in usage {
            sqlx::query(
                "UPDATE api_keys SET \
                 total_requests = CASE WHEN $2 > 9223372036854775807 - total_requests \
                     THEN 9223372036854775807 ELSE total_requests + $2 END, \
                 last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $3 \
                     THEN $3 ELSE last_used_at END \
                 WHERE key_id = $1",
            )
            .bind(u.key_id.as_str())
            .bind(u.requests)
            .bind(to_ms(u.last_used_at))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        }
        Ok(())
    }
}

/// Whether `url` names an in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:`, `...?mode=memory`), parsed the way `sqlx` does.
fn is_in_memory(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (db, params) = rest.split_once('?').unwrap_or((rest, ""));
    db == ":memory:" || params.split('&').any(|p| p == "mode=memory")
}

/// Unix milliseconds (floor).
fn to_ms(t: OffsetDateTime) -> i64 {
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    // `OffsetDateTime`'s range (even with `large-dates`) fits easily.
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// The instant `ms` unix milliseconds; out of `time`'s range is corrupt.
fn from_ms(id: &KeyId, column: &str, ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| corrupt(id, format!("{column} {ms} ms is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::truncate_ms;

    #[test]
    fn in_memory_urls() {
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite://:memory:"));
        assert!(is_in_memory("sqlite://?mode=memory"));
        assert!(is_in_memory("sqlite://db?cache=shared&mode=memory"));
        assert!(!is_in_memory("sqlite://data/keys.db"));
        assert!(!is_in_memory("sqlite:keys.db?mode=rwc"));
    }

    #[test]
    fn milliseconds_round_trip_and_floor() {
        let t = time::macros::datetime!(2030-01-02 03:04:05.678901234 UTC);
        let id = KeyId::from("k");
        assert_eq!(
            from_ms(&id, "t", to_ms(t)).expect("in range"),
            truncate_ms(t)
        );
        assert_eq!(truncate_ms(t).nanosecond(), 678_000_000);
        let before_epoch = time::macros::datetime!(1969-12-31 23:59:59.9995 UTC);
        assert_eq!(to_ms(before_epoch), -1);
        assert_eq!(
            from_ms(&id, "t", -1).expect("in range"),
            truncate_ms(before_epoch)
        );
        let offset = time::macros::datetime!(2030-01-02 05:04:05.678 +02:00);
        assert_eq!(truncate_ms(offset).offset(), time::UtcOffset::UTC);
        assert_eq!(truncate_ms(offset), truncate_ms(t));
    }
}
