//! Hybrid logical clock: wall-clock milliseconds with a logical counter.
//!
//! A timestamp packs into one `u64`: the upper 48 bits are milliseconds since
//! the Unix epoch, the lower 16 bits a counter. Packing makes "the next
//! timestamp" a plain `+ 1` (a full counter carries into the millisecond), so
//! a commit of `n` operations reserves `n` consecutive stamps at once. The
//! clock never goes backwards, whatever the wall clock does, and after
//! observing a remote stamp every local stamp sorts after it.
//!
//! This module does no I/O: the caller passes the wall-clock reading.

use serde::{Deserialize, Serialize};

/// Number of low bits holding the logical counter.
const COUNTER_BITS: u32 = 16;

/// One hybrid-logical-clock reading.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc(u64);

impl Hlc {
    /// The smallest timestamp.
    pub const ZERO: Hlc = Hlc(0);

    /// A timestamp from its packed form.
    pub const fn from_u64(packed: u64) -> Hlc {
        Hlc(packed)
    }

    /// The first timestamp of a wall-clock millisecond.
    pub const fn from_millis(ms: u64) -> Hlc {
        Hlc(ms << COUNTER_BITS)
    }

    /// The packed form (sortable as an integer).
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Wall-clock milliseconds part.
    pub const fn millis(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    /// Logical counter part.
    pub const fn counter(self) -> u16 {
        (self.0 & ((1 << COUNTER_BITS) - 1)) as u16
    }

    /// The timestamp `n` steps later.
    pub const fn plus(self, n: u64) -> Hlc {
        Hlc(self.0.saturating_add(n))
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The clock state of one replica.
#[derive(Debug, Clone, Default)]
pub struct HybridClock {
    last: Hlc,
}

impl HybridClock {
    /// A clock that has already issued or observed `last`.
    pub fn starting_after(last: Hlc) -> HybridClock {
        HybridClock { last }
    }

    /// The latest stamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Reserves `n >= 1` consecutive stamps and returns the first.
    pub fn tick(&mut self, now_ms: u64, n: u64) -> Hlc {
        let n = n.max(1);
        let first = std::cmp::max(self.last.plus(1), Hlc::from_millis(now_ms));
        self.last = first.plus(n - 1);
        first
    }

    /// Merges a stamp seen on a remote change, so later local stamps sort after it.
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_when_wall_clock_goes_back() {
        let mut clock = HybridClock::default();
        let a = clock.tick(1_000, 1);
        let b = clock.tick(500, 1);
        let c = clock.tick(500, 3);
        assert!(a < b && b < c);
        assert_eq!(b.millis(), 1_000);
        assert_eq!(clock.last(), c.plus(2));
    }

    #[test]
    fn follows_wall_clock_forward() {
        let mut clock = HybridClock::default();
        clock.tick(1_000, 1);
        let t = clock.tick(2_000, 1);
        assert_eq!(t, Hlc::from_millis(2_000));
        assert_eq!(t.counter(), 0);
    }

    #[test]
    fn counter_carries_into_millis() {
        let mut clock = HybridClock::starting_after(Hlc::from_millis(7).plus(0xFFFF));
        let t = clock.tick(7, 1);
        assert_eq!(t.millis(), 8);
        assert_eq!(t.counter(), 0);
    }

    #[test]
    fn observe_orders_after_remote() {
        let mut clock = HybridClock::default();
        clock.observe(Hlc::from_millis(9_000));
        let t = clock.tick(1_000, 1);
        assert!(t > Hlc::from_millis(9_000));
    }
}
