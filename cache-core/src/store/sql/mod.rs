//! The SQL key store, written once for every database: [`SqlStore`] holds
//! the statements and the logic of [`KeyStore`] and [`KeyAdmin`], a
//! [`Dialect`] what differs between databases (column types, schema, the
//! usage update). `SqliteStore` and `PostgresStore` wrap it with their
//! connection set-up.
//!
//! * `dialect.rs`: the [`Dialect`] trait.
//! * `record.rs`: rows to records, rounding, error mapping.
//! * `forward.rs`: the public stores' `KeyStore` / `KeyAdmin` impls.
//!
//! [`KeyStore`]: crate::KeyStore
//! [`KeyAdmin`]: crate::KeyAdmin

mod dialect;
mod forward;
mod record;

use std::collections::BTreeMap;
use std::fmt;

use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Type};
use time::OffsetDateTime;

pub(crate) use dialect::{Dialect, KeyUsage};
pub(crate) use forward::forward_to_sql_store;
pub(crate) use record::{corrupt, get, map_err, truncate_ms};

use self::record::{decode_record, map_migrate_err, normalize, record_columns, to_i64};
use super::{CreatedKey, KeyDetails, NewKey, RecentCursor, RecentKey, StoreError, UsageBatch};
use crate::{KeyHash, KeyHasher, KeyId, KeyRecord};

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

/// A [`KeyStore`](crate::KeyStore) + [`KeyAdmin`](crate::KeyAdmin) over a
/// `sqlx` pool of database `DB`; the public stores wrap one and forward to
/// it (see [`forward_to_sql_store!`]).
pub(crate) struct SqlStore<DB: Database> {
    pool: Pool<DB>,
}

impl<DB: Database> SqlStore<DB> {
    /// A store over `pool`.
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

// Not derived: a derive would ask `DB` itself to be `Clone` / `Debug`.
impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self::new(self.pool.clone())
    }
}

impl<DB: Database> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("pool", &self.pool)
            .finish()
    }
}

