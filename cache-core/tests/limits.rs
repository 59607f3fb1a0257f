//! Exact rate limits and monthly quotas, through a real Redis shared by two
//! instances (one Redis call per request: leases off), through one instance
//! spending token leases, and in the per-instance fallback (no Redis), with a
//! frozen clock. `leases.rs` tests leases across instances.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyAdmin, KeyId, KeyRecord, KeyStore, ManualClock, MemoryStore,
    NewKey, Outcome, RateLimit, RateLimitError, RateLimitInfo, RequiredScopes, StoreError,
};
use support::redis::RedisServer;
use support::wait_until;
use time::OffsetDateTime;

const T0: OffsetDateTime = time::macros::datetime!(2030-05-10 12:00 UTC);

/// Instances sharing one store and one clock; with Redis, two instances
/// sharing it too (requests alternate, so a per-instance limit would show),
/// or one with token leases.
struct Fleet {
    caches: Vec<ApiKeyCache>,
    clock: Arc<ManualClock>,
    store: Arc<MemoryStore>,
    calls: usize,
}

/// How a fleet decides.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// Two instances, one Redis call per request.
    Calls,
    /// One instance spending token leases (two would strand tokens in each
    /// other's leases: `leases.rs` measures that).
    Lease,
    /// One instance, no Redis.
    Local,
}

impl Fleet {
    async fn start(redis: Option<&RedisServer>) -> Self {
        let via = if redis.is_some() {
            Via::Calls
        } else {
            Via::Local
        };
        Self::with(redis, via).await
    }

    async fn with(redis: Option<&RedisServer>, via: Via) -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let mut caches = Vec::new();
        for _ in 0..if via == Via::Calls { 2 } else { 1 } {
            // Generous timeouts and breaker: thousands of decisions go to
            // Redis, and one call timing out on a loaded CI machine would
            // fall back to the per-instance limiter (and fail the test).
            let mut config = CacheConfig::builder()
                .redis_timeout(Duration::from_secs(3))
                .redis_connect_timeout(Duration::from_secs(3))
                .tombstone_ttl(Duration::from_secs(30))
                .breaker_threshold(1000)
                .leases(via == Via::Lease);
            if let Some(redis) = redis {
                config = config.redis_url(redis.url());
            }
            let cache = ApiKeyCache::builder(store.clone())
                .config(config.build().unwrap())
                .clock(clock.clone())
                .build()
                .unwrap();
            if redis.is_some() {
                wait_until("subscribed", || cache.stats().subscribed).await;
            }
            caches.push(cache);
        }
        Self {
            caches,
            clock,
            store,
            calls: 0,
        }
    }

    fn key(&self, f: impl FnOnce(&mut KeyRecord)) -> (String, KeyId) {
        let key = apikey_cache::generate_api_key().unwrap();
        let mut record = KeyRecord::new(
            KeyId::generate(),
            self.caches[0].hash_key(&key),
            "acme",
            apikey_cache::Scopes::new(["a"]),
        );
        f(&mut record);
        let id = record.id.clone();
        self.store.insert(record);
        (key, id)
    }

    fn at(&self, ms: u64) {
        self.clock.set(T0 + Duration::from_millis(ms));
    }

    async fn verify(&mut self, key: &str) -> Outcome {
        self.calls += 1;
        let cache = &self.caches[self.calls % self.caches.len()];
        cache.verify_key(key, &RequiredScopes::none()).await
    }

    async fn admitted(&mut self, key: &str, what: &str) {
        let outcome = self.verify(key).await;
        assert!(outcome.is_valid(), "{what}: {outcome:?}");
    }

    async fn refused(&mut self, key: &str, what: &str) -> RateLimitInfo {
        match self.verify(key).await {
            Outcome::RateLimited(info) => info,
            other => {
                let errors: Vec<u64> = self.caches.iter().map(|c| c.stats().l2_errors).collect();
                panic!("{what}: expected rate_limited, got {other:?} (Redis errors per instance: {errors:?})")
            }
        }
    }
}

