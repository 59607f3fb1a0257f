//! The PostgreSQL key store (feature `postgres`).
//!
//! Schema (see `migrations/postgres`): instants are `TIMESTAMPTZ` kept to
//! the millisecond, scopes a `TEXT[]`, hashes a 32-byte `BYTEA`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgValueFormat};
use sqlx::{Row, ValueRef};
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

/// `INSERT` of every record column (`$1`..`$11` in [`record_columns!`]
/// order); usage totals start at zero.
macro_rules! insert_record {
    () => {
        "INSERT INTO api_keys (key_id, key_hash, owner, scopes, status, expires_at, \
         rate_limit_requests, rate_limit_per_seconds, monthly_quota, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
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
const BATCH_RETENTION: time::Duration = time::Duration::days(7);

/// A [`KeyStore`] + [`KeyAdmin`] over PostgreSQL, through a `sqlx` pool.
///
/// [`connect`](Self::connect) opens a pool whose connection acquisition is
/// bounded by [`DEFAULT_ACQUIRE_TIMEOUT`](Self::DEFAULT_ACQUIRE_TIMEOUT), so
/// an unreachable database turns into a prompt [`StoreError::Timeout`]
/// rather than a queue of stuck requests. It does not create the schema:
/// call [`KeyAdmin::migrate`] once at start-up (it is idempotent and safe to
/// run from several instances at once).
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
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

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
        Ok(Self { pool })
    }

    /// A store whose pool connects on first use, so a service can start
    /// while its database is still down. Fails only on a malformed URL;
    /// until the database is reachable, every operation fails within the
    /// acquire timeout of `options`.
    pub fn connect_lazy_with(url: &str, options: PgPoolOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url).map_err(map_err)?;
        Ok(Self {
            pool: options.connect_lazy_with(connect),
        })
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
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
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
            .bind(record.scopes.as_slice())
            .bind(record.status.as_str())
            .bind(record.expires_at)
            .bind(limit_requests)
            .bind(limit_per)
            .bind(quota)
            .bind(record.created_at)
            .bind(record.updated_at)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM api_keys WHERE key_hash = $1"
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
            " FROM api_keys WHERE key_id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(decode_record).transpose()
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        // `COLLATE "C"`: byte order, the order of `KeyId`'s `Ord`, whatever
        // the database's collation.
        sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM api_keys WHERE owner = $1 ORDER BY key_id COLLATE \"C\""
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
        let now = truncate_ms(OffsetDateTime::now_utc());
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let inserted = sqlx::query(
            "INSERT INTO api_key_usage_batches (batch_id, applied_at) VALUES ($1, $2) \
             ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(batch.id)
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
        sqlx::query("DELETE FROM api_key_usage_batches WHERE applied_at < $1")
            .bind(now.checked_sub(BATCH_RETENTION).unwrap_or(now))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;

        let deltas = aggregate(batch);
        if !deltas.is_empty() {
            let mut ids = Vec::with_capacity(deltas.len());
            let mut counts = Vec::with_capacity(deltas.len());
            let mut last_used = Vec::with_capacity(deltas.len());
            for (id, (n, at)) in deltas {
                ids.push(id.as_str());
                counts.push(n);
                last_used.push(truncate_ms(at));
            }
            // Lock the rows in one global order first, so concurrent flushes
            // touching the same keys cannot deadlock.
            sqlx::query(
                "SELECT 1 FROM api_keys WHERE key_id = ANY($1) \
                 ORDER BY key_id COLLATE \"C\" FOR UPDATE",
            )
            .bind(&ids)
            .execute(&mut *tx)
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
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

#[async_trait]
impl KeyAdmin for PostgresStore {
    async fn import_key(&self, record: &KeyRecord) -> Result<KeyRecord, StoreError> {
        PostgresStore::import_key(self, record).await
    }

    /// Applies the embedded migrations (`migrations/postgres`), tracked in
    /// `sqlx`'s `_sqlx_migrations` table under an advisory lock. Versions
    /// applied by another migrator sharing the database are ignored.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
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
            "UPDATE api_keys SET status = 'revoked', updated_at = $2 WHERE key_id = $1 RETURNING ",
            record_columns!()
        ))
        .bind(id.as_str())
        .bind(truncate_ms(OffsetDateTime::now_utc()))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(decode_record).transpose()
    }

    async fn revoke_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "UPDATE api_keys SET status = 'revoked', updated_at = $2 \
             WHERE owner = $1 AND status <> 'revoked' RETURNING ",
            record_columns!()
        ))
        .bind(owner)
        .bind(truncate_ms(OffsetDateTime::now_utc()))
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
            "UPDATE api_keys SET expires_at = $2, updated_at = $3 WHERE key_id = $1 RETURNING ",
            record_columns!()
        ))
        .bind(id.as_str())
        .bind(at.map(truncate_ms))
        .bind(truncate_ms(OffsetDateTime::now_utc()))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(decode_record).transpose()
    }

    async fn key_details(&self, id: &KeyId) -> Result<Option<KeyDetails>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            ", total_requests, last_used_at FROM api_keys WHERE key_id = $1"
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
        let last_used_at = get_ts(&row, &record.id, "last_used_at")?;
        Ok(Some(KeyDetails::new(record, total, last_used_at)))
    }
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

