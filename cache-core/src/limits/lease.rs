//! Token leases: rate-limited keys answered from L1.
//!
//! An instance takes a batch of a key's tokens from Redis (`script.rs`: the
//! same bucket, the same arithmetic as a request's) and spends them on the
//! request path: a clock comparison and an atomic decrement on the key's
//! [`Lease`], which its L1 entry points at. No await, no lock.
//!
//! * **Refill before empty.** A take that leaves the lease at or below
//!   `lease_refill_threshold` percent of its last size starts one background
//!   refill (single flight per key). A request that finds the lease empty
//!   queues behind that refill (or starts it) and is served first from what
//!   it brings: the only requests that wait for Redis, under the usual
//!   timeout and breaker ([`LeaseStats::waits`]).
//! * **Size.** The first lease of a key holds a few tokens; each refill asks
//!   for this instance's rate for the key times ten seconds, at most twice
//!   the last ask and at most `lease_max_tokens`. The script gives less near
//!   the limit (the last tokens one at a time).
//! * **End.** Tokens may be spent for 30 s after the last grant (and never
//!   into the next month, for quotas); refills extend that. A lease is given
//!   back (unspent tokens return to the fleet, spent ones are reported) when
//!   its key is invalidated here (revocation, suspension, any invalidation
//!   this instance applies), when no cache entry uses it any more, after
//!   about three seconds untouched (one if the key is near its limit: its
//!   last refill got less than it asked for, or left the fleet few tokens),
//!   a few seconds before it would lapse, and at shutdown. A lease that
//!   cannot be given back (Redis away, a crash) ends at its `until`: its
//!   tokens count as spent then, and a month's quota does not get them back.
//! * **Faults.** Any failed limiter call bumps an epoch: every lease granted
//!   before it stops answering (Redis may have lost what it knew), so with
//!   Redis away every limited request goes to the per-instance fallback
//!   (`limits.rs`), as without leases, and leases start afresh when it is
//!   back. A request whose lease was dropped while it waited (an
//!   invalidation) is decided by a single call, as without leases: it was
//!   judged before the invalidation, like any request already past L1.
//!
//! **What a refusal says.** A request is refused when this instance holds no
//! token and Redis has none left to give: `RateLimit-Remaining: 0`, and
//! `Retry-After` assumes every token other instances hold is spent now (the
//! soonest a token can free up unless they give some back). The fleet may
//! then still hold tokens in other instances' leases: at most what the
//! script granted them since their last report, each lease at most
//! `lease_max_tokens`, and near the limit at most one token per instance
//! whose last refill took the last tokens (see "Shrinking" in `script.rs`);
//! they are spent there, or return within 30 s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::script::{Call, Holder, LimitScript, Reply};
use super::{month_tag, next_month, unix_ms, Decision, Gcra, RateLimitInfo};
use crate::l2::L2;
use crate::usage::Map;
use crate::{Clock, KeyHash, KeyId, KeyRecord, KeyStatus};

/// How long a lease's tokens may be spent after its last grant, in ms.
const LEASE_TTL_MS: i64 = 30_000;
/// A lease is given back this long before it would lapse unused, in ms.
const GIVE_BACK_BEFORE_MS: i64 = 5_000;
/// A lease aims to last this long at this instance's rate for the key.
const TARGET_SECS: f64 = 10.0;
/// The first ask for a key: small, until its rate here is known.
const FIRST_WANT: u64 = 4;
/// How often leases are swept (given back when unused or about to lapse).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Sweeps in a row that find a lease untouched before it is given back (one
/// if the key is near its limit).
const IDLE_SWEEPS: u64 = 3;
/// Registry shards.
const SHARDS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a lease is for: the key and the limits its tokens were taken under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseKey {
    pub(crate) id: KeyId,
    pub(crate) owner: String,
    pub(crate) gcra: Option<Gcra>,
    pub(crate) quota: Option<u64>,
}

