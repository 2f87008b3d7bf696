//! How a queue is sized (batch size and batch slots from a capacity in items), and the state
//! both sides of a link read: the adaptive batch target, sleepers, queued items.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use engine_core::plumbing::{Ticket, fit_batch};

use super::MAX_BATCH;
use super::batch::drop_items;

/// The most batches a queue holds (with full batches, 64M items): larger capacities are
/// capped, since the channel allocates its slots up front.
const MAX_SLOTS: usize = 1 << 16;

/// The time a consumer should spend on one batch; batches shrink for slow stages so that an
/// item waits at most about this long behind the others of its batch.
const BATCH_TIME: Duration = Duration::from_micros(100);

/// The state of a link that both sides read.
#[derive(Debug)]
pub(crate) struct LinkState {
    /// Consumers asleep until something arrives, having found nothing queued and no open
    /// frontend batch with items.
    pub(super) sleeping: AtomicUsize,
    /// The batch size producers aim for, set by consumers from their speed.
    target: AtomicUsize,
    /// The largest batch allowed by the queue's capacity.
    pub(super) max_batch: usize,
    /// Items in the channel.
    pub(super) queued: AtomicU64,
    /// Items that were on their way through this link when the run was aborted.
    abandoned: AtomicU64,
    /// The most items the channel holds.
    capacity: u64,
}

impl LinkState {
    pub(super) fn new(sizing: Sizing) -> Self {
        Self {
            sleeping: AtomicUsize::new(0),
            target: AtomicUsize::new(sizing.max_batch),
            max_batch: sizing.max_batch,
            queued: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            capacity: (sizing.slots * sizing.max_batch) as u64,
        }
    }

    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// The most items the channel holds.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::SeqCst)
    }

    pub(super) fn abandon<K: Ticket, T>(&self, items: impl IntoIterator<Item = (K, T)>) {
        let n = drop_items(items);
        self.abandoned.fetch_add(n, Ordering::SeqCst);
    }

    /// Whether a batch of `len` items is as large as consumers want it.
    #[inline]
    pub(crate) fn is_full(&self, len: usize) -> bool {
        len >= self.target.load(Ordering::Relaxed)
    }

    /// Whether a consumer is blocked waiting for items.
    #[inline]
    pub(crate) fn has_sleepers(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst) > 0
    }

    /// Records how long a consumer took for a batch, to size the next ones.
    pub(crate) fn observe(&self, items: usize, took: Duration) {
        if items == 0 {
            return;
        }
        let target = fit_batch(items, took, BATCH_TIME, self.max_batch);
        self.target.store(target, Ordering::Relaxed);
    }
}

/// How a queue is sized: batches of at most `max_batch` items, at most `slots` batches queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizing {
    pub(crate) max_batch: usize,
    pub(crate) slots: usize,
}

impl Sizing {
    /// Splits a capacity in items into batch slots, keeping at least two slots per consumer so
    /// that every consumer can find work queued, and never more items than the capacity.
    pub(crate) fn new(capacity: usize, consumers: usize) -> Self {
        let capacity = capacity.max(1);
        let min_slots = (2 * consumers).max(4);
        let max_batch = (capacity / min_slots).clamp(1, MAX_BATCH);
        // The channel allocates its slots up front: a huge capacity is capped.
        let slots = (capacity / max_batch).clamp(1, MAX_SLOTS);
        Self { max_batch, slots }
    }
}

#[cfg(test)]
mod tests {
    use engine_core::StopHandle;

    use super::*;
    use crate::link::{Link, abort_pair};

    #[test]
    fn sizing_never_exceeds_the_capacity_and_keeps_two_batches_per_consumer() {
        for capacity in [1, 2, 3, 7, 64, 1000, 1024, 4096, 100_000] {
            for consumers in [1, 2, 4, 16] {
                let s = Sizing::new(capacity, consumers);
                assert!(s.max_batch >= 1 && s.max_batch <= MAX_BATCH);
                assert!(
                    s.slots * s.max_batch <= capacity,
                    "{capacity} {consumers} {s:?}"
                );
                if capacity >= 2 * consumers {
                    assert!(s.slots >= 2 * consumers, "{capacity} {consumers} {s:?}");
                }
            }
        }
        assert_eq!(
            Sizing::new(1024, 2),
            Sizing {
                max_batch: 256,
                slots: 4
            }
        );
    }

    #[test]
    fn batch_target_shrinks_for_slow_consumers() {
        let (_trigger, abort) = abort_pair(&StopHandle::new());
        let link = Link::<(), u32>::new(Sizing::new(1024, 1), 0, abort);
        let state = link.state();
        assert!(!state.is_full(255));
        state.observe(10, Duration::from_millis(10));
        assert!(state.is_full(1));
        state.observe(256, Duration::from_micros(2));
        assert!(!state.is_full(255));
    }
}
