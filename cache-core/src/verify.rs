//! The request path: extract, hash, L1, then (only on a miss, or for a
//! limited key whose lease has no token) a boxed future for the load and
//! the limiter.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::extract::validate_key;
use crate::l1::{Entry, Found};
use crate::limits::Decision;
use crate::{
    ApiKeyCache, HeaderSource, KeyHash, KeyStatus, Mode, Outcome, RequiredScopes, VerifiedKey,
};

/// The future of [`ApiKeyCache::verify`]: ready at once on an L1 hit, a
/// boxed load otherwise.
#[must_use = "futures do nothing unless polled"]
pub struct Verify<'a>(VerifyState<'a>);

enum VerifyState<'a> {
    Ready(Option<Outcome>),
    Pending(Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>),
}

impl Verify<'_> {
    fn ready(outcome: Outcome) -> Self {
        Self(VerifyState::Ready(Some(outcome)))
    }

    /// The outcome, if it was known without waiting (an L1 hit or an early
    /// rejection); `Err(self)` if the future has to be awaited.
    pub fn into_ready(self) -> Result<Outcome, Self> {
        match self.0 {
            VerifyState::Ready(Some(outcome)) => Ok(outcome),
            state => Err(Self(state)),
        }
    }
}

impl std::fmt::Debug for Verify<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            VerifyState::Ready(o) => f.debug_tuple("Verify::Ready").field(o).finish(),
            VerifyState::Pending(_) => f.write_str("Verify::Pending"),
        }
    }
}

impl Future for Verify<'_> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.0 {
            // `Outcome::Unavailable` after completion: polling a finished
            // future is a caller bug, and failing closed is the safe answer.
            VerifyState::Ready(o) => Poll::Ready(o.take().unwrap_or(Outcome::Unavailable)),
            VerifyState::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// A record's verdict before the limiter.
enum Judged {
    Done(Outcome),
    /// Valid so far, but the key has a rate limit or quota to consult.
    Limited(Arc<Found>),
}

/// What L1 alone can say. `check_l1` counts the outcome of a `Done`;
/// `peek_l1` leaves it to its caller.
enum Cached {
    Done(Outcome),
    Limited(Arc<Found>),
    Miss,
}

