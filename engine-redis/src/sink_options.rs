//! [`SinkOptions`]: how a stream sink bounds its stream and retries its broker, below both
//! the sink and the writer that carries them out.

use std::time::Duration;

/// The most unfinished entries a sink keeps in its stream, by default: about 100 MB of small
/// items in Redis.
pub const DEFAULT_BOUND: u64 = 1_000_000;

/// How long the stages keep retrying a broker that went away, by default.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(60);

/// The options of a [`StreamSink`](crate::StreamSink).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine::redis::SinkOptions;
///
/// let options = SinkOptions::new().bound(10_000).retry_for(Duration::from_secs(5));
/// assert_eq!(options.get_bound(), Some(10_000));
/// assert_eq!(SinkOptions::default().get_bound(), Some(engine::redis::DEFAULT_BOUND));
/// assert_eq!(SinkOptions::new().unbounded().get_bound(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkOptions {
    pub(crate) bound: Option<u64>,
    pub(crate) retry_for: Duration,
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
