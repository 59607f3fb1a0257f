//! The owner key-list cache: [`ApiKeyCache::list_owner_keys`], an admin
//! read ("which keys does this account have?") served from an L1 and an L2
//! of its own, apart from the key cache the request path uses.
//!
//! # Tiers
//!
//! * **L1**: a small in-process cache of `owner -> list` (`quick_cache`,
//!   bounded by the number of key summaries it holds, [`L1_WEIGHT`]), each
//!   entry fresh for `l1_ttl`.
//! * **L2**: Redis, `{prefix}owner-keys:{owner}`, a versioned JSON value
//!   (like the key entries: a bad value or another version is a miss),
//!   living at most `min(l2_ttl, tombstone_ttl / 2)`; lists of more than
//!   [`MAX_L2_KEYS`] keys are not written to Redis.
//! * **The store**: [`KeyStore::list_by_owner`](crate::KeyStore::list_by_owner).
//!   A store error is an error, never an empty list.
//!
//! In `database_only` mode every call asks the store.
//!
//! # Invalidation
//!
//! Every invalidation drops lists too, with the guarantees keys have:
//!
//! * [`invalidate`](ApiKeyCache::invalidate) (a hash) and
//!   [`invalidate_key_id`](ApiKeyCache::invalidate_key_id) drop, on this
//!   instance at once and on the others when their key event arrives, every
//!   cached list that holds the key. They do not need to know the key's
//!   owner: in Redis, the key's tombstone is what invalidates the list. A
//!   list read from Redis is used only once the listed keys' entries have
//!   been read back and none of them is a tombstone (or a record that
//!   disagrees with the list); a list lives in Redis at most half a
//!   tombstone's lifetime and is written only within half a tombstone's
//!   lifetime of the read that found it missing, so every tombstone written
//!   after a list was read from the store outlives that list.
//! * [`invalidate_owner`](ApiKeyCache::invalidate_owner) drops the owner's
//!   list everywhere (its list is tombstoned in Redis, and its owner event
//!   drops the list on every instance).
//! * A new key changes no key entry: call
//!   [`invalidate_owner_list`](ApiKeyCache::invalidate_owner_list) after
//!   issuing one (`KeyAdmin::create_key`). It tombstones the list in Redis
//!   and publishes a list event.
//!
//! # The refill race
//!
//! A list read from the store before a key was issued or revoked must not
//! be written back after the invalidation:
//!
//! * L1: a generation counter, bumped by every invalidation (when it starts
//!   and once it has landed in Redis, and when an event arrives), read when
//!   a load starts, and checked under the lock a fill takes. A load that
//!   overlapped an invalidation fills nothing, and does not trust Redis's
//!   answer either: it asks the store.
//! * L2: fills are `SET NX` (a list tombstone blocks them) in a script that
//!   refuses to write once half a tombstone's lifetime has passed since the
//!   load's Redis read, or if any listed key's entry is a tombstone.
//! * While an invalidation is under way on this instance, Redis's lists for
//!   what it covers (the owner, the list, a listed hash or id) are not
//!   trusted (`invalidation/guard.rs`).
//!
//! # What "at once" means
//!
//! * On the instance that invalidates: from the moment the `invalidate*`
//!   call is made (before its future is first polled), every
//!   `list_owner_keys` that starts reflects the change.
//! * In Redis: once the returned future has resolved `Ok`, every instance
//!   that reads the owner's list from Redis (nothing in its L1) reflects it.
//! * In other instances' L1: when the event arrives (milliseconds; the same
//!   bound as a key revocation's, 100 ms p99 by the design); a subscriber
//!   that lost events clears its lists with the rest of L1.
//!
//! Concurrent misses for one owner each ask the store (no single flight: an
//! admin read, not the request path). After a revocation, an L1 miss for
//! the owner's list asks the store (and writes nothing to Redis) until the
//! key's tombstone has run out: a Redis list cannot tell whether it was
//! read before or after the tombstone was written.
//!
//! The fill script reads the listed keys' entries next to the list: one
//! Redis node, as today. On Redis Cluster those keys live in other slots;
//! the check would have to move to the client (read the entries after the
//! fill, and delete a list that lost the race).
//!
//! Instances of a version without owner lists count the list event as
//! undecodable and ignore it (they hold no lists).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quick_cache::unsync::Cache;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::codec::{self, Decoded};
use crate::l2::L2;
use crate::{ApiKeyCache, KeyHash, KeyId, KeyRecord, KeyStatus, Mode, Scopes, StoreError};