// The bounds say "the driver can run a query on a pooled connection and
// bind / decode the plain column types"; every `sqlx` driver meets them,
// but generic code has to spell them out.
impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row> + Encode<'a, DB> + Type<DB>,
    for<'a> &'a [u8]: Encode<'a, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Encode<'r, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<DB::Instant>: Encode<'q, DB>,
{
    /// See [`KeyStore::find_by_hash`](crate::KeyStore::find_by_hash).
    pub(crate) async fn find_by_hash(
        &self,
        hash: &KeyHash,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM api_keys WHERE key_hash = $1"
        ))
        .bind(hash.as_bytes().as_slice());
        self.one(query).await
    }

    /// See [`KeyStore::find_by_id`](crate::KeyStore::find_by_id).
    pub(crate) async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM api_keys WHERE key_id = $1"
        ))
        .bind(id.as_str());
        self.one(query).await
    }

    /// See [`KeyStore::list_by_owner`](crate::KeyStore::list_by_owner); in
    /// key id order.
    pub(crate) async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let query = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM api_keys WHERE owner = $1"
        ))
        .bind(owner);
        self.all(query).await
    }

    /// See [`KeyStore::recently_used`](crate::KeyStore::recently_used): one
    /// query, a backward range scan of the `(last_used_at, key_hash)` index
    /// (migration `20250901000000`). The cursor is a row value, which both
    /// databases compare column by column; hashes compare as bytes in both.
    pub(crate) async fn recently_used(
        &self,
        limit: usize,
        after: Option<&RecentCursor>,
    ) -> Result<Vec<RecentKey>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let query = match after {
            None => sqlx::query(concat!(
                "SELECT ",
                record_columns!(),
                ", last_used_at FROM api_keys WHERE last_used_at IS NOT NULL \
                 ORDER BY last_used_at DESC, key_hash DESC LIMIT $1"
            ))
            .bind(limit),
            Some(cursor) => sqlx::query(concat!(
                "SELECT ",
                record_columns!(),
                ", last_used_at FROM api_keys WHERE last_used_at IS NOT NULL \
                 AND (last_used_at, key_hash) < ($2, $3) \
                 ORDER BY last_used_at DESC, key_hash DESC LIMIT $1"
            ))
            .bind(limit)
            .bind(DB::instant(cursor.last_used_at))
            .bind(cursor.hash.as_bytes().as_slice()),
        };
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let record = decode_record::<DB>(row)?;
                let at = DB::get_instant(row, &record.id, "last_used_at")?
                    .ok_or_else(|| corrupt(&record.id, "last_used_at is NULL"))?;
                Ok(RecentKey::new(record, at))
            })
            .collect()
    }

    /// See [`KeyStore::record_usage`](crate::KeyStore::record_usage): the
    /// batch id and the increments commit together, so a retried batch
    /// finds its id and counts once.
    pub(crate) async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // `RETURNING` yields no row when the id is already there.
        let inserted = sqlx::query(
            "INSERT INTO api_key_usage_batches (batch_id, applied_at) VALUES ($1, $2) \
             ON CONFLICT (batch_id) DO NOTHING RETURNING 1",
        )
        .bind(DB::batch_id(batch.id))
        .bind(DB::instant(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        .is_some();
        if !inserted {
            // Applied before (a retry after an ambiguous failure).
            tx.commit().await.map_err(map_err)?;
            return Ok(());
        }
        sqlx::query("DELETE FROM api_key_usage_batches WHERE applied_at < $1")
            .bind(DB::instant(now.checked_sub(BATCH_RETENTION).unwrap_or(now)))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let usage = aggregate(batch);
        if !usage.is_empty() {
            DB::add_usage(&mut *tx, &usage).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    /// See [`KeyAdmin::migrate`](crate::KeyAdmin::migrate): versions applied
    /// by another migrator sharing the database are ignored.
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = DB::MIGRATOR;
        migrator.set_ignore_missing(true);
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        migrator
            .run_direct(&mut *conn)
            .await
            .map_err(map_migrate_err)
    }

    /// See [`KeyAdmin::create_key`](crate::KeyAdmin::create_key).
    pub(crate) async fn create_key(
        &self,
        hasher: &KeyHasher,
        new: NewKey,
    ) -> Result<CreatedKey, StoreError> {
        let issued = new.issue(hasher, truncate_ms(OffsetDateTime::now_utc()))?;
        let (record, plaintext) = (normalize(&issued.record), issued.plaintext);
        self.write_record(&record, insert_record!()).await?;
        Ok(CreatedKey { record, plaintext })
    }

    /// See [`KeyAdmin::import_key`](crate::KeyAdmin::import_key).
    pub(crate) async fn import_key(&self, record: &KeyRecord) -> Result<KeyRecord, StoreError> {
        let record = normalize(record);
        self.write_record(&record, concat!(insert_record!(), upsert_tail!()))
            .await?;
        Ok(record)
    }

    /// See [`KeyAdmin::revoke_key`](crate::KeyAdmin::revoke_key).
    pub(crate) async fn revoke_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(concat!(
            "UPDATE api_keys SET status = 'revoked', updated_at = $2 \
             WHERE key_id = $1 RETURNING ",
            record_columns!()
        ))
        .bind(id.as_str())
        .bind(DB::instant(OffsetDateTime::now_utc()));
        self.one(query).await
    }

    /// See [`KeyAdmin::revoke_owner`](crate::KeyAdmin::revoke_owner); in key
    /// id order.
    pub(crate) async fn revoke_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let query = sqlx::query(concat!(
            "UPDATE api_keys SET status = 'revoked', updated_at = $2 \
             WHERE owner = $1 AND status <> 'revoked' RETURNING ",
            record_columns!()
        ))
        .bind(owner)
        .bind(DB::instant(OffsetDateTime::now_utc()));
        self.all(query).await
    }

    /// See [`KeyAdmin::set_expires_at`](crate::KeyAdmin::set_expires_at).
    pub(crate) async fn set_expires_at(
        &self,
        id: &KeyId,
        at: Option<OffsetDateTime>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let query = sqlx::query(concat!(
            "UPDATE api_keys SET expires_at = $2, updated_at = $3 \
             WHERE key_id = $1 RETURNING ",
            record_columns!()
        ))
        .bind(id.as_str())
        .bind(at.map(DB::instant))
        .bind(DB::instant(OffsetDateTime::now_utc()));
        self.one(query).await
    }

    /// See [`KeyAdmin::key_details`](crate::KeyAdmin::key_details).
    pub(crate) async fn key_details(&self, id: &KeyId) -> Result<Option<KeyDetails>, StoreError> {
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
        let record = decode_record::<DB>(&row)?;
        let total: i64 = get::<DB, _>(&row, "total_requests")?;
        let total = u64::try_from(total)
            .map_err(|_| corrupt(&record.id, format!("total_requests is negative ({total})")))?;
        let last_used_at = DB::get_instant(&row, &record.id, "last_used_at")?;
        Ok(Some(KeyDetails::new(record, total, last_used_at)))
    }

    /// The record `query` returns, if any.
    async fn one<'q>(
        &self,
        query: Query<'q, DB, DB::Arguments<'q>>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let row = query.fetch_optional(&self.pool).await.map_err(map_err)?;
        row.as_ref().map(decode_record::<DB>).transpose()
    }

    /// The records `query` returns, in key id order: `KeyId`'s `Ord`
    /// (bytewise), whatever the database's collation.
    async fn all<'q>(
        &self,
        query: Query<'q, DB, DB::Arguments<'q>>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        let mut out = rows
            .iter()
            .map(decode_record::<DB>)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Runs `sql` (`$1`..`$11` in [`record_columns!`] order) with `record`'s
    /// values.
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
            .bind(record.owner.as_str())
            .bind(DB::scopes(&record.scopes)?)
            .bind(record.status.as_str())
            .bind(record.expires_at.map(DB::instant))
            .bind(limit_requests)
            .bind(limit_per)
            .bind(quota)
            .bind(DB::instant(record.created_at))
            .bind(DB::instant(record.updated_at))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// Sums a batch per key (a batch should hold one delta per key, but a
/// duplicate must still count), in key order.
fn aggregate(batch: &UsageBatch) -> Vec<KeyUsage<'_>> {
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
        .map(|(key_id, (n, last_used_at))| KeyUsage {
            key_id,
            requests: i64::try_from(n).unwrap_or(i64::MAX),
            last_used_at,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UsageDelta;

    #[test]
    fn aggregates_duplicate_deltas() {
        let t1 = time::macros::datetime!(2030-01-01 0:00 UTC);
        let t2 = time::macros::datetime!(2030-01-01 0:01 UTC);
        let delta = |id: &str, requests, at| UsageDelta {
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
            .map(|u| (u.key_id.as_str().to_owned(), u.requests, u.last_used_at))
            .collect();
        assert_eq!(
            got,
            vec![("a".to_owned(), i64::MAX, t1), ("b".to_owned(), 5, t2)]
        );
    }
}
