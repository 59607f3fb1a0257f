//! Token leases: rate-limited keys answered from L1. This file: one
//! lease, how it is spent, sized and refilled; `leases.rs`: every lease of
//! the instance, and when they are dropped or given back.
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
//!   timeout and breaker ([`LeaseStats::waits`]). At most 32 background
//!   refills are in flight per instance (keys that run low together would
//!   otherwise queue thousands of scripts in Redis at once and time out
//!   behind each other); past that, a take leaves the refill to a later one.
//! * **Size.** The first lease of a key holds a few tokens; each refill asks
//!   for this instance's rate for the key times 25 seconds: at once if that
//!   is a small part (1/64) of what the fleet had left, else at most 1.5
//!   times the last ask. A lease never holds more than `lease_max_tokens`.
//!   The script gives less near the limit (at most a quarter of what is
//!   left, shared among the key's holders; the last tokens one at a time).
//! * **End.** Tokens may be spent for 30 s after the last grant (and never
//!   into the next month, for quotas). A take in the last 5 s starts a
//!   refill, which extends the lease: one in use does not lapse. A lease is
//!   given back (unspent tokens return to the fleet, spent ones are
//!   reported) when its key is invalidated here (revocation, suspension,
//!   any invalidation this instance applies), when no cache entry uses it
//!   any more, when no request spent from it for `LEASE_IDLE` (10 s by
//!   default; a tenth of that if the key is near its limit: its last
//!   refill got less than it asked for, or left the fleet few tokens), and
//!   at shutdown. A lease that cannot be given back (Redis away, a crash)
//!   ends at its `until`: its tokens count as spent then, and a month's
//!   quota does not get them back.
//! * **Faults.** A failed limiter call other than a timeout (a broken
//!   connection, an error reply, the breaker open), or the event
//!   subscriber's reconnection (Redis may have restarted empty, with no
//!   limiter call in between to notice), bumps an epoch: every
//!   lease granted before it stops answering (Redis may have lost what it
//!   knew), so with Redis away every limited request goes to the
//!   per-instance fallback (`limits.rs`), as without leases, and leases
//!   start afresh when it is back. A timeout leaves the leases: Redis is
//!   slow, not gone, and what a lost reply granted is taken back at the
//!   lease's next call (`script.rs`); retiring them all would send every
//!   limited key to a slow Redis at once. While the breaker is open, a
//!   request that finds no token is decided locally at once, without
//!   trying a refill. Requests waiting on a refill when their lease is
//!   dropped (an invalidation) get what that refill brings for them, or one
//!   call each: they were judged before the invalidation, like any request
//!   already past L1. No request judged after it spends a token of the old
//!   lease.
//!
//! **What a refusal says.** A request is refused when this instance holds no
//! token and Redis has none left to give: `RateLimit-Remaining: 0` (the
//! bucket is empty), and `Retry-After` assumes every token other instances
//! hold is spent now. Other instances may then still hold tokens
//! (*stranded* ones, if their traffic stopped): each at most
//! `lease_max_tokens`, and at most what the script's shrinking allowed when
//! they last refilled. Measured with three instances and a burst of exactly
//! the limit that stops dead (`tests/leases.rs`): 3 to 59 of 1000 (a debug
//! build on a busy machine), back to the fleet once their leases sit idle
//! for `LEASE_IDLE` (10 s), or a tenth of it for a lease whose last refill
//! found the key near its limit, plus up to a second for the sweep:
//! measured back after 3 to 13 s; with demand continuing everywhere, none. `Retry-After` is exact when no other instance holds tokens (as
//! without leases); otherwise a token may free up sooner (they give theirs
//! back) or later (they spend them later than now), and other clients may
//! take it first, as with any shared limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::leases::Leases;
use super::script::{Call, Holder, Reply};
use super::{month_tag, next_month, unix_ms, Decision, Gcra, RateLimitInfo};
use crate::KeyId;

