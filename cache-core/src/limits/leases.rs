//! Every token lease of this instance (`lease.rs` says what a lease is):
//! the one an L1 entry gets, the epoch that retires them all when Redis
//! fails or may have lost them, the cap on background refills, and when
//! leases are dropped or given back: by invalidations, shutdown, and a
//! sweep once a second (leases no entry uses, idle ones).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::lease::{lock, Answer, Lease, LeaseKey};
use super::script::LimitScript;
use super::Gcra;
use crate::l2::{L2Error, L2};
use crate::usage::Map;
use crate::{Clock, KeyHash, KeyRecord, KeyStatus};

/// How often leases are swept (given back when no request spent from them
/// for `LeaseSettings::idle`).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Near its limit, a lease is idle after `idle / NEAR_LIMIT_DIVISOR`: there
/// its tokens are what other instances are refused for, while far from it
/// they are nobody's loss, and giving them back would only make the key's
/// next request here wait.
const NEAR_LIMIT_DIVISOR: i64 = 10;
/// Background refills (prefetches, renewals) in flight at most. Keys whose
/// leases run low together (a fresh instance's first seconds, renewals
/// falling due together) would otherwise send Redis thousands of scripts
/// at once and time out behind each other; past the cap, a take that would
/// start one leaves it to a later take.
const MAX_PREFETCHES: usize = 32;
/// Registry shards.
const SHARDS: usize = 16;

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
    /// A lease no request spent from for this long (by the cache's clock)
    /// is given back; a tenth of it when the key is near its limit.
    pub(crate) idle: Duration,
}

#[cfg(test)]
impl LeaseSettings {
    /// The defaults, for unit tests without a cache around them.
    pub(crate) fn for_tests() -> Self {
        Self {
            enabled: true,
            max_tokens: 1000,
            refill_threshold: 50,
            prefix: "p:".into(),
            instance_id: "i".into(),
            patience: Duration::from_millis(100),
            idle: Duration::from_secs(10),
        }
    }
}

/// Every lease of this instance, by key hash, and what they need to reach
/// Redis.
pub(crate) struct Leases {
    pub(super) settings: LeaseSettings,
    shards: Vec<Mutex<Map<KeyHash, Arc<Lease>>>>,
    shard_of: ahash::RandomState,
    serial: AtomicU64,
    /// Bumped by every failed limiter call.
    epoch: AtomicU64,
    /// Shut down: no new leases.
    closed: AtomicBool,
    /// Background refills in flight (see [`MAX_PREFETCHES`]).
    prefetches: AtomicUsize,
    pub(super) script: Arc<LimitScript>,
    pub(super) l2: Option<Arc<L2>>,
    pub(super) clock: Arc<dyn Clock>,
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
            prefetches: AtomicUsize::new(0),
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

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A limiter call failed with `e`. Unless it only timed out, Redis may
    /// have lost what it knew of every lease (a restart, a failover), so
    /// none is spent any more. A timeout alone leaves them: Redis was slow,
    /// not gone (a crash or restart breaks the connection, which fails
    /// otherwise), and a reply it lost is made good at the lease's next
    /// call. Retiring every lease on one slow reply would send every
    /// limited key to Redis at once, when it is slow.
    pub(crate) fn failed(&self, e: &L2Error) {
        if !e.is_timeout() {
            self.retire_all();
        }
    }

