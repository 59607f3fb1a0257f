//! Revocation under every interleaving the design names: each test stops one
//! side at a chosen step (a store call held at a gate, Redis refusing
//! writes, a connection held in a proxy, a future dropped mid-way) and
//! checks that no request is accepted that the rules refuse.
//!
//! Real redis-server processes (one per test); the in-memory store behind a
//! gate (`support/gated.rs`).

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, CacheConfigBuilder, Clock, KeyAdmin, KeyRecord, KeyStore,
    ManualClock, MemoryStore, Mode, NewKey, Outcome, RequiredScopes,
};
use support::gated::GatedStore;
use support::hold_proxy::HoldProxy;
use support::proxy::TcpProxy;
use support::redis::RedisServer;
use support::wait_until;

fn config(url: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .redis_url(url)
        // Generous for a loaded CI machine: these tests time nothing.
        .redis_timeout(Duration::from_secs(1))
        .redis_connect_timeout(Duration::from_secs(1))
        .breaker_cooldown(Duration::from_millis(200))
}

async fn instance(store: Arc<dyn KeyStore>, config: CacheConfig) -> ApiKeyCache {
    let cache = ApiKeyCache::new(config, store).unwrap();
    wait_until("subscribed", || cache.stats().subscribed).await;
    cache
}

async fn issue(mem: &MemoryStore, cache: &ApiKeyCache, owner: &str) -> (String, KeyRecord) {
    let created = mem
        .create_key(cache.hasher(), NewKey::new(owner, ["orders:*"]))
        .await
        .unwrap();
    (created.plaintext.clone(), created.record.clone())
}

async fn verify(cache: &ApiKeyCache, key: &str) -> Outcome {
    cache.verify_key(key, &RequiredScopes::none()).await
}

fn entry_key(hash: &apikey_cache::KeyHash) -> String {
    format!("apikey-cache:key:{}", hash.to_hex())
}

fn redis_value(redis: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(&mut redis.conn()).unwrap()
}

/// Polls `fut` once, so it runs up to its first await, and hands it back.
fn poll_once<F: Future + Unpin>(mut fut: F) -> F {
    let waker = futures_noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(matches!(
        std::pin::Pin::new(&mut fut).poll(&mut cx),
        Poll::Pending
    ));
    fut
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

/// Item 1: while `invalidate_owner` lists the owner's keys (before any
/// tombstone is in Redis), the invalidating instance refuses them; before
/// the fix, a request in that window read the old record back from Redis
/// into L1, where it stayed after the invalidation returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_keys_are_refused_while_the_owner_is_being_listed() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(store.clone(), config(&redis.url()).build().unwrap()).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(issue(&mem, &a, "acme").await.0);
    }
    for k in &keys {
        assert!(verify(&a, k).await.is_valid(), "cached in L1 and Redis");
    }
    mem.revoke_owner("acme").await.unwrap();
    store.listing.hold();
    let invalidation = tokio::spawn({
        let a = a.clone();
        async move { a.invalidate_owner("acme").await }
    });
    store.listing.until_parked(1).await;
    for k in &keys {
        assert_eq!(verify(&a, k).await, Outcome::Revoked, "during the listing");
    }
    store.listing.release();
    invalidation.await.unwrap().unwrap();
    for k in &keys {
        assert_eq!(verify(&a, k).await, Outcome::Revoked, "after it returned");
    }
}

/// Item 1, the same for `invalidate_key_id`: refused before the store has
/// said which hash the id has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_refused_while_its_id_is_being_looked_up() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(store.clone(), config(&redis.url()).build().unwrap()).await;
    let (key, record) = issue(&mem, &a, "acme").await;
    assert!(verify(&a, &key).await.is_valid());
    mem.revoke_key(&record.id).await.unwrap();
    store.by_id.hold();
    let invalidation = tokio::spawn({
        let (a, id) = (a.clone(), record.id.clone());
        async move { a.invalidate_key_id(&id).await }
    });
    store.by_id.until_parked(1).await;
    assert_eq!(verify(&a, &key).await, Outcome::Revoked);
    store.by_id.release();
    invalidation.await.unwrap().unwrap();
    assert_eq!(verify(&a, &key).await, Outcome::Revoked);
    let tomb = redis_value(&redis, &entry_key(&record.hash)).unwrap();
    assert!(tomb.contains("\"k\":\"t\""), "tombstoned: {tomb}");
}

