//! The owner key-list cache (`list_owner_keys`): served from its tiers,
//! invalidated on every instance by creates, revocations and owner
//! suspensions, never refilled by a load that read the store before an
//! invalidation, an error when the store is, bypassed in `database_only`.
//!
//! Real redis-server processes (one per test); the in-memory store behind a
//! gate (`support/gated.rs`) that counts listings and can pause one after
//! it has read the store.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, CacheConfig, CacheConfigBuilder, KeyAdmin, KeyId, KeyRecord, KeyStatus, KeyStore,
    MemoryStore, Mode, NewKey, OwnerKey, StoreError,
};
use support::gated::GatedStore;
use support::redis::RedisServer;
use support::{wait_until, wait_until_async};

fn config(url: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .redis_url(url)
        // Generous for a loaded CI machine: these tests time nothing.
        .redis_timeout(Duration::from_secs(1))
        .redis_connect_timeout(Duration::from_secs(1))
}

async fn instance(store: Arc<dyn KeyStore>, url: &str) -> ApiKeyCache {
    let cache = ApiKeyCache::new(config(url).build().unwrap(), store).unwrap();
    wait_until("subscribed", || cache.stats().subscribed).await;
    cache
}

async fn issue(mem: &MemoryStore, cache: &ApiKeyCache, owner: &str) -> KeyRecord {
    mem.create_key(cache.hasher(), NewKey::new(owner, ["orders:*"]))
        .await
        .unwrap()
        .record
}

async fn list(cache: &ApiKeyCache, owner: &str) -> Vec<OwnerKey> {
    cache.list_owner_keys(owner).await.unwrap()
}

fn ids(keys: &[OwnerKey]) -> Vec<KeyId> {
    keys.iter().map(|k| k.key_id.clone()).collect()
}

fn status_of(keys: &[OwnerKey], id: &KeyId) -> Option<KeyStatus> {
    keys.iter().find(|k| k.key_id == *id).map(|k| k.status)
}

fn sorted(mut v: Vec<KeyId>) -> Vec<KeyId> {
    v.sort();
    v
}

fn list_key(owner: &str) -> String {
    format!("apikey-cache:owner-keys:{owner}")
}

fn redis_value(redis: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(&mut redis.conn()).unwrap()
}

/// Repeated calls, and a second instance on the same Redis, cost the store
/// one listing; the Redis value holds summaries and hashes, never a
/// plaintext key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_from_the_cache() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(store.clone(), &redis.url()).await;
    let b = instance(store.clone(), &redis.url()).await;
    let created = mem
        .create_key(a.hasher(), NewKey::new("acme", ["orders:read"]))
        .await
        .unwrap();
    let other = issue(&mem, &a, "acme").await;
    issue(&mem, &a, "beta").await;

    let first = list(&a, "acme").await;
    assert_eq!(
        ids(&first),
        sorted(vec![created.record.id.clone(), other.id.clone()]),
        "the owner's keys only, in id order"
    );
    assert_eq!(first[0].status, KeyStatus::Active);
    for _ in 0..5 {
        assert_eq!(list(&a, "acme").await, first);
    }
    assert_eq!(store.listing.passed(), 1, "A's L1 answers again");
    assert_eq!(list(&b, "acme").await, first);
    assert_eq!(store.listing.passed(), 1, "B reads Redis, not the store");

    let value = redis_value(&redis, &list_key("acme")).unwrap();
    assert!(value.contains(created.record.id.as_str()), "{value}");
    assert!(!value.contains(&created.plaintext), "{value}");
    assert!(
        !serde_json::to_string(&first)
            .unwrap()
            .contains(&created.record.hash.to_hex()),
        "summaries carry no hash"
    );
    assert_eq!(a.health().await.owner_lists.entries, 1);
    let json = serde_json::to_value(b.health().await).unwrap();
    assert_eq!(json["owner_lists"]["entries"], 1, "{json}");
}

