//! A link as the coordinator and the live statistics see it, whatever its item type.

use engine_core::Counts;
use engine_core::plumbing::Ticket;

use super::Link;

/// A link as the coordinator sees it, whatever its item type.
pub(crate) trait LinkView: Send + Sync {
    /// Items in the channel.
    fn queued(&self) -> u64;
    /// The most items the channel holds.
    fn capacity(&self) -> u64;
    /// Items in the frontend slots.
    fn buffered(&self) -> u64;
    fn abandoned(&self) -> u64;
    /// After an abort: waits until no producer is left and counts what remains as abandoned.
    fn drain_abandoned(&self);
    fn close_slots(&self);
    fn slot_counts(&self) -> Vec<Counts>;
}

impl<K: Ticket, T: Send + 'static> LinkView for Link<K, T> {
    fn queued(&self) -> u64 {
        self.state().queued()
    }

    fn capacity(&self) -> u64 {
        self.state().capacity()
    }

    fn buffered(&self) -> u64 {
        self.slots().iter().map(|s| s.buffered() as u64).sum()
    }

    fn abandoned(&self) -> u64 {
        self.state().abandoned()
    }

    fn drain_abandoned(&self) {
        Link::drain_abandoned(self);
    }

    fn close_slots(&self) {
        for slot in self.slots() {
            slot.close();
        }
    }

    fn slot_counts(&self) -> Vec<Counts> {
        self.slots().iter().map(|s| s.counts()).collect()
    }
}