/// This instance's tokens for one key.
pub(crate) struct Lease {
    /// Tokens that may still be spent here.
    tokens: AtomicU64,
    /// Until when (ms since the epoch, by the cache's clock) they may be;
    /// `i64::MIN` once the lease is dropped.
    until_ms: AtomicI64,
    /// The failure epoch they were granted in ([`Leases::failed`]).
    epoch: AtomicU64,
    /// A take that leaves this many or fewer starts a refill.
    low: AtomicU64,
    /// A refill is under way.
    refilling: AtomicBool,
    /// The last refill got less than it asked for (the key is near its
    /// limit, or shared): idle tokens are given back sooner.
    contended: AtomicBool,
    /// `tokens` at the last sweep, and how many sweeps in a row found it
    /// unchanged (only the sweeper reads and writes them).
    seen: AtomicU64,
    untouched: AtomicU64,
    pub(crate) key: LeaseKey,
    /// This lease's name in Redis: the instance id and a serial number.
    holder: String,
    slow: Mutex<Slow>,
    /// Serialises this lease's Redis calls, so their ids increase in the
    /// order Redis sees them.
    proto: tokio::sync::Mutex<Proto>,
}

#[derive(Default)]
struct Proto {
    /// The last call's id.
    req: u64,
    /// The id of the last reply applied (0: none).
    acked: u64,
}

#[derive(Default)]
struct Slow {
    /// Requests waiting for a token, oldest first.
    waiters: VecDeque<oneshot::Sender<Answer>>,
    dropped: bool,
    /// Tokens right after the last grant, and when: the rate is measured
    /// from them.
    base: u64,
    since: Option<Instant>,
    last_want: u64,
    /// Redis knows of no token held or spent here since the last give-back.
    settled: bool,
}

/// What a waiting request is told.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A token was taken for it.
    Granted,
    /// Redis had no token left (or no quota).
    Refused(Decision),
    /// Redis did not answer: decide locally.
    Unavailable,
    /// The lease was dropped meanwhile: decide with a single call.
    Dropped,
}

impl Lease {
    fn new(key: LeaseKey, holder: String) -> Self {
        Self {
            tokens: AtomicU64::new(0),
            until_ms: AtomicI64::new(0),
            epoch: AtomicU64::new(0),
            low: AtomicU64::new(0),
            refilling: AtomicBool::new(false),
            contended: AtomicBool::new(false),
            seen: AtomicU64::new(0),
            untouched: AtomicU64::new(0),
            key,
            holder,
            slow: Mutex::new(Slow {
                settled: true,
                ..Slow::default()
            }),
            proto: tokio::sync::Mutex::new(Proto::default()),
        }
    }

    /// Takes a token if one may be spent at `now_ms` in `epoch`; `Some(low)`
    /// when taken, `low` when what is left calls for a refill.
    #[inline]
    fn take(&self, now_ms: i64, epoch: u64) -> Option<bool> {
        if now_ms >= self.until_ms.load(Ordering::Acquire)
            || self.epoch.load(Ordering::Acquire) != epoch
        {
            return None;
        }
        let mut t = self.tokens.load(Ordering::Acquire);
        loop {
            if t == 0 {
                return None;
            }
            match self
                .tokens
                .compare_exchange_weak(t, t - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let low = t - 1 <= self.low.load(Ordering::Relaxed)
                        && !self.refilling.load(Ordering::Relaxed);
                    return Some(low);
                }
                Err(now) => t = now,
            }
        }
    }

    /// The tokens still spendable, for a report to Redis; a lease that has
    /// lapsed or belongs to an old epoch is emptied (nothing may spend it).
    fn held_now(&self, now_ms: i64, epoch: u64) -> u64 {
        if now_ms >= self.until_ms.load(Ordering::Acquire)
            || self.epoch.load(Ordering::Acquire) != epoch
        {
            self.tokens.swap(0, Ordering::AcqRel);
            0
        } else {
            self.tokens.load(Ordering::Acquire)
        }
    }

    /// Tokens this instance may spend now (for tests and health).
    pub(crate) fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Relaxed)
    }
}