/// Item 1, Redis answering reads but refusing writes (`maxmemory` with
/// `noeviction`): the invalidation fails and is retried; meanwhile the old
/// record Redis still holds is not trusted on this instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_invalidation_distrusts_redis_until_it_lands() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let a = instance(mem.clone(), config(&redis.url()).build().unwrap()).await;
    let (key, record) = issue(&mem, &a, "acme").await;
    assert!(verify(&a, &key).await.is_valid());
    redis.set_max_memory("1");

    mem.revoke_key(&record.id).await.unwrap();
    assert!(
        a.invalidate(&record.hash).await.is_err(),
        "Redis refuses the tombstone"
    );
    assert_eq!(a.pending_invalidations(), 1);
    assert!(
        redis_value(&redis, &entry_key(&record.hash))
            .unwrap()
            .contains("\"k\":\"f\""),
        "Redis still holds the old record"
    );
    for _ in 0..20 {
        assert_eq!(verify(&a, &key).await, Outcome::Revoked);
        a.clear_l1(); // every request goes through Redis again
    }
    redis.set_max_memory("0");
    wait_until("the retry landed", || a.pending_invalidations() == 0).await;
    let tomb = redis_value(&redis, &entry_key(&record.hash)).unwrap();
    assert!(tomb.contains("\"k\":\"t\""), "tombstoned: {tomb}");
    assert_eq!(verify(&a, &key).await, Outcome::Revoked);
}

/// Item 2: an `invalidate*` future dropped before it is polled, or at its
/// await points, still lands: other instances refuse the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_invalidation_futures_still_land() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(store.clone(), config(&redis.url()).build().unwrap()).await;
    let b = instance(mem.clone(), config(&redis.url()).build().unwrap()).await;
    let (k1, r1) = issue(&mem, &a, "one").await;
    let (k2, r2) = issue(&mem, &a, "two").await;
    let (k3, _) = issue(&mem, &a, "three").await;
    for k in [&k1, &k2, &k3] {
        assert!(verify(&b, k).await.is_valid(), "in B's L1");
    }

    // Never polled.
    mem.revoke_key(&r1.id).await.unwrap();
    drop(a.invalidate(&r1.hash));
    // Dropped while looking up the id.
    mem.revoke_key(&r2.id).await.unwrap();
    store.by_id.hold();
    drop(poll_once(Box::pin(a.invalidate_key_id(&r2.id))));
    store.by_id.until_parked(1).await;
    // Dropped while listing the owner.
    mem.revoke_owner("three").await.unwrap();
    store.listing.hold();
    drop(poll_once(Box::pin(a.invalidate_owner("three"))));
    store.listing.until_parked(1).await;
    for k in [&k1, &k2, &k3] {
        assert_eq!(verify(&a, k).await, Outcome::Revoked, "A refuses at once");
    }
    store.by_id.release();
    store.listing.release();
    wait_until("every invalidation landed", || {
        a.pending_invalidations() == 0
    })
    .await;
    for k in [&k1, &k2, &k3] {
        support::wait_until_async("B refuses", || async {
            verify(&b, k).await == Outcome::Revoked
        })
        .await;
    }
}

/// Item 2 with Redis down while the future is dropped: retried until it
/// lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_dropped_while_redis_is_down_lands_later() {
    let mut redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let a = instance(mem.clone(), config(&redis.url()).build().unwrap()).await;
    let (key, record) = issue(&mem, &a, "acme").await;
    assert!(verify(&a, &key).await.is_valid());
    redis.pause();
    mem.revoke_key(&record.id).await.unwrap();
    drop(poll_once(Box::pin(a.invalidate(&record.hash))));
    assert_eq!(verify(&a, &key).await, Outcome::Revoked);
    assert_eq!(a.pending_invalidations(), 1);
    redis.resume();
    wait_until("the retry landed", || a.pending_invalidations() == 0).await;
    let tomb = redis_value(&redis, &entry_key(&record.hash)).unwrap();
    assert!(tomb.contains("\"k\":\"t\""), "tombstoned: {tomb}");
    redis.restart();
}

