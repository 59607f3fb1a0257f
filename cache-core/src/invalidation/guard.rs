//! What this instance must not trust from Redis while an invalidation is
//! under way.
//!
//! An invalidation drops this instance's L1 entry at once, but the Redis
//! entry keeps the old record until the tombstone lands: a few milliseconds
//! later, or much later when Redis refuses writes. A request that misses L1
//! in between would read the old record back from Redis. So an invalidation
//! *holds* what it covers (a hash, a key id, an owner) from its first,
//! synchronous step until Redis has its tombstones; while held, whatever
//! Redis says about it is treated like a tombstone: the load asks the store
//! and does not fill Redis.
//!
//! Owner events from other instances are held for `tombstone_ttl` after they
//! arrive: the sender may not have been able to list the owner's keys yet,
//! so Redis may still hold some of them (`events.rs`).
//!
//! The request path only consults the guard after an L2 read (a miss path),
//! and skips the lock while nothing is held.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::time::Instant;

use crate::{KeyHash, KeyId, KeyRecord};

/// One thing an invalidation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Hash(KeyHash),
    Id(KeyId),
    Owner(String),
    /// An owner's key list only (a key was issued): the owner's keys
    /// themselves are not affected.
    List(String),
}

#[derive(Debug, Default, Clone, Copy)]
struct Hold {
    /// Invalidations of this target under way on this instance.
    pending: u32,
    /// Held until then even with nothing pending (events from elsewhere).
    until: Option<Instant>,
}

impl Hold {
    fn live(&self, now: Instant) -> bool {
        self.pending > 0 || self.until.is_some_and(|u| now < u)
    }
}

#[derive(Debug, Default)]
struct Holds {
    hashes: HashMap<KeyHash, Hold>,
    ids: HashMap<KeyId, Hold>,
    owners: HashMap<String, Hold>,
    lists: HashMap<String, Hold>,
}

impl Holds {
    fn len(&self) -> usize {
        self.hashes.len() + self.ids.len() + self.owners.len() + self.lists.len()
    }

    fn update(&mut self, target: &Target, f: impl FnOnce(&mut Hold)) {
        fn at<K: Eq + Hash + Clone>(map: &mut HashMap<K, Hold>, k: &K, f: impl FnOnce(&mut Hold)) {
            let now = Instant::now();
            let hold = map.entry(k.clone()).or_default();
            f(hold);
            if !hold.live(now) {
                map.remove(k);
            }
        }
        match target {
            Target::Hash(h) => at(&mut self.hashes, h, f),
            Target::Id(i) => at(&mut self.ids, i, f),
            Target::Owner(o) => at(&mut self.owners, o, f),
            Target::List(o) => at(&mut self.lists, o, f),
        }
    }

    fn purge(&mut self, now: Instant) {
        self.hashes.retain(|_, h| h.live(now));
        self.ids.retain(|_, h| h.live(now));
        self.owners.retain(|_, h| h.live(now));
        self.lists.retain(|_, h| h.live(now));
    }
}

/// The holds of one instance.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// Entries in `holds`; readers skip the lock while it is zero.
    live: AtomicUsize,
    holds: Mutex<Holds>,
}

