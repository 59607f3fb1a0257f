//! Token leases across instances sharing one Redis (`limits/lease.rs`): the
//! fleet admits exactly the limit under uneven concurrent demand, steady
//! traffic never waits for Redis, invalidation and shutdown give tokens
//! back, and a Redis killed mid-window means the per-instance fallback, then
//! exact limits again once it is back. The clock is a `ManualClock`: a
//! frozen window unless a test moves it.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, BreakerState, CacheConfig, CacheConfigBuilder, HealthStatus, KeyId, KeyRecord,
    ManualClock, MemoryStore, Outcome, RateLimit, RequiredScopes, Scopes,
};
use support::hold_proxy::HoldProxy;
use support::redis::RedisServer;
use support::wait_until;
use time::OffsetDateTime;

const T0: OffsetDateTime = time::macros::datetime!(2030-05-10 12:00 UTC);

struct Fleet {
    caches: Vec<ApiKeyCache>,
    clock: Arc<ManualClock>,
    store: Arc<MemoryStore>,
}

/// Generous timeouts: thousands of requests wait on one refill in a debug
/// build, and one timing out would be decided by the per-instance fallback.
fn config(redis: &RedisServer) -> CacheConfigBuilder {
    CacheConfig::builder()
        .redis_url(redis.url())
        .redis_timeout(Duration::from_secs(2))
        .redis_connect_timeout(Duration::from_secs(2))
        .tombstone_ttl(Duration::from_secs(30))
        .breaker_threshold(1000)
}

impl Fleet {
    async fn start(instances: usize, config: impl Fn() -> CacheConfigBuilder) -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let mut caches = Vec::new();
        for _ in 0..instances {
            let cache = ApiKeyCache::builder(store.clone())
                .config(config().build().unwrap())
                .clock(clock.clone())
                .build()
                .unwrap();
            wait_until("subscribed", || cache.stats().subscribed).await;
            caches.push(cache);
        }
        Self {
            caches,
            clock,
            store,
        }
    }

    /// A key limited to `n` per `per`, with `f` applied.
    fn key(&self, n: u32, per: Duration, f: impl FnOnce(&mut KeyRecord)) -> (String, KeyRecord) {
        let key = apikey_cache::generate_api_key().unwrap();
        let mut record = KeyRecord::new(
            KeyId::generate(),
            self.caches[0].hash_key(&key),
            "acme",
            Scopes::new(["a"]),
        );
        record.rate_limit = Some(RateLimit::new(n, per));
        f(&mut record);
        self.store.insert(record.clone());
        (key, record)
    }

    fn leased(&self) -> u64 {
        self.caches.iter().map(ApiKeyCache::leased_tokens).sum()
    }

    fn waits(&self) -> u64 {
        self.caches.iter().map(|c| c.stats().limit_waits).sum()
    }

    /// Sends requests to instance `i` until one is refused; how many were
    /// admitted.
    async fn drain(&self, i: usize, key: &str) -> u64 {
        drain(&self.caches[i], key).await
    }

    /// One more instance, on the fleet's store and clock, that reaches
    /// Redis through a [`HoldProxy`]; `config` adjusts its settings.
    async fn behind_proxy(
        &self,
        redis: &RedisServer,
        config: impl FnOnce(CacheConfigBuilder) -> CacheConfigBuilder,
    ) -> (ApiKeyCache, HoldProxy) {
        let proxy = HoldProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
        let cache = ApiKeyCache::builder(self.store.clone())
            .config(
                config(self::config(redis).redis_url(proxy.url()))
                    .build()
                    .unwrap(),
            )
            .clock(self.clock.clone())
            .build()
            .unwrap();
        wait_until("subscribed through the proxy", || cache.stats().subscribed).await;
        (cache, proxy)
    }

    /// Drains `key` on the first instance and on `other`, a few times apart
    /// (late calls landing between): how many were admitted.
    async fn drain_with(&self, other: &ApiKeyCache, key: &str) -> u64 {
        let mut admitted = 0;
        for _ in 0..3 {
            admitted += self.drain(0, key).await + drain(other, key).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admitted
    }
}

