//! The deduplicating sink: appends each delivered item at most once within a window, checking
//! and recording its id in the same server-side script as the append.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use engine_core::{Backend, StageContext, StageError};
use serde::Serialize;

use crate::address::StreamAddress;
use crate::broker::{Connector, DedupKey};
use crate::delivered::{Delivered, ItemId};
use crate::sink::StreamSink;

/// How long a [`DedupSink`] remembers the ids it appended, by default: one day.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A [`StreamSink`] that appends each [`Delivered`] item at most once: made by
/// [`StreamSink::dedup`].
///
/// In the same server-side script as the append, each item's id ([`ItemId`](crate::ItemId):
/// its source stream and entry id) is checked and recorded in the id hash of its source
/// stream and minute, `<stream>:dedup:<source stream>:<minute>` (the minute of the entry id's
/// timestamp): a field per millisecond of entry ids, a bitmap with one bit per sequence
/// number. An item whose id is recorded already (by an earlier flush, by another consumer,
/// or earlier in the same flush) is skipped (it counts as written, so the source
/// acknowledges it). So an item that a consumer wrote and then died before acknowledging,
/// and that is delivered again, appears downstream once.
///
/// **The window.** This holds while the id is remembered: each hash expires `window` after
/// the end of its minute, so an id is remembered for at least `window` after its entry was
/// written to the source stream, and at most a minute more ([`DEFAULT_DEDUP_WINDOW`], a
/// day, is far longer than any redelivery, which comes within the claim idle time or the
/// lease time). An item delivered again after that is appended again. The entry ids come
/// from the source's server clock, the expiry from this server's; keep them within a few
/// seconds of each other. The ids are kept per output stream, so two sinks to different
/// streams each append an item once.
///
/// **The cost.** In Redis, for the window, one hash field per millisecond of source entry
/// ids that has items (some 50-70 bytes), holding one bit per entry of that millisecond: a
/// busy stream costs a bit or two per item, a sparse one (an entry per millisecond or less)
/// about what a set member per item would. The append always runs as a script: one `HMGET`
/// and one `HSET` per flush and id hash next to the `XADD`s; see the README's cost table for
/// the measured rate.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use engine::redis::{Delivered, StreamAddress, StreamSink, StreamSource};
/// use engine::threads::Engine;
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
    /// The hash of the last item's source stream and minute, reused while they stay the
    /// same.
    last_set: Option<(Arc<str>, u64, Arc<str>)>,
}

/// The time bucket of the id hashes, in ms: a minute.
const BUCKET_MS: u64 = 60_000;

impl<T, C: Connector> DedupSink<T, C> {
    pub(crate) fn new(inner: StreamSink<T, C>, window: Duration) -> Self {
        Self {
            inner,
            window: window.max(Duration::from_secs(1)),
            last_set: None,
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

    /// Where `id` is recorded as appended to this sink's stream.
    fn seen_key(&mut self, id: &ItemId) -> DedupKey {
        let bucket = id.entry().ms / BUCKET_MS;
        let set = match &self.last_set {
            Some((stream, b, set)) if *b == bucket && **stream == *id.stream() => Arc::clone(set),
            _ => {
                // Relative to the stream (or partition) appended to: the broker keeps it in
                // that stream's hash slot, `{<stream>}:dedup:<source>:<bucket>`.
                let set: Arc<str> = Arc::from(format!("dedup:{}:{bucket}", id.stream()));
                self.last_set = Some((Arc::from(id.stream()), bucket, Arc::clone(&set)));
                set
            }
        };
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        DedupKey {
            set,
            id: id.entry(),
            expire_at_ms: (bucket + 1)
                .saturating_mul(BUCKET_MS)
                .saturating_add(window_ms),
        }
    }
}

impl<T, C: Connector> StreamSink<T, C> {
    /// Deduplicates: the sink takes [`Delivered`](crate::Delivered) items and appends each
    /// id at most once within `window`; see [`DedupSink`].
    pub fn dedup(self, window: Duration) -> DedupSink<T, C> {
        DedupSink::new(self, window)
    }
}

impl<T, C: Connector> Clone for DedupSink<T, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            window: self.window,
            last_set: None,
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
        // A repeat within one flush is found by the script, like any other.
        let key = self.seen_key(&delivered.id);
        self.inner.push(&delivered.item, Some(key))?;
        Ok(())
    }

    fn flush(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.inner.flush_with(true, ctx)
    }
}
