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

mod flush;
mod months;

pub(crate) use flush::flusher;
pub use flush::ShutdownError;
pub(crate) use months::MonthId;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::KeyId;

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
}

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<KeyId, Arc<UsageCell>>>;

/// Outstanding counts for health and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) keys: u64,
    pub(crate) increments: u64,
}

pub(crate) struct Usage {
    shards: Vec<Shard>,
    months: months::Months,
    /// Counts moved out of a month slot that was about to be reused, for
    /// the next flush (only when no flush ran for a whole month).
    carried: Mutex<Vec<(KeyId, MonthId, u64)>>,
    /// Counts on their way to the store, and to Redis.
    outboxes: tokio::sync::Mutex<flush::Outboxes>,
    pub(crate) flush_errors: AtomicU64,
    pub(crate) flushed: AtomicU64,
}

fn shard_of(id: &KeyId) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(id.as_str());
    (h as usize) % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts taken out of the cells: one entry per key and month.
pub(crate) type Taken = Vec<(KeyId, MonthId, u64)>;

impl Usage {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            months: months::Months::default(),
            carried: Mutex::new(Vec::new()),
            outboxes: tokio::sync::Mutex::new(flush::Outboxes::default()),
            flush_errors: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// The cell of `id`, shared with every cache entry of that key.
    pub(crate) fn cell(&self, id: &KeyId) -> Arc<UsageCell> {
        lock(&self.shards[shard_of(id)])
            .entry(id.clone())
            .or_default()
            .clone()
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

    /// Moves every cell's counts out, by key and month; drops idle cells.
    /// Never awaits: counts taken out of the cells live only in the
    /// returned list, so the caller must store them before its next await.
    fn take(&self) -> Taken {
        self.months.with_months(|months| {
            let mut taken = std::mem::take(&mut *lock(&self.carried));
            for shard in &self.shards {
                lock(shard).retain(|id, cell| {
                    let mut any = false;
                    for (slot, month) in months.iter().enumerate() {
                        let n = cell.pending[slot].swap(0, Ordering::AcqRel);
                        if n > 0 {
                            taken.push((id.clone(), *month, n));
                            any = true;
                        }
                    }
                    // Keep cells that cache entries still point at:
                    // dropping one would detach its future counts.
                    any || Arc::strong_count(cell) > 1
                });
            }
            taken
        })
    }

    /// Counts not yet acknowledged by the store.
    pub(crate) fn pending(&self) -> Pending {
        let mut p = Pending::default();
        let mut add = |n: u64| {
            if n > 0 {
                p.keys += 1;
                p.increments += n;
            }
        };
        for shard in &self.shards {
            for cell in lock(shard).values() {
                add(cell.load());
            }
        }
        for (_, _, n) in lock(&self.carried).iter() {
            add(*n);
        }
        if let Ok(outboxes) = self.outboxes.try_lock() {
            let store = outboxes.store_pending();
            p.keys += store.keys;
            p.increments += store.increments;
        }
        p
    }
}
