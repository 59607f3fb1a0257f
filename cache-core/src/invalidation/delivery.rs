//! Getting an invalidation to Redis, whatever happens to its caller.
//!
//! [`ApiKeyCache::start`] does the local, synchronous part of an
//! invalidation and spawns the rest, so a caller that goes away (a client
//! that hangs up, a request timeout) cannot stop it halfway. A job that
//! fails is queued and retried every [`RETRY_EVERY`] until it lands; the
//! hold on its targets (`guard.rs`) ends only then.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use super::guard::{Guard, Target};
use super::InvalidateError;
use crate::events::{self, Action};
use crate::{ApiKeyCache, KeyHash, KeyId, StoreError};

/// Redis commands per pipeline when tombstoning many keys.
const TOMBSTONE_BATCH: usize = 100;

/// How often failed invalidations are retried.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// One invalidation call.
#[derive(Debug, Clone)]
pub(super) enum Job {
    Keys(Vec<KeyHash>),
    KeyId(KeyId),
    /// An owner, and when its event last went out without tombstones (the
    /// store could not list the keys): repeated while the listing fails,
    /// often enough to keep the other instances' holds alive.
    Owner(String, Option<tokio::time::Instant>),
    /// An owner's key list (a key was issued).
    OwnerList(String),
}

impl Job {
    fn targets(&self) -> Vec<Target> {
        match self {
            Self::Keys(hashes) => hashes.iter().map(|h| Target::Hash(*h)).collect(),
            Self::KeyId(id) => vec![Target::Id(id.clone())],
            Self::Owner(o, _) => vec![Target::Owner(o.clone())],
            Self::OwnerList(o) => vec![Target::List(o.clone())],
        }
    }
}

/// The invalidation state of one instance.
#[derive(Debug, Default)]
pub(crate) struct Invalidations {
    /// What Redis must not be trusted about meanwhile.
    pub(crate) guard: Guard,
    /// Jobs whose delivery failed, for the retrier.
    retry: Mutex<Vec<Job>>,
    /// Jobs started and not landed yet.
    open: AtomicUsize,
}

impl Invalidations {
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn queue(&self, job: Job) {
        self.retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
    }