/// Key summaries held by the lists in L1, all lists together (a list of `n`
/// keys weighs `n + 1`).
pub(crate) const L1_WEIGHT: u64 = 50_000;

/// Lists longer than this are not written to Redis (each read from Redis
/// reads every listed key's entry back).
pub(crate) const MAX_L2_KEYS: usize = 1_000;

/// One of an owner's keys, as [`ApiKeyCache::list_owner_keys`] lists it: no
/// hash, no plaintext, no limits or usage.
///
/// Serialized as the demos' `GET /admin/owners/{owner}/keys` items:
///
/// ```
/// use apikey_cache::{KeyHasher, KeyId, KeyRecord, OwnerKey, Scopes};
///
/// let hash = KeyHasher::new(None).hash(b"ak_example");
/// let record = KeyRecord::new(KeyId::from("key_1"), hash, "acme", Scopes::new(["orders:read"]));
/// let key = OwnerKey::from(&record);
/// assert_eq!(
///     serde_json::to_value(&key).unwrap(),
///     serde_json::json!({"key_id": "key_1", "scopes": ["orders:read"], "status": "active", "expires_at": null})
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OwnerKey {
    /// The key's id.
    pub key_id: KeyId,
    /// Granted scopes.
    pub scopes: Scopes,
    /// Lifecycle state, as the store has it (an expired key stays `active`:
    /// see `expires_at`).
    pub status: KeyStatus,
    /// Expiry (RFC 3339 in JSON), if any.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

impl From<&KeyRecord> for OwnerKey {
    fn from(r: &KeyRecord) -> Self {
        Self {
            key_id: r.id.clone(),
            scopes: r.scopes.clone(),
            status: r.status,
            expires_at: r.expires_at,
        }
    }
}

/// A listed key as the caches hold it: the summary and the key's hash
/// (never shown; it lets a key invalidation find the lists that hold the
/// key, and a Redis read check the key's entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Item {
    #[serde(flatten)]
    key: OwnerKey,
    h: KeyHash,
}

impl Item {
    /// Whether a record read from Redis's key entry says what this item says.
    fn agrees_with(&self, r: &KeyRecord) -> bool {
        r.hash == self.h
            && r.id == self.key.key_id
            && r.status == self.key.status
            && r.expires_at == self.key.expires_at
            && r.scopes == self.key.scopes
    }
}

type Items = Arc<[Item]>;

fn items_of(records: &[KeyRecord]) -> Items {
    let mut items: Vec<Item> = records
        .iter()
        .map(|r| Item {
            key: OwnerKey::from(r),
            h: r.hash,
        })
        .collect();
    items.sort_by(|a, b| a.key.key_id.cmp(&b.key.key_id));
    items.into()
}

fn public(items: &[Item]) -> Vec<OwnerKey> {
    items.iter().map(|i| i.key.clone()).collect()
}

// ---------------------------------------------------------------------------
// The Redis value: `{"v":1,"k":"l","l":[items]}`, or the key entries'
// tombstone `{"v":1,"k":"t"}`.

#[derive(Serialize, Deserialize)]
struct Wire<L> {
    v: u32,
    /// `l` list, `t` tombstone.
    k: char,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    l: Option<L>,
}

fn none<L>() -> Option<L> {
    None
}

#[derive(Debug)]
enum DecodedList {
    List(Vec<Item>),
    Tombstone,
    Bad,
}

fn encode(items: &[Item]) -> Vec<u8> {
    serde_json::to_vec(&Wire {
        v: codec::FORMAT_VERSION,
        k: 'l',
        l: Some(items),
    })
    .unwrap_or_default()
}

fn decode(bytes: &[u8]) -> DecodedList {
    match serde_json::from_slice::<Wire<Vec<Item>>>(bytes) {
        Ok(Wire { v, .. }) if v != codec::FORMAT_VERSION => DecodedList::Bad,
        Ok(Wire {
            k: 'l', l: Some(l), ..
        }) => DecodedList::List(l),
        Ok(Wire {
            k: 't', l: None, ..
        }) => DecodedList::Tombstone,
        _ => DecodedList::Bad,
    }
}

