//! The SQLite key store (feature `sqlite`).
//!
//! Schema (see `migrations/sqlite`): instants are `INTEGER` unix milliseconds
//! (UTC), scopes a JSON array in `TEXT`, hashes a 32-byte `BLOB`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::Row;
use time::OffsetDateTime;

use super::{CreatedKey, KeyAdmin, KeyDetails, KeyStore, NewKey, StoreError, UsageBatch};
use crate::{KeyHash, KeyHasher, KeyId, KeyRecord, KeyStatus, RateLimit, Scopes};

/// The columns [`decode_record`] reads, in `SELECT` order.
macro_rules! record_columns {
    () => {
        "key_id, key_hash, owner, scopes, status, expires_at, rate_limit_requests, \
         rate_limit_per_seconds, monthly_quota, created_at, updated_at"
    };
}

/// `INSERT` of every record column (`?1`..`?11` in [`record_columns!`]
/// order); usage totals start at zero.
macro_rules! insert_record {
    () => {
        "INSERT INTO api_keys (key_id, key_hash, owner, scopes, status, expires_at, \
         rate_limit_requests, rate_limit_per_seconds, monthly_quota, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    };
}

/// Turns [`insert_record!`] into "insert or replace the record, keep the
/// usage totals".
macro_rules! upsert_tail {
    () => {
        " ON CONFLICT (key_id) DO UPDATE SET key_hash = excluded.key_hash, \
         owner = excluded.owner, scopes = excluded.scopes, status = excluded.status, \
         expires_at = excluded.expires_at, \
         rate_limit_requests = excluded.rate_limit_requests, \
         rate_limit_per_seconds = excluded.rate_limit_per_seconds, \
         monthly_quota = excluded.monthly_quota, created_at = excluded.created_at, \
         updated_at = excluded.updated_at"
    };
}

/// How long an applied batch id is remembered: a flush retried later than
/// this after its first attempt would count twice.
const BATCH_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// A [`KeyStore`] + [`KeyAdmin`] over SQLite, through a `sqlx` pool.
///
/// [`connect`](Self::connect) opens (and creates, if missing) the database
/// file in WAL mode with a busy timeout; it does not create the schema: call
/// [`KeyAdmin::migrate`] once at start-up (it is idempotent).
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
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

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
        Ok(Self { pool })
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
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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
        let record = normalize(record);
        self.write_record(&record, concat!(insert_record!(), upsert_tail!()))
            .await?;
        Ok(record)
    }

    async fn write_record(&self, record: &KeyRecord, sql: &'static str) -> Result<(), StoreError> {
        let scopes =
            serde_json::to_string(record.scopes.as_slice()).map_err(StoreError::unavailable)?;
        let (limit_requests, limit_per) = match record.rate_limit {
            Some(l) => (
                Some(i64::from(l.requests)),
                Some(to_i64("rate_limit_per_seconds", l.per_seconds())?),
            ),
            None => (None, None),
        };
        let quota = record
            .monthly_quota
            .map(|q| to_i64("monthly_quota", q))
            .transpose()?;
        sqlx::query(sql)
            .bind(record.id.as_str())
            .bind(record.hash.as_bytes().as_slice())
            .bind(&record.owner)
            .bind(scopes)
            .bind(record.status.as_str())
            .bind(record.expires_at.map(to_ms))
            .bind(limit_requests)
            .bind(limit_per)
            .bind(quota)
            .bind(to_ms(record.created_at))
            .bind(to_ms(record.updated_at))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM api_keys WHERE key_hash = ?1"
        ))
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(decode_record).transpose()
    }

    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM api_keys WHERE key_id = ?1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(decode_record).transpose()
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM api_keys WHERE owner = ?1 ORDER BY key_id"
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .iter()
        .map(decode_record)
        .collect()
    }

    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let inserted = sqlx::query(
            "INSERT INTO api_key_usage_batches (batch_id, applied_at) VALUES (?1, ?2) \
             ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(batch.id.hyphenated().to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if inserted == 0 {
            // Applied before (a retry after an ambiguous failure).
            tx.commit().await.map_err(map_err)?;
            return Ok(());
        }
        sqlx::query("DELETE FROM api_key_usage_batches WHERE applied_at < ?1")
            .bind(now.saturating_sub(BATCH_RETENTION_MS))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for (key_id, (requests, last_used_at)) in aggregate(batch) {
            sqlx::query(
                "UPDATE api_keys SET \
                 total_requests = CASE WHEN ?2 > 9223372036854775807 - total_requests \
                     THEN 9223372036854775807 ELSE total_requests + ?2 END, \
                 last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ?3 \
                     THEN ?3 ELSE last_used_at END \
                 WHERE key_id = ?1",
            )
            .bind(key_id.as_str())
            .bind(requests)
            .bind(to_ms(last_used_at))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

#[async_trait]
impl KeyAdmin for SqliteStore {
    async fn import_key(&self, record: &KeyRecord) -> Result<KeyRecord, StoreError> {
        SqliteStore::import_key(self, record).await
    }

    /// Applies the embedded migrations (`migrations/sqlite`), tracked in
    /// `sqlx`'s `_sqlx_migrations` table. Versions applied by another
    /// migrator sharing the database are ignored.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await.map_err(map_migrate_err)
    }

    async fn create_key(&self, hasher: &KeyHasher, new: NewKey) -> Result<CreatedKey, StoreError> {
        let issued = new.issue(hasher, truncate_ms(OffsetDateTime::now_utc()))?;
        let (record, plaintext) = (normalize(&issued.record), issued.plaintext);
        self.write_record(&record, insert_record!()).await?;
        Ok(CreatedKey { record, plaintext })
    }

    async fn revoke_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET status = 'revoked', updated_at = ?2 WHERE key_id = ?1 RETURNING ",
            record_columns!()
        ))
        .bind(id.as_str())
        .bind(to_ms(OffsetDateTime::now_utc()))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(decode_record).transpose()
    }

    async fn revoke_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "UPDATE api_keys SET status = 'revoked', updated_at = ?2 \
             WHERE owner = ?1 AND status <> 'revoked' RETURNING ",
            record_columns!()
        ))
        .bind(owner)
        .bind(to_ms(OffsetDateTime::now_utc()))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut out = rows
            .iter()
            .map(decode_record)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn set_expires_at(
        &self,
        id: &KeyId,
        at: Option<OffsetDateTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET expires_at = ?2, updated_at = ?3 WHERE key_id = ?1 RETURNING ",
            record_columns!()
        ))
        .bind(id.as_str())
        .bind(at.map(to_ms))
        .bind(to_ms(OffsetDateTime::now_utc()))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(decode_record).transpose()
    }

    async fn key_details(&self, id: &KeyId) -> Result<Option<KeyDetails>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            ", total_requests, last_used_at FROM api_keys WHERE key_id = ?1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record = decode_record(&row)?;
        let total: i64 = get(&row, "total_requests")?;
        let total = u64::try_from(total)
            .map_err(|_| corrupt(&record.id, format!("total_requests is negative ({total})")))?;
        let last_used_at = get::<Option<i64>>(&row, "last_used_at")?
            .map(|ms| from_ms(&record.id, "last_used_at", ms))
            .transpose()?;
        Ok(Some(KeyDetails::new(record, total, last_used_at)))
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

