//! Scale-out against real local deployments: a 3-primary, 3-replica Redis
//! Cluster, a Sentinel-managed primary with a replica and three sentinels,
//! and TLS (a custom CA, a wrong CA, mutual TLS). The deployments come from
//! `support::deploy`; each test starts its own.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    ApiKeyCache, CacheConfig, KeyAdmin, ManualClock, MemoryStore, NewKey, Outcome, RateLimit,
    RequiredScopes,
};
use support::deploy::{RedisCluster, SentinelDeployment};
use support::store::CountingStore;
use support::{wait_until, wait_until_async};

const T0: time::OffsetDateTime = time::macros::datetime!(2030-05-10 12:00 UTC);

/// A fleet of caches on one store and one clock, each with its own Redis
/// URL (a different seed node, say).
struct Fleet {
    caches: Vec<ApiKeyCache>,
    store: Arc<MemoryStore>,
    counting: Arc<CountingStore<MemoryStore>>,
    clock: Arc<ManualClock>,
}

fn config(url: &str) -> CacheConfig {
    CacheConfig::builder()
        .redis_url(url)
        // Generous for a loaded machine: these tests bound calls, they do
        // not time them; a failover is what makes calls fail here.
        .redis_timeout(Duration::from_millis(300))
        .redis_connect_timeout(Duration::from_millis(500))
        .tombstone_ttl(Duration::from_secs(30))
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(200))
        .usage_flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap()
}

impl Fleet {
    async fn start(urls: &[String]) -> Self {
        let store = Arc::new(MemoryStore::new());
        let counting = CountingStore::new(store.clone());
        let clock = Arc::new(ManualClock::new(T0));
        let mut caches = Vec::new();
        for url in urls {
            let cache = ApiKeyCache::builder(counting.clone())
                .config(config(url))
                .clock(clock.clone())
                .build()
                .unwrap();
            caches.push(cache);
        }
        for c in &caches {
            wait_until("subscribed", || c.stats().subscribed).await;
        }
        Self {
            caches,
            store,
            counting,
            clock,
        }
    }

    async fn key(&self, new: NewKey) -> (String, apikey_cache::KeyRecord) {
        let issued = self
            .store
            .create_key(self.caches[0].hasher(), new)
            .await
            .unwrap();
        (issued.plaintext, issued.record)
    }
}

async fn verify(cache: &ApiKeyCache, key: &str) -> Outcome {
    cache.verify_key(key, &RequiredScopes::none()).await
}

/// Waits until `cache` answers `want` for `key` (an event on its way).
async fn until_outcome(cache: &ApiKeyCache, key: &str, want: Outcome, what: &str) {
    wait_until_async(what, || async { verify(cache, key).await == want }).await;
}

