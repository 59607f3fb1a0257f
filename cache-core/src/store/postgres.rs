//! The PostgreSQL key store (feature `postgres`): connection set-up and the
//! PostgreSQL [`Dialect`]; the store's logic is the shared [`SqlStore`].
//!
//! Schema (see `migrations/postgres`): instants are `TIMESTAMPTZ` kept to
//! the millisecond, scopes a `TEXT[]`, hashes a 32-byte `BYTEA`, batch ids
//! `UUID`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, PgValueFormat};
use sqlx::{Postgres, Row, ValueRef};
use time::OffsetDateTime;

use super::sql::{self, corrupt, map_err, truncate_ms, Dialect, KeyUsage, SqlStore};
use super::StoreError;
use crate::{KeyId, KeyRecord, Scopes};

/// A [`KeyStore`] + [`KeyAdmin`] over PostgreSQL, through a `sqlx` pool.
///
/// [`connect`](Self::connect) opens a pool whose connection acquisition is
/// bounded by [`DEFAULT_ACQUIRE_TIMEOUT`](Self::DEFAULT_ACQUIRE_TIMEOUT), so
/// an unreachable database turns into a prompt [`StoreError::Timeout`]
/// rather than a queue of stuck requests. It does not create the schema:
/// call [`KeyAdmin::migrate`] once at start-up. It is idempotent and safe to
/// run from several instances at once: it applies the embedded migrations
/// (`migrations/postgres`) not yet recorded in `sqlx`'s `_sqlx_migrations`
/// table, under an advisory lock, and ignores versions applied by another
/// migrator sharing the database.
///
/// ```no_run
/// use apikey_cache::{KeyAdmin, KeyHasher, KeyStore, NewKey, PostgresStore};
///
/// # async fn demo() -> Result<(), apikey_cache::StoreError> {
/// let store = PostgresStore::connect("postgres://app@localhost/app").await?;
/// store.migrate().await?;
///
/// let hasher = KeyHasher::new(Some(b"server-side pepper"));
/// let created = store.create_key(&hasher, NewKey::new("acme", ["orders:*"])).await?;
/// println!("give this to acme once: {}", created.plaintext);
///
/// let hash = hasher.hash(created.plaintext.as_bytes());
/// assert_eq!(store.find_by_hash(&hash).await?, Some(created.record));
/// # Ok(())
/// # }
/// ```
///
/// [`KeyStore`]: crate::KeyStore
/// [`KeyAdmin`]: crate::KeyAdmin
/// [`KeyAdmin::migrate`]: crate::KeyAdmin::migrate
#[derive(Debug, Clone)]
pub struct PostgresStore {
    sql: SqlStore<Postgres>,
}

sql::forward_to_sql_store!(PostgresStore);

impl PostgresStore {
    /// The default bound on waiting for a pooled connection (including
    /// opening one): past it an operation fails with [`StoreError::Timeout`].
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

    /// The default pool size.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

    /// Connects to `url` (`postgres://user:pass@host:port/db?...`) with
    /// [`pool_options`](Self::pool_options), opening one connection to
    /// check that the database is there.
    ///
    /// Fails with [`StoreError::Timeout`] if no connection could be opened
    /// within the acquire timeout, or [`StoreError::Unavailable`] for a
    /// malformed URL or a refused login.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, Self::pool_options()).await
    }

    /// Like [`connect`](Self::connect) with a pool configured by `options`;
    /// start from [`pool_options`](Self::pool_options) to keep the fail-fast
    /// defaults.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use apikey_cache::PostgresStore;
    ///
    /// # async fn demo() -> Result<(), apikey_cache::StoreError> {
    /// let options = PostgresStore::pool_options()
    ///     .max_connections(32)
    ///     .acquire_timeout(Duration::from_millis(500));
    /// let store = PostgresStore::connect_with("postgres://app@localhost/app", options).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(url: &str, options: PgPoolOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url).map_err(map_err)?;
        let pool = options.connect_with(connect).await.map_err(map_err)?;
        Ok(Self::from_pool(pool))
    }

    /// A store whose pool connects on first use, so a service can start
    /// while its database is still down. Fails only on a malformed URL;
    /// until the database is reachable, every operation fails within the
    /// acquire timeout of `options`.
    pub fn connect_lazy_with(url: &str, options: PgPoolOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url).map_err(map_err)?;
        Ok(Self::from_pool(options.connect_lazy_with(connect)))
    }

    /// The pool settings [`connect`](Self::connect) uses:
    /// [`DEFAULT_MAX_CONNECTIONS`](Self::DEFAULT_MAX_CONNECTIONS) and
    /// [`DEFAULT_ACQUIRE_TIMEOUT`](Self::DEFAULT_ACQUIRE_TIMEOUT).
    pub fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(Self::DEFAULT_MAX_CONNECTIONS)
            .acquire_timeout(Self::DEFAULT_ACQUIRE_TIMEOUT)
    }

    /// Wraps an existing pool. Give it a bounded `acquire_timeout` so the
    /// store fails fast when the database is unreachable.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            sql: SqlStore::new(pool),
        }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
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

