//! How many items a source handed out and how many are settled: what a program waits on
//! before it exits, and what the metrics count.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use engine_core::plumbing::lock;

/// Counts the items a source handed out and how many of them are settled (acknowledged, or
/// left for redelivery).
///
/// The threaded engine waits for a source's cleanup (which sends the last acknowledgements)
/// before `run` returns, through the source's
/// [`stop_grace`](engine_core::plumbing::TrackedFrontend::stop_grace); the settlement is for watching
/// progress, and for an engine that does not wait for its frontends. Cloning shares the
/// counts; sources given the same settlement ([`StreamSource::with_settlement`](crate::StreamSource::with_settlement)) share it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine::redis::Settlement;
///
/// let settlement = Settlement::new();
/// assert_eq!(settlement.outstanding(), 0);
/// assert!(settlement.wait(Duration::ZERO));
/// ```
#[derive(Clone, Default)]
pub struct Settlement(Arc<Tally>);

#[derive(Default)]
struct Tally {
    issued: AtomicU64,
    /// Entries this source took over from other consumers' pending lists.
    reclaimed: AtomicU64,
    /// Entries this source moved to the dead-letter stream.
    dead_lettered: AtomicU64,
    /// Entries this source took back from its own pending list.
    recovered: AtomicU64,
    settled: Mutex<u64>,
    changed: Condvar,
}

impl Settlement {
    /// A settlement with nothing handed out.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries the sources of this settlement took over from other (dead)
    /// consumers' pending lists.
    pub fn reclaimed(&self) -> u64 {
        self.0.reclaimed.load(Ordering::Relaxed)
    }

    /// How many entries the sources of this settlement moved to the dead-letter stream.
    pub fn dead_lettered(&self) -> u64 {
        self.0.dead_lettered.load(Ordering::Relaxed)
    }

    /// How many entries the sources of this settlement took back from their own pending
    /// lists when they (re)connected: entries delivered to them in a reply that was lost, or
    /// left by an earlier run under the same consumer name. Entries still in the pipeline
    /// are never taken back, so none of these is a repeat of an item being worked on.
    pub fn recovered(&self) -> u64 {
        self.0.recovered.load(Ordering::Relaxed)
    }

    /// How many items were handed out and are not settled yet.
    pub fn outstanding(&self) -> u64 {
        let settled = *self.settled();
        self.0.issued.load(Ordering::SeqCst).saturating_sub(settled)
    }

    /// Waits until every item handed out so far is settled, for at most `timeout`; returns
    /// whether they are.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut settled = self.settled();
        loop {
            if *settled >= self.0.issued.load(Ordering::SeqCst) {
                return true;
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            settled = self
                .0
                .changed
                .wait_timeout(settled, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn settled(&self) -> MutexGuard<'_, u64> {
        lock(&self.0.settled)
    }

    /// Counts `n` entries taken over from other consumers.
    pub(crate) fn add_reclaimed(&self, n: u64) {
        self.0.reclaimed.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` entries taken back from the own pending list.
    pub(crate) fn add_recovered(&self, n: u64) {
        self.0.recovered.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` entries moved to the dead-letter stream.
    pub(crate) fn add_dead_lettered(&self, n: u64) {
        self.0.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn issue(&self) {
        self.0.issued.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn settle(&self, n: u64) {
        *self.settled() += n;
        self.0.changed.notify_all();
    }
}

impl fmt::Debug for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settlement")
            .field("outstanding", &self.outstanding())
            .finish()
    }
}