/// How long a lease's tokens may be spent after its last grant, in ms.
const LEASE_TTL_MS: i64 = 30_000;
/// A take this close to the lease's end starts a refill, which extends it:
/// a lease in use does not lapse under its requests.
const RENEW_BEFORE_MS: i64 = 5_000;
/// A lease aims to last this long at this instance's rate for the key.
const TARGET_SECS: f64 = 25.0;
/// The first ask for a key: small, until its rate here is known.
const FIRST_WANT: u64 = 4;
/// An ask of at most this fraction of what the fleet has left is made at
/// once; a larger one grows gently (see `Slow::want`).
const FAR: u64 = 64;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    pub(super) tokens: AtomicU64,
    /// Until when (ms since the epoch, by the cache's clock) they may be;
    /// `i64::MIN` once the lease is dropped.
    pub(super) until_ms: AtomicI64,
    /// The failure epoch they were granted in ([`Leases::failed`]).
    pub(super) epoch: AtomicU64,
    /// A take that leaves this many or fewer starts a refill.
    pub(super) low: AtomicU64,
    /// A refill is under way.
    pub(super) refilling: AtomicBool,
    /// The key is near its limit, as of the last refill (it got less than
    /// it asked for, or left the fleet less than four times what this lease
    /// holds): idle tokens are given back sooner.
    pub(super) contended: AtomicBool,
    /// A take from this time on (ms, the cache's clock) starts a refill that
    /// extends the lease (`i64::MAX`: it cannot be extended, a quota's lease
    /// ending with the month).
    pub(super) renew_at_ms: AtomicI64,
    /// `tokens` at the last sweep (only the sweeper reads and writes it).
    pub(super) seen: AtomicU64,
    /// When the lease was last seen in use: by a sweep that found `tokens`
    /// changed, or by a refill (ms, the cache's clock).
    quiet_since_ms: AtomicI64,
    pub(crate) key: LeaseKey,
    /// This lease's name in Redis: the instance id and a serial number.
    pub(super) holder: String,
    pub(super) slow: Mutex<Slow>,
    /// Serialises this lease's Redis calls, so their ids increase in the
    /// order Redis sees them.
    pub(super) proto: tokio::sync::Mutex<Proto>,
}

#[derive(Default)]
pub(super) struct Proto {
    /// The last call's id.
    req: u64,
    /// The id of the last reply applied (0: none).
    acked: u64,
}

