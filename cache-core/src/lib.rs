//! apikey-cache: authenticate API keys on every request without a database
//! round trip.
//!
//! The database stays the source of truth. This crate keeps validation
//! results in an in-process cache ("L1") and a shared cache (Redis,
//! "L2"), judges every cached record at request time (status, expiry,
//! scopes), and fails closed when it cannot know.
//!
//! ```
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, NewKey, RequiredScopes, SqliteStore};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! // The store is your database; SQLite and PostgreSQL stores come with the crate.
//! let store = Arc::new(SqliteStore::connect("sqlite::memory:").await?);
//! store.migrate().await?;
//! // No Redis URL: in-process cache only. Add `.redis_url(..)` for a fleet.
//! let cache = ApiKeyCache::new(CacheConfig::builder().build()?, store.clone())?;
//!
//! let issued = store.create_key(cache.hasher(), NewKey::new("acme", ["orders:*"])).await?;
//! let outcome = cache.verify_key(&issued.plaintext, &RequiredScopes::new(["orders:read"])).await;
//! assert!(outcome.is_valid());
//!
//! // Revoke in the store, then invalidate: refused from the next request on.
//! store.revoke_key(&issued.record.id).await?;
//! cache.invalidate(&issued.record.hash).await?;
//! let outcome = cache.verify_key(&issued.plaintext, &RequiredScopes::none()).await;
//! assert_eq!(outcome, apikey_cache::Outcome::Revoked);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Metrics
//!
//! The cache emits Prometheus metrics through the `metrics` facade and owns
//! no registry: install an exporter in the host before building the cache,
//! and every metric arrives described (HELP text and unit). The names are
//! part of the interface; [`telemetry`] lists them ([`telemetry::METRICS`])
//! with their labels, and gives buckets for the lookup duration histogram.
//!
//! ```
//! use apikey_cache::telemetry::{metric, MetricKind};
//!
//! let requests = metric("apikey_cache_requests_total").unwrap();
//! assert_eq!(requests.kind, MetricKind::Counter);
//! assert!(requests.labels[0].values.contains(&"unknown"));
//! ```
//!
//! # Owner key lists
//!
//! [`ApiKeyCache::list_owner_keys`] answers "which keys does this owner
//! have?" (an [`OwnerKey`] summary per key: id, scopes, status, expiry; no
//! hash, no plaintext) from a cache of its own: a small L1 (bounded by the
//! key summaries it holds, entries fresh for `l1_ttl`), then Redis
//! (`{prefix}owner-keys:{owner}`, at most `min(l2_ttl, tombstone_ttl / 2)`),
//! then the store; `database_only` asks the store every time, and a store
//! error is an error, never an empty list.
//!
//! Every invalidation drops the lists it concerns: `invalidate` and
//! `invalidate_key_id` the lists holding the key, `invalidate_owner` the
//! owner's list. Issuing a key changes no cached key, so **hosts call
//! [`ApiKeyCache::invalidate_owner_list`] after `KeyAdmin::create_key`**.
//! "At once" means: on the invalidating instance, from the moment the call
//! is made; for every instance reading Redis, once the returned future has
//! resolved `Ok`; in other instances' L1, when the event arrives (the
//! bound a key revocation has, milliseconds). A list read from the store
//! before an invalidation is never written back afterwards, in either tier
//! (`owner_list.rs` explains how).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, KeyStatus, MemoryStore, NewKey};
//!
//! let store = Arc::new(MemoryStore::new());
//! let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
//! let issued = store.create_key(cache.hasher(), NewKey::new("acme", ["a"])).await?;
//! cache.invalidate_owner_list("acme").await?; // after every create_key
//! let listed = cache.list_owner_keys("acme").await?;
//! assert_eq!((listed.len(), listed[0].status), (1, KeyStatus::Active));
//! store.revoke_key(&issued.record.id).await?;
//! cache.invalidate(&issued.record.hash).await?; // drops the list too
//! assert_eq!(cache.list_owner_keys("acme").await?[0].status, KeyStatus::Revoked);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Audit events
//!
//! Refused requests (from the web adapters), invalidations, resyncs, mode
//! changes and breaker transitions are `tracing` events on the target
//! `apikey_cache::audit`, with their details as fields, rate-limited per
//! kind and never with a plaintext key: see [`audit`] for every event, its
//! fields and the rate limit.
//!
//! # Layout
//!
//! * `extract.rs`: finding the key in request headers; early rejections.
//! * `hash.rs`: [`KeyHash`], [`KeyHasher`] (SHA-256 / HMAC), [`generate_api_key`].
//! * `record.rs`, `scope.rs`: [`KeyRecord`] and its [`Scopes`].
//! * `store/`: the [`KeyStore`] trait, [`KeyAdmin`], the in-memory store,
//!   and the SQL stores: one implementation (`store/sql/`) with a dialect
//!   each for SQLite and PostgreSQL.
//! * `cache.rs`: [`ApiKeyCache`], its builder, the load path (single flight,
//!   L2, store) and the argument that closes the refill race.
//! * `verify.rs`: the request path, [`Verify`] and the sync/owned halves for
//!   web adapters.
//! * `l1/` (deadlines and verdicts; `moka.rs`, the engine), `l2.rs`,
//!   `codec.rs`, `breaker.rs`, `flight.rs`: the tiers, the Redis value
//!   format, the Redis circuit breaker, single flight.
//! * `owner_list.rs`: the owner key-list cache ([`OwnerKey`]), its tiers
//!   and how invalidations reach it.
//! * `invalidation/`: invalidating keys, key ids and owners on every
//!   instance (`mod.rs`), delivering it to Redis whatever happens to the
//!   caller (`delivery.rs`), and what this instance distrusts in Redis
//!   meanwhile (`guard.rs`). `events.rs`: the pub/sub subscriber and its
//!   resync.
//! * `mode.rs`: normal and emergency `database_only` mode, per instance or
//!   fleet-wide.
//! * `usage/`: usage counters (`mod.rs`), the month each count belongs to
//!   (`months.rs`), their exactly-once flushes to the store and Redis
//!   (`flush.rs`). `limits.rs`: GCRA rate limits and monthly quotas, and
//!   the per-instance fallback; `limits/script.rs`: the one Redis script
//!   (debt, quota, leases) and why it is exact; `limits/lease.rs`: token
//!   leases, spent from L1.
//! * [`audit`]: audit events (refused requests, invalidations, resyncs,
//!   mode changes, breaker transitions) on the `apikey_cache::audit`
//!   target, rate-limited per kind.
//! * `health.rs`, [`telemetry`], `stats.rs`: the `/health/cache` report,
//!   Prometheus metrics through the `metrics` facade (their names and
//!   descriptions), counters.
//! * `outcome.rs`: [`Outcome`] and its HTTP and gRPC renderings
//!   ([`Rejection`], [`GrpcRejection`]), shared by the web adapters.
//! * `config.rs`: [`CacheConfig`], its builder and `from_env()`.
//! * `warm.rs`: cache warming at start-up ([`ApiKeyCache::warming`]).
//!
//! # Choices where the design was silent
//!
//! * A key whose `expires_at` has passed is cached as "expired" for
//!   `negative_ttl` in both tiers (a leaked expired key costs the store one
//!   query per negative TTL); no entry serves a key as valid past
//!   `expires_at`, which is judged at request time.
//! * An invalidation answers for this instance at once, before its future
//!   is first polled, and its Redis part runs in a task of its own: the
//!   returned future only reports how that went. `invalidate_key_id` and
//!   `invalidate_owner` scan L1 (milliseconds for 100k entries).
//! * Usage counts go to the calendar month (UTC, by the cache's clock) in
//!   which the request was served: one clock read per counted request.
//! * The Redis usage script starts with `#!lua` so that Redis refuses it as
//!   a whole when out of memory: Redis 7.0 or later.
//! * An `Authorization` header with a scheme other than `Bearer` is skipped
//!   as a key source; if no other source has a key, the request is
//!   `invalid_api_key` (not `missing_api_key`).
//! * A repeated key header (two `X-API-Key`s, two `Authorization`s) is
//!   refused as malformed rather than guessing which one counts.
//! * Usage `last_used_at` is the flush time of the batch that carried the
//!   request (exact to `usage_flush_interval`): reading the clock on every
//!   request would cost more than counting it.
//! * Cache warming ([`CacheConfig::warm_keys`]) loads the most recently used
//!   keys as what they are (a revoked key as revoked, an expired one as
//!   expired), like any load; a deadline ends it as `done`, a store that
//!   cannot list keys ([`StoreError::Unsupported`]) as `failed`, and
//!   `database_only` as `off`. See `warm.rs`.
//! * While Redis is unavailable, rate limits are enforced per instance and
//!   quotas count this instance's requests only (see `limits.rs` for why
//!   failing open on quotas beats refusing all limited traffic).
//! * Rate-limited keys are answered from L1 through token leases
//!   ([`CacheConfig::leases`], on by default): a lease's tokens stay charged
//!   to the fleet's bucket, without draining, until spent, given back or
//!   lapsed, so the fleet never admits more than the limit; the price is
//!   that tokens one instance holds are not available to another until it
//!   spends or returns them (`limits/lease.rs` gives the bound). Only the
//!   rate-limit refusal carries `RateLimit-*` headers, as before.
//! * Limits are never "unlimited" by accident: `monthly_quota: Some(0)` means
//!   zero (every request answers `quota_exceeded`; `None` is unlimited), and
//!   a rate limit of 0 requests refuses every request. Rate limits are exact
//!   for any `N` per period (`limits.rs`); `create_key` refuses one that
//!   cannot be ([`RateLimit::try_new`]: a period of whole seconds, as stores
//!   keep it, and `N × period in ms ≤ 2^53`).
//! * A subscriber that (re)subscribes clears L1, including on its first
//!   subscription: loads that ran before it listened may have missed events.
//!
//! * L1 is moka with an identity hasher over the digest and no per-entry
//!   expiry (TTLs are per-entry deadlines checked on read); verdicts
//!   without a record ("not found", "expired") are held in a moka cache of
//!   their own, an eighth of `l1_capacity`, so that a random-key flood
//!   cannot evict records (moka's TinyLFU alone forgets keys that stay idle
//!   through a flood many times the capacity).
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod audit;
mod breaker;
mod cache;
mod clock;
mod codec;
mod config;
mod events;
mod extract;
mod flight;
mod hash;
mod health;
mod invalidation;
mod l1;
mod l2;
mod limits;
mod mode;
mod outcome;
mod owner_list;
mod record;
mod scope;
mod stats;
pub mod store;
pub mod telemetry;
mod usage;
mod verify;
mod warm;