    fn take_queued(&self) -> Vec<Job> {
        std::mem::take(&mut *self.retry.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Retries failed invalidations for as long as the cache lives.
pub(crate) async fn retrier(cache: Weak<crate::cache::Inner>) {
    let mut tick = tokio::time::interval(RETRY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = cache.upgrade() else { return };
        inner.invalidations.guard.purge();
        ApiKeyCache { inner }.retry_invalidations().await;
    }
}

impl ApiKeyCache {
    /// The synchronous part of an invalidation, then the Redis part in a
    /// task of its own; the returned future reports how that went.
    pub(super) fn start(
        &self,
        job: Job,
    ) -> impl Future<Output = Result<(), InvalidateError>> + Send + 'static {
        let inner = &*self.inner;
        // With Redis, hold first: a load between the L1 removal and the
        // tombstone would otherwise read the old record back from Redis.
        let remote = inner.l2.is_some();
        if remote {
            inner.invalidations.open.fetch_add(1, Ordering::SeqCst);
            inner.invalidations.guard.hold(&job.targets());
        }
        match &job {
            Job::Keys(hashes) => {
                for hash in hashes {
                    self.invalidate_local(hash, "local");
                }
            }
            Job::KeyId(id) => self.invalidate_id_local(id, "local"),
            Job::Owner(owner, _) => self.invalidate_owner_local(owner, "local"),
            Job::OwnerList(owner) => self.invalidate_owner_list_local(owner),
        }
        let task = remote.then(|| {
            let this = self.clone();
            let job_copy = job.clone();
            let spawned = self.spawn(async move {
                let mut job = job;
                let result = this.deliver(&mut job).await;
                match result {
                    Ok(()) => this.landed(&job),
                    Err(ref e) => {
                        tracing::warn!(error = %e, "invalidation did not reach redis; retrying in the background");
                        this.inner.invalidations.queue(job);
                    }
                }
                result
            });
            if spawned.is_none() {
                // No runtime to run it in (impossible with Redis, which
                // needs one to be built): leave it to the retrier.
                self.inner.invalidations.queue(job_copy);
            }
            spawned
        });
        async move {
            match task {
                None => Ok(()),
                Some(None) => Err(InvalidateError::Redis(
                    "no Tokio runtime to deliver it".into(),
                )),
                Some(Some(task)) => task.await.unwrap_or_else(|e| {
                    Err(InvalidateError::Redis(format!(
                        "invalidation task ended: {e}"
                    )))
                }),
            }
        }
    }

    /// The Redis part of `job`.
    async fn deliver(&self, job: &mut Job) -> Result<(), InvalidateError> {
        let inner = &*self.inner;
        let budget = inner.config.store_timeout;
        match job {
            Job::Keys(hashes) => self.invalidate_remote(hashes, None).await,
            Job::KeyId(id) => {
                let found = tokio::time::timeout(budget, inner.store.find_by_id(id))
                    .await
                    .map_err(|_| StoreError::Timeout)??;
                match found {
                    Some(record) => {
                        self.invalidate_remote(std::slice::from_ref(&record.hash), None)
                            .await
                    }
                    None => Ok(()),
                }
            }
            Job::OwnerList(owner) => {
                self.tombstone_owner_list(owner).await?;
                self.publish(Action::List { o: owner.clone() }).await
            }
            Job::Owner(owner, announced) => {
                // The owner's key list first: it needs Redis only.
                self.tombstone_owner_list(owner).await?;
                let listed = tokio::time::timeout(budget, inner.store.list_by_owner(owner))
                    .await
                    .map_err(|_| StoreError::Timeout)
                    .and_then(|r| r);
                match listed {
                    Ok(records) => {
                        let hashes: Vec<KeyHash> = records.iter().map(|r| r.hash).collect();
                        self.invalidate_remote(&hashes, Some(owner)).await
                    }
                    Err(e) => {
                        // Without the list there is nothing to tombstone,
                        // but every instance can still drop the owner's L1
                        // entries and distrust Redis's copies of them for
                        // a tombstone's lifetime; retries repeat the event
                        // within that lifetime until the list is known.
                        let now = tokio::time::Instant::now();
                        let every = inner.config.tombstone_ttl / 2;
                        if announced.is_none_or(|at| now >= at + every)
                            && self
                                .publish(Action::Owner { o: owner.clone() })
                                .await
                                .is_ok()
                        {
                            *announced = Some(now);
                        }
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// Tombstones `hashes` in Redis, then publishes one event per hash, or
    /// one owner event if `owner` is given.
    async fn invalidate_remote(
        &self,
        hashes: &[KeyHash],
        owner: Option<&str>,
    ) -> Result<(), InvalidateError> {
        let Some(l2) = &self.inner.l2 else {
            return Ok(());
        };
        for batch in hashes.chunks(TOMBSTONE_BATCH) {
            l2.tombstone_many(batch, self.inner.config.tombstone_ttl)
                .await
                .map_err(|e| InvalidateError::Redis(e.to_string()))?;
        }
        match owner {
            Some(o) => self.publish(Action::Owner { o: o.to_owned() }).await,
            None => {
                for hash in hashes {
                    self.publish(Action::Key { h: hash.to_hex() }).await?;
                }
                Ok(())
            }
        }
    }

    /// Tombstones `owner`'s key list in Redis (`owner_list.rs`).
    async fn tombstone_owner_list(&self, owner: &str) -> Result<(), InvalidateError> {
        let Some(l2) = &self.inner.l2 else {
            return Ok(());
        };
        l2.tombstone_keys(&[l2.owner_list_key(owner)], self.inner.config.tombstone_ttl)
            .await
            .map_err(|e| InvalidateError::Redis(e.to_string()))
    }

    async fn publish(&self, action: Action) -> Result<(), InvalidateError> {
        let Some(l2) = &self.inner.l2 else {
            return Ok(());
        };
        let channel = events::channel(&self.inner.config.key_prefix);
        let event = events::encode(&self.inner.instance_id, action);
        l2.publish(&channel, event)
            .await
            .map_err(|e| InvalidateError::Redis(e.to_string()))
    }

    /// `job` is in Redis: end its hold. The generation bump comes first: a
    /// load that read Redis before the tombstone and checks the hold after
    /// it ended still finds the generation moved, and drops what it put in
    /// L1 (`cache.rs`).
    fn landed(&self, job: &Job) {
        let inv = &self.inner.invalidations;
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.owner_lists.bump();
        inv.guard.release(&job.targets());
        inv.open.fetch_sub(1, Ordering::SeqCst);
    }

    /// Delivers queued invalidations as soon as Redis (and, for key ids and
    /// owners, the store) takes them again.
    pub(crate) async fn retry_invalidations(&self) {
        for mut job in self.inner.invalidations.take_queued() {
            match self.deliver(&mut job).await {
                Ok(()) => self.landed(&job),
                Err(_) => self.inner.invalidations.queue(job),
            }
        }
    }
}