/// Item 3: a load on B reads the store before a revocation; its Redis fill
/// is held in the network until the tombstone has expired. The fill must
/// not write the old record (before the fix, `SET NX` found the key free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_outlives_the_tombstone_writes_nothing() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let proxy = HoldProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    // Short tombstones, still longer than a load may take.
    let tomb_ttl = Duration::from_millis(1600);
    let quick = |url: &str| {
        config(url)
            .store_timeout(Duration::from_millis(400))
            .redis_timeout(Duration::from_millis(200))
            .tombstone_ttl(tomb_ttl)
            .build()
            .unwrap()
    };
    let a = instance(mem.clone(), quick(&redis.url())).await;
    let b = instance(store.clone(), quick(&proxy.url())).await;
    let (key, record) = issue(&mem, &a, "acme").await;

    store.by_hash.hold();
    let load = tokio::spawn({
        let b = b.clone();
        let key = key.clone();
        async move { verify(&b, &key).await }
    });
    store.by_hash.until_parked(1).await; // B has read the active record
    mem.revoke_key(&record.id).await.unwrap();
    a.invalidate(&record.hash).await.unwrap();
    proxy.hold();
    store.by_hash.release(); // B's fill goes out, and waits in the proxy
                             // B answers from what it read (its request began before the revocation).
    assert!(load.await.unwrap().is_valid());
    tokio::time::sleep(tomb_ttl + Duration::from_millis(200)).await;
    assert_eq!(
        redis_value(&redis, &entry_key(&record.hash)),
        None,
        "tombstone expired"
    );
    proxy.release(); // the late fill reaches Redis now
    tokio::time::sleep(Duration::from_millis(300)).await;
    let value = redis_value(&redis, &entry_key(&record.hash));
    assert!(
        value
            .as_deref()
            .is_none_or(|v| !v.contains("\"status\":\"active\"")),
        "the old record came back: {value:?}"
    );
    let c = instance(mem.clone(), quick(&redis.url())).await;
    assert_eq!(verify(&c, &key).await, Outcome::Revoked);
}

/// Item 4: a tombstone read from Redis is an invalidation, also for
/// stale-if-error: an instance that missed the event and holds a stale copy
/// must not serve it while the store is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_ends_stale_if_error() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let b = instance(
        store.clone(),
        config(&redis.url())
            .l1_ttl(Duration::from_millis(100))
            .negative_ttl(Duration::from_millis(100))
            .stale_if_error(Duration::from_secs(60))
            // A Redis read that times out cannot see the tombstone, and
            // then the stale copy is rightly served: on a loaded machine
            // the default 50 ms budget is not enough to read it reliably.
            .redis_timeout(Duration::from_secs(1))
            .tombstone_ttl(Duration::from_secs(30))
            .build()
            .unwrap(),
    )
    .await;
    let (key, record) = issue(&mem, &b, "acme").await;
    assert!(verify(&b, &key).await.is_valid());
    tokio::time::sleep(Duration::from_millis(150)).await; // B's copy is stale
                                                          // Redis no longer has it either (evicted), and the store is down.
    let _: () = redis::cmd("DEL")
        .arg(entry_key(&record.hash))
        .query(&mut redis.conn())
        .unwrap();
    store.by_hash.set_failing(true);
    assert!(
        verify(&b, &key).await.is_valid(),
        "stale-if-error serves the stale copy"
    );
    // Another instance invalidated; B missed the event.
    let _: () = redis::cmd("SET")
        .arg(entry_key(&record.hash))
        .arg(r#"{"v":1,"k":"t"}"#)
        .arg("PX")
        .arg(10_000)
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(verify(&b, &key).await, Outcome::Unavailable);
    assert_eq!(verify(&b, &key).await, Outcome::Unavailable, "never again");
}

/// Item 5: an instance cut off while the fleet mode changed applies it as
/// soon as Redis answers again, though its breaker is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_fleet_mode_change_is_applied_with_the_breaker_open() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let a = instance(mem.clone(), config(&redis.url()).build().unwrap()).await;
    let b = instance(
        mem.clone(),
        config(&format!("redis://127.0.0.1:{}", proxy.port))
            .breaker_threshold(1)
            .breaker_cooldown(Duration::from_secs(3600))
            .build()
            .unwrap(),
    )
    .await;
    proxy.cut();
    // A request that needs Redis opens B's breaker.
    let unknown = apikey_cache::generate_api_key().unwrap();
    assert_eq!(verify(&b, &unknown).await, Outcome::Unknown);
    wait_until("B's breaker open", || {
        b.stats().l2_breaker == Some(apikey_cache::BreakerState::Open)
    })
    .await;
    wait_until("B's subscriber lost", || !b.stats().subscribed).await;
    a.set_fleet_mode(Mode::DatabaseOnly).await.unwrap();
    assert_eq!(b.mode(), Mode::Normal, "B did not hear it");
    proxy.restore();
    wait_until("B applied the fleet mode", || {
        b.mode() == Mode::DatabaseOnly
    })
    .await;
    assert_eq!(
        b.stats().l2_breaker,
        Some(apikey_cache::BreakerState::Open),
        "read outside the breaker"
    );
}

