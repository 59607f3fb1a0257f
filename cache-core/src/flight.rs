//! Single flight: concurrent misses for one hash share one load.
//!
//! The first caller becomes the leader: it spawns the load as a task of its
//! own and then, like everyone else, waits on a `watch` channel for the
//! result. The load belongs to no caller's future, so a caller that goes
//! away (or is never polled again) neither cancels it nor strands the
//! others; each waiter gives up at its own deadline. Should a load task end
//! without a result (a panic), the channel closes and a waiter takes over
//! as the new leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::KeyHash;

type Slot<T> = watch::Sender<Option<T>>;

pub(crate) struct Flights<T> {
    map: Mutex<HashMap<KeyHash, Arc<Slot<T>>>>,
}

pub(crate) enum Role<T: Clone> {
    Leader(Leader<T>),
    Follower(watch::Receiver<Option<T>>),
}

/// Held by the load task. Dropping it without [`Leader::finish`]
/// releases the waiters to retry.
pub(crate) struct Leader<T: Clone> {
    flights: Arc<Flights<T>>,
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

    pub(crate) fn join(self: &Arc<Self>, hash: KeyHash) -> Role<T> {
        let mut map = self.lock();
        if let Some(slot) = map.get(&hash) {
            return Role::Follower(slot.subscribe());
        }
        let slot = Arc::new(watch::Sender::new(None));
        map.insert(hash, slot.clone());
        Role::Leader(Leader {
            flights: self.clone(),
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

impl<T: Clone> Leader<T> {
    /// A receiver for the result, for the leader's own caller.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<T>> {
        self.slot.subscribe()
    }

    /// Publishes the result to the waiters.
    pub(crate) fn finish(self, value: T) {
        // Detached before the result exists: a caller that arrives once it
        // is published starts a load of its own rather than being handed
        // an answer read before it arrived (say, before a tombstone was
        // written). Only callers that joined while this load ran share it.
        self.detach();
        self.slot.send_replace(Some(value));
    }

    fn detach(&self) {
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

impl<T: Clone> Drop for Leader<T> {
    fn drop(&mut self) {
        self.detach();
    }
}

/// How a wait for a leader's result ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waited<T> {
    Done(T),
    /// The load ended without a result: take over.
    Abandoned,
    /// The waiter's own deadline passed.
    TimedOut,
}

/// Waits for a leader's result, at most `deadline`.
pub(crate) async fn wait<T: Clone>(
    mut rx: watch::Receiver<Option<T>>,
    deadline: Duration,
) -> Waited<T> {
    match tokio::time::timeout(deadline, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => v.clone().map_or(Waited::Abandoned, Waited::Done),
        Ok(Err(_)) => Waited::Abandoned,
        Err(_) => Waited::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let f = Arc::new(Flights::<u32>::new());
        let h = KeyHash::from_bytes([1; 32]);
        let Role::Leader(leader) = f.join(h) else {
            panic!()
        };
        let Role::Follower(rx) = f.join(h) else {
            panic!()
        };
        leader.finish(7);
        assert_eq!(wait(rx, Duration::from_secs(1)).await, Waited::Done(7));
        assert_eq!(f.len(), 0);
    }

    #[tokio::test]
    async fn dropped_leader_releases_followers() {
        let f = Arc::new(Flights::<u32>::new());
        let h = KeyHash::from_bytes([2; 32]);
        let Role::Leader(leader) = f.join(h) else {
            panic!()
        };
        let Role::Follower(rx) = f.join(h) else {
            panic!()
        };
        drop(leader);
        assert_eq!(wait(rx, Duration::from_secs(1)).await, Waited::Abandoned);
        assert!(matches!(f.join(h), Role::Leader(_)));
    }

    #[tokio::test]
    async fn forget_detaches_without_disturbing_the_new_leader() {
        let f = Arc::new(Flights::<u32>::new());
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

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_deadline() {
        let f = Arc::new(Flights::<u32>::new());
        let h = KeyHash::from_bytes([4; 32]);
        let Role::Leader(leader) = f.join(h) else {
            panic!()
        };
        let rx = leader.subscribe();
        assert_eq!(wait(rx, Duration::from_secs(2)).await, Waited::TimedOut);
        // The load is still running: a later caller joins it.
        assert!(matches!(f.join(h), Role::Follower(_)));
        leader.finish(1);
    }
}