impl Slow {
    /// How many tokens to hold after this refill: this instance's rate for
    /// the key times [`TARGET_SECS`], at most 1.5 times the last ask. A
    /// gentle ramp: when demand stops, what the last refill brought is
    /// stranded, and with doubling that could be as much as everything
    /// spent before it.
    fn want(&mut self, tokens: u64, need: u64, max: u64) -> u64 {
        let want = match self.since {
            None => FIRST_WANT,
            Some(since) => {
                let spent = self.base.saturating_sub(tokens) + need;
                let secs = since.elapsed().as_secs_f64().max(0.001);
                let at_rate = (spent as f64 / secs * TARGET_SECS).ceil();
                // `as` saturates: a rate past u64 is simply "a lot".
                let ramp = self
                    .last_want
                    .saturating_add(self.last_want / 2)
                    .max(FIRST_WANT);
                (at_rate as u64).clamp(1, ramp)
            }
        };
        let want = want.min(max);
        self.last_want = want;
        want
    }

    fn answer_all(&mut self, answer: impl Fn() -> Answer) {
        for tx in self.waiters.drain(..) {
            let _ = tx.send(answer());
        }
    }
}

/// Counters of the lease machinery, for stats, health and tests.
#[derive(Debug, Default)]
pub(crate) struct LeaseStats {
    /// Limited requests that waited for Redis: their lease was empty and no
    /// refill had come back.
    pub(crate) waits: AtomicU64,
    /// Lease calls to Redis (refills and give-backs).
    pub(crate) calls: AtomicU64,
    /// Tokens given back to the fleet unspent.
    pub(crate) returned: AtomicU64,
}

/// The settings leases run with.
#[derive(Debug, Clone)]
pub(crate) struct LeaseSettings {
    pub(crate) enabled: bool,
    pub(crate) max_tokens: u64,
    /// Percent.
    pub(crate) refill_threshold: u8,
    pub(crate) prefix: String,
    pub(crate) instance_id: String,
    /// How long a waiting request waits for a refill before deciding
    /// locally.
    pub(crate) patience: Duration,
}

/// Every lease of this instance, by key hash, and what they need to reach
/// Redis.
pub(crate) struct Leases {
    settings: LeaseSettings,
    shards: Vec<Mutex<Map<KeyHash, Arc<Lease>>>>,
    shard_of: ahash::RandomState,
    serial: AtomicU64,
    /// Bumped by every failed limiter call.
    epoch: AtomicU64,
    /// Shut down: no new leases.
    closed: AtomicBool,
    script: Arc<LimitScript>,
    l2: Option<Arc<L2>>,
    clock: Arc<dyn Clock>,
    runtime: Option<tokio::runtime::Handle>,
    pub(crate) stats: LeaseStats,
}