/// Item 6: the load is not owned by the caller that started it: a caller
/// dropped mid-load, or never polled again, neither cancels it nor strands
/// the callers that joined it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_outlive_their_callers() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(store.clone(), config(&redis.url()).build().unwrap()).await;
    let (key, _) = issue(&mem, &a, "acme").await;
    let none = RequiredScopes::none();

    // The first caller starts the load, is polled once, and then neither
    // polled again nor dropped.
    store.by_hash.hold();
    let stuck = poll_once(Box::pin(a.verify_key(&key, &none)));
    store.by_hash.until_parked(1).await;
    let follower = tokio::spawn({
        let (a, key) = (a.clone(), key.clone());
        async move { verify(&a, &key).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.by_hash.release();
    let answer = tokio::time::timeout(Duration::from_secs(5), follower).await;
    assert!(answer
        .expect("the follower is not stranded")
        .unwrap()
        .is_valid());
    assert_eq!(store.by_hash.passed(), 1, "one load, joined");
    drop(stuck);

    // The first caller is dropped mid-load; the load goes on and fills L1.
    let (key2, _) = issue(&mem, &a, "acme").await;
    store.by_hash.hold();
    let caller = tokio::spawn({
        let (a, key2) = (a.clone(), key2.clone());
        async move { verify(&a, &key2).await }
    });
    store.by_hash.until_parked(1).await;
    caller.abort();
    let _ = caller.await;
    store.by_hash.release();
    wait_until("the load filled L1", || {
        a.verify_cached(&a.hash_key(&key2), &RequiredScopes::none())
            .is_some()
    })
    .await;
    assert_eq!(store.by_hash.passed(), 2, "not restarted by a later caller");
}

/// Item 6: `invalidate_owner` whose listing fails still publishes the owner
/// event (other instances drop and distrust the owner's keys), and is
/// retried until the tombstones land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_invalidation_whose_listing_fails_is_published_and_retried() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(store.clone(), config(&redis.url()).build().unwrap()).await;
    let b = instance(mem.clone(), config(&redis.url()).build().unwrap()).await;
    let (key, record) = issue(&mem, &a, "acme").await;
    assert!(verify(&b, &key).await.is_valid(), "in B's L1 and in Redis");
    mem.revoke_owner("acme").await.unwrap();
    store.listing.set_failing(true);
    assert!(a.invalidate_owner("acme").await.is_err());
    assert_eq!(a.pending_invalidations(), 1);
    support::wait_until_async("B refuses", || async {
        verify(&b, &key).await == Outcome::Revoked
    })
    .await;
    b.clear_l1();
    assert_eq!(
        verify(&b, &key).await,
        Outcome::Revoked,
        "Redis's copy is distrusted"
    );
    store.listing.set_failing(false);
    wait_until("the retry landed", || a.pending_invalidations() == 0).await;
    let tomb = redis_value(&redis, &entry_key(&record.hash)).unwrap();
    assert!(tomb.contains("\"k\":\"t\""), "tombstoned: {tomb}");
}

/// Item 7: an expired key is cached as expired: 200 requests cost the
/// store one query, and a second instance none (Redis answers it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_costs_one_store_query() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2030-01-01 0:00 UTC),
    ));
    let build = |clock: Arc<ManualClock>| {
        ApiKeyCache::builder(store.clone())
            .config(config(&redis.url()).build().unwrap())
            .clock(clock)
            .build()
            .unwrap()
    };
    let a = build(clock.clone());
    wait_until("subscribed", || a.stats().subscribed).await;
    let mut new = NewKey::new("acme", ["x"]);
    new.expires_at = Some(clock.now() - Duration::from_secs(1));
    let key = mem.create_key(a.hasher(), new).await.unwrap().plaintext;
    for _ in 0..200 {
        assert_eq!(verify(&a, &key).await, Outcome::Expired);
    }
    assert_eq!(store.by_hash.passed(), 1);
    let b = build(clock.clone());
    wait_until("subscribed", || b.stats().subscribed).await;
    for _ in 0..200 {
        assert_eq!(verify(&b, &key).await, Outcome::Expired);
    }
    assert_eq!(store.by_hash.passed(), 1, "B asked Redis, not the store");

    // A key that expires while cached answers "expired" from L1.
    let mut new = NewKey::new("acme", ["x"]);
    new.expires_at = Some(clock.now() + Duration::from_secs(5));
    let soon = mem.create_key(a.hasher(), new).await.unwrap().plaintext;
    assert!(verify(&a, &soon).await.is_valid());
    clock.advance(Duration::from_secs(5));
    for _ in 0..200 {
        assert_eq!(verify(&a, &soon).await, Outcome::Expired);
    }
    assert_eq!(store.by_hash.passed(), 2);
}
