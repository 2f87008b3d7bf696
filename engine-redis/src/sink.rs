//! The stream sink: a backend that appends items to a stream, one pipeline per flush, and
//! keeps the stream's unfinished length under a bound.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use engine_core::{Backend, StageContext, StageError, protocol};
use serde::Serialize;

use crate::address::StreamAddress;
use crate::broker::{Broker, Connector};
use crate::error::{Chain, Error, Result};
use crate::retry::{Backoff, retrying};

/// The most unfinished entries a sink keeps in its stream, by default: about 100 MB of small
/// items in Redis.
pub const DEFAULT_BOUND: u64 = 1_000_000;

/// How long a sink waits for room under its bound before it warns (once per wait) that the
/// consumers may not be deleting what they finish.
const FULL_WARN_AFTER: Duration = Duration::from_secs(30);

/// How long the stages keep retrying a broker that went away, by default.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(60);

/// The first pause when the stream is at its bound.
const FULL_FIRST_DELAY: Duration = Duration::from_millis(1);
/// The longest pause when the stream is at its bound.
const FULL_MAX_DELAY: Duration = Duration::from_millis(20);

/// The options of a [`StreamSink`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine_redis::SinkOptions;
///
/// let options = SinkOptions::new().bound(10_000).retry_for(Duration::from_secs(5));
/// assert_eq!(options.get_bound(), Some(10_000));
/// assert_eq!(SinkOptions::default().get_bound(), Some(engine_redis::DEFAULT_BOUND));
/// assert_eq!(SinkOptions::new().unbounded().get_bound(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkOptions {
    bound: Option<u64>,
    retry_for: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            bound: Some(DEFAULT_BOUND),
            retry_for: DEFAULT_RETRY_FOR,
        }
    }
}

impl SinkOptions {
    /// The defaults: a bound of [`DEFAULT_BOUND`] unfinished entries, retry for
    /// [`DEFAULT_RETRY_FOR`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps at most `entries` unfinished entries in the stream (backpressure; default
    /// [`DEFAULT_BOUND`]). A flush appends only while the stream is shorter, in one atomic
    /// check-and-add script, and otherwise waits with a backoff until consumers have finished
    /// (acknowledged and deleted) enough entries. The stream is never trimmed, so nothing
    /// unread is lost. A bound of 0 is taken as 1.
    ///
    /// The bound only holds if every consumer deletes what it finishes, as
    /// [`StreamSource`](crate::StreamSource) does; with other consumers the stream fills up
    /// and the sink waits for ever (it warns after 30 s of waiting): use
    /// [`unbounded`](Self::unbounded) for a stream that others read without deleting.
    #[must_use]
    pub fn bound(mut self, entries: u64) -> Self {
        self.bound = Some(entries.max(1));
        self
    }

    /// No bound: every flush appends everything, however long the stream is.
    #[must_use]
    pub fn unbounded(mut self) -> Self {
        self.bound = None;
        self
    }

    /// The bound, if any.
    pub fn get_bound(&self) -> Option<u64> {
        self.bound
    }

    /// How long to keep retrying when the broker is unreachable or busy before the flush
    /// fails (default [`DEFAULT_RETRY_FOR`]). Waiting for room under the bound has no time
    /// limit: it ends when there is room or the run is aborted.
    #[must_use]
    pub fn retry_for(mut self, budget: Duration) -> Self {
        self.retry_for = budget;
        self
    }
}

/// A [`Backend`] that appends each item to a stream, postcard-encoded
/// ([`engine_core::protocol::to_bytes`]) in the entry's `d` field.
///
/// `process` only encodes and buffers; [`Backend::flush`], which the threaded engine calls
/// after every input batch, sends the buffer as one pipeline of `XADD`s (or, with a
/// [bound](SinkOptions::bound), one call of a check-and-add script), so a broker-backed
/// source upstream acknowledges an item only once it is in the stream.
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
/// use engine_redis::{SinkOptions, StreamAddress, StreamSink};
/// use engine_threads::Engine;
///
/// let out = StreamAddress::parse("redis://127.0.0.1:6379/numbers")?;
/// let report = Engine::builder(0..1000_u64)
///     .backend(StreamSink::<u64>::new(out).options(SinkOptions::new().bound(10_000)))
///     .run()?;
/// assert_eq!(report.processed(), 1000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamSink<T, C: Connector = StreamAddress> {
    connector: C,
    stream: String,
    options: SinkOptions,
    broker: Option<C::Broker>,
    buffer: Vec<Vec<u8>>,
    _items: PhantomData<fn(T)>,
}

