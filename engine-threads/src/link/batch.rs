//! A batch of items with their completion tickets, and completing the tickets of items the
//! engine gives up.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam_channel::Sender;
use engine_core::plumbing::{Outcome, Ticket};
use engine_core::trace::{self, TraceParent};

/// Items with their completion tickets, in frontend order within the batch.
#[derive(Debug)]
pub(crate) struct Batch<K, T> {
    /// The batch's place in frontend order (ordered mode only; 0 otherwise).
    pub(crate) seq: u64,
    pub(crate) items: Vec<(K, T)>,
    /// The trace contexts of the items (none without a trace hook).
    pub(crate) traces: Traces,
}

/// The trace contexts of a batch's items, without repeats: one pointer, null (nothing
/// allocated) when no item has one. A batch travels through the links' channels by value,
/// so an untraced one stays as small as before contexts existed.
#[derive(Debug, Default)]
#[allow(
    clippy::box_collection,
    reason = "one pointer wide instead of a Vec's three: batches move through channels by value"
)]
pub(crate) struct Traces(Option<Box<Vec<TraceParent>>>);

impl Traces {
    /// Adds a context. Cold: contexts are rare by design (a sampled batch, an item whose
    /// source gave one), and the frontend's per-item path stays small without this code.
    #[cold]
    pub(crate) fn add(&mut self, parent: TraceParent) {
        trace::add_parent(self.0.get_or_insert_default(), parent);
    }

    /// Whether no item has a context.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The contexts, none if no item has one.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[TraceParent] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    #[inline]
    pub(crate) fn take(&mut self) -> Self {
        std::mem::take(self)
    }

    #[inline]
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }
}

impl<K: Ticket, T> Batch<K, T> {
    /// Completes every ticket as dropped and returns how many items there were.
    pub(crate) fn drop_all(self) -> u64 {
        drop_items(self.items)
    }
}

/// The sending side of a link's channel.
pub(crate) type BatchSender<K, T> = Sender<Batch<K, T>>;

/// Completes the tickets of abandoned items and counts them.
pub(crate) fn drop_items<K: Ticket, T>(items: impl IntoIterator<Item = (K, T)>) -> u64 {
    let mut n = 0;
    for (ticket, item) in items {
        drop(item);
        complete(ticket, Outcome::Dropped);
        n += 1;
    }
    n
}

/// Completes a ticket. A panic in the ticket's own code is a bug in the ticket, not a failure
/// of the item: it is logged and does not disturb the engine's counts.
#[inline]
pub(crate) fn complete<K: Ticket>(ticket: K, outcome: Outcome<'_>) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| ticket.complete(outcome))) {
        tracing::error!(
            error = %engine_core::StageError::from_panic(payload),
            "a completion ticket panicked"
        );
    }
}
