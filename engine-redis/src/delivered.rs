//! Stable item ids: every item read from a stream is known by its stream and entry id, which a
//! source can hand to stage code with the item ([`Delivered`]), so that a side effect can be
//! deduplicated when the item is delivered again.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use engine_core::{StageContext, StageError};

use engine_core::plumbing::{TrackedFrontend, TrackedItem};

use crate::broker::EntryId;

/// The stable id of an item read from a stream: the stream it was read from and its entry id
/// there. An item delivered again (after a crash, a takeover or a replay of a dead letter
/// kept in place) has the same id; a dead letter replayed to the stream is a new entry, with
/// a new id.
///
/// # Examples
///
/// ```
/// use engine::redis::{EntryId, ItemId};
///
/// let id = ItemId::new("in", EntryId::new(1_700_000_000_000, 3));
/// assert_eq!(id.to_string(), "in/1700000000000-3");
/// assert_eq!(id.stream(), "in");
/// assert_eq!(id.entry(), EntryId::new(1_700_000_000_000, 3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId {
    stream: Arc<str>,
    entry: EntryId,
}

impl ItemId {
    /// The id of entry `entry` of `stream`.
    pub fn new(stream: impl Into<Arc<str>>, entry: EntryId) -> Self {
        Self {
            stream: stream.into(),
            entry,
        }
    }

    /// The stream the item was read from (for a keyed stream, its partition stream).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The item's entry id in its stream.
    pub fn entry(&self) -> EntryId {
        self.entry
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stream, self.entry)
    }
}

/// An item with the stable id of the stream entry it came from, as handed out by a source
/// made with [`StreamSource::with_ids`](crate::StreamSource::with_ids) (or
/// [`KeyedSource::with_ids`](crate::KeyedSource::with_ids)).
///
/// Stage code reads [`id`](Self::id) to deduplicate its own side effects; a
/// [`DedupSink`](crate::DedupSink) takes `Delivered` items and appends each id at most once
/// within its window. [`map`](Self::map) transforms the item and keeps the id.
///
/// # Examples
///
/// ```
/// use engine::redis::{Delivered, EntryId, ItemId};
///
/// let delivered = Delivered::new(ItemId::new("in", EntryId::new(5, 0)), 21_u64);
/// let doubled = delivered.map(|n| n * 2);
/// assert_eq!(doubled.item, 42);
/// assert_eq!(doubled.id.to_string(), "in/5-0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered<T> {
    /// The stable id of the entry the item came from.
    pub id: ItemId,
    /// The item.
    pub item: T,
}

impl<T> Delivered<T> {
    /// The item `item` of the entry `id`.
    pub fn new(id: ItemId, item: T) -> Self {
        Self { id, item }
    }

    /// Transforms the item, keeping its id.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Delivered<U> {
        Delivered {
            id: self.id,
            item: f(self.item),
        }
    }

    /// Transforms the item with a function that may fail or filter, keeping its id.
    ///
    /// # Errors
    ///
    /// The error of `f`.
    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Delivered<U>, E> {
        Ok(Delivered {
            id: self.id,
            item: f(self.item)?,
        })
    }
}

/// A ticket that knows the stream entry of its item: what [`WithIds`] needs.
pub trait EntryTicket {
    /// The id of the ticket's item.
    fn item_id(&self) -> ItemId;
}

/// A source whose items carry their stable ids: `Delivered<T>` instead of `T`. Made by
/// [`StreamSource::with_ids`](crate::StreamSource::with_ids) and
/// [`KeyedSource::with_ids`](crate::KeyedSource::with_ids); acknowledgement, healing and
/// dead letters are the inner source's.
#[derive(Debug)]
pub struct WithIds<F>(F);

impl<F> WithIds<F> {
    pub(crate) fn new(source: F) -> Self {
        Self(source)
    }

    /// The inner source.
    pub fn get_ref(&self) -> &F {
        &self.0
    }
}

impl<F> TrackedFrontend for WithIds<F>
where
    F: TrackedFrontend,
    F::Ticket: EntryTicket,
{
    type Item = Delivered<F::Item>;
    type Ticket = F::Ticket;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.0.setup(ctx)
    }

    fn produce(&mut self, ctx: &StageContext) -> Result<Option<TrackedItem<Self>>, StageError> {
        Ok(self.0.produce(ctx)?.map(|(ticket, item)| {
            let id = ticket.item_id();
            (ticket, Delivered { id, item })
        }))
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        self.0.cleanup(ctx);
    }

    fn stop_grace(&self) -> Duration {
        self.0.stop_grace()
    }

    fn gives_trace_parents(&self) -> bool {
        self.0.gives_trace_parents()
    }
}