impl<T> StreamSink<T, StreamAddress> {
    /// A sink to the stream of `address`, with the address's `bound=` if it has one.
    pub fn new(address: StreamAddress) -> Self {
        let mut options = SinkOptions::new();
        match address.bound {
            Some(Some(bound)) => options = options.bound(bound),
            Some(None) => options = options.unbounded(),
            None => {}
        }
        let stream = address.stream().to_owned();
        Self::with_connector(address, stream).options(options)
    }
}

impl<T, C: Connector> StreamSink<T, C> {
    /// A sink to `stream` on the broker `connector` connects to.
    pub fn with_connector(connector: C, stream: impl Into<String>) -> Self {
        Self {
            connector,
            stream: stream.into(),
            options: SinkOptions::new(),
            broker: None,
            buffer: Vec::new(),
            _items: PhantomData,
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: SinkOptions) -> Self {
        self.options = options;
        self
    }

    /// The stream written to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Appends the buffer, waiting for room under the bound and for the broker to come back.
    fn write_buffer(&mut self, ctx: &StageContext) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let broker = match &mut self.broker {
            Some(broker) => broker,
            None => {
                let connector = &self.connector;
                let broker = retrying(
                    "connecting",
                    self.options.retry_for,
                    Some(ctx.stop()),
                    || connector.connect(),
                )?;
                self.broker.insert(broker)
            }
        };
        let mut written = 0;
        let mut backoff = Backoff::new(self.options.retry_for);
        // Waiting for room has no time limit, and polls quickly: consumers free room fast.
        let mut full = Backoff::with_delays(Duration::MAX, FULL_FIRST_DELAY, FULL_MAX_DELAY);
        let mut was_full = false;
        let mut full_since = None;
        let mut warned = false;
        while written < self.buffer.len() {
            match broker.append(&self.stream, &self.buffer[written..], self.options.bound) {
                Ok(0) => {
                    if !was_full {
                        tracing::debug!(stream = %self.stream, "stream full; waiting for room");
                        was_full = true;
                    }
                    let since = *full_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= FULL_WARN_AFTER {
                        tracing::warn!(
                            stream = %self.stream,
                            bound = self.options.bound,
                            "the stream has been at its bound for {FULL_WARN_AFTER:?}: are its \
                             consumers deleting what they finish? (`SinkOptions::unbounded` \
                             for a stream read by others)"
                        );
                        full_since = Some(std::time::Instant::now());
                    }
                    backoff.reset();
                    full.pause(Error::Aborted, Some(ctx.stop()))?;
                }
                Ok(n) => {
                    written += n;
                    was_full = false;
                    full_since = None;
                    full.reset();
                    backoff.reset();
                }
                Err(error) if error.is_retryable() => {
                    if !warned {
                        tracing::warn!(
                            stream = %self.stream,
                            error = %Chain(&error),
                            "append failed; retrying"
                        );
                        warned = true;
                    }
                    backoff.pause(error, Some(ctx.stop()))?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

impl<T, C: Connector> Clone for StreamSink<T, C> {
    fn clone(&self) -> Self {
        Self::with_connector(self.connector.clone(), self.stream.clone())
            .options(self.options.clone())
    }
}

impl<T, C: Connector> fmt::Debug for StreamSink<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSink")
            .field("connector", &self.connector)
            .field("stream", &self.stream)
            .field("options", &self.options)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl<T: Serialize, C: Connector> Backend for StreamSink<T, C> {
    type Input = T;

    fn setup(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        self.broker = Some(self.connector.connect()?);
        Ok(())
    }

    fn process(&mut self, item: T, _ctx: &StageContext) -> Result<(), StageError> {
        let bytes = protocol::to_bytes(&item).map_err(|source| Error::Encode {
            stream: self.stream.clone(),
            source,
        })?;
        self.buffer.push(bytes);
        Ok(())
    }

    fn flush(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let written = self.write_buffer(ctx);
        // Written or failed, these items are done with: the engine counts a failed flush
        // as failed items, so keeping them would write them twice.
        self.buffer.clear();
        written.map_err(|error| StageError::new(error).fatal())
    }
}