/// Sends requests to `cache` until one is refused; how many were admitted.
async fn drain(cache: &ApiKeyCache, key: &str) -> u64 {
    let mut admitted = 0;
    loop {
        match cache.verify_key(key, &RequiredScopes::none()).await {
            Outcome::Valid(_) => admitted += 1,
            Outcome::RateLimited(_) | Outcome::QuotaExceeded { .. } => return admitted,
            other => panic!("{other:?}"),
        }
    }
}

/// `count` requests at once, spread over the instances 60/30/10; how many
/// were admitted and refused.
async fn uneven_burst(fleet: &Fleet, key: &str, count: usize) -> (u64, u64) {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let cache = fleet.caches[match i % 10 {
                0..=5 => 0,
                6..=8 => 1,
                _ => 2,
            }]
            .clone();
            let key = key.to_owned();
            tokio::spawn(async move { cache.verify_key(&key, &RequiredScopes::none()).await })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Valid(_) => admitted += 1,
            Outcome::RateLimited(info) => {
                assert_eq!(info.remaining, 0);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    (admitted, refused)
}

/// Three instances, thousands of concurrent requests spread unevenly, a
/// frozen window: never more than the limit, every token accounted for
/// (admitted, or still in a lease), and exactly the limit once every
/// instance has demand left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_admits_exactly_the_limit_under_uneven_concurrent_demand() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(3, || config(&redis)).await;
    for n in [1_000u32, 5_000] {
        let (key, _) = fleet.key(n, Duration::from_secs(60), |_| {});
        let (admitted, refused) = uneven_burst(&fleet, &key, 3 * n as usize).await;
        let stranded = fleet.leased();
        println!("limit {n}: {admitted} admitted, {refused} refused, {stranded} left in leases");
        assert_eq!(admitted + refused, 3 * u64::from(n));
        assert_eq!(
            admitted + stranded,
            u64::from(n),
            "every token accounted for"
        );
        // The instances that still hold tokens spend them; then every one
        // is refused.
        let mut more = 0;
        for i in 0..3 {
            more += fleet.drain(i, &key).await;
        }
        assert_eq!(more, stranded);
        assert_eq!(admitted + more, u64::from(n), "exactly the limit");
        assert_eq!(fleet.leased(), 0);
    }
    for cache in &fleet.caches {
        let s = cache.stats();
        assert_eq!((s.l2_errors, s.limit_local_decisions), (0, 0), "{s:?}");
    }
}