/// Sums a batch per key (a batch should hold one delta per key, but a
/// duplicate must still count), in key order.
fn aggregate(batch: &UsageBatch) -> BTreeMap<&KeyId, (i64, OffsetDateTime)> {
    let mut out: BTreeMap<&KeyId, (u64, OffsetDateTime)> = BTreeMap::new();
    for d in &batch.deltas {
        out.entry(&d.key_id)
            .and_modify(|(n, at)| {
                *n = n.saturating_add(d.requests);
                *at = (*at).max(d.last_used_at);
            })
            .or_insert((d.requests, d.last_used_at));
    }
    out.into_iter()
        .map(|(id, (n, at))| (id, (i64::try_from(n).unwrap_or(i64::MAX), at)))
        .collect()
}

/// `record` as the store keeps it: instants in UTC milliseconds, rate-limit
/// windows in whole seconds.
fn normalize(record: &KeyRecord) -> KeyRecord {
    let mut out = record.clone();
    out.expires_at = record.expires_at.map(truncate_ms);
    out.rate_limit = record
        .rate_limit
        .map(|l| RateLimit::new(l.requests, Duration::from_secs(l.per_seconds())));
    out.created_at = truncate_ms(record.created_at);
    out.updated_at = truncate_ms(record.updated_at);
    out
}

