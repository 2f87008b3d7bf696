//! The stream sink: a backend that appends items to a stream (or, keyed, to the partition of
//! each item's key), one round trip per flush, and keeps the stream's unfinished length under
//! a bound.

use std::fmt;
use std::sync::Arc;

use engine_core::{Backend, StageContext, StageError, protocol};
use serde::Serialize;

use crate::address::StreamAddress;
use crate::broker::{Connector, DedupKey};
use crate::error::{Error, Result};
use crate::sink_options::SinkOptions;
use crate::writer::Writer;

/// How an item's key is hashed: the XXH3 hash of the key's bytes.
type KeyHash<T> = Arc<dyn Fn(&T) -> u32 + Send + Sync>;

/// A [`Backend`] that appends each item to a stream, postcard-encoded
/// ([`engine_core::protocol::to_bytes`]) in the entry's `d` field, next to the protocol
/// version in `v`.
///
/// `process` only encodes and buffers; [`Backend::flush`], which the threaded engine calls
/// after every input batch, sends the buffer in one round trip (a pipeline of `XADD`s, or,
/// with a [bound](SinkOptions::bound), one call of a check-and-add script), so a
/// broker-backed source upstream acknowledges an item only once it is in the stream.
///
/// **Keyed.** With [`keyed`](Self::keyed) (or `partitions=<P>` in the address, which keys
/// each item by its whole encoding), the sink hashes each item's key to one of `P` partition
/// streams, `<stream>:p0` to `<stream>:p<P-1>` ([`partition_of`](crate::partition_of)), so
/// that a [`KeyedSource`](crate::KeyedSource) can keep each key's items in order. Items of
/// one key are appended in the order this sink receives them: keep that order with one
/// backend thread (or the engine's ordered mode). The bound holds per partition stream. The
/// partition count is recorded on the server at the first setup; a sink or source given
/// another count fails with [`Error::Partitions`].
///
/// **Deduplicating.** [`dedup`](Self::dedup) turns the sink into a [`DedupSink`](crate::DedupSink), which
/// takes [`Delivered`](crate::Delivered) items and appends each id at most once within a
/// window.
///
/// Connections are made in `setup`, one per backend thread: a server that cannot be reached
/// fails the run at the start with [`Error::Unreachable`]. Later connection losses are
/// retried with a backoff for [`SinkOptions::retry_for`]; a flush that still fails is a
/// [fatal](StageError::fatal) error, so that no upstream source acknowledges the items that
/// were not written. An item that cannot be encoded fails alone.
///
/// Cloning gives an unconnected sink with the same options, for each backend thread.
///
/// # Examples
///
/// ```no_run
/// use engine::redis::{SinkOptions, StreamAddress, StreamSink};
/// use engine::threads::Engine;
///
/// let out = StreamAddress::parse("redis://127.0.0.1:6379/numbers")?;
/// let report = Engine::builder(0..1000_u64)
///     .backend(StreamSink::<u64>::new(out).options(SinkOptions::new().bound(10_000)))
///     .run()?;
/// assert_eq!(report.processed(), 1000);
///
/// // Keyed: 8 partitions, each account's payments in order.
/// let payments = StreamAddress::parse("redis://127.0.0.1:6379/payments")?;
/// let sink = StreamSink::<(String, u64)>::new(payments).keyed(8, |(account, _)| account.clone());
/// Engine::builder(vec![("ann".to_owned(), 5), ("bob".to_owned(), 7)]).backend(sink).run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamSink<T, C: Connector = StreamAddress> {
    pub(crate) writer: Writer<C>,
    /// The partition of an item, when keyed by a function.
    key: Option<KeyHash<T>>,
}

impl<T> StreamSink<T, StreamAddress> {
    /// A sink to the stream of `address`, with the address's `bound=` and `partitions=` if it
    /// has them (`partitions=` alone keys each item by its whole encoding; see
    /// [`keyed`](Self::keyed) for a key of your own).
    pub fn new(address: StreamAddress) -> Self {
        let mut options = SinkOptions::new();
        match address.bound {
            Some(Some(bound)) => options = options.bound(bound),
            Some(None) => options = options.unbounded(),
            None => {}
        }
        let stream = address.stream().to_owned();
        let partitions = address.partitions;
        let mut sink = Self::with_connector(address, stream).options(options);
        sink.writer.set_partitions(partitions);
        sink
    }
}

