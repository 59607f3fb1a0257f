//! Per-key rate limits and monthly quotas, fleet-wide through Redis.
//!
//! **Rate limit: GCRA** (the generic cell rate algorithm), as one Lua script:
//! one round trip, atomic, one small key per limited key (its "theoretical
//! arrival time"). Unlike a fixed window it allows no double burst at a
//! window edge, and unlike a sliding log it stores no per-request entries.
//! `N per T` lets a burst of `N` through, then one request every `T / N`.
//!
//! **Quota:** requests per calendar month (UTC), counted by the same script
//! in a per-month key, so a new month starts from zero. A request refused by
//! the rate limit does not consume quota, and the reverse.
//!
//! Times come from the cache's clock (so tests can move it), not from
//! Redis: instances are expected to run NTP-synchronised clocks.
//!
//! **Without Redis** (none configured, breaker open, or an error), each
//! instance enforces the same limits on its own requests only; health shows
//! Redis as down meanwhile. A fleet of N instances then lets up to N times
//! the limit through: the alternative, refusing every limited request while
//! Redis is away, would turn a cache outage into an API outage.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use time::{Month, OffsetDateTime};

use crate::l2::L2;
use crate::{KeyId, KeyRecord};

/// The figures of a rate-limited (or allowed) request, for the
/// `RateLimit-*` and `Retry-After` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitInfo {
    /// Requests allowed per window (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left in the current burst (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Until the burst allowance is whole again (`RateLimit-Reset`).
    pub reset_after: Duration,
    /// Until the next request would be allowed (`Retry-After`); zero when
    /// allowed.
    pub retry_after: Duration,
}

impl RateLimitInfo {
    /// Builds the figures.
    pub fn new(limit: u32, remaining: u32, reset_after: Duration, retry_after: Duration) -> Self {
        Self {
            limit,
            remaining,
            reset_after,
            retry_after,
        }
    }
}

/// What the limiter decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    RateLimited(RateLimitInfo),
    QuotaExceeded { quota: u64, retry_after: Duration },
}

const SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local emission = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local quota = tonumber(ARGV[5])
local quota_ttl = tonumber(ARGV[6])
if quota > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= quota then return {2, used, 0} end
end
local reset = 0
if limit > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + emission
  local allow_at = new_tat - period
  if now < allow_at then return {1, allow_at - now, tat - now} end
  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(new_tat - now, 1))
  reset = new_tat - now
end
if quota > 0 then
  local used = redis.call('INCR', KEYS[2])
  if used == 1 then redis.call('PEXPIRE', KEYS[2], quota_ttl) end
end
return {0, reset, 0}
"#;

/// GCRA parameters of a limit, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    limit: u32,
    emission_ms: i64,
    period_ms: i64,
}

impl Gcra {
    fn of(record: &KeyRecord) -> Option<Self> {
        let rl = record.rate_limit.filter(|r| r.requests > 0)?;
        let period_ms = i64::try_from(rl.per.as_millis()).unwrap_or(i64::MAX).max(1);
        Some(Self {
            limit: rl.requests,
            emission_ms: (period_ms / i64::from(rl.requests)).max(1),
            period_ms,
        })
    }

