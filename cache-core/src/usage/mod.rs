//! Usage counters: counted in memory on the request path, flushed in batches
//! to Redis (fleet-wide monthly counts) and to the store (durable totals).
//!
//! Each key has one [`UsageCell`], shared by its L1 entries through an
//! `Arc`, so counting a request is one clock read and one atomic add: no
//! lock, no I/O. A cell has a slot per month (`months.rs`), so a count goes
//! to the month in which the request was served, whenever it is flushed.
//!
//! Exactly once, whatever fails (`flush.rs`): every flush moves counts out
//! of the cells into two outboxes, one for the store and one for Redis. Each
//! outbox turns its backlog into a *batch* with a fresh id and offers that
//! same batch (same id, same counts) until it is acknowledged, while newer
//! counts wait in its backlog. The store applies a batch id at most once
//! (`KeyStore::record_usage`); Redis applies a batch and writes its marker
//! in one script that cannot stop halfway. So a retry after an ambiguous
//! failure (applied, but the acknowledgement was lost) counts nothing
//! twice, nothing leaves memory before it is delivered, and an outage of
//! one destination never holds up the other. Memory is bounded by the
//! number of keys (and months): a cell leaves the registry once it is empty
//! and no cache entry holds it.
//!
//! Cheap with every key in use, and never one long burst: a flush takes
//! and files one registry shard at a time and yields to the runtime in
//! between (the flusher may share a thread with requests), each shard's
//! counts in the outboxes before the yield. A backlog is a list in batch
//! order, appended to without a lookup when it was empty at the start of
//! the flush (the usual case: each key comes once), and indexed by key
//! only when newer counts must merge behind an undelivered batch; a
//! delivered batch's list is reused for the next backlog. Key ids are
//! shared strings (a clone is a reference count), and the maps hash them
//! with ahash. `benches/examples/flush_cost.rs` counts the instructions.

mod flush;
mod months;

pub(crate) use flush::flusher;
pub use flush::ShutdownError;
pub(crate) use months::MonthId;

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::KeyId;

/// The maps of this module: keyed by key ids, with ahash rather than the
/// standard library's SipHash (several times cheaper on short strings),
/// seeded at random per process as SipHash is, so that ids which an
/// adversary picked (imported keys) cannot be aimed at one bucket.
pub(crate) type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Requests counted for one key since its counts were last taken, by month
/// slot (see `months.rs`).
#[derive(Debug, Default)]
pub(crate) struct UsageCell {
    pending: [AtomicU64; 2],
}

impl UsageCell {
    #[inline]
    fn add(&self, slot: usize) {
        self.pending[slot & 1].fetch_add(1, Ordering::Relaxed);
    }

    fn load(&self) -> u64 {
        self.pending.iter().map(|p| p.load(Ordering::Relaxed)).sum()
    }

    /// Takes what `slot` counted; a load first, so that an idle slot (the
    /// other month's, most of the time) costs no atomic write.
    #[inline]
    fn take(&self, slot: usize) -> u64 {
        let p = &self.pending[slot];
        if p.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        p.swap(0, Ordering::AcqRel)
    }
}

/// Registry shards. A flush takes and files one shard at a time, and lets
/// other tasks run in between: the more shards, the shorter each step.
const SHARDS: usize = 32;

type Shard = Mutex<Map<KeyId, Arc<UsageCell>>>;

/// Outstanding counts for health and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) keys: u64,
    pub(crate) increments: u64,
}

impl std::ops::AddAssign for Pending {
    fn add_assign(&mut self, other: Self) {
        self.keys += other.keys;
        self.increments += other.increments;
    }
}

impl std::ops::SubAssign for Pending {
    fn sub_assign(&mut self, other: Self) {
        self.keys = self.keys.saturating_sub(other.keys);
        self.increments = self.increments.saturating_sub(other.increments);
    }
}