#[derive(Default)]
pub(super) struct Slow {
    /// Requests waiting for a token, oldest first.
    waiters: VecDeque<oneshot::Sender<Answer>>,
    pub(super) dropped: bool,
    /// Tokens right after the last grant, and when: the rate is measured
    /// from them.
    base: u64,
    pub(super) since: Option<Instant>,
    last_want: u64,
    /// Redis knows of no token held or spent here since the last give-back.
    pub(super) settled: bool,
    /// What the fleet had left after the last refill (`None`: unlimited).
    left: Option<u64>,
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
    pub(super) fn new(key: LeaseKey, holder: String) -> Self {
        Self {
            tokens: AtomicU64::new(0),
            until_ms: AtomicI64::new(0),
            epoch: AtomicU64::new(0),
            low: AtomicU64::new(0),
            refilling: AtomicBool::new(false),
            contended: AtomicBool::new(false),
            renew_at_ms: AtomicI64::new(i64::MAX),
            seen: AtomicU64::new(0),
            quiet_since_ms: AtomicI64::new(0),
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
    pub(super) fn take(&self, now_ms: i64, epoch: u64) -> Option<bool> {
        if !self.live(now_ms, epoch) {
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
                    let low = (t - 1 <= self.low.load(Ordering::Relaxed)
                        || now_ms >= self.renew_at_ms.load(Ordering::Relaxed))
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
        if self.live(now_ms, epoch) {
            self.tokens.load(Ordering::Acquire)
        } else {
            self.tokens.swap(0, Ordering::AcqRel);
            0
        }
    }

    /// Whether its tokens may be spent at `now_ms` in `epoch`: not lapsed
    /// (nor dropped), and granted since the last failure.
    #[inline]
    fn live(&self, now_ms: i64, epoch: u64) -> bool {
        now_ms < self.until_ms.load(Ordering::Acquire)
            && self.epoch.load(Ordering::Acquire) == epoch
    }

    /// Seen in use at `now_ms`.
    pub(super) fn touch(&self, now_ms: i64) {
        self.quiet_since_ms.store(now_ms, Ordering::Relaxed);
    }

    /// How long it has not been seen in use, at `now_ms`.
    pub(super) fn quiet_for(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.quiet_since_ms.load(Ordering::Relaxed))
    }

    /// Tokens it holds, spendable or not.
    pub(crate) fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Tokens that may be spent at `now_ms` in `epoch` (for health).
    pub(super) fn spendable(&self, now_ms: i64, epoch: u64) -> u64 {
        if self.live(now_ms, epoch) {
            self.tokens()
        } else {
            0
        }
    }
}

impl Slow {
    /// How many tokens to hold after this refill: this instance's rate for
    /// the key times [`TARGET_SECS`]; if that is more than a small part of
    /// what the fleet had left at the last refill, at most 1.5 times the
    /// last ask. When demand stops, what the last refill brought is
    /// stranded: a gentle ramp keeps that a fraction of what was spent
    /// before it, while a key far below its limit (nobody else needs those
    /// tokens) gets what its rate calls for at once.
    fn want(&mut self, tokens: u64, need: u64, max: u64) -> u64 {
        let want = match self.since {
            None => FIRST_WANT,
            Some(since) => {
                let spent = self.base.saturating_sub(tokens) + need;
                let secs = since.elapsed().as_secs_f64().max(0.001);
                // `as` saturates: a rate past u64 is simply "a lot".
                let at_rate = ((spent as f64 / secs * TARGET_SECS).ceil() as u64).max(1);
                let ramp = self.last_want.saturating_add(self.last_want / 2);
                if self.left.is_none_or(|left| at_rate <= left / FAR) {
                    at_rate
                } else {
                    at_rate.min(ramp.max(FIRST_WANT))
                }
            }
        };
        // What it holds plus what it asks stays within the maximum.
        let want = want.min(max.saturating_sub(tokens));
        self.last_want = want;
        want
    }

    pub(super) fn answer_all(&mut self, answer: impl Fn() -> Answer) {
        for tx in self.waiters.drain(..) {
            let _ = tx.send(answer());
        }
    }
}

/// A refill's answers, sent once its lock is released and `refilling`
/// cleared: a request it wakes then sees the lease as it is, and its next
/// take may start the following refill.
#[derive(Default)]
struct Outbox(Vec<(oneshot::Sender<Answer>, Answer, bool)>);

impl Outbox {
    /// `answer` for the oldest waiter, if any; `refund`: the token it was
    /// given came from the lease, and goes back if its request gave up.
    fn one(&mut self, slow: &mut Slow, answer: Answer, refund: bool) -> bool {
        match slow.waiters.pop_front() {
            Some(tx) => {
                self.0.push((tx, answer, refund));
                true
            }
            None => false,
        }
    }

    fn all(&mut self, slow: &mut Slow, answer: impl Fn() -> Answer) {
        for tx in slow.waiters.drain(..) {
            self.0.push((tx, answer(), false));
        }
    }

    fn deliver(self, lease: &Lease) {
        for (tx, answer, refund) in self.0 {
            if tx.send(answer).is_err() && refund {
                lease.tokens.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

impl Leases {
    /// The slow path: `lease` had no token for this request. Waits for the
    /// refill under way (or starts one), at most the configured patience.
    pub(crate) async fn wait(self: &Arc<Self>, lease: &Arc<Lease>) -> Answer {
        // Redis is known to be away: no refill could land, and one per
        // request would cost a task each. What it knew may be lost.
        if self.l2.as_ref().is_some_and(|l2| !l2.breaker.allows()) {
            self.retire_all();
            return Answer::Unavailable;
        }
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
    pub(super) async fn refill(self: Arc<Self>, lease: Arc<Lease>) {
        let Some(l2) = self.l2.clone() else {
            let mut slow = lock(&lease.slow);
            lease.refilling.store(false, Ordering::Release);
            slow.answer_all(|| Answer::Unavailable);
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
                    lease.refilling.store(false, Ordering::Release);
                    slow.answer_all(|| Answer::Dropped);
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
            let limit_ms = lease_limit_ms(lease.key.quota.is_some(), month_end_ms);
            let until_ms = (now_ms + LEASE_TTL_MS).min(limit_ms);
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
            if let Err(e) = &result {
                self.failed(e);
            }
            let mut out = Outbox::default();
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
                    out.one(&mut slow, Answer::Granted, false);
                }
                out.all(&mut slow, || Answer::Dropped);
                false
            } else {
                match result {
                    Ok(reply) => {
                        proto.acked = proto.req;
                        let grant = Grant {
                            want,
                            epoch,
                            until_ms,
                            limit_ms,
                            month_end,
                            now,
                        };
                        self.apply(&lease, &mut slow, reply, &grant, &mut out)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "lease refill failed; limits are decided locally");
                        out.all(&mut slow, || Answer::Unavailable);
                        false
                    }
                }
            };
            if !again {
                // Under the lock: a request queued after this sees no
                // refill under way and starts one.
                lease.refilling.store(false, Ordering::Release);
            }
            drop(slow);
            out.deliver(&lease);
            if !again {
                return;
            }
        }
    }

    /// Applies a refill's reply; whether to call again (waiters left).
    fn apply(
        &self,
        lease: &Lease,
        slow: &mut Slow,
        reply: Reply,
        grant: &Grant,
        out: &mut Outbox,
    ) -> bool {
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
                out.all(slow, || Answer::Unavailable);
                return false;
            }
        };
        if discard {
            lease.tokens.store(0, Ordering::Release);
        }
        // Redis extended the lease (every token held) to `until`.
        lease.until_ms.store(grant.until_ms, Ordering::Release);
        let renew_at = if grant.until_ms < grant.limit_ms {
            grant.until_ms - RENEW_BEFORE_MS
        } else {
            i64::MAX
        };
        lease.renew_at_ms.store(renew_at, Ordering::Relaxed);
        lease.epoch.store(grant.epoch, Ordering::Release);
        lease.tokens.fetch_add(held, Ordering::AcqRel);
        // Tokens charged as spent now: one per waiter, oldest first. One
        // whose request gave up is lost (it was charged).
        for _ in 0..now_tokens {
            if !out.one(slow, Answer::Granted, false) {
                break;
            }
        }
        // Waiters that queued while the call was out come before new
        // requests: they take from the prefetch first, if it may still be
        // spent now (a slow call may land past its month's end).
        let now_ms = self.now_ms();
        while !slow.waiters.is_empty() && lease.take(now_ms, grant.epoch).is_some() {
            out.one(slow, Answer::Granted, true);
        }
        let after = lease.tokens.load(Ordering::Acquire);
        lease.low.store(
            low_water(after, self.settings.refill_threshold),
            Ordering::Relaxed,
        );
        // In use as of now: the sweeps measure idleness from here, or from
        // the first one that finds the count changed.
        lease.seen.store(after, Ordering::Relaxed);
        lease.touch(unix_ms(grant.now));
        slow.base = after;
        slow.since = Some(Instant::now());
        slow.left = left;
        lease
            .contended
            .store(contended(held, grant.want, left, after), Ordering::Relaxed);
        match refusal {
            Some(decision) => {
                out.all(slow, || Answer::Refused(decision.clone()));
                false
            }
            // Every waiter counted in this call was served: those left
            // queued after it was sent, and need a call of their own.
            None => !slow.waiters.is_empty(),
        }
    }

    /// Gives `held` tokens of `lease` back (they are no longer spendable
    /// here) and reports what was spent, unless Redis never heard of it.
    pub(super) fn give_back(
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
                    this.failed(&e);
                    tracing::debug!(error = %e, "lease give-back failed; its tokens lapse");
                }
            }
        })
    }
}