/// The issue's check: the owner's key list reflects a create and a revoke
/// made on another instance. "At once" on the instance that made them
/// (from the call on, before its future is polled) and for any instance
/// that reads Redis (once the call returned); in the other instances' L1
/// when the event arrives (bounded polling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_reflects_a_create_and_a_revoke_on_another_instance() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let a = instance(mem.clone(), &redis.url()).await;
    let b = instance(mem.clone(), &redis.url()).await;
    let k1 = issue(&mem, &a, "acme").await;
    assert_eq!(ids(&list(&a, "acme").await), vec![k1.id.clone()]);
    assert_eq!(ids(&list(&b, "acme").await), vec![k1.id.clone()]);

    // A key issued on B.
    let k2 = issue(&mem, &b, "acme").await;
    let both = sorted(vec![k1.id.clone(), k2.id.clone()]);
    let pending = b.invalidate_owner_list("acme");
    assert_eq!(ids(&list(&b, "acme").await), both, "B at once");
    pending.await.unwrap();
    assert_eq!(ids(&list(&b, "acme").await), both);
    let cold = instance(mem.clone(), &redis.url()).await;
    assert_eq!(
        ids(&list(&cold, "acme").await),
        both,
        "Redis at once: an instance that reads it"
    );
    wait_until_async("A's list shows the new key", || async {
        ids(&list(&a, "acme").await) == both
    })
    .await;

    // The create's tombstone runs out; B caches the list in Redis again.
    let _: () = redis::cmd("DEL")
        .arg(list_key("acme"))
        .query(&mut redis.conn())
        .unwrap();
    b.clear_l1();
    assert_eq!(ids(&list(&b, "acme").await), both);
    let cached = redis_value(&redis, &list_key("acme")).unwrap();
    assert!(cached.contains(k1.id.as_str()), "{cached}");

    // k1 revoked on B.
    mem.revoke_key(&k1.id).await.unwrap();
    let pending = b.invalidate(&k1.hash);
    assert_eq!(
        status_of(&list(&b, "acme").await, &k1.id),
        Some(KeyStatus::Revoked),
        "B at once"
    );
    pending.await.unwrap();
    let cold = instance(mem.clone(), &redis.url()).await;
    assert_eq!(
        status_of(&list(&cold, "acme").await, &k1.id),
        Some(KeyStatus::Revoked),
        "Redis at once"
    );
    wait_until_async("A's list shows the revocation", || async {
        status_of(&list(&a, "acme").await, &k1.id) == Some(KeyStatus::Revoked)
    })
    .await;
    assert_eq!(
        status_of(&list(&a, "acme").await, &k2.id),
        Some(KeyStatus::Active)
    );
}

/// A revocation by key id, and an owner suspension, drop the lists on the
/// invalidating instance at once and on the others by their events; the
/// suspension tombstones the list in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_id_and_owner_invalidations_drop_the_lists() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let a = instance(mem.clone(), &redis.url()).await;
    let b = instance(mem.clone(), &redis.url()).await;
    let k1 = issue(&mem, &a, "acme").await;
    let k2 = issue(&mem, &a, "acme").await;
    list(&a, "acme").await;
    list(&b, "acme").await;

    mem.revoke_key(&k1.id).await.unwrap();
    let pending = a.invalidate_key_id(&k1.id);
    assert_eq!(
        status_of(&list(&a, "acme").await, &k1.id),
        Some(KeyStatus::Revoked)
    );
    pending.await.unwrap();
    wait_until_async("B's list shows the revocation", || async {
        status_of(&list(&b, "acme").await, &k1.id) == Some(KeyStatus::Revoked)
    })
    .await;

    mem.revoke_owner("acme").await.unwrap();
    a.invalidate_owner("acme").await.unwrap();
    assert_eq!(
        status_of(&list(&a, "acme").await, &k2.id),
        Some(KeyStatus::Revoked)
    );
    let value = redis_value(&redis, &list_key("acme")).unwrap();
    assert!(value.contains("\"k\":\"t\""), "tombstoned: {value}");
    wait_until_async("B's list shows the suspension", || async {
        status_of(&list(&b, "acme").await, &k2.id) == Some(KeyStatus::Revoked)
    })
    .await;
}