    fn limited(&self, retry_ms: i64, reset_ms: i64) -> RateLimitInfo {
        RateLimitInfo::new(self.limit, 0, ms(reset_ms), ms(retry_ms))
    }
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The first instant of the month after `now` (UTC).
fn next_month(now: OffsetDateTime) -> OffsetDateTime {
    let now = now.to_offset(time::UtcOffset::UTC);
    let (y, m) = match now.month() {
        Month::December => (now.year() + 1, Month::January),
        m => (now.year(), m.next()),
    };
    time::Date::from_calendar_date(y, m, 1)
        .map(|d| d.midnight().assume_utc())
        .unwrap_or(now + Duration::from_secs(31 * 86_400))
}

pub(crate) fn month_tag(now: OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

#[derive(Default)]
struct LocalState {
    tat_ms: i64,
    month: String,
    used: u64,
}

/// The limiter: Redis first, this instance's own state when Redis is away.
pub(crate) struct Limiter {
    script: redis::Script,
    local: Mutex<HashMap<KeyId, LocalState>>,
}

impl Limiter {
    pub(crate) fn new() -> Self {
        Self {
            script: redis::Script::new(SCRIPT),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Decides one request of `record` at `now`.
    pub(crate) async fn check(
        &self,
        record: &KeyRecord,
        now: OffsetDateTime,
        l2: Option<&L2>,
        prefix: &str,
    ) -> Decision {
        let gcra = Gcra::of(record);
        let quota = record.monthly_quota.filter(|q| *q > 0);
        if gcra.is_none() && quota.is_none() {
            return Decision::Allow;
        }
        let month_end = next_month(now);
        let quota_exceeded = |q: u64| Decision::QuotaExceeded {
            quota: q,
            retry_after: ms(unix_ms(month_end) - unix_ms(now)),
        };
        if let Some(l2) = l2 {
            let mut inv = self.script.prepare_invoke();
            inv.key(format!("{prefix}rl:{}", record.id))
                .key(format!("{prefix}quota:{}:{}", record.id, month_tag(now)))
                .arg(unix_ms(now))
                .arg(gcra.map_or(0, |g| g.emission_ms))
                .arg(gcra.map_or(0, |g| g.period_ms))
                .arg(gcra.map_or(0, |g| g.limit))
                .arg(quota.unwrap_or(0))
                // Keep a month's count a day past the month, for dashboards.
                .arg(unix_ms(month_end) - unix_ms(now) + 86_400_000);
            match l2.call_script::<(i64, i64, i64)>(&inv).await {
                Ok((0, _, _)) => return Decision::Allow,
                Ok((1, retry, reset)) => {
                    if let Some(g) = gcra {
                        return Decision::RateLimited(g.limited(retry, reset));
                    }
                }
                Ok((2, _, _)) => {
                    if let Some(q) = quota {
                        return quota_exceeded(q);
                    }
                }
                Ok(other) => tracing::warn!(?other, "unexpected limiter reply; using local limits"),
                Err(e) => {
                    tracing::debug!(error = %e, "redis limiter unavailable; using local limits")
                }
            }
        }
        self.check_local(record, gcra, quota, now, quota_exceeded)
    }

    fn check_local(
        &self,
        record: &KeyRecord,
        gcra: Option<Gcra>,
        quota: Option<u64>,
        now: OffsetDateTime,
        quota_exceeded: impl Fn(u64) -> Decision,
    ) -> Decision {
        let now_ms = unix_ms(now);
        let month = month_tag(now);
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let state = local.entry(record.id.clone()).or_default();
        if state.month != month {
            state.month = month;
            state.used = 0;
        }
        if let Some(q) = quota {
            if state.used >= q {
                return quota_exceeded(q);
            }
        }
        if let Some(g) = gcra {
            let tat = state.tat_ms.max(now_ms);
            let new_tat = tat + g.emission_ms;
            let allow_at = new_tat - g.period_ms;
            if now_ms < allow_at {
                return Decision::RateLimited(g.limited(allow_at - now_ms, tat - now_ms));
            }
            state.tat_ms = new_tat;
        }
        state.used += 1;
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyHasher, RateLimit, Scopes};
    use time::macros::datetime;

    fn record(limit: Option<(u32, u64)>, quota: Option<u64>) -> KeyRecord {
        let mut r = KeyRecord::new(
            KeyId::from("k"),
            KeyHasher::new(None).hash(b"k"),
            "o",
            Scopes::new(["a"]),
        );
        r.rate_limit = limit.map(|(n, s)| RateLimit::new(n, Duration::from_secs(s)));
        r.monthly_quota = quota;
        r
    }

    #[tokio::test]
    async fn local_gcra_allows_the_burst_then_one_per_emission() {
        let l = Limiter::new();
        let r = record(Some((5, 60)), None);
        let t0 = datetime!(2030-01-01 0:00 UTC);
        for _ in 0..5 {
            assert_eq!(l.check(&r, t0, None, "p:").await, Decision::Allow);
        }
        match l.check(&r, t0, None, "p:").await {
            Decision::RateLimited(info) => {
                assert_eq!(info.retry_after, Duration::from_secs(12));
                assert_eq!(info.limit, 5);
                assert_eq!(info.remaining, 0);
            }
            other => panic!("{other:?}"),
        }
        let t1 = t0 + Duration::from_secs(12);
        assert_eq!(l.check(&r, t1, None, "p:").await, Decision::Allow);
    }

    #[tokio::test]
    async fn local_quota_resets_with_the_month() {
        let l = Limiter::new();
        let r = record(None, Some(2));
        let jan = datetime!(2030-01-31 23:59 UTC);
        assert_eq!(l.check(&r, jan, None, "p:").await, Decision::Allow);
        assert_eq!(l.check(&r, jan, None, "p:").await, Decision::Allow);
        assert_eq!(
            l.check(&r, jan, None, "p:").await,
            Decision::QuotaExceeded {
                quota: 2,
                retry_after: Duration::from_secs(60)
            }
        );
        let feb = datetime!(2030-02-01 0:00 UTC);
        assert_eq!(l.check(&r, feb, None, "p:").await, Decision::Allow);
    }

    #[test]
    fn months() {
        assert_eq!(
            next_month(datetime!(2030-12-15 10:00 UTC)),
            datetime!(2031-01-01 0:00 UTC)
        );
        assert_eq!(month_tag(datetime!(2030-03-01 0:00 UTC)), "2030-03");
    }
}