fn header(outcome: Outcome, name: &str) -> String {
    let r = outcome.rejection().unwrap();
    let (_, v) = r.headers.iter().find(|(k, _)| *k == name).unwrap();
    v.clone()
}

/// `(limit, period ms, Retry-After, RateLimit-Reset)` right after the burst.
const CASES: [(u32, u64, &str, &str); 5] = [
    (700, 1_000, "1", "1"),
    (5_000, 1_000, "1", "1"),
    // 7000 / 3 = 2333.3 ms to the next request: 3 s in the header.
    (3, 7_000, "3", "7"),
    (100, 60_000, "1", "60"),
    (1, 1_000, "1", "1"),
];

/// A burst of exactly `n`, then the `k`-th further request admitted at the
/// first whole millisecond at or after `k × p / n`, never a millisecond
/// earlier; every refusal's figures exact to the millisecond.
async fn exact_schedule(fleet: &mut Fleet, n: u32, p: u64, retry_header: &str, reset_header: &str) {
    let what = format!("{n} per {p} ms");
    let (key, _) = fleet.key(|r| r.rate_limit = Some(RateLimit::new(n, Duration::from_millis(p))));
    let n64 = u64::from(n);
    let ms = Duration::from_millis;
    fleet.at(0);
    for i in 0..n {
        fleet
            .admitted(&key, &format!("{what}: burst request {i}"))
            .await;
    }
    let info = fleet.refused(&key, &format!("{what}: request {n}")).await;
    assert_eq!(
        info,
        RateLimitInfo::new(n, 0, ms(p), ms(p.div_ceil(n64))),
        "{what}"
    );
    let outcome = Outcome::RateLimited(info);
    assert_eq!(
        header(outcome.clone(), "retry-after"),
        retry_header,
        "{what}"
    );
    assert_eq!(header(outcome.clone(), "ratelimit-limit"), n.to_string());
    assert_eq!(header(outcome.clone(), "ratelimit-remaining"), "0");
    assert_eq!(header(outcome, "ratelimit-reset"), reset_header, "{what}");

    // The times at which the 1st..n-th request after the burst are due.
    let mut due = BTreeMap::<u64, u64>::new();
    for k in 1..=n64 {
        *due.entry((k * p).div_ceil(n64)).or_default() += 1;
    }
    let (mut extra, mut last) = (0u64, 0u64);
    // The debt once `extra` requests followed the burst, at `t`, over `n`.
    let reset_at = |extra: u64, t: u64| ((n64 + extra) * p - t * n64).div_ceil(n64);
    for (&t, &count) in &due {
        if t - 1 > last {
            fleet.at(t - 1);
            let info = fleet
                .refused(&key, &format!("{what}: at {} ms", t - 1))
                .await;
            assert_eq!(info.retry_after, ms(1), "{what} at {} ms", t - 1);
            assert_eq!(info.reset_after, ms(reset_at(extra, t - 1)), "{what}");
        }
        fleet.at(t);
        for _ in 0..count {
            fleet.admitted(&key, &format!("{what}: at {t} ms")).await;
        }
        extra += count;
        let info = fleet.refused(&key, &format!("{what}: after {t} ms")).await;
        let next = ((extra + 1) * p).div_ceil(n64);
        assert_eq!(
            info,
            RateLimitInfo::new(n, 0, ms(reset_at(extra, t)), ms(next - t)),
            "{what} at {t} ms"
        );
        last = t;
    }
    assert_eq!((extra, last), (n64, p), "{what}: n more in one period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_limits_through_redis_shared_by_two_instances() {
    let redis = RedisServer::start();
    let mut fleet = Fleet::start(Some(&redis)).await;
    for (n, p, retry, reset) in CASES {
        exact_schedule(&mut fleet, n, p, retry, reset).await;
    }
    for cache in &fleet.caches {
        assert_eq!(cache.stats().l2_errors, 0, "Redis decided every request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_limits_through_a_token_lease() {
    let redis = RedisServer::start();
    let mut fleet = Fleet::with(Some(&redis), Via::Lease).await;
    for (n, p, retry, reset) in CASES {
        exact_schedule(&mut fleet, n, p, retry, reset).await;
    }
    let stats = fleet.caches[0].stats();
    assert_eq!(stats.l2_errors, 0, "Redis decided every request");
    assert_eq!(stats.limit_local_decisions, 0);
}

#[tokio::test]
async fn exact_limits_in_the_local_fallback() {
    let mut fleet = Fleet::start(None).await;
    for (n, p, retry, reset) in CASES {
        exact_schedule(&mut fleet, n, p, retry, reset).await;
    }
}

/// The Redis key holds the debt (scaled by `N`) and its time, and expires
/// a period after the debt has drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_state_is_the_scaled_debt() {
    let redis = RedisServer::start();
    let mut fleet = Fleet::start(Some(&redis)).await;
    let (key, id) = fleet.key(|r| r.rate_limit = Some(RateLimit::new(700, Duration::from_secs(1))));
    for _ in 0..700 {
        fleet.admitted(&key, "burst").await;
    }
    let mut conn = redis.conn();
    // The key id in braces: the Redis Cluster hash tag it shares with the
    // quota's key.
    let name = format!("apikey-cache:rl:{{{id}}}:700:1000");
    let (debt, at): (u64, i64) = redis::cmd("HMGET")
        .arg(&name)
        .arg("debt")
        .arg("at")
        .query(&mut conn)
        .unwrap();
    assert_eq!(debt, 700 * 1000);
    assert_eq!(at, (T0.unix_timestamp_nanos() / 1_000_000) as i64);
    let ttl: i64 = redis::cmd("PTTL").arg(&name).query(&mut conn).unwrap();
    // Drained after 1000 ms by the cache's clock; kept one period longer
    // so that Redis's clock running ahead cannot drop the debt early.
    assert!(
        (1900..=2000).contains(&ttl),
        "expires a period after drained: {ttl}"
    );
}

/// Near 2^53 the numbers in Redis's Lua (doubles) must stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_exact_limits_stay_exact() {
    let redis = RedisServer::start();
    for fleet in [
        Fleet::start(Some(&redis)).await,
        Fleet::with(Some(&redis), Via::Lease).await,
        Fleet::start(None).await,
    ] {
        let mut fleet = fleet;
        let max = RateLimit::MAX_REQUESTS_TIMES_MS;
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        // One per the longest whole-second period: a debt of 2^53 - 992.
        let p = max / 1000 * 1000;
        let (one, _) =
            fleet.key(|r| r.rate_limit = Some(RateLimit::try_new(1, secs(p / 1000)).unwrap()));
        fleet.at(0);
        fleet.admitted(&one, "1 per 2^53 ms").await;
        assert_eq!(
            fleet.refused(&one, "1 per 2^53 ms").await,
            RateLimitInfo::new(1, 0, ms(p), ms(p))
        );
        fleet.at(1);
        assert_eq!(
            fleet.refused(&one, "1 ms later").await,
            RateLimitInfo::new(1, 0, ms(p - 1), ms(p - 1))
        );
        // Three per floor(2^53 / 3000) s: a retry time that is not a whole
        // number of milliseconds, on a debt within 2^53.
        let p = max / 3000 * 1000;
        let (three, _) =
            fleet.key(|r| r.rate_limit = Some(RateLimit::try_new(3, secs(p / 1000)).unwrap()));
        fleet.at(0);
        for _ in 0..3 {
            fleet.admitted(&three, "3 per 2^53/3 ms").await;
        }
        assert_ne!(p % 3, 0);
        assert_eq!(
            fleet.refused(&three, "3 per 2^53/3 ms").await,
            RateLimitInfo::new(3, 0, ms(p), ms(p.div_ceil(3)))
        );
        // (The clock cannot reach the next slot: it is 31,000 years away.)
        fleet.at(1);
        assert_eq!(
            fleet.refused(&three, "1 ms later").await,
            RateLimitInfo::new(3, 0, ms(p - 1), ms(p.div_ceil(3) - 1))
        );
    }
}

/// `monthly_quota: Some(0)` is zero, with Redis and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_zero_refuses_every_request() {
    let redis = RedisServer::start();
    for fleet in [Fleet::start(Some(&redis)).await, Fleet::start(None).await] {
        let mut fleet = fleet;
        let (key, id) = fleet.key(|r| r.monthly_quota = Some(0));
        for _ in 0..3 {
            match fleet.verify(&key).await {
                Outcome::QuotaExceeded { quota, retry_after } => {
                    assert_eq!(quota, 0);
                    // 2030-05-10 12:00 to June.
                    assert_eq!(retry_after, Duration::from_secs(21 * 86_400 + 12 * 3600));
                }
                other => panic!("{other:?}"),
            }
        }
        for cache in &fleet.caches {
            cache.shutdown(Duration::from_secs(5)).await.unwrap();
        }
        let details = fleet.store.key_details(&id).await.unwrap().unwrap();
        assert_eq!(details.total_requests, 0, "nothing was served");
    }
    let none: Vec<String> = redis::cmd("KEYS")
        .arg("apikey-cache:*")
        .query(&mut redis.conn())
        .unwrap();
    let none: Vec<_> = none
        .iter()
        .filter(|k| k.contains("quota") || k.contains("rl:"))
        .collect();
    assert!(none.is_empty(), "no state for a zero quota: {none:?}");
    // Answered without a round trip, and not by the fallback either.
    let mut fleet = Fleet::with(Some(&redis), Via::Lease).await;
    let (key, _) = fleet.key(|r| r.monthly_quota = Some(0));
    assert!(matches!(
        fleet.verify(&key).await,
        Outcome::QuotaExceeded { quota: 0, .. }
    ));
    let stats = fleet.caches[0].stats();
    assert_eq!(
        (
            stats.lease_calls,
            stats.limit_local_decisions,
            stats.limit_waits
        ),
        (0, 0, 0)
    );
}

