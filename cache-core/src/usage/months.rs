//! Which calendar month a counted request belongs to, without a calendar
//! on the request path.
//!
//! Every usage cell has two slots; requests of the current month go to one
//! of them, and at a month boundary counting moves to the other. The
//! request path compares the time (nanoseconds since the epoch) with the
//! next boundary, both in one atomic word: one load and one comparison. The
//! flusher knows each slot's month, so a request served on the 31st at
//! 23:59:59.9 and flushed on the 1st still counts for the 31st's month.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use time::{Month, OffsetDateTime, UtcOffset};

/// A calendar month (UTC) as `year * 12 + month - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MonthId(u32);

impl MonthId {
    /// The month of `nanos` since the epoch.
    pub(crate) fn of_nanos(nanos: i64) -> Self {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self::of(t)
    }

    /// The month of `t`.
    pub(crate) fn of(t: OffsetDateTime) -> Self {
        let t = t.to_offset(UtcOffset::UTC);
        let year = u32::try_from(t.year()).unwrap_or(0);
        Self(year * 12 + u32::from(u8::from(t.month())) - 1)
    }

    /// `YYYY-MM`, as in Redis key names.
    pub(crate) fn tag(self) -> String {
        format!("{:04}-{:02}", self.0 / 12, self.0 % 12 + 1)
    }

    /// The first instant of the next month, in nanoseconds since the epoch
    /// (saturating).
    fn next_start_nanos(self) -> i64 {
        let next = self.0 + 1;
        let month =
            Month::try_from(u8::try_from(next % 12 + 1).unwrap_or(1)).unwrap_or(Month::January);
        let start = i32::try_from(next / 12)
            .ok()
            .and_then(|y| time::Date::from_calendar_date(y, month, 1).ok())
            .map(|d| d.midnight().assume_utc().unix_timestamp_nanos());
        start.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// The current slot, and the month each slot counts for.
#[derive(Debug)]
pub(crate) struct Months {
    /// `(start of the month after the current one, in ns) << 1 | slot`;
    /// zero before the first request.
    state: AtomicU64,
    months: [AtomicU32; 2],
    /// Serialises month changes.
    turning: Mutex<()>,
}

impl Default for Months {
    fn default() -> Self {
        Self {
            state: AtomicU64::new(0),
            months: [AtomicU32::new(0), AtomicU32::new(0)],
            turning: Mutex::new(()),
        }
    }
}

/// What a month change asks of the cells: empty the slot that is about to
/// be reused, crediting what is left in it to its old month.
pub(crate) struct Turn {
    pub(crate) slot: usize,
    pub(crate) old_month: MonthId,
}

impl Months {
    /// The slot counting requests served at `nanos`; `Err` when the month
    /// must change first ([`turn`](Self::turn)).
    #[inline]
    pub(crate) fn slot(&self, nanos: i64) -> Result<usize, ()> {
        let s = self.state.load(Ordering::Acquire);
        // Times before the epoch count as the epoch.
        let now = u64::try_from(nanos).unwrap_or(0);
        if now < s >> 1 {
            Ok((s & 1) as usize)
        } else {
            Err(())
        }
    }

    /// Moves counting to the month of `nanos` (if it has not moved yet):
    /// `empty` is called first with the slot to be reused, while no request
    /// counts into it. A clock that goes back keeps counting in the later
    /// month.
    pub(crate) fn turn(&self, nanos: i64, empty: impl FnOnce(Turn)) -> usize {
        let _turning = self.turning.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(slot) = self.slot(nanos) {
            return slot;
        }
        let s = self.state.load(Ordering::Acquire);
        let slot = if s == 0 { 0 } else { 1 - (s & 1) as usize };
        if s != 0 {
            empty(Turn {
                slot,
                old_month: MonthId(self.months[slot].load(Ordering::Acquire)),
            });
        }
        let month = MonthId::of_nanos(nanos);
        self.months[slot].store(month.0, Ordering::Release);
        let next = u64::try_from(month.next_start_nanos()).unwrap_or(0);
        self.state
            .store((next << 1) | slot as u64, Ordering::Release);
        slot
    }

    /// Runs `f` with the month of each slot, while no month change can
    /// start (so counts taken from a slot go to that slot's month).
    pub(crate) fn with_months<T>(&self, f: impl FnOnce([MonthId; 2]) -> T) -> T {
        let _turning = self.turning.lock().unwrap_or_else(|e| e.into_inner());
        f([self.month(0), self.month(1)])
    }

    /// The month slot `slot` counts for.
    pub(crate) fn month(&self, slot: usize) -> MonthId {
        MonthId(self.months[slot].load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn nanos(t: OffsetDateTime) -> i64 {
        i64::try_from(t.unix_timestamp_nanos()).unwrap()
    }

    #[test]
    fn months_and_tags() {
        let jan = MonthId::of(datetime!(2030-01-31 23:59:59.999 UTC));
        assert_eq!(jan.tag(), "2030-01");
        assert_eq!(
            jan.next_start_nanos(),
            nanos(datetime!(2030-02-01 0:00 UTC))
        );
        let dec = MonthId::of(datetime!(2030-12-15 10:00 UTC));
        assert_eq!(dec.tag(), "2030-12");
        assert_eq!(
            dec.next_start_nanos(),
            nanos(datetime!(2031-01-01 0:00 UTC))
        );
        assert_eq!(
            MonthId::of(datetime!(2030-03-01 0:30 +01:00)).tag(),
            "2030-02",
            "UTC decides"
        );
    }

    #[test]
    fn turning_alternates_slots_and_reports_the_old_month() {
        let m = Months::default();
        let jan = nanos(datetime!(2030-01-31 23:59:59.999 UTC));
        assert!(m.slot(jan).is_err(), "nothing counted yet");
        let first = m.turn(jan, |_| panic!("nothing to empty"));
        assert_eq!(m.slot(jan), Ok(first));
        assert_eq!(m.month(first).tag(), "2030-01");
        let feb = nanos(datetime!(2030-02-01 0:00 UTC));
        assert!(m.slot(feb).is_err(), "the boundary itself is the new month");
        let mut emptied = None;
        let second = m.turn(feb, |t| emptied = Some((t.slot, t.old_month)));
        assert_ne!(first, second);
        assert_eq!(emptied, Some((second, MonthId(0))));
        assert_eq!(m.month(second).tag(), "2030-02");
        assert_eq!(
            m.month(first).tag(),
            "2030-01",
            "January's slot keeps its month"
        );
        // A clock set back keeps the later month.
        assert_eq!(m.slot(jan), Ok(second));
        // Jumping several months reuses January's slot.
        let may = nanos(datetime!(2030-05-10 0:00 UTC));
        let mut emptied = None;
        let third = m.turn(may, |t| emptied = Some((t.slot, t.old_month.tag())));
        assert_eq!(third, first);
        assert_eq!(emptied, Some((first, "2030-01".to_owned())));
    }
}
