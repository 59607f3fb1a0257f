//! The `/health/cache` report, framework-neutral: adapters serve
//! [`ApiKeyCache::health`] as JSON with [`HealthReport::http_status`].
//!
//! Probes (one Redis `PING`, one store lookup of a random hash) run at most
//! once a second whatever the probe rate: concurrent callers share one probe
//! and later ones reuse its result until it is a second old. "A second"
//! passes on tokio's timer or on the cache's [`Clock`](crate::Clock),
//! whichever moves first, so tests advance paused time or a
//! [`ManualClock`](crate::ManualClock) instead of sleeping.
//!
//! Status rules:
//! * `unhealthy` (503): the store is down and the caches cannot answer
//!   (`database_only` mode, or an empty L1 with Redis not up).
//! * `degraded` (200): the store is down but caches answer; or Redis is
//!   configured and down, its breaker is not closed, or the invalidation
//!   subscriber is not listening.
//! * `healthy` (200) otherwise. A low hit rate is reported, never a reason
//!   to refuse traffic: a fresh pod starts cold.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;

use crate::{ApiKeyCache, BreakerState, Clock, KeyHash, Mode};

const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Everything works.
    Healthy,
    /// Requests are answered, with reduced guarantees or speed.
    Degraded,
    /// Requests cannot be answered: take the instance out of rotation.
    Unhealthy,
}

/// The `/health/cache` JSON document.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, HealthStatus, MemoryStore};
///
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
/// let report = cache.health().await;
/// assert_eq!(report.status, HealthStatus::Healthy);
/// assert_eq!(report.http_status(), 200);
/// let json = serde_json::to_value(&report).unwrap();
/// assert_eq!(json["l2"]["status"], "disabled");
/// # });
/// ```
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// Overall verdict.
    pub status: HealthStatus,
    /// `normal` or `database_only`.
    pub mode: &'static str,
    /// In-process tier.
    pub l1: L1Health,
    /// Redis tier.
    pub l2: L2Health,
    /// The store.
    pub store: StoreHealth,
    /// The invalidation subscriber.
    pub invalidation: InvalidationHealth,
    /// Usage counters not yet flushed.
    pub usage: UsageHealth,
    /// The owner key-list cache (`list_owner_keys`).
    pub owner_lists: OwnerListsHealth,
    /// Rate limits and quotas: token leases and the local fallback.
    pub limits: LimitsHealth,
    /// Cache warming at start-up ([`ApiKeyCache::warming`]); never a reason
    /// for a worse status.
    pub warming: crate::WarmingHealth,
    /// When the probes behind this report ran (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
}

/// L1 figures.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct L1Health {
    /// Entries held.
    pub entries: u64,
    /// Requests answered by L1.
    pub hits: u64,
    /// Requests L1 could not answer.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 before the first request.
    pub hit_rate: f64,
    /// "No such key" entries held.
    pub negative_entries: u64,
}

/// Redis figures.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct L2Health {
    /// `up`, `down` or `disabled` (no Redis URL).
    pub status: &'static str,
    /// `closed`, `open` or `half_open` (`closed` when disabled).
    pub breaker: &'static str,
    /// Round trip of the last probe or call, in milliseconds.
    pub latency_ms: f64,
    /// Reads answered by Redis.
    pub hits: u64,
    /// Reads Redis could not answer.
    pub misses: u64,
    /// Failed or timed-out calls.
    pub errors: u64,
    /// `single`, `cluster` or `sentinel`; absent when disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// With a sentinel URL: the primary in use (`host:port`), once the
    /// sentinels have named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Why the last Redis call failed (a timeout, a refused connection, a
    /// certificate the CA does not sign, ...), until a call succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Store figures.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StoreHealth {
    /// `up` or `down`.
    pub status: &'static str,
    /// Round trip of the last probe, in milliseconds.
    pub latency_ms: f64,
}

/// Invalidation subscriber figures.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct InvalidationHealth {
    /// Listening on the event channel.
    pub subscribed: bool,
    /// Events received.
    pub events_received: u64,
    /// Reconnections that cleared L1.
    pub resyncs: u64,
}

/// Usage counter figures.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct UsageHealth {
    /// Keys with counts not yet in the store.
    pub pending_keys: u64,
    /// Counted requests not yet in the store.
    pub pending_increments: u64,
    /// Failed flushes (each retried).
    pub flush_errors: u64,
}

/// Owner key-list cache figures: `"owner_lists": {"entries": n}`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
///
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
/// cache.list_owner_keys("acme").await.unwrap();
/// assert_eq!(cache.health().await.owner_lists.entries, 1);
/// # });
/// ```
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OwnerListsHealth {
    /// Owner lists held in this instance's L1.
    pub entries: u64,
}

/// Rate-limit figures: `"limits": {"leases": true, "leased_keys": 0,
/// "leased_tokens": 0, "waits": 0, "local_decisions": 0}`. Never a reason
/// for a worse status (Redis being down already is).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
///
/// // Leases need Redis: without it, limits are per instance.
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
/// let limits = cache.health().await.limits;
/// assert!(!limits.leases);
/// assert_eq!(limits.waits, 0);
/// # });
/// ```
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LimitsHealth {
    /// Rate-limited keys are answered from token leases (on, and Redis
    /// configured).
    pub leases: bool,
    /// Keys this instance holds tokens of.
    pub leased_keys: u64,
    /// Tokens it holds: at most what the rest of the fleet cannot use until
    /// they are spent here or given back.
    pub leased_tokens: u64,
    /// Limited requests that waited for Redis (no token at hand); flat in
    /// steady traffic.
    pub waits: u64,
    /// Limited requests decided by this instance alone (Redis unavailable).
    pub local_decisions: u64,
}