/// The month's counter lives until a day after the month ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counter_expires_a_day_after_its_month() {
    let redis = RedisServer::start();
    let mut fleet = Fleet::start(Some(&redis)).await;
    fleet
        .clock
        .set(time::macros::datetime!(2030-01-31 23:00 UTC));
    let (key, id) = fleet.key(|r| r.monthly_quota = Some(10));
    fleet.admitted(&key, "first of the month").await;
    fleet
        .clock
        .set(time::macros::datetime!(2030-01-31 23:30 UTC));
    fleet.admitted(&key, "second, half an hour later").await;
    let mut conn = redis.conn();
    let name = format!("apikey-cache:quota:{{{id}}}:2030-01");
    let used: u64 = redis::cmd("GET").arg(&name).query(&mut conn).unwrap();
    assert_eq!(used, 2);
    // Set by the first request: an hour to February, plus a day.
    let ttl: i64 = redis::cmd("PTTL").arg(&name).query(&mut conn).unwrap();
    let want = (3600 + 86_400) * 1000;
    assert!((want - 5_000..=want).contains(&ttl), "{ttl} ms");
}

/// A limit that cannot be enforced exactly is refused when the key is
/// created, before anything is stored; a zero quota is stored as zero.
#[tokio::test]
async fn create_key_refuses_inexact_limits() {
    let store = MemoryStore::new();
    let hasher = apikey_cache::KeyHasher::new(None);
    let too_large = RateLimit::new(u32::MAX, Duration::from_secs(366 * 86_400));
    let err = store
        .create_key(&hasher, NewKey::new("acme", ["a"]).rate_limit(too_large))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidRateLimit(RateLimitError::TooLarge { requests, .. })
                if requests == u32::MAX
        ),
        "{err:?}"
    );
    let zero = RateLimit::new(0, Duration::from_secs(1));
    let err = store
        .create_key(&hasher, NewKey::new("acme", ["a"]).rate_limit(zero))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidRateLimit(RateLimitError::ZeroRequests)
        ),
        "{err:?}"
    );
    assert!(store.list_by_owner("acme").await.unwrap().is_empty());
    let created = store
        .create_key(&hasher, NewKey::new("acme", ["a"]).monthly_quota(0))
        .await
        .unwrap();
    assert_eq!(created.record.monthly_quota, Some(0));
}