/// Demand under the limit, concurrent and uneven, that stops dead: how many
/// requests are refused while the fleet still has tokens in leases
/// (stranded), that none is once demand stays that far under, and that
/// stranded tokens come back by themselves once their leases sit idle.
/// Windows of ten hours: the clock moves below without freeing a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_refused_under_the_limit_but_the_stranded_tokens() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(3, || config(&redis)).await;
    let n = 1_000u32;
    let window = Duration::from_secs(36_000);
    let mut stranded = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        // Exactly the limit: every refusal is a token some lease still holds.
        let (key, _) = fleet.key(n, window, |_| {});
        let before = fleet.leased();
        let (admitted, refused) = uneven_burst(&fleet, &key, n as usize).await;
        assert_eq!(refused, fleet.leased() - before, "refused = stranded");
        assert_eq!(admitted + refused, u64::from(n));
        stranded.push(refused);
        last = Some((key, refused));
    }
    stranded.sort_unstable();
    println!("stranded at the limit, of {n}, 8 runs: {stranded:?}");
    // Measured up to about a tenth (a debug build, 4 workers; typically
    // 1 to 3%): what the last refills brought to instances whose demand
    // then stopped. See "What a refusal says" in `limits/lease.rs`.
    let bound = u64::from(n) / 5;
    assert!(stranded[7] <= bound, "{stranded:?}");
    for _ in 0..5 {
        let (key, _) = fleet.key(n, window, |_| {});
        let under = (u64::from(n) - bound) as usize;
        let (admitted, refused) = uneven_burst(&fleet, &key, under).await;
        assert_eq!((admitted, refused), (under as u64, 0));
    }
    // Leases nobody spends from go back after `LEASE_IDLE` (10 s; 1 s near
    // the limit) by the cache's clock: the stranded tokens of the last run
    // reach whoever asks. The clock moves a second at a time, so a sweep
    // sees each lease's last count before it counts as idle; 20 s stay
    // inside the leases' 30 s (past that they lapse, counted as spent).
    let (key, refused) = last.unwrap();
    let started = std::time::Instant::now();
    let mut moved = Duration::ZERO;
    let mut admitted = 0;
    while admitted < refused {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{admitted} of {refused} after {moved:?}"
        );
        if moved < Duration::from_secs(20) {
            fleet.clock.advance(Duration::from_secs(1));
            moved += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        admitted += fleet.drain(0, &key).await;
    }
    assert_eq!(admitted, refused, "no more than the stranded tokens");
    for i in 0..3 {
        assert_eq!(fleet.drain(i, &key).await, 0);
    }
    println!("stranded tokens back after {moved:?} by the cache's clock");
}