/// The race: a listing that read the store before a revocation (made on
/// another instance) or a create (made on this one) finishes after the
/// invalidation. Its list goes back to its caller (the call began before
/// the change) but into neither tier. Before the tombstone check in the
/// fill script, Redis kept the old list after the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_read_before_an_invalidation_is_not_written_back() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(store.clone(), &redis.url()).await;
    let b = instance(mem.clone(), &redis.url()).await;
    let k1 = issue(&mem, &a, "acme").await;
    let k2 = issue(&mem, &a, "acme").await;

    // Revoked on B while A's listing is paused after reading the store.
    store.listed.hold();
    let racing = tokio::spawn({
        let a = a.clone();
        async move { list(&a, "acme").await }
    });
    store.listed.until_parked(1).await;
    let events = a.stats().events_received;
    mem.revoke_key(&k1.id).await.unwrap();
    b.invalidate(&k1.hash).await.unwrap();
    wait_until("A heard the event", || a.stats().events_received > events).await;
    store.listed.release();
    let old = racing.await.unwrap();
    assert_eq!(status_of(&old, &k1.id), Some(KeyStatus::Active));
    assert_eq!(
        redis_value(&redis, &list_key("acme")),
        None,
        "the old list was not written to Redis"
    );
    assert_eq!(
        status_of(&list(&a, "acme").await, &k1.id),
        Some(KeyStatus::Revoked),
        "nor to A's L1"
    );
    let cold = instance(mem.clone(), &redis.url()).await;
    assert_eq!(
        status_of(&list(&cold, "acme").await, &k1.id),
        Some(KeyStatus::Revoked)
    );

    // A key issued on A while A's own listing is paused.
    a.clear_l1();
    let _: () = redis::cmd("DEL")
        .arg(list_key("acme"))
        .query(&mut redis.conn())
        .unwrap();
    store.listed.hold();
    let racing = tokio::spawn({
        let a = a.clone();
        async move { list(&a, "acme").await }
    });
    store.listed.until_parked(1).await;
    let k3 = issue(&mem, &a, "acme").await;
    a.invalidate_owner_list("acme").await.unwrap();
    store.listed.release();
    let old = racing.await.unwrap();
    assert_eq!(ids(&old), sorted(vec![k1.id.clone(), k2.id.clone()]));
    let value = redis_value(&redis, &list_key("acme")).unwrap();
    assert!(
        value.contains("\"k\":\"t\""),
        "still the tombstone: {value}"
    );
    let all = sorted(vec![k1.id.clone(), k2.id.clone(), k3.id.clone()]);
    assert_eq!(ids(&list(&a, "acme").await), all, "A's L1 was not filled");
    assert_eq!(ids(&list(&b, "acme").await), all);

    // An invalidation A has not heard of (its event lost, or still on its
    // way): only the fill script stands between the old list and Redis.
    a.clear_l1();
    let _: () = redis::cmd("DEL")
        .arg(list_key("acme"))
        .query(&mut redis.conn())
        .unwrap();
    store.listed.hold();
    let racing = tokio::spawn({
        let a = a.clone();
        async move { list(&a, "acme").await }
    });
    store.listed.until_parked(1).await;
    mem.revoke_key(&k2.id).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("apikey-cache:key:{}", k2.hash.to_hex()))
        .arg(r#"{"v":1,"k":"t"}"#)
        .arg("PX")
        .arg(10_000)
        .query(&mut redis.conn())
        .unwrap();
    store.listed.release();
    let old = racing.await.unwrap();
    assert_eq!(status_of(&old, &k2.id), Some(KeyStatus::Active));
    assert_eq!(
        redis_value(&redis, &list_key("acme")),
        None,
        "the fill script refused the old list"
    );
    let cold = instance(mem.clone(), &redis.url()).await;
    assert_eq!(
        status_of(&list(&cold, "acme").await, &k2.id),
        Some(KeyStatus::Revoked)
    );
}