pub(crate) struct Usage {
    shards: Vec<Shard>,
    /// Picks a key's shard.
    shard_of: ahash::RandomState,
    months: months::Months,
    /// Counts moved out of a month slot that was about to be reused, for
    /// the next flush (only when no flush ran for a whole month).
    carried: Mutex<Vec<(KeyId, MonthId, u64)>>,
    /// Counts on their way to the store, and to Redis.
    outboxes: tokio::sync::Mutex<flush::Outboxes>,
    /// What the store's outbox holds, as of its last change: read by
    /// [`pending`](Self::pending) without waiting for a flush to end.
    outbox_keys: AtomicU64,
    outbox_increments: AtomicU64,
    pub(crate) flush_errors: AtomicU64,
    pub(crate) flushed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Usage {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_of: ahash::RandomState::new(),
            months: months::Months::default(),
            carried: Mutex::new(Vec::new()),
            outboxes: tokio::sync::Mutex::new(flush::Outboxes::default()),
            outbox_keys: AtomicU64::new(0),
            outbox_increments: AtomicU64::new(0),
            flush_errors: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &KeyId) -> &Shard {
        let h = self.shard_of.hash_one(id.as_str());
        &self.shards[(h as usize) % SHARDS]
    }

    /// The cell of `id`, shared with every cache entry of that key.
    pub(crate) fn cell(&self, id: &KeyId) -> Arc<UsageCell> {
        lock(self.shard(id)).entry(id.clone()).or_default().clone()
    }

    /// Counts one request of `cell`'s key, served at `nanos` (since the
    /// epoch).
    #[inline]
    pub(crate) fn count(&self, cell: &UsageCell, nanos: i64) {
        let slot = match self.months.slot(nanos) {
            Ok(slot) => slot,
            Err(()) => self.months.turn(nanos, |turn| self.empty_slot(turn)),
        };
        cell.add(slot);
    }

    /// Moves what is left in a slot about to count a new month into
    /// `carried`, credited to the slot's old month.
    fn empty_slot(&self, turn: months::Turn) {
        let mut carried = lock(&self.carried);
        for shard in &self.shards {
            for (id, cell) in lock(shard).iter() {
                let n = cell.pending[turn.slot].swap(0, Ordering::AcqRel);
                if n > 0 {
                    carried.push((id.clone(), turn.old_month, n));
                }
            }
        }
    }

    /// Counts moved out of reused month slots, by key and month (a key may
    /// appear more than once). Never awaits: the caller must file them
    /// before its next await.
    fn take_carried(&self) -> Vec<(KeyId, MonthId, u64)> {
        std::mem::take(&mut *lock(&self.carried))
    }

    /// Moves the counts of shard `i`'s cells, by key and month, to
    /// `file(id, [(month, n); 2])` (each key once); drops cells that no
    /// cache entry holds any more. Never awaits, and `file` must not
    /// either: counts taken out of the cells must be in the outboxes before
    /// the caller's next await.
    fn take_shard(&self, i: usize, mut file: impl FnMut(&KeyId, [(MonthId, u64); 2])) {
        self.months.with_months(|months| {
            lock(&self.shards[i]).retain(|id, cell| {
                // Whether a cache entry (or a request) still holds the cell,
                // read before its counts: once only this locked registry
                // holds it, nothing can count into it any more, and the
                // fence makes every count made before the last other
                // holder let go visible to the takes below.
                let shared = Arc::strong_count(cell) > 1;
                fence(Ordering::Acquire);
                let n = [cell.take(0), cell.take(1)];
                if n != [0, 0] {
                    file(id, [(months[0], n[0]), (months[1], n[1])]);
                }
                // Cells that cache entries still point at stay: dropping
                // one would detach its future counts.
                shared
            });
        });
    }

    /// Counts not yet acknowledged by the store.
    pub(crate) fn pending(&self) -> Pending {
        let mut p = Pending::default();
        for shard in &self.shards {
            for cell in lock(shard).values() {
                let n = cell.load();
                p.keys += u64::from(n > 0);
                p.increments += n;
            }
        }
        for (_, _, n) in lock(&self.carried).iter() {
            p.keys += u64::from(*n > 0);
            p.increments += n;
        }
        p.keys += self.outbox_keys.load(Ordering::Relaxed);
        p.increments += self.outbox_increments.load(Ordering::Relaxed);
        p
    }
}