fn decode_record(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let id = KeyId::from(get::<String>(row, "key_id")?);
    let hash_bytes: Vec<u8> = get(row, "key_hash")?;
    let hash = KeyHash::from_slice(&hash_bytes).ok_or_else(|| {
        corrupt(
            &id,
            format!("key_hash is {} bytes, expected 32", hash_bytes.len()),
        )
    })?;
    let owner: String = get(row, "owner")?;
    // A NULL element fails to decode as `String`: reported as corrupt.
    let scopes: Vec<String> = get(row, "scopes")?;
    let status: String = get(row, "status")?;
    let status = KeyStatus::from_str(&status).map_err(|e| corrupt(&id, e))?;
    let expires_at = get_ts(row, &id, "expires_at")?;
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
    let created_at =
        get_ts(row, &id, "created_at")?.ok_or_else(|| corrupt(&id, "created_at is NULL"))?;
    let updated_at =
        get_ts(row, &id, "updated_at")?.ok_or_else(|| corrupt(&id, "updated_at is NULL"))?;

    let mut record = KeyRecord::new(id, hash, owner, Scopes::new(scopes));
    record.status = status;
    record.expires_at = expires_at;
    record.rate_limit = rate_limit;
    record.monthly_quota = monthly_quota;
    record.created_at = created_at;
    record.updated_at = updated_at;
    Ok(record)
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(map_err)
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

/// `t` in UTC, truncated to whole milliseconds: what the store keeps
/// (`TIMESTAMPTZ` itself keeps microseconds).
fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    t.replace_millisecond(t.millisecond()).unwrap_or(t)
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
    fn truncates_to_utc_milliseconds() {
        let t = time::macros::datetime!(2030-01-02 05:04:05.678901234 +02:00);
        let got = truncate_ms(t);
        assert_eq!(got.offset(), time::UtcOffset::UTC);
        assert_eq!(got, time::macros::datetime!(2030-01-02 03:04:05.678 UTC));
    }

    #[test]
    fn aggregates_duplicate_deltas() {
        let t1 = time::macros::datetime!(2030-01-01 0:00 UTC);
        let t2 = time::macros::datetime!(2030-01-01 0:01 UTC);
        let delta = |id: &str, requests, at| super::super::UsageDelta {
            key_id: KeyId::from(id),
            requests,
            last_used_at: at,
        };
        let batch = UsageBatch {
            id: uuid::Uuid::nil(),
            deltas: vec![
                delta("b", 2, t2),
                delta("a", u64::MAX, t1),
                delta("b", 3, t1),
            ],
        };
        let got: Vec<_> = aggregate(&batch)
            .into_iter()
            .map(|(id, v)| (id.as_str().to_owned(), v))
            .collect();
        assert_eq!(
            got,
            vec![("a".to_owned(), (i64::MAX, t1)), ("b".to_owned(), (5, t2))]
        );
    }
}
