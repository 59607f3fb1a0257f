//! Single flight: concurrent misses for one hash share one load.
//!
//! The first caller becomes the leader and loads; the others wait on a
//! `watch` channel for its result. If the leader is cancelled (its request
//! dropped), the channel closes and a waiter takes over as the new leader,
//! so nobody waits on a load that will never finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::KeyHash;

type Slot<T> = watch::Sender<Option<T>>;

pub(crate) struct Flights<T> {
    map: Mutex<HashMap<KeyHash, Arc<Slot<T>>>>,
}

pub(crate) enum Role<'a, T: Clone> {
    Leader(Leader<'a, T>),
    Follower(watch::Receiver<Option<T>>),
}

/// Held by the caller that loads. Dropping it without [`Leader::finish`]
/// releases the waiters to retry.
pub(crate) struct Leader<'a, T: Clone> {
    flights: &'a Flights<T>,
    hash: KeyHash,
    slot: Arc<Slot<T>>,
}

impl<T: Clone> Flights<T> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyHash, Arc<Slot<T>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn join(&self, hash: KeyHash) -> Role<'_, T> {
        let mut map = self.lock();
        if let Some(slot) = map.get(&hash) {
            return Role::Follower(slot.subscribe());
        }
        let slot = Arc::new(watch::Sender::new(None));
        map.insert(hash, slot.clone());
        Role::Leader(Leader {
            flights: self,
            hash,
            slot,
        })
    }

    /// Detaches the current load of `hash`, so later callers start a fresh
    /// one (used by invalidation: a load that began before it must not be
    /// joined by requests that arrive after it).
    pub(crate) fn forget(&self, hash: &KeyHash) {
        self.lock().remove(hash);
    }

    /// Detaches every load.
    pub(crate) fn forget_all(&self) {
        self.lock().clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<T: Clone> Leader<'_, T> {
    /// Publishes the result to the waiters.
    pub(crate) fn finish(self, value: T) {
        self.slot.send_replace(Some(value));
        // Drop runs next and detaches the slot.
    }
}

impl<T: Clone> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        // Only remove our own slot: after `forget`, a newer leader may own
        // the entry for this hash.
        if map
            .get(&self.hash)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            map.remove(&self.hash);
        }
    }
}

/// Waits for a leader's result; `None` if the leader gave up.
pub(crate) async fn wait<T: Clone>(mut rx: watch::Receiver<Option<T>>) -> Option<T> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let f = Flights::<u32>::new();
        let h = KeyHash::from_bytes([1; 32]);
        let Role::Leader(leader) = f.join(h) else {
            panic!()
        };
        let Role::Follower(rx) = f.join(h) else {
            panic!()
        };
        leader.finish(7);
        assert_eq!(wait(rx).await, Some(7));
        assert_eq!(f.len(), 0);
    }

    #[tokio::test]
    async fn dropped_leader_releases_followers() {
        let f = Flights::<u32>::new();
        let h = KeyHash::from_bytes([2; 32]);
        let Role::Leader(leader) = f.join(h) else {
            panic!()
        };
        let Role::Follower(rx) = f.join(h) else {
            panic!()
        };
        drop(leader);
        assert_eq!(wait(rx).await, None);
        assert!(matches!(f.join(h), Role::Leader(_)));
    }

    #[tokio::test]
    async fn forget_detaches_without_disturbing_the_new_leader() {
        let f = Flights::<u32>::new();
        let h = KeyHash::from_bytes([3; 32]);
        let Role::Leader(old) = f.join(h) else {
            panic!()
        };
        f.forget(&h);
        let Role::Leader(new) = f.join(h) else {
            panic!()
        };
        drop(old);
        assert!(matches!(f.join(h), Role::Follower(_)));
        drop(new);
    }
}