/// Two instances, steady traffic at half the limit (the window moves with
/// it): after the first leases, no request waits for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_traffic_never_waits_for_redis() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(2, || config(&redis)).await;
    // 8 per ms; two instances send 2 each per ms.
    let (key, _) = fleet.key(8_000, Duration::from_secs(1), |_| {});
    let none = RequiredScopes::none();
    let mut after_warm_up = None;
    let mut calls_after_warm_up = 0;
    for tick in 0..2_000 {
        if tick == 200 {
            after_warm_up = Some(fleet.waits());
            calls_after_warm_up = fleet.caches.iter().map(|c| c.stats().lease_calls).sum();
        }
        fleet.clock.advance(Duration::from_millis(1));
        for cache in &fleet.caches {
            for _ in 0..2 {
                let outcome = cache.verify_key(&key, &none).await;
                assert!(outcome.is_valid(), "tick {tick}: {outcome:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let warm = after_warm_up.unwrap();
    assert!(
        warm >= 2,
        "the first request of each instance waited: {warm}"
    );
    assert_eq!(fleet.waits(), warm, "no request waited after warm-up");
    let calls: u64 = fleet.caches.iter().map(|c| c.stats().lease_calls).sum();
    let served = 2 * 2 * 1_800;
    println!(
        "{} lease calls for {served} requests after warm-up",
        calls - calls_after_warm_up
    );
    assert!((calls - calls_after_warm_up) * 20 < served, "{calls} calls");
    let health = fleet.caches[0].health().await;
    assert!(health.limits.leases);
    assert_eq!(health.limits.waits, fleet.caches[0].stats().limit_waits);
    assert_eq!(health.limits.leased_keys, 1);
}

/// Revoking a key drops its leases at once on the instance that
/// invalidates and, with the event, on the others: not one request gets
/// through on a leftover token, and the tokens go back to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_drops_the_lease_and_a_revoked_key_gets_nothing_through() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(2, || config(&redis)).await;
    let none = RequiredScopes::none();
    let (key, record) = fleet.key(10_000, Duration::from_secs(60), |_| {});
    for cache in &fleet.caches {
        for _ in 0..20 {
            assert!(cache.verify_key(&key, &none).await.is_valid());
        }
    }
    let (a, b) = (&fleet.caches[0], &fleet.caches[1]);
    wait_until("both hold tokens", || {
        a.leased_tokens() > 0 && b.leased_tokens() > 0
    })
    .await;
    let b_held = b.leased_tokens();
    fleet
        .store
        .update(&record.id, |r| r.status = apikey_cache::KeyStatus::Revoked);
    let landed = a.invalidate(&record.hash);
    // At once, before the future is polled: no token left here.
    assert_eq!(a.leased_tokens(), 0);
    assert_eq!(a.verify_key(&key, &none).await, Outcome::Revoked);
    landed.await.unwrap();
    wait_until("the event reached b", || {
        b.stats().invalidations_remote >= 1
    })
    .await;
    assert_eq!(b.leased_tokens(), 0);
    for cache in &fleet.caches {
        for _ in 0..50 {
            assert_eq!(cache.verify_key(&key, &none).await, Outcome::Revoked);
        }
    }
    wait_until("b gave its tokens back", || {
        b.stats().lease_tokens_returned >= b_held
    })
    .await;
    // Redis holds nothing for either instance any more.
    let name = format!("apikey-cache:rl:{{{}}}:10000:60000", record.id);
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&name)
        .query(&mut redis.conn())
        .unwrap();
    let held: Vec<_> = fields
        .iter()
        .filter(|(k, _)| k.starts_with("h:"))
        .map(|(_, v)| v.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(held.len(), 2, "{fields:?}");
    assert!(held.iter().all(|h| h == "0"), "{fields:?}");
}

/// A suspended owner: every key's lease is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_drops_every_lease_of_the_owner() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(2, || config(&redis)).await;
    let none = RequiredScopes::none();
    let keys: Vec<_> = (0..3)
        .map(|_| fleet.key(1_000, Duration::from_secs(60), |_| {}))
        .collect();
    let (other, _) = fleet.key(1_000, Duration::from_secs(60), |r| r.owner = "other".into());
    for cache in &fleet.caches {
        for (key, _) in keys.iter().chain([&(other.clone(), keys[0].1.clone())]) {
            for _ in 0..10 {
                assert!(cache.verify_key(key, &none).await.is_valid());
            }
        }
    }
    wait_until("leases held", || fleet.leased() > 0).await;
    for (_, record) in &keys {
        fleet
            .store
            .update(&record.id, |r| r.status = apikey_cache::KeyStatus::Disabled);
    }
    fleet.caches[0].invalidate_owner("acme").await.unwrap();
    wait_until("the event reached b", || {
        fleet.caches[1].stats().invalidations_remote >= 1
    })
    .await;
    for cache in &fleet.caches {
        for (key, _) in &keys {
            assert_eq!(cache.verify_key(key, &none).await, Outcome::Disabled);
        }
        // Only the other owner's lease is left.
        assert!(cache.verify_key(&other, &none).await.is_valid());
    }
}

/// Tokens a lease gives back are the fleet's again: here one instance
/// strands four, gives them back (an invalidation that changes nothing),
/// and the other admits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_back_tokens_are_admitted_elsewhere() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(2, || config(&redis)).await;
    let none = RequiredScopes::none();
    let (key, record) = fleet.key(20, Duration::from_secs(3600), |_| {});
    let (a, b) = (&fleet.caches[0], &fleet.caches[1]);
    assert!(a.verify_key(&key, &none).await.is_valid());
    let held = a.leased_tokens();
    assert!(held > 0);
    let admitted = fleet.drain(1, &key).await;
    assert_eq!(admitted, 19 - held, "b is refused while a holds {held}");
    a.invalidate_key_id(&record.id).await.unwrap();
    wait_until("a gave its tokens back", || {
        a.stats().lease_tokens_returned == held
    })
    .await;
    wait_until("the event reached b", || {
        b.stats().invalidations_remote == 1
    })
    .await;
    assert_eq!(fleet.drain(1, &key).await, held);
    assert_eq!(fleet.drain(0, &key).await, 0);
}