impl ApiKeyCache {
    /// Verifies the key found in a request's headers.
    ///
    /// An L1 hit is answered before the returned future is first polled, so
    /// the common case allocates nothing, a rate-limited key's too while its
    /// token lease has tokens; a miss, or a limited key that has to ask
    /// Redis, boxes the rest.
    pub fn verify<'a, R: HeaderSource + ?Sized>(
        &'a self,
        req: &R,
        required: &'a RequiredScopes,
    ) -> Verify<'a> {
        match self.inner.extractor.find(req) {
            Ok(Some(key)) => self.verify_hash(self.inner.hasher.hash(key), required),
            Ok(None) => Verify::ready(self.counted(Outcome::Missing)),
            Err(m) => Verify::ready(self.counted(Outcome::Malformed(m))),
        }
    }

    /// Verifies a bare key (already taken out of its header).
    pub fn verify_key<'a>(&'a self, key: &str, required: &'a RequiredScopes) -> Verify<'a> {
        match validate_key(key.as_bytes()) {
            Ok(()) => self.verify_hash(self.hash_key(key), required),
            Err(m) => Verify::ready(self.counted(Outcome::Malformed(m))),
        }
    }

    /// Verifies a key by its hash.
    pub fn verify_hash<'a>(&'a self, hash: KeyHash, required: &'a RequiredScopes) -> Verify<'a> {
        match self.check_l1(&hash, required) {
            Cached::Done(outcome) => Verify::ready(outcome),
            Cached::Limited(found) => Verify(VerifyState::Pending(Box::pin(async move {
                let outcome = self.limit(found).await;
                self.counted(outcome)
            }))),
            Cached::Miss => Verify(VerifyState::Pending(Box::pin(async move {
                let outcome = self.verify_uncached(hash, required).await;
                self.counted(outcome)
            }))),
        }
    }

    /// The synchronous half of [`verify`](Self::verify), for web adapters:
    /// `Ok(outcome)` when the answer is known without waiting (an early
    /// rejection or an L1 hit), `Err(hash)` when it needs I/O; pass that
    /// hash to [`verify_owned`](Self::verify_owned).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore, Outcome, RequiredScopes};
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// let mut headers = http::HeaderMap::new();
    /// assert_eq!(cache.verify_now(&headers, &RequiredScopes::none()), Ok(Outcome::Missing));
    /// headers.insert("x-api-key", "ak_unknown".parse().unwrap());
    /// let hash = cache.verify_now(&headers, &RequiredScopes::none()).unwrap_err();
    /// let outcome = cache.verify_owned(hash, RequiredScopes::none()).await;
    /// assert_eq!(outcome, Outcome::Unknown);
    /// # });
    /// ```
    pub fn verify_now<R: HeaderSource + ?Sized>(
        &self,
        req: &R,
        required: &RequiredScopes,
    ) -> Result<Outcome, KeyHash> {
        match self.inner.extractor.find(req) {
            Ok(Some(key)) => {
                let hash = self.inner.hasher.hash(key);
                match self.check_l1(&hash, required) {
                    Cached::Done(outcome) => Ok(outcome),
                    Cached::Limited(_) | Cached::Miss => Err(hash),
                }
            }
            Ok(None) => Ok(self.counted(Outcome::Missing)),
            Err(m) => Ok(self.counted(Outcome::Malformed(m))),
        }
    }

    /// The asynchronous half of [`verify`](Self::verify) for a hash that
    /// [`verify_now`](Self::verify_now) could not answer. The future owns its
    /// inputs, so it can live in a `'static` response future.
    pub fn verify_owned(
        &self,
        hash: KeyHash,
        required: RequiredScopes,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'static>> {
        let this = self.clone();
        Box::pin(async move {
            // `verify_now` already counted this request's L1 hit or miss;
            // look again (a load may have finished meanwhile) without
            // counting it twice.
            let outcome = match this.peek_l1(&hash, &required) {
                Some(Cached::Done(outcome)) => outcome,
                Some(Cached::Limited(found)) => this.limit(found).await,
                Some(Cached::Miss) | None => this.verify_uncached(hash, &required).await,
            };
            this.counted(outcome)
        })
    }

    /// The answer from L1 alone, without awaiting anything; `None` when L1
    /// cannot answer (a miss, `database_only` mode, or a key whose rate limit
    /// or quota needs Redis: no token lease, or an empty one).
    #[inline]
    pub fn verify_cached(&self, hash: &KeyHash, required: &RequiredScopes) -> Option<Outcome> {
        match self.check_l1(hash, required) {
            Cached::Done(outcome) => Some(outcome),
            Cached::Limited(_) | Cached::Miss => None,
        }
    }

    /// L1's answer, counted as an L1 hit or miss, and a `Done`'s outcome
    /// counted too: a valid one with a single add for both counts.
    #[inline]
    fn check_l1(&self, hash: &KeyHash, required: &RequiredScopes) -> Cached {
        let stats = &self.inner.stats;
        match self.peek_l1(hash, required) {
            None => Cached::Miss,
            Some(Cached::Miss) => {
                stats.l1_misses.incr();
                Cached::Miss
            }
            Some(Cached::Done(outcome @ Outcome::Valid(_))) => {
                stats.l1_valid.incr();
                Cached::Done(outcome)
            }
            Some(Cached::Done(outcome)) => {
                stats.l1_hits.incr();
                Cached::Done(self.counted(outcome))
            }
            Some(limited @ Cached::Limited(_)) => {
                stats.l1_hits.incr();
                limited
            }
        }
    }

    /// L1's answer without counting it; `None` when the caches are bypassed
    /// (`database_only`).
    #[inline]
    fn peek_l1(&self, hash: &KeyHash, required: &RequiredScopes) -> Option<Cached> {
        let inner = &*self.inner;
        // Both flags are 0 in normal mode: one load each, one branch.
        if inner.local_mode.load(Ordering::Relaxed) | inner.fleet_mode.load(Ordering::Relaxed) != 0
        {
            return None;
        }
        let found = match inner.l1.get(hash) {
            None => return Some(Cached::Miss),
            Some(Entry::NotFound { .. }) => return Some(Cached::Done(Outcome::Unknown)),
            Some(Entry::Expired { .. }) => return Some(Cached::Done(Outcome::Expired)),
            Some(Entry::Found(found, _)) => found,
        };
        // A record that expired while cached stays: it answers "expired"
        // without a store query until its TTL, like an `Expired` entry.
        Some(match self.judge(found, required) {
            Judged::Done(outcome) => Cached::Done(outcome),
            Judged::Limited(found) => Cached::Limited(found),
        })
    }

    /// Counts `outcome` for the requests-by-outcome metric.
    #[inline]
    pub(crate) fn counted(&self, outcome: Outcome) -> Outcome {
        self.inner.stats.outcomes[outcome.index()].incr();
        outcome
    }

    async fn verify_uncached(&self, hash: KeyHash, required: &RequiredScopes) -> Outcome {
        let found = if self.mode() == Mode::DatabaseOnly {
            match self.query_store(&hash).await {
                Ok(Some(record)) => self.found(record),
                Ok(None) => return Outcome::Unknown,
                Err(()) => return Outcome::Unavailable,
            }
        } else {
            match self.load(hash).await {
                Ok(Entry::Found(found, _)) => found,
                Ok(Entry::NotFound { .. }) => return Outcome::Unknown,
                Ok(Entry::Expired { .. }) => return Outcome::Expired,
                // Stale-if-error: a record past its freshness but within the
                // stale window, and not invalidated (an invalidation, or a
                // tombstone a load read, removes it), is judged as usual, so
                // never past `expires_at`. A "not found" is never served
                // stale.
                Err(()) => match self.inner.l1.get_stale(&hash) {
                    Some(found) => {
                        self.inner
                            .stats
                            .stale_served
                            .fetch_add(1, Ordering::Relaxed);
                        found
                    }
                    None => return Outcome::Unavailable,
                },
            }
        };
        match self.judge(found, required) {
            Judged::Done(outcome) => outcome,
            Judged::Limited(found) => self.limit(found).await,
        }
    }

    /// Judges a record now: status, expiry, scopes. Counts a valid request
    /// unless a limiter still has to decide.
    #[inline]
    fn judge(&self, found: Arc<Found>, required: &RequiredScopes) -> Judged {
        match found.status {
            KeyStatus::Active => {}
            KeyStatus::Revoked => return Judged::Done(Outcome::Revoked),
            KeyStatus::Disabled => return Judged::Done(Outcome::Disabled),
        }
        // One clock read serves the expiry check and the usage count's month.
        let now = self.inner.clock.unix_nanos();
        if found.expires_at_nanos.is_some_and(|at| now >= at) {
            return Judged::Done(Outcome::Expired);
        }
        if !found.grants_all(required) {
            return Judged::Done(Outcome::InsufficientScope {
                missing: found.record.scopes.missing(required),
            });
        }
        if found.limited {
            // A token of the key's lease answers here, like an unlimited
            // key; without one, the limiter decides (and may wait).
            let taken = found
                .lease
                .as_ref()
                .is_some_and(|lease| self.inner.limiter.leases.take(lease, now));
            if !taken {
                return Judged::Limited(found);
            }
        }
        self.inner.usage.count(&found.usage, now);
        // Moved, not cloned: the record's reference count is touched once.
        Judged::Done(Outcome::Valid(VerifiedKey::from_found(found)))
    }

    /// Consults the rate limit and quota of a key that is otherwise valid.
    async fn limit(&self, found: Arc<Found>) -> Outcome {
        let inner = &*self.inner;
        let decision = inner
            .limiter
            .check(
                &found.record,
                found.lease.as_ref(),
                inner.clock.now(),
                inner.l2.as_deref(),
                &inner.config.key_prefix,
            )
            .await;
        match decision {
            Decision::Allow => {
                inner.usage.count(&found.usage, inner.clock.unix_nanos());
                Outcome::Valid(VerifiedKey::from_found(found))
            }
            Decision::RateLimited(info) => Outcome::RateLimited(info),
            Decision::QuotaExceeded { quota, retry_after } => {
                Outcome::QuotaExceeded { quota, retry_after }
            }
        }
    }
}