impl Guard {
    fn with<T>(&self, f: impl FnOnce(&mut Holds) -> T) -> T {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut holds);
        self.live.store(holds.len(), Ordering::SeqCst);
        out
    }

    /// Holds `targets` until [`release`](Self::release).
    pub(crate) fn hold(&self, targets: &[Target]) {
        self.with(|holds| {
            for t in targets {
                holds.update(t, |h| h.pending += 1);
            }
        });
    }

    /// Ends one [`hold`](Self::hold) of `targets`.
    pub(crate) fn release(&self, targets: &[Target]) {
        self.with(|holds| {
            for t in targets {
                holds.update(t, |h| h.pending = h.pending.saturating_sub(1));
            }
        });
    }

    /// Holds `target` until `until` (or longer, if already held longer).
    pub(crate) fn hold_until(&self, target: &Target, until: Instant) {
        self.with(|holds| {
            holds.update(target, |h| {
                h.until = Some(h.until.map_or(until, |u| u.max(until)))
            });
        });
    }

    /// Drops timed holds that have run out.
    pub(crate) fn purge(&self) {
        if self.live.load(Ordering::SeqCst) != 0 {
            self.with(|holds| holds.purge(Instant::now()));
        }
    }

    /// Whether Redis's answer for `hash` must not be trusted now.
    pub(crate) fn distrusts_hash(&self, hash: &KeyHash) -> bool {
        if self.live.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let now = Instant::now();
        self.with(|holds| holds.hashes.get(hash).is_some_and(|h| h.live(now)))
    }

    /// Whether a record Redis returned must not be trusted now: its hash,
    /// its id or its owner is held.
    pub(crate) fn distrusts(&self, record: &KeyRecord) -> bool {
        if self.live.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let now = Instant::now();
        self.with(|holds| {
            let held = |h: Option<&Hold>| h.is_some_and(|h| h.live(now));
            held(holds.hashes.get(&record.hash))
                || held(holds.ids.get(&record.id))
                || held(holds.owners.get(record.owner.as_str()))
        })
    }

    /// Whether a key list of `owner` that Redis returned must not be
    /// trusted now: the owner or its list is held, or one of the listed
    /// keys (`(hash, id)` pairs) is.
    pub(crate) fn distrusts_list<'a>(
        &self,
        owner: &str,
        keys: impl IntoIterator<Item = (&'a KeyHash, &'a KeyId)>,
    ) -> bool {
        if self.live.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let now = Instant::now();
        self.with(|holds| {
            let held = |h: Option<&Hold>| h.is_some_and(|h| h.live(now));
            held(holds.owners.get(owner))
                || held(holds.lists.get(owner))
                || keys
                    .into_iter()
                    .any(|(hash, id)| held(holds.hashes.get(hash)) || held(holds.ids.get(id)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyHasher, Scopes};
    use std::time::Duration;

    fn record(n: u8, owner: &str) -> KeyRecord {
        let hash = KeyHasher::new(None).hash(&[n]);
        KeyRecord::new(KeyId::new(format!("k{n}")), hash, owner, Scopes::new(["a"]))
    }

    #[test]
    fn holds_count_and_release() {
        let g = Guard::default();
        let r = record(1, "acme");
        let t = [Target::Hash(r.hash)];
        assert!(!g.distrusts(&r));
        g.hold(&t);
        g.hold(&t);
        assert!(g.distrusts(&r));
        assert!(g.distrusts_hash(&r.hash));
        g.release(&t);
        assert!(g.distrusts(&r), "one invalidation still under way");
        g.release(&t);
        assert!(!g.distrusts(&r));
        assert!(!g.distrusts_hash(&r.hash));
        assert_eq!(g.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn ids_and_owners_cover_their_records_only() {
        let g = Guard::default();
        let a = record(1, "acme");
        let b = record(2, "beta");
        g.hold(&[Target::Id(a.id.clone())]);
        assert!(g.distrusts(&a));
        assert!(!g.distrusts(&b));
        assert!(!g.distrusts_hash(&a.hash), "an id hold is not a hash hold");
        g.release(&[Target::Id(a.id.clone())]);
        g.hold(&[Target::Owner("beta".into())]);
        assert!(g.distrusts(&b));
        assert!(!g.distrusts(&a));
    }

    #[test]
    fn lists_are_distrusted_by_owner_list_hash_or_id() {
        let g = Guard::default();
        let a = record(1, "acme");
        let b = record(2, "acme");
        let keys = |r: &KeyRecord| vec![(r.hash, r.id.clone())];
        let list = |g: &Guard, owner: &str, keys: &[(KeyHash, KeyId)]| {
            g.distrusts_list(owner, keys.iter().map(|(h, i)| (h, i)))
        };
        assert!(!list(&g, "acme", &keys(&a)));
        let t = [Target::List("acme".into())];
        g.hold(&t);
        assert!(list(&g, "acme", &[]), "the list itself is held");
        assert!(!list(&g, "beta", &[]));
        assert!(!g.distrusts(&a), "a list hold is not a key hold");
        g.release(&t);
        g.hold(&[Target::Hash(a.hash)]);
        assert!(list(&g, "acme", &keys(&a)));
        assert!(!list(&g, "acme", &keys(&b)));
        g.release(&[Target::Hash(a.hash)]);
        g.hold(&[Target::Id(b.id.clone())]);
        assert!(list(&g, "acme", &keys(&b)));
        assert!(!list(&g, "acme", &keys(&a)));
        g.release(&[Target::Id(b.id.clone())]);
        g.hold(&[Target::Owner("acme".into())]);
        assert!(list(&g, "acme", &[]));
    }

    #[tokio::test(start_paused = true)]
    async fn timed_holds_run_out() {
        let g = Guard::default();
        let r = record(3, "acme");
        let owner = Target::Owner("acme".into());
        g.hold_until(&owner, Instant::now() + Duration::from_secs(10));
        g.hold_until(&owner, Instant::now() + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(g.distrusts(&r), "the longer hold wins");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!g.distrusts(&r));
        g.purge();
        assert_eq!(g.live.load(Ordering::SeqCst), 0);
    }
}
