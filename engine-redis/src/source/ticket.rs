//! The ticket of a stream source's item, and what it tells the acknowledging thread when the
//! item is done with.

use std::sync::Arc;

use crossbeam_channel::Sender;
use engine_core::plumbing::{Outcome, Ticket};

use crate::broker::EntryId;
use crate::delivered::{EntryTicket, ItemId};

/// What became of an entry, as sent to the acknowledging thread.
#[derive(Debug)]
pub(super) enum Completion {
    /// Finished: acknowledge and delete.
    Finished(EntryId),
    /// Failed without being finished: leave pending, record the error.
    Failed(EntryId, String),
    /// Dropped: leave pending, to be delivered again.
    Released(EntryId),
}

/// The ticket of an item of a [`StreamSource`](crate::StreamSource): acknowledges the entry when the item is
/// [finished](Outcome::is_finished), and otherwise leaves it pending to be delivered again.
///
/// Acknowledgements are batched: the ticket hands the entry's id to the source's
/// acknowledging thread, which sends one `XACK` + `XDEL` per batch.
#[derive(Debug)]
pub struct StreamTicket {
    pub(super) id: EntryId,
    pub(super) stream: Arc<str>,
    pub(super) completions: Sender<Completion>,
}

impl StreamTicket {
    /// The entry's id.
    pub fn id(&self) -> EntryId {
        self.id
    }
}

impl EntryTicket for StreamTicket {
    fn item_id(&self) -> ItemId {
        ItemId::new(Arc::clone(&self.stream), self.id)
    }
}

impl Ticket for StreamTicket {
    fn complete(self, outcome: Outcome<'_>) {
        let completion = if outcome.is_finished() {
            Completion::Finished(self.id)
        } else if let Outcome::Failed { stage, error, .. } = outcome {
            Completion::Failed(self.id, format!("{stage}: {error:#}"))
        } else {
            Completion::Released(self.id)
        };
        // If the source is gone the entry stays pending and is delivered again: what
        // at-least-once needs.
        let _ = self.completions.send(completion);
    }
}