/// A monthly quota is leased with the rate limit: exactly the quota across
/// the fleet, and after shutdown (leases given back) Redis's count is what
/// was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_is_leased_exactly_and_shutdown_gives_it_back() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(3, || config(&redis)).await;
    let (key, record) = fleet.key(1_000_000, Duration::from_secs(60), |r| {
        r.monthly_quota = Some(500);
    });
    let (admitted, _) = uneven_burst(&fleet, &key, 200).await;
    assert_eq!(admitted, 200);
    assert!(fleet.leased() > 0);
    let name = format!("apikey-cache:quota:{{{}}}:2030-05", record.id);
    let counted = || -> u64 {
        redis::cmd("GET")
            .arg(&name)
            .query(&mut redis.conn())
            .unwrap()
    };
    assert_eq!(counted(), 200 + fleet.leased(), "leased quota is reserved");
    // One instance leaves: its tokens return; the others use them.
    let leaving = fleet.caches[2].leased_tokens();
    fleet.caches[2]
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(fleet.caches[2].leased_tokens(), 0);
    assert_eq!(fleet.caches[2].stats().lease_tokens_returned, leaving);
    let more = fleet.drain(0, &key).await + fleet.drain(1, &key).await;
    let more = more + fleet.drain(0, &key).await;
    assert_eq!(admitted + more, 500, "exactly the quota");
    match fleet.caches[1]
        .verify_key(&key, &RequiredScopes::none())
        .await
    {
        Outcome::QuotaExceeded { quota, .. } => assert_eq!(quota, 500),
        other => panic!("{other:?}"),
    }
    for cache in &fleet.caches[..2] {
        cache.shutdown(Duration::from_secs(5)).await.unwrap();
    }
    assert_eq!(counted(), 500);
}

/// Redis killed (`kill -9`) in the middle of a window: limited keys are
/// decided per instance meanwhile (health degraded); once Redis is back
/// (empty), no lease from before is spent and the fleet admits exactly the
/// limit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_window_falls_back_then_is_exact_again() {
    let mut redis = RedisServer::start();
    let fleet = Fleet::start(2, || {
        config(&redis)
            .redis_timeout(Duration::from_millis(200))
            .redis_connect_timeout(Duration::from_millis(200))
            .breaker_threshold(3)
            .breaker_cooldown(Duration::from_millis(100))
    })
    .await;
    let none = RequiredScopes::none();
    let (key, _) = fleet.key(100, Duration::from_secs(60), |_| {});
    for i in 0..30 {
        let outcome = fleet.caches[i % 2].verify_key(&key, &none).await;
        assert!(outcome.is_valid(), "{outcome:?}");
    }
    assert!(fleet.leased() > 0);
    redis.kill9();
    // Leftover tokens, then the fallback: 100 per instance, on its own.
    for i in 0..100 {
        let outcome = fleet.caches[i % 2].verify_key(&key, &none).await;
        assert!(
            outcome.is_valid(),
            "request {i} with Redis down: {outcome:?}"
        );
    }
    for cache in &fleet.caches {
        assert!(cache.stats().limit_local_decisions > 0);
        assert_eq!(cache.leased_tokens(), 0, "no lease spent with Redis down");
        assert_eq!(cache.health().await.status, HealthStatus::Degraded);
        // The breaker is open: requests are decided here at once, without
        // a refill attempt each.
        let (calls, waits) = (cache.stats().lease_calls, cache.stats().limit_waits);
        for _ in 0..20 {
            assert!(cache.verify_key(&key, &none).await.is_valid());
        }
        assert_eq!(cache.stats().lease_calls, calls);
        assert_eq!(cache.stats().limit_waits, waits);
    }
    redis.restart();
    for cache in &fleet.caches {
        wait_until("the breaker closed", || {
            cache.stats().l2_breaker == Some(BreakerState::Closed)
        })
        .await;
        wait_until("subscribed again", || cache.stats().subscribed).await;
    }
    // A new window, in a Redis that remembers nothing.
    fleet.clock.advance(Duration::from_secs(60));
    let local: Vec<u64> = fleet
        .caches
        .iter()
        .map(|c| c.stats().limit_local_decisions)
        .collect();
    let mut admitted = 0;
    for i in 0..300 {
        if fleet.caches[i % 2].verify_key(&key, &none).await.is_valid() {
            admitted += 1;
        }
    }
    admitted += fleet.drain(0, &key).await + fleet.drain(1, &key).await;
    assert_eq!(admitted, 100, "exactly the limit again");
    let after: Vec<u64> = fleet
        .caches
        .iter()
        .map(|c| c.stats().limit_local_decisions)
        .collect();
    assert_eq!(local, after, "Redis decided every request");
}

