//! Records as the SQL stores keep them: decoding a row into a
//! [`KeyRecord`], what writing one rounds, and how `sqlx` errors map to
//! [`StoreError`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::{ColumnIndex, Decode, Row, Type};
use time::OffsetDateTime;

use super::Dialect;
use crate::store::StoreError;
use crate::{KeyHash, KeyId, KeyRecord, KeyStatus, RateLimit, Scopes};

/// The columns [`decode_record`] reads, in `SELECT` order.
macro_rules! record_columns {
    () => {
        "key_id, key_hash, owner, scopes, status, expires_at, rate_limit_requests, \
         rate_limit_per_seconds, monthly_quota, created_at, updated_at"
    };
}
pub(crate) use record_columns;

/// Decodes a row holding [`record_columns!`]; a value the record cannot
/// hold is [`StoreError::Corrupt`], never a panic.
pub(crate) fn decode_record<DB>(row: &DB::Row) -> Result<KeyRecord, StoreError>
where
    DB: Dialect,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
{
    let id = KeyId::from(get::<DB, String>(row, "key_id")?);
    let hash_bytes: Vec<u8> = get::<DB, _>(row, "key_hash")?;
    let hash = KeyHash::from_slice(&hash_bytes).ok_or_else(|| {
        corrupt(
            &id,
            format!("key_hash is {} bytes, expected 32", hash_bytes.len()),
        )
    })?;
    let owner: String = get::<DB, _>(row, "owner")?;
    let scopes = DB::get_scopes(row, &id)?;
    let status: String = get::<DB, _>(row, "status")?;
    let status = KeyStatus::from_str(&status).map_err(|e| corrupt(&id, e))?;
    let expires_at = DB::get_instant(row, &id, "expires_at")?;
    let rate_limit = match (
        get::<DB, Option<i64>>(row, "rate_limit_requests")?,
        get::<DB, Option<i64>>(row, "rate_limit_per_seconds")?,
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
    let monthly_quota = get::<DB, Option<i64>>(row, "monthly_quota")?
        .map(|q| {
            u64::try_from(q).map_err(|_| corrupt(&id, format!("monthly_quota {q} is negative")))
        })
        .transpose()?;
    let created_at = required_instant::<DB>(row, &id, "created_at")?;
    let updated_at = required_instant::<DB>(row, &id, "updated_at")?;

    let mut record = KeyRecord::new(id, hash, owner, Scopes::new(scopes));
    record.status = status;
    record.expires_at = expires_at;
    record.rate_limit = rate_limit;
    record.monthly_quota = monthly_quota;
    record.created_at = created_at;
    record.updated_at = updated_at;
    Ok(record)
}

/// Reads `column`, mapping a decode failure to [`StoreError::Corrupt`].
pub(crate) fn get<'r, DB, T>(row: &'r DB::Row, column: &str) -> Result<T, StoreError>
where
    DB: Dialect,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    T: Decode<'r, DB> + Type<DB>,
{
    row.try_get(column).map_err(map_err)
}

/// An instant in a `NOT NULL` column.
fn required_instant<DB: Dialect>(
    row: &DB::Row,
    id: &KeyId,
    column: &str,
) -> Result<OffsetDateTime, StoreError> {
    DB::get_instant(row, id, column)?.ok_or_else(|| corrupt(id, format!("{column} is NULL")))
}

/// `record` as the store keeps it: instants in UTC milliseconds, rate-limit
/// windows in whole seconds.
pub(crate) fn normalize(record: &KeyRecord) -> KeyRecord {
    let mut out = record.clone();
    out.expires_at = record.expires_at.map(truncate_ms);
    out.rate_limit = record
        .rate_limit
        .map(|l| RateLimit::new(l.requests, Duration::from_secs(l.per_seconds())));
    out.created_at = truncate_ms(record.created_at);
    out.updated_at = truncate_ms(record.updated_at);
    out
}

/// `t` in UTC, truncated to whole milliseconds: what the stores keep
/// (PostgreSQL's `TIMESTAMPTZ` itself keeps microseconds).
pub(crate) fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    t.replace_millisecond(t.millisecond()).unwrap_or(t)
}

/// A row of key `id` holds something a record cannot.
pub(crate) fn corrupt(id: &KeyId, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("key {id}: {what}"))
}

/// A value the schema cannot hold; reported as [`StoreError::Corrupt`]
/// because the trait has no "invalid input" variant.
pub(crate) fn to_i64(field: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::Corrupt(format!(
            "{field} {value} does not fit the store's 64-bit signed column"
        ))
    })
}

/// A pool that ran out of time is a [`StoreError::Timeout`], a value that
/// does not decode is [`StoreError::Corrupt`]; anything else is
/// [`StoreError::Unavailable`].
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut => StoreError::Timeout,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::unavailable(other),
    }
}

/// Like [`map_err`] for a statement of a migration that failed.
pub(crate) fn map_migrate_err(e: sqlx::migrate::MigrateError) -> StoreError {
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
}
