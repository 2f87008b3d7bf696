//! The item counts of a stage, and the one rule they obey.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Item counts of one stage (or one thread of it).
///
/// Every item that reaches a stage ends in exactly one bucket, so
/// `input + expanded == output + filtered + failed + dropped` (see
/// [`is_balanced`](Self::is_balanced)):
///
/// - `input`: items that reached the stage. For a frontend: items produced plus failed
///   attempts. For later stages: items taken from the incoming queue, plus items left in it
///   by a forced stop.
/// - `output`: items passed on (for the last stage: items processed successfully).
/// - `filtered`: items a transport filtered out.
/// - `failed`: items on which the stage returned an error or panicked.
/// - `dropped`: items abandoned by a forced stop (only after [`StopLevel::Now`] or an expired
///   deadline).
/// - `expanded`: outputs beyond one per input, from a transport that emits many (a
///   [`flat_map`](crate::flat_map)); zero for every other stage.
///
/// The struct is `#[non_exhaustive]` so that a bucket can be added without breaking engines:
/// start from `Counts::default()` and set fields. Sums saturate instead of overflowing.
///
/// [`StopLevel::Now`]: crate::StopLevel::Now
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Counts {
    /// Items that reached the stage.
    pub input: u64,
    /// Items passed on, or processed by the last stage.
    pub output: u64,
    /// Items filtered out.
    pub filtered: u64,
    /// Items that failed.
    pub failed: u64,
    /// Items abandoned by a forced stop.
    pub dropped: u64,
    /// Outputs beyond one per input, from a transport that emits many
    /// ([`flat_map`](crate::flat_map)): an input that gave `k` outputs adds `k - 1`.
    #[serde(default)]
    pub expanded: u64,
}

impl Counts {
    /// Whether `input + expanded == output + filtered + failed + dropped`.
    ///
    /// ```
    /// # use engine::core::Counts;
    /// let mut counts = Counts::default();
    /// (counts.input, counts.output, counts.filtered, counts.failed) = (10, 6, 2, 1);
    /// assert!(!counts.is_balanced());
    /// counts.dropped = 1;
    /// assert!(counts.is_balanced());
    /// ```
    pub fn is_balanced(&self) -> bool {
        // Wide arithmetic: the sum of four u64 counters cannot overflow a u128.
        u128::from(self.input) + u128::from(self.expanded) == self.accounted()
    }

    pub(super) fn accounted(&self) -> u128 {
        u128::from(self.output)
            + u128::from(self.filtered)
            + u128::from(self.failed)
            + u128::from(self.dropped)
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.filtered = self.filtered.saturating_add(other.filtered);
        self.failed = self.failed.saturating_add(other.failed);
        self.dropped = self.dropped.saturating_add(other.dropped);
        self.expanded = self.expanded.saturating_add(other.expanded);
    }
}

impl Add for Counts {
    type Output = Self;

    fn add(mut self, other: Self) -> Self {
        self += other;
        self
    }
}

impl Sum for Counts {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}