/// A lease's tokens may be spent until 30 s after its last grant (by the
/// cache's clock; a quota's never into the next month): a lapsed one is
/// not, and the next request asks Redis. A take in its last 5 s renews it.
/// Leases never sit idle long enough here to be given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_is_not_spent_and_one_in_use_is_renewed() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(1, || config(&redis).lease_idle(Duration::from_secs(3600))).await;
    let none = RequiredScopes::none();
    let a = &fleet.caches[0];
    let (limited, _) = fleet.key(1_000, Duration::from_secs(3600), |_| {});
    let (quota, _) = fleet.key(1_000, Duration::from_secs(3600), |r| {
        r.rate_limit = None;
        r.monthly_quota = Some(1_000);
    });
    let ms = Duration::from_millis;
    for key in [&limited, &quota] {
        assert!(a.verify_key(key, &none).await.is_valid());
        assert!(a.leased_tokens() > 1);
        let waits = a.stats().limit_waits;
        // Not used in its last 5 s: it lapses 30 s after its grant.
        fleet.clock.advance(ms(25_000 - 1));
        assert!(a.verify_key(key, &none).await.is_valid());
        assert_eq!(a.stats().limit_waits, waits, "still within the lease");
        fleet.clock.advance(ms(5_000 + 1));
        assert_eq!(a.leased_tokens(), 0, "lapsed");
        assert!(a.verify_key(key, &none).await.is_valid());
        assert_eq!(a.stats().limit_waits, waits + 1, "lapsed: Redis was asked");
        // Used in its last 5 s: renewed in the background, so it outlives
        // its first 30 s.
        fleet.clock.advance(ms(25_000));
        let held = a.leased_tokens();
        assert!(a.verify_key(key, &none).await.is_valid());
        wait_until("the renewal landed", || a.leased_tokens() >= held).await;
        fleet.clock.advance(ms(5_000));
        assert!(a.leased_tokens() > 0);
        assert!(a.verify_key(key, &none).await.is_valid());
        assert_eq!(a.stats().limit_waits, waits + 1, "renewed: no wait");
    }
    // A quota's lease ends with the month, and is not renewed past it.
    fleet
        .clock
        .set(time::macros::datetime!(2030-05-31 23:59:50 UTC));
    let waits = a.stats().limit_waits;
    for _ in 0..3 {
        assert!(a.verify_key(&quota, &none).await.is_valid());
    }
    assert_eq!(
        a.stats().limit_waits,
        waits + 1,
        "a new lease, until midnight"
    );
    fleet
        .clock
        .set(time::macros::datetime!(2030-06-01 0:00 UTC));
    assert_eq!(a.leased_tokens(), 0, "May's tokens lapsed");
    assert!(a.verify_key(&quota, &none).await.is_valid());
    assert_eq!(a.stats().limit_waits, waits + 2, "June: a new lease");
}