/// The latest end a lease may have: a quota's tokens belong to their month.
fn lease_limit_ms(quota: bool, month_end_ms: i64) -> i64 {
    if quota {
        month_end_ms
    } else {
        i64::MAX
    }
}

/// The tokens left at which a lease of `after` tokens asks for a refill:
/// `threshold` percent of it.
fn low_water(after: u64, threshold: u8) -> u64 {
    after.saturating_mul(u64::from(threshold)) / 100
}

/// Whether a refill that brought `held` of the `want` it asked for, left
/// the fleet `left` (`None`: unlimited) and this lease `after`, says the key
/// is near its limit: the ask was cut, or this lease holds more than a
/// quarter of what the fleet has left.
fn contended(held: u64, want: u64, left: Option<u64>, after: u64) -> bool {
    held < want || left.is_some_and(|left| left < after.saturating_mul(4))
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
    /// No refill extends the lease past this (ms).
    limit_ms: i64,
    month_end: OffsetDateTime,
    now: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lease(tokens: u64, until_ms: i64, epoch: u64, low: u64) -> Lease {
        let key = LeaseKey {
            id: KeyId::from("k"),
            owner: "o".into(),
            gcra: Some(Gcra { n: 10, p: 1000 }),
            quota: None,
        };
        let lease = Lease::new(key, "h".into());
        lease.tokens.store(tokens, Ordering::Relaxed);
        lease.until_ms.store(until_ms, Ordering::Relaxed);
        lease.epoch.store(epoch, Ordering::Relaxed);
        lease.low.store(low, Ordering::Relaxed);
        lease
    }

    #[test]
    fn a_take_spends_one_token_while_the_lease_lasts() {
        let l = lease(4, 1000, 7, 2);
        assert_eq!(l.take(999, 7), Some(false), "3 left, above the threshold");
        assert_eq!(l.take(999, 7), Some(true), "2 left: time to refill");
        l.refilling.store(true, Ordering::Relaxed);
        assert_eq!(l.take(999, 7), Some(false), "a refill is under way");
        assert_eq!(l.tokens(), 1);
        assert_eq!(l.take(1000, 7), None, "lapsed");
        assert_eq!(l.take(999, 8), None, "granted before a failure");
        assert_eq!(l.take(999, 6), None);
        assert_eq!(l.tokens(), 1, "a refused take spends nothing");
        l.refilling.store(false, Ordering::Relaxed);
        assert_eq!(l.take(999, 7), Some(true));
        assert_eq!(l.take(999, 7), None, "empty");
        assert_eq!(l.tokens(), 0);
        let never = Lease::new(l.key.clone(), "h".into());
        assert_eq!(never.take(0, 0), None, "never granted");
    }

    #[test]
    fn a_take_near_the_end_asks_for_a_renewal() {
        let l = lease(10, 1000, 7, 2);
        l.renew_at_ms.store(900, Ordering::Relaxed);
        assert_eq!(l.take(899, 7), Some(false));
        assert_eq!(l.take(900, 7), Some(true), "in its last stretch");
        l.refilling.store(true, Ordering::Relaxed);
        assert_eq!(l.take(950, 7), Some(false), "a refill is under way");
        // A quota's lease that ends with the month is not renewed.
        assert_eq!(lease_limit_ms(true, 5_000), 5_000);
        assert_eq!(lease_limit_ms(false, 5_000), i64::MAX);
    }

    #[test]
    fn what_a_lease_reports_it_holds() {
        let l = lease(3, 1000, 7, 0);
        assert_eq!(l.held_now(999, 7), 3);
        assert_eq!(l.tokens(), 3, "a report spends nothing");
        assert_eq!(l.spendable(999, 7), 3);
        assert_eq!(l.spendable(1000, 7), 0, "lapsed");
        assert_eq!(l.spendable(999, 8), 0, "before a failure");
        assert_eq!(l.tokens(), 3, "health looks, nothing more");
        // Lapsed, or from before a failure: nothing may spend it any more.
        assert_eq!(l.held_now(1000, 7), 0);
        assert_eq!(l.tokens(), 0);
        let l = lease(3, 1000, 7, 0);
        assert_eq!(l.held_now(999, 8), 0);
        assert_eq!(l.tokens(), 0);
    }

    #[test]
    fn refill_threshold_and_contention() {
        assert_eq!(low_water(10, 50), 5);
        assert_eq!(low_water(9, 50), 4);
        assert_eq!(low_water(1000, 0), 0);
        assert_eq!(low_water(1000, 100), 1000);
        assert_eq!(low_water(3, 99), 2);
        assert_eq!(low_water(u64::MAX, 100), u64::MAX / 100, "saturates");
        // Cut short, or holding more than a quarter of what is left.
        assert!(contended(3, 4, None, 3));
        assert!(!contended(4, 4, None, 100));
        assert!(!contended(4, 4, Some(400), 100));
        assert!(contended(4, 4, Some(399), 100));
        assert!(contended(0, 4, Some(0), 0));
        assert!(!contended(0, 0, Some(0), 0), "holds nothing, asked nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ask_follows_the_rate_and_grows_gently_near_the_limit() {
        let mut slow = Slow::default();
        assert_eq!(slow.want(0, 0, 1000), FIRST_WANT, "rate unknown");
        // 40 spent in four seconds: 250 to last 25 s.
        slow.since = Some(Instant::now());
        slow.base = 50;
        tokio::time::advance(Duration::from_secs(4)).await;
        slow.left = Some(250 * FAR);
        assert_eq!(slow.want(10, 0, 1000), 250, "far from the limit: at once");
        assert_eq!(
            slow.want(10, 0, 200),
            190,
            "within the maximum, held included"
        );
        // Nearer: at most 1.5 times the last ask.
        slow.last_want = 20;
        slow.left = Some(250 * FAR - 1);
        assert_eq!(slow.want(10, 0, 1000), 30);
        slow.last_want = 1;
        assert_eq!(slow.want(10, 0, 1000), FIRST_WANT, "never below the first");
        // Waiters count as spent; nothing spent still asks for one.
        slow.left = None;
        assert_eq!(slow.want(50, 3, 1000), 19, "3 in 4 s, for 25 s");
        assert_eq!(slow.want(50, 0, 1000), 1);
    }
}