/// Calls `invalidate` until it reports the invalidation in Redis (every
/// 50 ms, at most 10 s); returns how many calls were refused first.
async fn invalidate_until_landed(cache: &ApiKeyCache, hash: &apikey_cache::KeyHash) -> u32 {
    let mut refused = 0;
    while cache.invalidate(hash).await.is_err() {
        refused += 1;
        assert!(refused < 200, "the invalidation never landed in Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refused
}

/// Two instances seeded through different nodes: reads and fills,
/// invalidation and owner suspension across them, an exact fleet-wide rate
/// limit, usage counts, and health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_instances_through_different_seeds() {
    let cluster = RedisCluster::start(3, 1);
    let p = cluster.primaries();
    let fleet = Fleet::start(&[cluster.seed_url(p[0]), cluster.seed_url(p[1])]).await;
    let (a, b) = (&fleet.caches[0], &fleet.caches[1]);

    let health = a.health().await;
    assert_eq!(health.l2.kind, Some("cluster"));
    assert_eq!(health.l2.status, "up", "{:?}", health.l2.last_error);

    // A fills Redis; B reads it there instead of asking the store.
    let (key, record) = fleet.key(NewKey::new("acme", ["orders:read"])).await;
    assert!(verify(a, &key).await.is_valid());
    let lookups = fleet.counting.lookups();
    assert!(verify(b, &key).await.is_valid());
    assert_eq!(fleet.counting.lookups(), lookups, "B answered from Redis");
    assert!(b.stats().l2_hits >= 1);

    // An owner's key list: A fills it in Redis, B reads it there and reads
    // its keys' entries back (one MGET over several slots) without error.
    let (_, _) = fleet.key(NewKey::new("acme", ["b"])).await;
    a.invalidate_owner_list("acme").await.unwrap();
    let listed = a.list_owner_keys("acme").await.unwrap();
    assert_eq!(listed.len(), 2);
    let errors = b.stats().l2_errors;
    let from_b = b.list_owner_keys("acme").await.unwrap();
    assert_eq!(from_b.len(), 2);
    assert_eq!(b.stats().l2_errors, errors, "{:?}", b.health().await.l2);

    // Revocation: A at once, B when the event arrives, whichever node each
    // subscribed to.
    fleet.store.revoke_key(&record.id).await.unwrap();
    a.invalidate(&record.hash).await.unwrap();
    assert_eq!(verify(a, &key).await, Outcome::Revoked);
    until_outcome(b, &key, Outcome::Revoked, "B refuses the revoked key").await;

    // Owner suspension from B reaches A.
    let (k1, _) = fleet.key(NewKey::new("globex", ["a"])).await;
    let (k2, _) = fleet.key(NewKey::new("globex", ["a"])).await;
    assert!(verify(a, &k1).await.is_valid());
    assert!(verify(a, &k2).await.is_valid());
    fleet.store.revoke_owner("globex").await.unwrap();
    b.invalidate_owner("globex").await.unwrap();
    assert_eq!(verify(b, &k1).await, Outcome::Revoked);
    until_outcome(
        a,
        &k1,
        Outcome::Revoked,
        "A refuses the suspended owner's key",
    )
    .await;
    until_outcome(a, &k2, Outcome::Revoked, "A refuses the owner's other key").await;

    // A rate limit is exact across both: 10 per minute, requests
    // alternating, at one instant.
    let (limited, _) = fleet
        .key(NewKey::new("acme", ["a"]).rate_limit(RateLimit::new(10, Duration::from_secs(60))))
        .await;
    let mut admitted = 0;
    for i in 0..30 {
        let cache = &fleet.caches[i % 2];
        match verify(cache, &limited).await {
            Outcome::Valid(_) => admitted += 1,
            Outcome::RateLimited(_) => {}
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert_eq!(admitted, 10, "the fleet admits exactly the limit");

    // Usage counts: every request served lands once in the month's count.
    let (counted, counted_record) = fleet.key(NewKey::new("acme", ["a"])).await;
    for i in 0..7 {
        assert!(verify(&fleet.caches[i % 2], &counted).await.is_valid());
    }
    assert!(a.flush_usage().await && b.flush_usage().await);
    let name = format!("apikey-cache:usage:{{2030-05}}:{}", counted_record.id);
    let node = cluster.primary_for_key(&name);
    let n: Option<u64> = redis::cmd("GET")
        .arg(&name)
        .query(&mut cluster.conn(node))
        .unwrap();
    assert_eq!(n, Some(7));
    drop(fleet.clock);
}

/// A primary is killed during a stream of verifies: no error outcome, every
/// call within its budget, and invalidation and rate limits work again once
/// a replica has taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed_during_verifies() {
    let mut cluster = RedisCluster::start(3, 1);
    let p = cluster.primaries();
    let fleet = Fleet::start(&[cluster.seed_url(p[0]), cluster.seed_url(p[1])]).await;
    let (a, b) = (&fleet.caches[0], &fleet.caches[1]);
    let mut keys = Vec::new();
    for _ in 0..24 {
        let (key, record) = fleet.key(NewKey::new("acme", ["a"])).await;
        assert!(verify(a, &key).await.is_valid());
        keys.push((key, record));
    }

    // Revoked after the failover; not in the stream of verifies.
    let (revoked_key, revoked) = fleet.key(NewKey::new("acme", ["a"])).await;
    assert!(verify(a, &revoked_key).await.is_valid());
    assert!(verify(b, &revoked_key).await.is_valid());

    // The victim is B's only seed, where its subscriber listens (and,
    // holding a third of the slots, some of the keys' entries).
    let victim = p[1];
    let resyncs = b.stats().resyncs;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let b = b.clone();
        let keys: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut worst, mut calls) = (Duration::ZERO, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Without L1, every verify reads Redis (or the store).
                b.clear_l1();
                for key in &keys {
                    let started = Instant::now();
                    let outcome = verify(&b, key).await;
                    worst = worst.max(started.elapsed());
                    calls += 1;
                    assert!(
                        outcome.is_valid(),
                        "verify during the failover: {outcome:?}"
                    );
                }
            }
            (worst, calls)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill9(victim);
    let killed_at = Instant::now();
    cluster.wait_for_failover_async(victim).await;

    // The first invalidation that lands after the kill.
    fleet.store.revoke_key(&revoked.id).await.unwrap();
    let attempts = invalidate_until_landed(a, &revoked.hash).await;
    let first_invalidation = killed_at.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, calls) = stream.await.unwrap();
    // Far above one load's budget would mean a client retrying on its own
    // schedule (redis-rs's cluster defaults wait seconds).
    let budget = a.config().load_budget();
    assert!(
        worst < budget + Duration::from_secs(1),
        "slowest verify {worst:?} (budget {budget:?})"
    );
    eprintln!(
        "failover: {calls} verifies, slowest {worst:?}; first invalidation {first_invalidation:?} after the kill ({attempts} refused)"
    );
    assert_eq!(verify(a, &revoked_key).await, Outcome::Revoked);
    until_outcome(
        b,
        &revoked_key,
        Outcome::Revoked,
        "B refuses after the failover",
    )
    .await;

    // B's subscriber found another node; events reach it there: a key in
    // B's L1 is refused once A invalidates it (only an event can do that).
    wait_until("B subscribed again elsewhere", || {
        b.stats().subscribed && b.stats().resyncs > resyncs
    })
    .await;
    let (evented, evented_record) = fleet.key(NewKey::new("acme", ["a"])).await;
    assert!(verify(b, &evented).await.is_valid());
    fleet.store.revoke_key(&evented_record.id).await.unwrap();
    // A may still hold a connection to the dead node for this key's slot:
    // then the call fails (and makes A rebuild its view) and the retrier
    // lands the invalidation.
    let _ = a.invalidate(&evented_record.hash).await;
    until_outcome(
        b,
        &evented,
        Outcome::Revoked,
        "the event reaches B's new node",
    )
    .await;
    wait_until("A's invalidations all landed", || {
        a.pending_invalidations() == 0
    })
    .await;

    // Rate limits are exact again, once each instance has the new view of
    // the cluster: rounds of reads over every key's slot without a Redis
    // error (a limit decided on a stale view would fall back to the
    // instance's own limiter).
    for cache in [a, b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut clean_rounds = 0;
        while clean_rounds < 3 {
            let errors = cache.stats().l2_errors;
            cache.clear_l1();
            for (key, _) in &keys {
                assert!(verify(cache, key).await.is_valid());
            }
            let l2 = cache.health().await.l2;
            clean_rounds = if cache.stats().l2_errors == errors && l2.breaker == "closed" {
                clean_rounds + 1
            } else {
                0
            };
            assert!(
                Instant::now() < deadline,
                "Redis never came back whole: {l2:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (limited, _) = fleet
        .key(NewKey::new("acme", ["a"]).rate_limit(RateLimit::new(5, Duration::from_secs(60))))
        .await;
    let mut admitted = 0;
    for i in 0..12 {
        if verify(&fleet.caches[i % 2], &limited).await.is_valid() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "exact across the fleet after the failover");
}

/// The instances follow the sentinels to the new primary: no error
/// outcome meanwhile, and revocation works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed() {
    let mut deployment = SentinelDeployment::start();
    let url = deployment.url();
    let fleet = Fleet::start(&[url.clone(), url]).await;
    let (a, b) = (&fleet.caches[0], &fleet.caches[1]);
    let old = deployment.primary_port();
    let health = a.health().await;
    assert_eq!(health.l2.kind, Some("sentinel"));
    assert_eq!(health.l2.primary, Some(format!("127.0.0.1:{old}")));

    let (key, record) = fleet.key(NewKey::new("acme", ["a"])).await;
    assert!(verify(a, &key).await.is_valid());
    deployment.kill9_primary();
    // Requests keep being answered (from the store) during the failover.
    for _ in 0..5 {
        b.clear_l1();
        assert!(verify(b, &key).await.is_valid());
    }
    let new = deployment.wait_for_new_primary_async(old).await;
    let want = format!("127.0.0.1:{new}");
    for cache in [a, b] {
        wait_until_async("the cache follows the new primary", || async {
            // A call is what makes a cache look again, besides
            // +switch-master.
            cache.clear_l1();
            let _ = verify(cache, &key).await;
            cache.health().await.l2.primary.as_deref() == Some(want.as_str())
        })
        .await;
    }
    fleet.store.revoke_key(&record.id).await.unwrap();
    invalidate_until_landed(a, &record.hash).await;
    assert_eq!(verify(a, &key).await, Outcome::Revoked);
    until_outcome(b, &key, Outcome::Revoked, "B refuses after the failover").await;
    // The tombstone is on the new primary, where B reads.
    let entry = format!("apikey-cache:key:{}", record.hash.to_hex());
    let exists: bool = redis::cmd("EXISTS")
        .arg(entry)
        .query(&mut deployment.conn(new))
        .unwrap();
    assert!(exists);
    wait_until("both subscribed again", || {
        a.stats().subscribed && b.stats().subscribed
    })
    .await;
}

/// A cache on `url` with the given TLS files (no store traffic expected
/// beyond the verifies the test makes).
fn tls_cache(
    url: &str,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> (ApiKeyCache, Arc<MemoryStore>) {
    let mut builder = CacheConfig::builder()
        .redis_url(url)
        .redis_ca_cert(ca)
        .redis_timeout(Duration::from_millis(300))
        .redis_connect_timeout(Duration::from_millis(500))
        .tombstone_ttl(Duration::from_secs(30))
        .breaker_cooldown(Duration::from_millis(200));
    if let Some((cert, key)) = client {
        builder = builder.redis_client_cert(cert, key);
    }
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::builder(store.clone())
        .config(builder.build().unwrap())
        .build()
        .unwrap();
    (cache, store)
}

/// Waits until health shows Redis down with an error that mentions `why`;
/// a verify meanwhile is answered by the store, promptly.
async fn refused_with(cache: &ApiKeyCache, store: &MemoryStore, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l2 = cache.health().await.l2;
        if l2.status == "down" && l2.last_error.as_deref().is_some_and(|e| e.contains(why)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected a refusal with {why}: {l2:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let issued = store
        .create_key(cache.hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    let started = Instant::now();
    assert!(verify(cache, &issued.plaintext).await.is_valid());
    assert!(started.elapsed() < cache.config().load_budget() + Duration::from_secs(1));
    assert!(!cache.stats().subscribed);
}

/// `rediss://` with the right CA works (fills, events); a wrong CA is a
/// clear error in health, neither a panic nor a hang, and requests are
/// answered from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_custom_ca() {
    let material = support::deploy::TlsMaterial::generate_temp();
    let server = support::deploy::TlsRedis::start(&material, false);

    let (cache, store) = tls_cache(&server.url(), &material.ca_cert, None);
    wait_until("subscribed over TLS", || cache.stats().subscribed).await;
    let health = cache.health().await;
    assert_eq!(health.l2.status, "up", "{:?}", health.l2.last_error);
    let issued = store
        .create_key(cache.hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    assert!(verify(&cache, &issued.plaintext).await.is_valid());
    let entry = format!("apikey-cache:key:{}", issued.record.hash.to_hex());
    assert_eq!(
        server.cli(&["EXISTS", &entry]),
        "1",
        "the fill went over TLS"
    );

    let (wrong, store) = tls_cache(&server.url(), &material.other_ca_cert, None);
    refused_with(&wrong, &store, "UnknownIssuer").await;
}

/// Mutual TLS (`tls-auth-clients yes`) and an ACL user: without a client
/// certificate, or with a wrong password, Redis refuses and health says
/// why; with both right, it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_acl_user() {
    let material = support::deploy::TlsMaterial::generate_temp();
    let server = support::deploy::TlsRedis::start(&material, true);
    server.add_user("app", "s3cret");
    let client = Some((
        material.client_cert.as_path(),
        material.client_key.as_path(),
    ));

    let (anonymous, store) = tls_cache(&server.url(), &material.ca_cert, None);
    refused_with(&anonymous, &store, "CertificateRequired").await;

    let (wrong_password, store) = tls_cache(
        &server.url_with_user("app", "nope"),
        &material.ca_cert,
        client,
    );
    refused_with(&wrong_password, &store, "authentication failed").await;

    let (cache, _) = tls_cache(
        &server.url_with_user("app", "s3cret"),
        &material.ca_cert,
        client,
    );
    wait_until("subscribed over mutual TLS", || cache.stats().subscribed).await;
    let health = cache.health().await;
    assert_eq!(health.l2.status, "up", "{:?}", health.l2.last_error);
    assert!(cache.invalidate_owner_list("acme").await.is_ok());
}