impl Leases {
    pub(crate) fn new(
        settings: LeaseSettings,
        script: Arc<LimitScript>,
        l2: Option<Arc<L2>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            settings,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_of: ahash::RandomState::new(),
            serial: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            script,
            l2,
            clock,
            runtime: tokio::runtime::Handle::try_current().ok(),
            stats: LeaseStats::default(),
        }
    }

    /// Whether limited keys are leased at all (on, and Redis configured).
    pub(crate) fn enabled(&self) -> bool {
        self.settings.enabled && self.l2.is_some()
    }

    fn shard(&self, hash: &KeyHash) -> &Mutex<Map<KeyHash, Arc<Lease>>> {
        let h = self.shard_of.hash_one(hash);
        &self.shards[(h as usize) % SHARDS]
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A limiter call failed: Redis may have lost what it knew of every
    /// lease, so none is spent any more.
    pub(crate) fn failed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn now_ms(&self) -> i64 {
        self.clock.unix_nanos().div_euclid(1_000_000)
    }

    /// The lease for `record`'s L1 entry: the one its key has, if taken
    /// under the same limits, else a new (empty) one. `None` when the key
    /// needs none: no limit, a limit no state can change (zero), leases
    /// off, no Redis, not active, or shutting down.
    pub(crate) fn lease_for(self: &Arc<Self>, record: &KeyRecord) -> Option<Arc<Lease>> {
        if !self.enabled() || record.status != KeyStatus::Active {
            return None;
        }
        let gcra = record.rate_limit.as_ref().map(Gcra::of);
        let quota = record.monthly_quota;
        if (gcra.is_none() && quota.is_none()) || quota == Some(0) || gcra.is_some_and(|g| g.n == 0)
        {
            return None;
        }
        let key = LeaseKey {
            id: record.id.clone(),
            owner: record.owner.clone(),
            gcra,
            quota,
        };
        let mut shard = lock(self.shard(&record.hash));
        // Checked under the shard's lock: `close` drops every lease under
        // it, so none is added after.
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        if let Some(lease) = shard.get(&record.hash).filter(|l| l.key == key) {
            return Some(lease.clone());
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let holder = format!("{}.{serial}", self.settings.instance_id);
        let lease = Arc::new(Lease::new(key, holder));
        let old = shard.insert(record.hash, lease.clone());
        drop(shard);
        if let Some(old) = old {
            self.drop_lease(&old);
        }
        Some(lease)
    }

    /// Spends one of `lease`'s tokens at `now_nanos` (the request's clock
    /// read), starting a refill if few are left; `false` if none may be
    /// spent.
    #[inline]
    pub(crate) fn take(self: &Arc<Self>, lease: &Arc<Lease>, now_nanos: i64) -> bool {
        match lease.take(now_nanos.div_euclid(1_000_000), self.epoch()) {
            None => false,
            Some(low) => {
                if low {
                    self.refill_soon(lease);
                }
                true
            }
        }
    }

    fn refill_soon(self: &Arc<Self>, lease: &Arc<Lease>) {
        if !lease.refilling.swap(true, Ordering::AcqRel)
            && self.spawn(self.clone().refill(lease.clone())).is_none()
        {
            lease.refilling.store(false, Ordering::Release);
        }
    }

    fn spawn<F>(&self, task: F) -> Option<tokio::task::JoinHandle<()>>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(current) => Some(current.spawn(task)),
            Err(_) => self.runtime.as_ref().map(|rt| rt.spawn(task)),
        }
    }

    /// The slow path: `lease` had no token for this request. Waits for the
    /// refill under way (or starts one), at most the configured patience.
    pub(crate) async fn wait(self: &Arc<Self>, lease: &Arc<Lease>) -> Answer {
        let rx = {
            let mut slow = lock(&lease.slow);
            if slow.dropped {
                return Answer::Dropped;
            }
            // A refill may have landed since the request looked.
            if lease.take(self.now_ms(), self.epoch()).is_some() {
                return Answer::Granted;
            }
            let (tx, rx) = oneshot::channel();
            slow.waiters.push_back(tx);
            if !lease.refilling.swap(true, Ordering::AcqRel)
                && self.spawn(self.clone().refill(lease.clone())).is_none()
            {
                lease.refilling.store(false, Ordering::Release);
                slow.waiters.pop_back();
                return Answer::Unavailable;
            }
            rx
        };
        self.stats.waits.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.settings.patience, rx).await {
            Ok(Ok(answer)) => answer,
            _ => Answer::Unavailable,
        }
    }

    /// One refill, for the waiters queued now and the prefetch; again while
    /// waiters are left that it could not serve and tokens keep coming.
    async fn refill(self: Arc<Self>, lease: Arc<Lease>) {
        let Some(l2) = self.l2.clone() else {
            let mut slow = lock(&lease.slow);
            slow.answer_all(|| Answer::Unavailable);
            lease.refilling.store(false, Ordering::Release);
            return;
        };
        let mut proto = lease.proto.lock().await;
        loop {
            let now = self.clock.now();
            let now_ms = unix_ms(now);
            let epoch = self.epoch();
            let (need, want, held) = {
                let mut slow = lock(&lease.slow);
                if slow.dropped {
                    slow.answer_all(|| Answer::Dropped);
                    lease.refilling.store(false, Ordering::Release);
                    return;
                }
                let held = lease.held_now(now_ms, epoch);
                let need = u64::try_from(slow.waiters.len()).unwrap_or(u64::MAX);
                let want = slow.want(held, need, self.settings.max_tokens);
                slow.settled = false;
                (need, want, held)
            };
            let month_end = next_month(now);
            let month_end_ms = unix_ms(month_end);
            let until_ms = match lease.key.quota {
                // Quota tokens belong to this month.
                Some(_) => (now_ms + LEASE_TTL_MS).min(month_end_ms),
                None => now_ms + LEASE_TTL_MS,
            };
            proto.req += 1;
            let month = month_tag(now);
            let call = Call {
                prefix: &self.settings.prefix,
                id: &lease.key.id,
                gcra: lease.key.gcra,
                quota: lease.key.quota,
                now_ms,
                month_end_ms,
                month: &month,
                holder: Some(Holder {
                    name: &lease.holder,
                    req: proto.req,
                    acked: proto.acked,
                    held,
                }),
                need,
                want,
                give_back: false,
                until_ms,
            };
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            let result = self.script.run(&l2, &call).await;
            if result.is_err() {
                self.failed();
            }
            let mut slow = lock(&lease.slow);
            let again = if slow.dropped {
                // The requests it was for get their tokens (they were judged
                // before the drop, like any request already past L1); the
                // prefetch is not applied, and `acked` tells the give-back
                // call that follows.
                let now_tokens = match result {
                    Ok(
                        Reply::Granted { now, .. }
                        | Reply::RateLimited { now, .. }
                        | Reply::QuotaExceeded { now, .. },
                    ) => now,
                    _ => 0,
                };
                for _ in 0..now_tokens {
                    if let Some(tx) = slow.waiters.pop_front() {
                        let _ = tx.send(Answer::Granted);
                    }
                }
                slow.answer_all(|| Answer::Dropped);
                false
            } else {
                match result {
                    Ok(reply) => {
                        proto.acked = proto.req;
                        let grant = Grant {
                            want,
                            epoch,
                            until_ms,
                            month_end,
                            now,
                        };
                        self.apply(&lease, &mut slow, reply, &grant)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "lease refill failed; limits are decided locally");
                        slow.answer_all(|| Answer::Unavailable);
                        false
                    }
                }
            };
            if !again {
                // Under the lock: a request queued after this sees no
                // refill under way and starts one.
                lease.refilling.store(false, Ordering::Release);
                return;
            }
        }
    }

    /// Applies a refill's reply; whether to call again (waiters left).
    fn apply(&self, lease: &Lease, slow: &mut Slow, reply: Reply, grant: &Grant) -> bool {
        let (now_tokens, held, left, discard, refusal) = match reply {
            Reply::Granted {
                now,
                held,
                left,
                discard,
            } => (now, held, left, discard, None),
            Reply::RateLimited {
                now,
                retry,
                reset,
                discard,
            } => {
                let limit = lease.key.gcra.map_or(0, |g| g.limit());
                let info = RateLimitInfo::new(limit, 0, reset, retry);
                (now, 0, Some(0), discard, Some(Decision::RateLimited(info)))
            }
            Reply::QuotaExceeded { now, discard } => {
                let quota = lease.key.quota.unwrap_or(0);
                let retry_after = super::ms(unix_ms(grant.month_end) - unix_ms(grant.now));
                (
                    now,
                    0,
                    Some(0),
                    discard,
                    Some(Decision::QuotaExceeded { quota, retry_after }),
                )
            }
            Reply::Overtaken | Reply::Returned => {
                slow.answer_all(|| Answer::Unavailable);
                return false;
            }
        };
        if discard {
            lease.tokens.store(0, Ordering::Release);
        }
        // Redis extended the lease (every token held) to `until`.
        lease.until_ms.store(grant.until_ms, Ordering::Release);
        lease.epoch.store(grant.epoch, Ordering::Release);
        lease.tokens.fetch_add(held, Ordering::AcqRel);
        // Tokens charged as spent now: one per waiter, oldest first. One
        // whose request gave up is lost (it was charged).
        for _ in 0..now_tokens {
            match slow.waiters.pop_front() {
                Some(tx) => {
                    let _ = tx.send(Answer::Granted);
                }
                None => break,
            }
        }
        // Waiters that queued while the call was out come before new
        // requests: they take from the prefetch first.
        while !slow.waiters.is_empty() && lease.take(unix_ms(grant.now), grant.epoch).is_some() {
            if let Some(tx) = slow.waiters.pop_front() {
                if tx.send(Answer::Granted).is_err() {
                    lease.tokens.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        let after = lease.tokens.load(Ordering::Acquire);
        let threshold = u64::from(self.settings.refill_threshold);
        lease
            .low
            .store(after.saturating_mul(threshold) / 100, Ordering::Relaxed);
        slow.base = after;
        slow.since = Some(Instant::now());
        // Contended: the fleet is short of tokens, and what this instance
        // holds is a fair part of what is left.
        let contended =
            held < grant.want || left.is_some_and(|left| left < after.saturating_mul(4));
        lease.contended.store(contended, Ordering::Relaxed);
        match refusal {
            Some(decision) => {
                slow.answer_all(|| Answer::Refused(decision.clone()));
                false
            }
            // Every waiter counted in this call was served: those left
            // queued after it was sent, and need a call of their own.
            None => !slow.waiters.is_empty(),
        }
    }

    /// Drops `lease` (no token of it is spent from now on) and gives its
    /// tokens back in the background.
    fn drop_lease(self: &Arc<Self>, lease: &Arc<Lease>) -> Option<tokio::task::JoinHandle<()>> {
        let held = {
            let mut slow = lock(&lease.slow);
            if slow.dropped {
                return None;
            }
            slow.dropped = true;
            lease.until_ms.store(i64::MIN, Ordering::Release);
            // Requests waiting on a refill under way are answered by it.
            if !lease.refilling.load(Ordering::Acquire) {
                slow.answer_all(|| Answer::Dropped);
            }
            lease.tokens.swap(0, Ordering::AcqRel)
        };
        self.give_back(lease, held)
    }

    /// Gives `held` tokens of `lease` back (they are no longer spendable
    /// here) and reports what was spent, unless Redis never heard of it.
    fn give_back(
        self: &Arc<Self>,
        lease: &Arc<Lease>,
        held: u64,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let l2 = self.l2.clone()?;
        let (this, lease) = (self.clone(), lease.clone());
        self.spawn(async move {
            let mut proto = lease.proto.lock().await;
            if proto.req == 0 {
                return;
            }
            let now = this.clock.now();
            let now_ms = unix_ms(now);
            let month = month_tag(now);
            proto.req += 1;
            let call = Call {
                prefix: &this.settings.prefix,
                id: &lease.key.id,
                gcra: lease.key.gcra,
                quota: lease.key.quota,
                now_ms,
                month_end_ms: unix_ms(next_month(now)),
                month: &month,
                holder: Some(Holder {
                    name: &lease.holder,
                    req: proto.req,
                    acked: proto.acked,
                    held,
                }),
                need: 0,
                want: 0,
                give_back: true,
                until_ms: now_ms,
            };
            this.stats.calls.fetch_add(1, Ordering::Relaxed);
            match this.script.run(&l2, &call).await {
                Ok(reply) => {
                    proto.acked = proto.req;
                    if reply == Reply::Returned {
                        this.stats.returned.fetch_add(held, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    this.failed();
                    tracing::debug!(error = %e, "lease give-back failed; its tokens lapse");
                }
            }
        })
    }

    /// Drops the lease of `hash`, if any.
    pub(crate) fn drop_hash(self: &Arc<Self>, hash: &KeyHash) {
        let removed = lock(self.shard(hash)).remove(hash);
        if let Some(lease) = removed {
            self.drop_lease(&lease);
        }
    }

    /// Drops every lease whose key matches `doomed`; their give-backs.
    pub(crate) fn drop_where(
        self: &Arc<Self>,
        doomed: impl Fn(&LeaseKey) -> bool,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        for shard in &self.shards {
            let mut removed = Vec::new();
            lock(shard).retain(|_, lease| {
                let drop = doomed(&lease.key);
                if drop {
                    removed.push(lease.clone());
                }
                !drop
            });
            handles.extend(removed.iter().filter_map(|l| self.drop_lease(l)));
        }
        handles
    }

    /// Shutting down: no new leases; every lease is given back. Resolves
    /// when the give-backs are done.
    pub(crate) fn close(
        self: &Arc<Self>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.closed.store(true, Ordering::Release);
        let handles = self.drop_where(|_| true);
        async move {
            for h in handles {
                let _ = h.await;
            }
        }
    }

    /// Gives back leases that no cache entry uses any more, leases about to
    /// lapse, and leases no request took a token of for [`IDLE_SWEEPS`]
    /// sweeps (one if the key is near its limit: the last refill got less
    /// than it asked, or left the fleet few tokens). So tokens stranded here
    /// while other instances are refused come back within seconds.
    fn sweep(self: &Arc<Self>) {
        let now_ms = self.now_ms();
        for shard in &self.shards {
            let mut orphans = Vec::new();
            let mut idle = Vec::new();
            lock(shard).retain(|_, lease| {
                // Only this registry holds it: no entry, request or refill.
                if Arc::strong_count(lease) == 1 {
                    orphans.push(lease.clone());
                    return false;
                }
                let until = lease.until_ms.load(Ordering::Acquire);
                let tokens = lease.tokens();
                let untouched = if lease.seen.swap(tokens, Ordering::Relaxed) == tokens {
                    lease.untouched.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    lease.untouched.store(0, Ordering::Relaxed);
                    0
                };
                let patience = if lease.contended.load(Ordering::Relaxed) {
                    1
                } else {
                    IDLE_SWEEPS
                };
                if until != i64::MIN
                    && (until - now_ms <= GIVE_BACK_BEFORE_MS
                        || (tokens > 0 && untouched >= patience))
                {
                    idle.push(lease.clone());
                }
                true
            });
            for lease in orphans {
                self.drop_lease(&lease);
            }
            for lease in idle {
                let held = {
                    let mut slow = lock(&lease.slow);
                    if slow.dropped || slow.settled || lease.refilling.load(Ordering::Acquire) {
                        continue;
                    }
                    slow.settled = true;
                    slow.since = None;
                    lease.tokens.swap(0, Ordering::AcqRel)
                };
                self.give_back(&lease, held);
            }
        }
    }

    /// Leases held, and their tokens (a scan: for health and tests).
    pub(crate) fn held(&self) -> (u64, u64) {
        let (mut keys, mut tokens) = (0u64, 0u64);
        for shard in &self.shards {
            for lease in lock(shard).values() {
                let t = lease.tokens();
                keys += u64::from(t > 0);
                tokens += t;
            }
        }
        (keys, tokens)
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key.id)
            .field("tokens", &self.tokens())
            .field("until_ms", &self.until_ms.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a refill's reply is applied with.
struct Grant {
    /// What the call asked to hold.
    want: u64,
    epoch: u64,
    until_ms: i64,
    month_end: OffsetDateTime,
    now: OffsetDateTime,
}

/// Sweeps the leases every second for as long as they live.
pub(crate) async fn sweeper(leases: Weak<Leases>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        leases.sweep();
    }
}