impl Dialect for Postgres {
    type Instant = OffsetDateTime;
    type Scopes = Vec<String>;
    type BatchId = uuid::Uuid;

    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

    fn instant(t: OffsetDateTime) -> OffsetDateTime {
        truncate_ms(t)
    }

    fn scopes(scopes: &Scopes) -> Result<Vec<String>, StoreError> {
        Ok(scopes.as_slice().to_vec())
    }

    fn batch_id(id: uuid::Uuid) -> uuid::Uuid {
        id
    }

    fn get_instant(
        row: &PgRow,
        id: &KeyId,
        column: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        get_ts(row, id, column)
    }

    fn get_scopes(row: &PgRow, _id: &KeyId) -> Result<Vec<String>, StoreError> {
        // A NULL element fails to decode as `String`: reported as corrupt.
        sql::get::<Self, _>(row, "scopes")
    }

    /// One `UPDATE` for the whole batch, its deltas bound as arrays.
    async fn add_usage(conn: &mut PgConnection, usage: &[KeyUsage<'_>]) -> Result<(), StoreError> {
        let ids: Vec<&str> = usage.iter().map(|u| u.key_id.as_str()).collect();
        let counts: Vec<i64> = usage.iter().map(|u| u.requests).collect();
        let last_used: Vec<OffsetDateTime> =
            usage.iter().map(|u| truncate_ms(u.last_used_at)).collect();
        // Lock the rows in one global order first, so concurrent flushes
        // touching the same keys cannot deadlock.
        sqlx::query(
            "SELECT 1 FROM api_keys WHERE key_id = ANY($1) \
             ORDER BY key_id COLLATE \"C\" FOR UPDATE",
        )
        .bind(&ids)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "UPDATE api_keys AS k SET \
             total_requests = CASE WHEN d.n > 9223372036854775807 - k.total_requests \
                 THEN 9223372036854775807 ELSE k.total_requests + d.n END, \
             last_used_at = GREATEST(k.last_used_at, d.last_used_at) \
             FROM UNNEST($1::text[], $2::bigint[], $3::timestamptz[]) \
                 AS d(key_id, n, last_used_at) \
             WHERE k.key_id = d.key_id",
        )
        .bind(&ids)
        .bind(&counts)
        .bind(&last_used)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}

/// Reads a `TIMESTAMPTZ` column without `sqlx`'s decoder, which panics on
/// values `time` cannot represent (`'infinity'`, years past 9999); those are
/// reported as [`StoreError::Corrupt`] instead.
fn get_ts(row: &PgRow, id: &KeyId, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
    /// `TIMESTAMPTZ`'s binary form counts microseconds from here.
    const PG_EPOCH: OffsetDateTime = time::macros::datetime!(2000-01-01 0:00 UTC);

    let raw = row.try_get_raw(column).map_err(map_err)?;
    if raw.is_null() {
        return Ok(None);
    }
    let bad = |what: String| corrupt(id, format!("{column}: {what}"));
    match raw.format() {
        PgValueFormat::Binary => {
            let bytes = raw.as_bytes().map_err(|e| bad(e.to_string()))?;
            let micros = <[u8; 8]>::try_from(bytes)
                .map(i64::from_be_bytes)
                .map_err(|_| bad(format!("{} bytes, expected a timestamp", bytes.len())))?;
            PG_EPOCH
                .checked_add(time::Duration::microseconds(micros))
                .map(Some)
                .ok_or_else(|| bad("infinite or out of range".to_owned()))
        }
        PgValueFormat::Text => <OffsetDateTime as sqlx::Decode<sqlx::Postgres>>::decode(raw)
            .map(Some)
            .map_err(|e| bad(e.to_string())),
    }
}