// ---------------------------------------------------------------------------
// L1.

#[derive(Clone)]
struct Cached {
    items: Items,
    until: Instant,
}

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<String, Cached> for Weight {
    fn weight(&self, _owner: &String, cached: &Cached) -> u64 {
        1 + cached.items.len() as u64
    }
}

struct State {
    cache: Cache<String, Cached, Weight>,
    /// Bumped by every invalidation; see the module docs.
    generation: u64,
}

/// The in-process tier of owner lists.
pub(crate) struct OwnerLists {
    state: Mutex<State>,
    ttl: Duration,
}

impl OwnerLists {
    pub(crate) fn new(ttl: Duration) -> Self {
        // Deadlines are `Instant + ttl`: cap absurd settings, as L1 does.
        const CAP: Duration = Duration::from_secs(100 * 365 * 86_400);
        Self {
            state: Mutex::new(State {
                cache: Cache::with_weighter(1024, L1_WEIGHT, Weight),
                generation: 0,
            }),
            ttl: ttl.min(CAP),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, owner: &str) -> Option<Items> {
        let mut state = self.lock();
        let cached = state.cache.get(owner)?;
        if Instant::now() < cached.until {
            return Some(cached.items.clone());
        }
        state.cache.remove(owner);
        None
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Inserts `items` for `owner` unless an invalidation ran since the
    /// load began (`generation`).
    fn fill(&self, owner: &str, items: Items, generation: u64) {
        let mut state = self.lock();
        if state.generation == generation {
            let until = Instant::now() + self.ttl;
            state
                .cache
                .insert(owner.to_owned(), Cached { items, until });
        }
    }

    /// Bumps the generation and removes what `drop` picks, in one step.
    fn invalidating(&self, drop: impl FnOnce(&mut Cache<String, Cached, Weight>)) {
        let mut state = self.lock();
        state.generation = state.generation.wrapping_add(1);
        drop(&mut state.cache);
    }

    /// An invalidation landed (or an event arrived): loads that began
    /// before it must not keep what they read.
    pub(crate) fn bump(&self) {
        self.invalidating(|_| {});
    }

    pub(crate) fn drop_owner(&self, owner: &str) {
        self.invalidating(|c| {
            c.remove(owner);
        });
    }

    pub(crate) fn drop_hash(&self, hash: &KeyHash) {
        self.invalidating(|c| c.retain(|_, v| !v.items.iter().any(|i| i.h == *hash)));
    }

    pub(crate) fn drop_id(&self, id: &KeyId) {
        self.invalidating(|c| c.retain(|_, v| !v.items.iter().any(|i| i.key.key_id == *id)));
    }

    pub(crate) fn clear(&self) {
        self.invalidating(|c| c.clear());
    }

    /// Live lists held (dead ones are dropped first).
    pub(crate) fn entries(&self) -> u64 {
        let now = Instant::now();
        let mut state = self.lock();
        state.cache.retain(|_, v| now < v.until);
        state.cache.len() as u64
    }
}

// ---------------------------------------------------------------------------
// The read path.

/// What Redis said about a list.
enum FromL2 {
    /// A list that may be used.
    Trusted(Items),
    /// Nothing there (or a bad value): ask the store, then fill.
    Miss(crate::l2::ReadStamp),
    /// A tombstone, a list that cannot be trusted, or Redis failed: ask the
    /// store and do not fill.
    Untrusted,
}

impl ApiKeyCache {
    /// The keys of `owner`, in key id order, from the owner key-list cache:
    /// this instance's L1, then Redis, then the store
    /// ([`KeyStore::list_by_owner`](crate::KeyStore::list_by_owner)); in
    /// `database_only` mode, the store every time.
    ///
    /// A store error (or timeout, `store_timeout`) when no cache tier can
    /// answer is an error, never an empty list. Each [`OwnerKey`] is a
    /// summary: no hash, no plaintext.
    ///
    /// The list is invalidated by every `invalidate*` call (see "Owner key
    /// lists" in the crate docs for what "at once" means); a host that
    /// issues keys must call
    /// [`invalidate_owner_list`](Self::invalidate_owner_list) after each
    /// one, or the new key may be missing from cached lists for up to
    /// `l1_ttl` plus a list's lifetime in Redis.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, KeyStatus, MemoryStore, NewKey};
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
    /// let key = store.create_key(cache.hasher(), NewKey::new("acme", ["a"])).await.unwrap();
    /// cache.invalidate_owner_list("acme").await.unwrap();
    /// let keys = cache.list_owner_keys("acme").await.unwrap();
    /// assert_eq!(keys.len(), 1);
    /// assert_eq!(keys[0].key_id, key.record.id);
    ///
    /// store.revoke_key(&key.record.id).await.unwrap();
    /// cache.invalidate(&key.record.hash).await.unwrap();
    /// assert_eq!(cache.list_owner_keys("acme").await.unwrap()[0].status, KeyStatus::Revoked);
    /// # });
    /// ```
    pub async fn list_owner_keys(&self, owner: &str) -> Result<Vec<OwnerKey>, StoreError> {
        let inner = &*self.inner;
        if self.mode() == Mode::DatabaseOnly {
            return Ok(public(&self.list_from_store(owner).await?));
        }
        let lists = &inner.owner_lists;
        if let Some(items) = lists.get(owner) {
            return Ok(public(&items));
        }
        let generation = lists.generation();
        let mut fill_stamp = None;
        if let Some(l2) = &inner.l2 {
            match self.list_from_l2(l2, owner, generation).await {
                FromL2::Trusted(items) => {
                    lists.fill(owner, items.clone(), generation);
                    return Ok(public(&items));
                }
                FromL2::Miss(stamp) => fill_stamp = Some(stamp),
                FromL2::Untrusted => {}
            }
        }
        let items = self.list_from_store(owner).await?;
        if let (Some(l2), Some(stamp)) = (&inner.l2, fill_stamp) {
            // A load that raced an invalidation here does not refill Redis;
            // `SET NX`, the window and the tombstone check cover the rest.
            if items.len() <= MAX_L2_KEYS && lists.generation() == generation {
                let c = &inner.config;
                let window = c.tombstone_ttl / 2;
                let entries = items.iter().map(|i| l2.entry_key(&i.h)).collect();
                l2.fill_list(
                    l2.owner_list_key(owner),
                    encode(&items),
                    c.l2_ttl.min(window),
                    stamp,
                    window,
                    entries,
                )
                .await;
            }
        }
        lists.fill(owner, items.clone(), generation);
        Ok(public(&items))
    }

    async fn list_from_store(&self, owner: &str) -> Result<Items, StoreError> {
        let inner = &*self.inner;
        let listed =
            tokio::time::timeout(inner.config.store_timeout, inner.store.list_by_owner(owner))
                .await;
        match listed {
            Ok(Ok(records)) => Ok(items_of(&records)),
            Ok(Err(e)) => {
                tracing::warn!(owner, error = %e, "key store listing failed");
                Err(e)
            }
            Err(_) => {
                tracing::warn!(owner, "key store listing timed out");
                Err(StoreError::Timeout)
            }
        }
    }

    /// Reads `owner`'s list from Redis and checks it: every listed key's
    /// entry is read back (a tombstone, a "not found", a bad value or a
    /// record that disagrees makes the list untrusted), nothing this
    /// instance holds covers it, and no invalidation ran meanwhile.
    async fn list_from_l2(&self, l2: &L2, owner: &str, generation: u64) -> FromL2 {
        let inner = &*self.inner;
        let Ok((bytes, stamp)) = l2.read_raw(l2.owner_list_key(owner)).await else {
            return FromL2::Untrusted;
        };
        let Some(bytes) = bytes else {
            return FromL2::Miss(stamp);
        };
        let items = match decode(&bytes) {
            DecodedList::List(items) => items,
            DecodedList::Tombstone => return FromL2::Untrusted,
            DecodedList::Bad => {
                l2.stats
                    .bad_values
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(owner, "undecodable owner list in redis, treated as a miss");
                return FromL2::Miss(stamp);
            }
        };
        let entries: Vec<String> = items.iter().map(|i| l2.entry_key(&i.h)).collect();
        let Ok(values) = l2.get_many(&entries).await else {
            return FromL2::Untrusted;
        };
        let consistent = values.len() == items.len()
            && items.iter().zip(&values).all(|(item, value)| match value {
                None => true,
                Some(bytes) => match codec::decode(bytes) {
                    Decoded::Found(r) => item.agrees_with(&r),
                    Decoded::NotFound | Decoded::Tombstone | Decoded::Bad => false,
                },
            });
        let held = inner
            .invalidations
            .guard
            .distrusts_list(owner, items.iter().map(|i| (&i.h, &i.key.key_id)));
        if !consistent || held || inner.owner_lists.generation() != generation {
            return FromL2::Untrusted;
        }
        FromL2::Trusted(items.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyHasher;

    fn record(n: u8, owner: &str) -> KeyRecord {
        let hash = KeyHasher::new(None).hash(&[n]);
        KeyRecord::new(KeyId::new(format!("k{n}")), hash, owner, Scopes::new(["a"]))
    }

    #[test]
    fn wire_round_trips_and_refuses_other_versions() {
        let mut r = record(1, "acme");
        r.expires_at = Some(time::macros::datetime!(2031-02-03 04:05:06.789 UTC));
        let items = items_of(&[record(2, "acme"), r]);
        assert_eq!(items[0].key.key_id.as_str(), "k1", "sorted by id");
        match decode(&encode(&items)) {
            DecodedList::List(back) => assert_eq!(&back[..], &items[..]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(&codec::encode_tombstone()),
            DecodedList::Tombstone
        ));
        for bad in [
            &b""[..],
            b"garbage",
            br#"{"v":2,"k":"l","l":[]}"#,
            br#"{"v":1,"k":"l"}"#,
            br#"{"v":1,"k":"f","l":[]}"#,
            br#"{"v":1,"k":"l","l":[{"key_id":"k"}]}"#,
        ] {
            assert!(matches!(decode(bad), DecodedList::Bad), "{bad:?}");
        }
    }

    #[test]
    fn the_wire_holds_no_plaintext_and_the_summary_no_hash() {
        let r = record(1, "acme");
        let json = serde_json::to_string(&OwnerKey::from(&r)).unwrap();
        assert!(!json.contains(&r.hash.to_hex()), "{json}");
        assert!(!json.contains("owner"), "{json}");
    }

    #[tokio::test(start_paused = true)]
    async fn l1_fills_respect_the_generation_and_the_ttl() {
        let lists = OwnerLists::new(Duration::from_secs(60));
        let a = record(1, "acme");
        let g = lists.generation();
        lists.drop_hash(&record(9, "x").hash);
        lists.fill("acme", items_of(std::slice::from_ref(&a)), g);
        assert!(lists.get("acme").is_none(), "an invalidation ran meanwhile");

        let g = lists.generation();
        lists.fill("acme", items_of(std::slice::from_ref(&a)), g);
        assert!(lists.get("acme").is_some());
        lists.drop_id(&KeyId::from("k2"));
        assert!(lists.get("acme").is_some(), "another id");
        lists.drop_id(&a.id);
        assert!(lists.get("acme").is_none());

        let g = lists.generation();
        lists.fill("acme", items_of(std::slice::from_ref(&a)), g);
        lists.drop_hash(&a.hash);
        assert!(lists.get("acme").is_none());

        let g = lists.generation();
        lists.fill("acme", items_of(std::slice::from_ref(&a)), g);
        assert_eq!(lists.entries(), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(lists.get("acme").is_none(), "past its TTL");
        assert_eq!(lists.entries(), 0);
    }

    #[test]
    fn l1_is_bounded_by_the_keys_it_holds() {
        let lists = OwnerLists::new(Duration::from_secs(60));
        let many: Vec<KeyRecord> = (0..=255u8).map(|n| record(n, "big")).collect();
        let items = items_of(&many);
        for i in 0..(L1_WEIGHT as usize / 100) {
            let g = lists.generation();
            lists.fill(&format!("owner{i}"), items.clone(), g);
        }
        let weight = lists.entries() * (items.len() as u64 + 1);
        assert!(weight <= L1_WEIGHT, "{weight} > {L1_WEIGHT}");
        assert!(lists.entries() > 0);
    }
}