fn decode_record(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let id = KeyId::from(get::<String>(row, "key_id")?);
    let hash_bytes: Vec<u8> = get(row, "key_hash")?;
    let hash = KeyHash::from_slice(&hash_bytes).ok_or_else(|| {
        corrupt(
            &id,
            format!("key_hash is {} bytes, expected 32", hash_bytes.len()),
        )
    })?;
    let owner: String = get(row, "owner")?;
    let scopes_json: String = get(row, "scopes")?;
    let scopes: Vec<String> = serde_json::from_str(&scopes_json)
        .map_err(|e| corrupt(&id, format!("scopes are not a JSON array of strings: {e}")))?;
    let status: String = get(row, "status")?;
    let status = KeyStatus::from_str(&status).map_err(|e| corrupt(&id, e))?;
    let expires_at = get::<Option<i64>>(row, "expires_at")?
        .map(|ms| from_ms(&id, "expires_at", ms))
        .transpose()?;
    let rate_limit = match (
        get::<Option<i64>>(row, "rate_limit_requests")?,
        get::<Option<i64>>(row, "rate_limit_per_seconds")?,
    ) {
        (None, None) => None,
        (Some(requests), Some(per)) => {
            let requests = u32::try_from(requests).map_err(|_| {
                corrupt(
                    &id,
                    format!("rate_limit_requests {requests} is out of range"),
                )
            })?;
            let per = u64::try_from(per)
                .map_err(|_| corrupt(&id, format!("rate_limit_per_seconds {per} is negative")))?;
            Some(RateLimit::new(requests, Duration::from_secs(per)))
        }
        _ => {
            return Err(corrupt(
                &id,
                "rate_limit_requests and rate_limit_per_seconds must both be set or both be NULL",
            ))
        }
    };
    let monthly_quota = get::<Option<i64>>(row, "monthly_quota")?
        .map(|q| {
            u64::try_from(q).map_err(|_| corrupt(&id, format!("monthly_quota {q} is negative")))
        })
        .transpose()?;
    let created_at = from_ms(&id, "created_at", get(row, "created_at")?)?;
    let updated_at = from_ms(&id, "updated_at", get(row, "updated_at")?)?;

    let mut record = KeyRecord::new(id, hash, owner, Scopes::new(scopes));
    record.status = status;
    record.expires_at = expires_at;
    record.rate_limit = rate_limit;
    record.monthly_quota = monthly_quota;
    record.created_at = created_at;
    record.updated_at = updated_at;
    Ok(record)
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column).map_err(map_err)
}

fn corrupt(id: &KeyId, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("key {id}: {what}"))
}

/// A value the schema cannot hold; reported as [`StoreError::Corrupt`]
/// because the trait has no "invalid input" variant.
fn to_i64(field: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::Corrupt(format!(
            "{field} {value} does not fit the store's 64-bit signed column"
        ))
    })
}

/// `t` in UTC, truncated to whole milliseconds: what the store keeps.
fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    t.replace_millisecond(t.millisecond()).unwrap_or(t)
}

/// Unix milliseconds (floor).
fn to_ms(t: OffsetDateTime) -> i64 {
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    // `OffsetDateTime`'s range (even with `large-dates`) fits easily.
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

fn from_ms(id: &KeyId, column: &str, ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| corrupt(id, format!("{column} {ms} ms is out of range")))
}

fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut => StoreError::Timeout,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::unavailable(other),
    }
}

fn map_migrate_err(e: sqlx::migrate::MigrateError) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => map_err(e),
        other => StoreError::unavailable(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