impl HealthReport {
    /// 200 for healthy and degraded, 503 for unhealthy.
    pub fn http_status(&self) -> u16 {
        match self.status {
            HealthStatus::Unhealthy => 503,
            _ => 200,
        }
    }
}

/// The last probe results, shared by every health request within a second.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// When it ran on tokio's timer (paused time moves it).
    at: tokio::time::Instant,
    /// When it ran on the cache's clock (a `ManualClock` moves it).
    checked_at: OffsetDateTime,
    store_up: bool,
    store_ms: f64,
    /// `None` when Redis is not configured.
    redis_up: Option<bool>,
    redis_ms: f64,
    /// L1 counts need a maintenance pass and a scan: once per probe too.
    l1_entries: u64,
    l1_negative: u64,
}

impl Probe {
    /// Less than a second old on both time sources. A clock that went back
    /// (wall-clock step) makes the probe stale rather than reused for long.
    fn is_fresh(&self, clock: &dyn Clock) -> bool {
        let by_clock = clock.now() - self.checked_at;
        self.at.elapsed() < PROBE_EVERY
            && by_clock >= time::Duration::ZERO
            && by_clock < PROBE_EVERY
    }
}

impl ApiKeyCache {
    /// The health report, probing Redis and the store at most once a second.
    pub async fn health(&self) -> HealthReport {
        let probe = self.probe().await;
        let s = self.stats();
        let breaker = s.l2_breaker;
        let l2_status = match probe.redis_up {
            None => "disabled",
            Some(true) if breaker == Some(BreakerState::Closed) => "up",
            Some(_) => "down",
        };
        let l1_entries = probe.l1_entries;
        let mode = self.mode();
        let status = if !probe.store_up
            && (mode == Mode::DatabaseOnly || (l2_status != "up" && l1_entries == 0))
        {
            HealthStatus::Unhealthy
        } else if !probe.store_up
            || (probe.redis_up.is_some() && (l2_status != "up" || !s.subscribed))
        {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        };
        let lookups = s.l1_hits + s.l1_misses;
        HealthReport {
            status,
            mode: mode.as_str(),
            l1: L1Health {
                entries: l1_entries,
                hits: s.l1_hits,
                misses: s.l1_misses,
                hit_rate: if lookups == 0 {
                    0.0
                } else {
                    s.l1_hits as f64 / lookups as f64
                },
                negative_entries: probe.l1_negative,
            },
            l2: L2Health {
                status: l2_status,
                breaker: breaker.unwrap_or(BreakerState::Closed).as_str(),
                latency_ms: probe.redis_ms,
                hits: s.l2_hits,
                misses: s.l2_misses,
                errors: s.l2_errors,
                kind: self.inner.l2.as_ref().map(|l2| l2.kind().as_str()),
                primary: self.inner.l2.as_ref().and_then(|l2| l2.primary()),
                last_error: self.inner.l2.as_ref().and_then(|l2| l2.stats.last_error()),
            },
            store: StoreHealth {
                status: if probe.store_up { "up" } else { "down" },
                latency_ms: probe.store_ms,
            },
            invalidation: InvalidationHealth {
                subscribed: s.subscribed,
                events_received: s.events_received,
                resyncs: s.resyncs,
            },
            usage: UsageHealth {
                pending_keys: s.usage_pending_keys,
                pending_increments: s.usage_pending_increments,
                flush_errors: s.usage_flush_errors,
            },
            owner_lists: OwnerListsHealth {
                entries: self.inner.owner_lists.entries(),
            },
            limits: {
                let leases = &self.inner.limiter.leases;
                let (leased_keys, leased_tokens) = leases.held();
                LimitsHealth {
                    leases: leases.enabled(),
                    leased_keys,
                    leased_tokens,
                    waits: s.limit_waits,
                    local_decisions: s.limit_local_decisions,
                }
            },
            warming: self.warming(),
            checked_at: probe.checked_at,
        }
    }

    async fn probe(&self) -> Probe {
        let inner = &*self.inner;
        // Holding the async lock across the probe makes concurrent callers
        // wait for this one probe instead of starting their own.
        let mut last = inner.health_probe.lock().await;
        if let Some(p) = last.as_ref().filter(|p| p.is_fresh(&*inner.clock)) {
            return p.clone();
        }
        // A random hash: a real indexed query that finds nothing.
        let mut bytes = [0u8; 32];
        let _ = getrandom::fill(&mut bytes);
        let started = Instant::now();
        let store_up = matches!(
            tokio::time::timeout(
                inner.config.store_timeout,
                inner.store.find_by_hash(&KeyHash::from_bytes(bytes)),
            )
            .await,
            Ok(Ok(_))
        );
        let store_ms = started.elapsed().as_secs_f64() * 1e3;
        let (redis_up, redis_ms) = match &inner.l2 {
            None => (None, 0.0),
            Some(l2) => {
                let started = Instant::now();
                let up = l2.call::<String>(&redis::cmd("PING")).await.is_ok();
                (Some(up), started.elapsed().as_secs_f64() * 1e3)
            }
        };
        // Dead entries cannot answer anything: drop them before counting
        // what the caches hold.
        inner.l1.sweep();
        let probe = Probe {
            l1_entries: inner.l1.entry_count(),
            l1_negative: inner.l1.negative_count(),
            at: tokio::time::Instant::now(),
            checked_at: inner.clock.now(),
            store_up,
            store_ms,
            redis_up,
            redis_ms,
        };
        inner.health_probes.fetch_add(1, Ordering::Relaxed);
        *last = Some(probe.clone());
        probe
    }

    /// How many health probes have run (each one Redis `PING` and one store
    /// query at most): for tests of the once-a-second bound.
    pub fn health_probe_count(&self) -> u64 {
        self.inner.health_probes.load(Ordering::Relaxed)
    }
}