pub use async_trait::async_trait;
pub use breaker::BreakerState;
pub use cache::{ApiKeyCache, ApiKeyCacheBuilder, BuildError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{parse_duration, CacheConfig, CacheConfigBuilder, ConfigError, Mode};
pub use extract::{
    check_key, Extracted, HeaderLookup, HeaderSource, KeyExtractor, KeySource, Malformed,
    MAX_KEY_LEN,
};
pub use hash::{generate_api_key, KeyGenError, KeyHash, KeyHasher, KEY_PREFIX};
pub use health::{
    HealthReport, HealthStatus, InvalidationHealth, L1Health, L2Health, LimitsHealth,
    OwnerListsHealth, StoreHealth, UsageHealth,
};
pub use invalidation::InvalidateError;
pub use l2::L2Kind;
pub use limits::RateLimitInfo;
pub use outcome::{GrpcRejection, Outcome, Rejection, VerifiedKey};
pub use owner_list::OwnerKey;
pub use record::{KeyId, KeyRecord, KeyStatus, RateLimit, RateLimitError, UnknownStatus};
pub use scope::{RequiredScopes, Scopes};
pub use stats::CacheStats;
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{
    CreatedKey, KeyAdmin, KeyDetails, KeyStore, MemoryStore, NewKey, StoreError, UsageBatch,
    UsageDelta,
};
pub use store::{RecentCursor, RecentKey};
pub use usage::ShutdownError;
pub use verify::Verify;
pub use warm::{WarmingHealth, WarmingState};