    /// No lease granted before now is spent any more.
    pub(crate) fn retire_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn now_ms(&self) -> i64 {
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

    /// Starts a background refill of `lease` (a prefetch or a renewal),
    /// unless one is under way or [`MAX_PREFETCHES`] are: then the next
    /// take asks again. A request that finds its lease empty never waits
    /// for this cap (`Leases::wait` starts its refill regardless).
    fn refill_soon(self: &Arc<Self>, lease: &Arc<Lease>) {
        if self.prefetches.load(Ordering::Relaxed) >= MAX_PREFETCHES
            || lease.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.prefetches.fetch_add(1, Ordering::AcqRel);
        let this = self.clone();
        let refill = this.clone().refill(lease.clone());
        let task = async move {
            refill.await;
            this.prefetches.fetch_sub(1, Ordering::AcqRel);
        };
        if self.spawn(task).is_none() {
            self.prefetches.fetch_sub(1, Ordering::AcqRel);
            lease.refilling.store(false, Ordering::Release);
        }
    }

    pub(super) fn spawn<F>(&self, task: F) -> Option<tokio::task::JoinHandle<()>>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(current) => Some(current.spawn(task)),
            Err(_) => self.runtime.as_ref().map(|rt| rt.spawn(task)),
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

    /// Drops leases that no cache entry uses any more, and gives back the
    /// tokens of leases no request spent from for the idle time (a tenth of
    /// it if the key is near its limit: the last refill got less than it
    /// asked, or left the fleet few tokens), so tokens stranded here while
    /// other instances are refused come back within seconds. Idleness is
    /// measured by the cache's clock from the last sweep that saw the
    /// lease's count change, or its last refill, whichever is later.
    fn sweep(self: &Arc<Self>) {
        let now_ms = self.now_ms();
        let idle_ms = i64::try_from(self.settings.idle.as_millis()).unwrap_or(i64::MAX);
        for shard in &self.shards {
            let mut orphans = Vec::new();
            let mut idle = Vec::new();
            lock(shard).retain(|_, lease| {
                // Only this registry holds it: no entry, request or refill.
                if Arc::strong_count(lease) == 1 {
                    orphans.push(lease.clone());
                    return false;
                }
                let tokens = lease.tokens();
                if lease.seen.swap(tokens, Ordering::Relaxed) != tokens {
                    lease.touch(now_ms);
                    return true;
                }
                let patience = if lease.contended.load(Ordering::Relaxed) {
                    idle_ms / NEAR_LIMIT_DIVISOR
                } else {
                    idle_ms
                };
                let until = lease.until_ms.load(Ordering::Acquire);
                // A lapsed lease's tokens are spent as far as Redis knows:
                // nothing to give back.
                if tokens > 0 && now_ms < until && lease.quiet_for(now_ms) >= patience {
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

    /// Keys with tokens that may be spent now, and how many (a scan: for
    /// health and tests).
    pub(crate) fn held(&self) -> (u64, u64) {
        let (now_ms, epoch) = (self.now_ms(), self.epoch());
        let (mut keys, mut tokens) = (0u64, 0u64);
        for shard in &self.shards {
            for lease in lock(shard).values() {
                let t = lease.spendable(now_ms, epoch);
                keys += u64::from(t > 0);
                tokens += t;
            }
        }
        (keys, tokens)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn leases(clock: Arc<ManualClock>) -> Arc<Leases> {
        Arc::new(Leases::new(
            LeaseSettings::for_tests(),
            Arc::new(LimitScript::new()),
            None,
            clock,
        ))
    }

    /// A lease in the registry, as a refill leaves it: `tokens` until
    /// `until_ms`, Redis told of them.
    fn held(leases: &Leases, tokens: u64, until_ms: i64) -> Arc<Lease> {
        let key = LeaseKey {
            id: crate::KeyId::from("k"),
            owner: "o".into(),
            gcra: Some(Gcra { n: 10, p: 1000 }),
            quota: None,
        };
        let lease = Arc::new(Lease::new(key, "h".into()));
        lease.tokens.store(tokens, Ordering::Relaxed);
        lease.until_ms.store(until_ms, Ordering::Relaxed);
        lock(&lease.slow).settled = false;
        let hash = KeyHash::from_bytes([tokens as u8; 32]);
        lock(leases.shard(&hash)).insert(hash, lease.clone());
        lease
    }

    #[test]
    fn idle_leases_are_given_back_by_the_caches_clock() {
        let clock = Arc::new(ManualClock::new(
            time::macros::datetime!(2030-01-01 0:00 UTC),
        ));
        let leases = leases(clock.clone());
        let far = leases.now_ms() + 60_000;
        let calm = held(&leases, 5, far);
        let near = held(&leases, 6, far);
        near.contended.store(true, Ordering::Relaxed);
        let lapsing = held(&leases, 7, leases.now_ms() + 2_000);
        // The first sweep sees them in use.
        leases.sweep();
        clock.advance(Duration::from_millis(999));
        leases.sweep();
        assert_eq!((calm.tokens(), near.tokens()), (5, 6));
        clock.advance(Duration::from_millis(1));
        leases.sweep();
        assert_eq!(near.tokens(), 0, "near its limit: a tenth of the idle time");
        assert!(lock(&near.slow).settled);
        clock.advance(Duration::from_millis(8_999));
        leases.sweep();
        assert_eq!(calm.tokens(), 5);
        // A take counts as use: idleness starts again.
        assert!(calm.take(leases.now_ms(), 0).is_some());
        clock.advance(Duration::from_millis(1));
        leases.sweep();
        clock.advance(Duration::from_millis(9_999));
        leases.sweep();
        assert_eq!(calm.tokens(), 4);
        clock.advance(Duration::from_millis(1));
        leases.sweep();
        assert_eq!(calm.tokens(), 0, "idle for 10 s");
        // Lapsed before it went idle: its tokens count as spent, and stay.
        assert_eq!(lapsing.tokens(), 7);
        // A lease no entry holds any more is dropped.
        drop(calm);
        leases.sweep();
        assert_eq!(
            leases.shards.iter().map(|s| lock(s).len()).sum::<usize>(),
            2
        );
    }
}