impl<T, C: Connector> StreamSink<T, C> {
    /// A sink to `stream` on the broker `connector` connects to.
    pub fn with_connector(connector: C, stream: impl Into<String>) -> Self {
        Self {
            writer: Writer::new(connector, stream.into(), SinkOptions::new()),
            key: None,
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: SinkOptions) -> Self {
        self.writer.options = options;
        self
    }

    /// Writes to `partitions` partition streams (`<stream>:p<i>`; 0 is taken as 1), each
    /// item to the partition of its key: `xxh3_64(key(&item)) % partitions`
    /// ([`partition_of`](crate::partition_of)). Read them with a
    /// [`KeyedSource`](crate::KeyedSource) of the same partition count.
    #[must_use]
    pub fn keyed<K, F>(mut self, partitions: u32, key: F) -> Self
    where
        K: AsRef<[u8]>,
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        let partitions = partitions.max(1);
        self.writer.set_partitions(Some(partitions));
        self.key = Some(Arc::new(move |item: &T| {
            crate::partition::partition_of(key(item).as_ref(), partitions)
        }));
        self
    }

    /// The stream written to (for a keyed stream, the name of its partitions' stream).
    pub fn stream(&self) -> &str {
        &self.writer.stream
    }

    /// The number of partitions, if the sink is keyed.
    pub fn partitions(&self) -> Option<u32> {
        self.writer.partitions()
    }

    /// How many entries this sink (this instance, on its backend thread) has appended.
    pub fn appended(&self) -> u64 {
        self.writer.appended
    }

    /// Encodes and buffers an item, with its deduplication key if any.
    pub(crate) fn push(&mut self, item: &T, dedup_key: Option<DedupKey>) -> Result<()>
    where
        T: Serialize,
    {
        let bytes = protocol::to_bytes(item).map_err(|source| Error::Encode {
            stream: self.writer.stream.clone(),
            source,
        })?;
        let partition = match (&self.key, self.writer.partitions()) {
            (_, None) => 0,
            (Some(key), Some(_)) => key(item),
            (None, Some(partitions)) => crate::partition::partition_of(&bytes, partitions),
        };
        self.writer.push(partition, bytes, dedup_key);
        Ok(())
    }

    /// Writes the buffer (deduplicating, if `dedup`) and empties it.
    pub(crate) fn flush_with(&mut self, dedup: bool, ctx: &StageContext) -> Result<(), StageError> {
        let written = self.writer.write(dedup, ctx);
        // Written or failed, these items are done with: the engine counts a failed flush
        // as failed items, so keeping them would write them twice.
        self.writer.clear();
        written.map_err(|error| StageError::new(error).fatal())
    }
}

impl<T, C: Connector> Clone for StreamSink<T, C> {
    fn clone(&self) -> Self {
        let mut writer = Writer::new(
            self.writer.connector.clone(),
            self.writer.stream.clone(),
            self.writer.options.clone(),
        );
        writer.set_partitions(self.writer.partitions());
        Self {
            writer,
            key: self.key.clone(),
        }
    }
}

impl<T, C: Connector> fmt::Debug for StreamSink<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSink")
            .field("connector", &self.writer.connector)
            .field("stream", &self.writer.stream)
            .field("partitions", &self.writer.partitions())
            .field("options", &self.writer.options)
            .field("appended", &self.writer.appended)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize, C: Connector> Backend for StreamSink<T, C> {
    type Input = T;

    fn setup(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        self.writer.connect()?;
        Ok(())
    }

    fn process(&mut self, item: T, _ctx: &StageContext) -> Result<(), StageError> {
        self.push(&item, None)?;
        Ok(())
    }

    fn flush(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.flush_with(false, ctx)
    }
}