/// A request waiting on a refill when its key's lease is dropped (here:
/// invalidated on its own instance while the refill is held up on the way
/// to Redis) gets the token that refill took for it: nothing is wasted,
/// and the fleet still admits exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_when_its_lease_is_dropped_gets_its_token() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(1, || config(&redis)).await;
    let (b, proxy) = fleet.behind_proxy(&redis, |c| c).await;
    let none = RequiredScopes::none();
    let (key, record) = fleet.key(10, Duration::from_secs(3600), |_| {});
    // B holds a lease, then gives it back (idle for `LEASE_IDLE`): empty,
    // with no refill under way.
    assert!(b.verify_key(&key, &none).await.is_valid());
    fleet.clock.advance(Duration::from_secs(11));
    wait_until("b gave its lease back", || {
        b.stats().lease_tokens_returned > 0
    })
    .await;
    // Its next request waits for a refill that asks for its token; the
    // refill is held up, and the lease dropped meanwhile.
    proxy.hold();
    let waiting = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.verify_key(&key, &RequiredScopes::none()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    // The local part (the lease dropped) happens when the call is made;
    // the Redis part does not matter here.
    drop(b.invalidate_key_id(&record.id));
    proxy.release();
    let outcome = waiting.await.unwrap();
    assert!(outcome.is_valid(), "{outcome:?}");
    let admitted = 2 + fleet.drain_with(&b, &key).await;
    assert_eq!(admitted, 10, "exactly the limit, no token wasted");
}

/// What an instance tells Redis it holds is what it holds: after a refill,
/// Redis's count of the lease's tokens is the instance's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_knows_what_a_lease_holds() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(1, || config(&redis)).await;
    let none = RequiredScopes::none();
    let (key, record) = fleet.key(1_000, Duration::from_secs(3600), |_| {});
    let a = &fleet.caches[0];
    let name = format!("apikey-cache:rl:{{{}}}:1000:3600000", record.id);
    let held_in_redis = || -> u64 {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&name)
            .query(&mut redis.conn())
            .unwrap();
        let holders: Vec<_> = fields.iter().filter(|(k, _)| k.starts_with("h:")).collect();
        assert_eq!(holders.len(), 1, "{fields:?}");
        holders[0].1.split(' ').next().unwrap().parse().unwrap()
    };
    // The first request waits for a lease; spending half of it refills it.
    for _ in 0..3 {
        assert!(a.verify_key(&key, &none).await.is_valid());
    }
    wait_until("a refill reported what is held", || {
        a.stats().lease_calls >= 2 && held_in_redis() == a.leased_tokens()
    })
    .await;
    assert!(a.leased_tokens() > 2);
}

/// A refill held up on the way to Redis across the end of a month: the
/// request that queued behind it in June is not served with the May tokens
/// it brings (they lapsed at midnight) but with a June token, counted in
/// June.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_landing_after_midnight_serves_no_june_request_from_may() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(1, || config(&redis)).await;
    let (b, proxy) = fleet.behind_proxy(&redis, |c| c).await;
    let none = RequiredScopes::none();
    let (key, record) = fleet.key(1, Duration::from_secs(1), |r| {
        r.rate_limit = None;
        r.monthly_quota = Some(1_000);
    });
    fleet
        .clock
        .set(time::macros::datetime!(2030-05-31 23:59:50 UTC));
    // A lease until midnight; spending it down starts a background refill,
    // which is held up.
    assert!(b.verify_key(&key, &none).await.is_valid());
    proxy.hold();
    let calls = b.stats().lease_calls;
    while b.stats().lease_calls == calls {
        assert!(b.leased_tokens() > 0, "no refill started");
        assert!(b.verify_key(&key, &none).await.is_valid());
        // The refill is spawned on this worker: let it start.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet
        .clock
        .set(time::macros::datetime!(2030-06-01 0:00 UTC));
    let waiting = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.verify_key(&key, &RequiredScopes::none()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "queued behind the refill");
    proxy.release();
    let outcome = waiting.await.unwrap();
    assert!(outcome.is_valid(), "{outcome:?}");
    // June counts the request, plus what this instance holds of June.
    let june = format!("apikey-cache:quota:{{{}}}:2030-06", record.id);
    let counted = || -> u64 {
        redis::cmd("GET")
            .arg(&june)
            .query::<Option<u64>>(&mut redis.conn())
            .unwrap()
            .unwrap_or(0)
    };
    wait_until("June's count settled", || {
        counted() == 1 + b.leased_tokens()
    })
    .await;
}

