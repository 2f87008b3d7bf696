//! The deduplicating sink: appends each delivered item at most once within a window, checking
//! and recording its id in the same server-side script as the append.

use std::fmt;
use std::time::Duration;

use engine_core::{Backend, StageContext, StageError};
use serde::Serialize;

use crate::address::StreamAddress;
use crate::broker::Connector;
use crate::delivered::Delivered;
use crate::sink::StreamSink;

/// How long a [`DedupSink`] remembers the ids it appended, by default: one day.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A [`StreamSink`] that appends each [`Delivered`] item at most once: made by
/// [`StreamSink::dedup`].
///
/// In the same server-side script as the append, each item's id ([`ItemId`](crate::ItemId):
/// its source stream and entry id) is checked and recorded with `SET NX EX` under
/// `<stream>:seen:<source stream>/<entry id>`; an item whose id is recorded already is
/// skipped (it counts as written, so the source acknowledges it). So an item that a consumer
/// wrote and then died before acknowledging, and that is delivered again, appears downstream
/// once.
///
/// **The window.** This holds while the id is remembered: for `window` after the first
/// append ([`DEFAULT_DEDUP_WINDOW`], a day, is far longer than any redelivery, which comes
/// within the claim idle time or the lease time). An item delivered again after the window
/// is appended again. The ids are kept per output stream, so two sinks to different streams
/// each append an item once.
///
/// **The cost.** One key per item in Redis for the window (about 100 bytes with its
/// expiry: some 10 GB per 100 million items a day), and the append always runs as a script
/// (a `SET` next to each `XADD`); see the README's cost table for the measured rate.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use engine_redis::{Delivered, StreamAddress, StreamSink, StreamSource};
/// use engine_threads::Engine;
///
/// let input = StreamAddress::parse("redis://127.0.0.1:6379/orders")?;
/// let output = StreamAddress::parse("redis://127.0.0.1:6379/invoices")?;
/// Engine::builder(StreamSource::<u64>::new(input).with_ids())
///     .transport(|order: Delivered<u64>| order.map(|amount| amount * 110 / 100))
///     .backend(StreamSink::<u64>::new(output).dedup(Duration::from_secs(3600)))
///     .run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DedupSink<T, C: Connector = StreamAddress> {
    inner: StreamSink<T, C>,
    window: Duration,
}

impl<T, C: Connector> DedupSink<T, C> {
    pub(crate) fn new(inner: StreamSink<T, C>, window: Duration) -> Self {
        Self {
            inner,
            window: window.max(Duration::from_secs(1)),
        }
    }

    /// How long an appended id is remembered (at least a second).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How many entries this sink (this instance, on its backend thread) has appended.
    pub fn appended(&self) -> u64 {
        self.inner.writer.appended
    }

    /// How many items this sink skipped because their id was appended already.
    pub fn duplicates(&self) -> u64 {
        self.inner.writer.duplicates
    }

    /// The key that records `id` as appended to this sink's stream.
    fn seen_key(&self, id: &crate::ItemId) -> String {
        format!("{}:seen:{id}", self.inner.writer.stream)
    }
}

impl<T, C: Connector> Clone for DedupSink<T, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            window: self.window,
        }
    }
}

impl<T, C: Connector> fmt::Debug for DedupSink<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupSink")
            .field("inner", &self.inner)
            .field("window", &self.window)
            .field("duplicates", &self.inner.writer.duplicates)
            .finish()
    }
}

impl<T: Serialize, C: Connector> Backend for DedupSink<T, C> {
    type Input = Delivered<T>;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.inner.setup(ctx)
    }

    fn process(&mut self, delivered: Delivered<T>, _ctx: &StageContext) -> Result<(), StageError> {
        let key = self.seen_key(&delivered.id);
        self.inner.push(&delivered.item, Some(key))?;
        Ok(())
    }

    fn flush(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.inner.flush_with(Some(self.window), ctx)
    }
}