/// A list already in Redis when a key in it is revoked (by hash: the
/// revoking instance need not know the owner) is not served again, by any
/// instance, even one that never heard the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_in_redis_is_checked_against_its_keys_tombstones() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(mem.clone(), &redis.url()).await;
    let k1 = issue(&mem, &a, "acme").await;
    list(&a, "acme").await;
    let value = redis_value(&redis, &list_key("acme")).unwrap();
    assert!(value.contains("\"status\":\"active\""), "{value}");

    mem.revoke_key(&k1.id).await.unwrap();
    // Only the key's tombstone, as an instance that knows no owner writes.
    a.invalidate(&k1.hash).await.unwrap();
    assert_eq!(
        redis_value(&redis, &list_key("acme")).as_deref(),
        Some(value.as_str()),
        "the list itself is untouched"
    );
    let c = instance(store.clone(), &redis.url()).await;
    assert_eq!(
        status_of(&list(&c, "acme").await, &k1.id),
        Some(KeyStatus::Revoked)
    );
    assert_eq!(store.listing.passed(), 1, "asked the store");
}

/// Undecodable data in Redis is a miss: the store answers, nothing panics,
/// the bad value is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_in_redis_is_a_miss() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let a = instance(mem.clone(), &redis.url()).await;
    let k1 = issue(&mem, &a, "acme").await;
    for bad in [
        "garbage",
        r#"{"v":2,"k":"l","l":[]}"#,
        r#"{"v":1,"k":"l","l":[{"key_id":"x"}]}"#,
    ] {
        let _: () = redis::cmd("SET")
            .arg(list_key("acme"))
            .arg(bad)
            .query(&mut redis.conn())
            .unwrap();
        a.clear_l1();
        let before = a.stats().l2_bad_values;
        assert_eq!(ids(&list(&a, "acme").await), vec![k1.id.clone()], "{bad}");
        assert_eq!(a.stats().l2_bad_values, before + 1, "{bad}");
    }
}

/// Store down (or hung) with nothing cached: an error, not an empty list.
/// A list already cached still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_is_an_error() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = ApiKeyCache::new(
        config(&redis.url())
            .store_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
        store.clone(),
    )
    .unwrap();
    wait_until("subscribed", || a.stats().subscribed).await;
    let k1 = issue(&mem, &a, "acme").await;
    issue(&mem, &a, "beta").await;
    list(&a, "beta").await;

    store.listing.set_failing(true);
    let err = a.list_owner_keys("acme").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(list(&a, "beta").await.len(), 1, "cached lists still answer");
    store.listing.set_failing(false);

    store.listing.hold();
    let err = a.list_owner_keys("acme").await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout), "{err:?}");
    store.listing.release();
    assert_eq!(ids(&list(&a, "acme").await), vec![k1.id.clone()]);

    // Without Redis too.
    let solo = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
    store.listing.set_failing(true);
    assert!(solo.list_owner_keys("acme").await.is_err());
}

/// `database_only`: every call asks the store, nothing is cached in either
/// tier; back in normal mode the cache answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_only_asks_the_store_every_time() {
    let redis = RedisServer::start();
    let mem = Arc::new(MemoryStore::new());
    let store = GatedStore::new(mem.clone());
    let a = instance(store.clone(), &redis.url()).await;
    let k1 = issue(&mem, &a, "acme").await;
    a.set_mode(Mode::DatabaseOnly);
    for _ in 0..3 {
        assert_eq!(ids(&list(&a, "acme").await), vec![k1.id.clone()]);
    }
    assert_eq!(store.listing.passed(), 3);
    assert_eq!(redis_value(&redis, &list_key("acme")), None);
    assert_eq!(a.health().await.owner_lists.entries, 0);
    // A change needs no invalidation in this mode.
    mem.revoke_key(&k1.id).await.unwrap();
    assert_eq!(
        status_of(&list(&a, "acme").await, &k1.id),
        Some(KeyStatus::Revoked)
    );
    a.set_mode(Mode::Normal);
    list(&a, "acme").await;
    list(&a, "acme").await;
    assert_eq!(store.listing.passed(), 5, "cached again");
}