/// A refill that times out (Redis slow, here held up on the way) leaves the
/// lease's tokens spendable: a timeout is not a lost Redis. What the late
/// call granted when it did run is taken back at the next call, so the
/// fleet still admits exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_that_times_out_keeps_the_lease() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(1, || config(&redis)).await;
    let (b, proxy) = fleet
        .behind_proxy(&redis, |c| c.redis_timeout(Duration::from_millis(100)))
        .await;
    let none = RequiredScopes::none();
    let (key, _) = fleet.key(10, Duration::from_secs(3600), |_| {});
    assert!(b.verify_key(&key, &none).await.is_valid());
    let held = b.leased_tokens();
    assert!(held >= 2, "{held}");
    // Spending down to the refill threshold starts a refill, held up until
    // it times out.
    proxy.hold();
    let calls = b.stats().lease_calls;
    let mut admitted = 1;
    while b.stats().lease_calls == calls {
        assert!(b.leased_tokens() > 1, "no refill started");
        assert!(b.verify_key(&key, &none).await.is_valid());
        admitted += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = b.leased_tokens();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.leased_tokens(), left, "the lease outlived the timeout");
    while b.leased_tokens() > 0 {
        assert!(b.verify_key(&key, &none).await.is_valid());
        admitted += 1;
    }
    assert_eq!(
        b.stats().limit_local_decisions,
        0,
        "every one from the lease"
    );
    proxy.release();
    // Exactly the limit, over both instances, once the late call landed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    admitted += fleet.drain_with(&b, &key).await;
    assert_eq!(admitted, 10, "exactly the limit");
    assert_eq!(b.stats().limit_local_decisions, 0);
}

/// Redis restarted, empty, with no limiter call in between to fail: the
/// subscriber's reconnection retires every lease (their tokens are no
/// longer charged in Redis), and the next request asks Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_retires_the_leases() {
    let mut redis = RedisServer::start();
    let fleet = Fleet::start(1, || config(&redis)).await;
    let none = RequiredScopes::none();
    let a = &fleet.caches[0];
    let (key, _) = fleet.key(1_000, Duration::from_secs(3600), |_| {});
    assert!(a.verify_key(&key, &none).await.is_valid());
    assert!(a.leased_tokens() > 0);
    let resyncs = a.stats().resyncs;
    redis.kill9();
    redis.restart();
    wait_until("subscribed again", || a.stats().resyncs > resyncs).await;
    assert_eq!(a.leased_tokens(), 0, "no token from before the restart");
    let waits = a.stats().limit_waits;
    assert!(a.verify_key(&key, &none).await.is_valid());
    assert_eq!(a.stats().limit_waits, waits + 1, "Redis was asked");
}

/// A limiter call that Redis answers with an error (here: out of memory)
/// retires every lease of the instance, unlike a timeout: the per-instance
/// fallback decides until Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_retires_the_leases() {
    let redis = RedisServer::start();
    let fleet = Fleet::start(1, || config(&redis)).await;
    let none = RequiredScopes::none();
    let a = &fleet.caches[0];
    let (held, _) = fleet.key(1_000, Duration::from_secs(3600), |_| {});
    let (other, _) = fleet.key(1_000, Duration::from_secs(3600), |_| {});
    assert!(a.verify_key(&held, &none).await.is_valid());
    // Its record in L1 too, before Redis stops taking writes.
    assert!(a.verify_key(&other, &none).await.is_valid());
    assert!(a.leased_tokens() > 0);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut redis.conn())
        .unwrap();
    // `other` runs its lease down: its refill is refused (OOM).
    let errors = a.stats().l2_errors;
    while a.stats().l2_errors == errors {
        assert!(a.verify_key(&other, &none).await.is_valid());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.leased_tokens(), 0, "every lease retired");
    let local = a.stats().limit_local_decisions;
    assert!(a.verify_key(&held, &none).await.is_valid());
    assert_eq!(a.stats().limit_local_decisions, local + 1);
}
