//! Live counts and times of one stage thread, published after each batch for the live
//! statistics, and what a consumer thread hands back when it ends.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engine_core::Counts;
use engine_core::plumbing::InFlight;

use crate::wait::Wait;

/// Live counts and times of one stage thread, written only by that thread, after each batch.
#[derive(Debug, Default)]
pub(crate) struct ThreadStats {
    input: AtomicU64,
    output: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    expanded: AtomicU64,
    busy_nanos: AtomicU64,
    blocked_nanos: AtomicU64,
    /// What the thread waits on now ([`Wait`]), for the stall report.
    wait: AtomicU8,
    /// What the thread's stage runs at once, if it says (an async stage).
    in_flight: OnceLock<Arc<dyn InFlight>>,
    /// Time spent waiting for input, in nanoseconds: in a marked read of a frontend's source
    /// ([`engine_core::waiting_for_input`]), or on a consumer's empty input queue.
    waited_input: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ThreadStats {
    /// Marks what the thread waits on now.
    #[inline]
    pub(crate) fn set_wait(&self, wait: Wait) {
        self.wait.store(wait as u8, Ordering::Relaxed);
    }

    /// Adds time the thread waited for input.
    pub(crate) fn add_input_wait(&self, waited: Duration) {
        self.waited_input
            .fetch_add(nanos(waited), Ordering::Relaxed);
    }

    /// Time the thread waited for input so far.
    pub(crate) fn waited_input(&self) -> Duration {
        Duration::from_nanos(self.waited_input.load(Ordering::Relaxed))
    }

    /// Notes where to read what the thread's stage runs at once.
    pub(crate) fn watch_in_flight(&self, in_flight: Arc<dyn InFlight>) {
        let _ = self.in_flight.set(in_flight);
    }

    /// Items the thread's stage runs now and its limit, if it says.
    pub(crate) fn in_flight(&self) -> Option<(u64, u64)> {
        self.in_flight
            .get()
            .map(|f| (f.running() as u64, f.limit() as u64))
    }

    /// What the thread waits on now.
    pub(crate) fn wait(&self) -> Wait {
        Wait::from_u8(self.wait.load(Ordering::Relaxed))
    }

    pub(crate) fn publish(&self, counts: &Counts, busy: Duration, blocked: Duration) {
        self.input.store(counts.input, Ordering::Relaxed);
        self.output.store(counts.output, Ordering::Relaxed);
        self.filtered.store(counts.filtered, Ordering::Relaxed);
        self.failed.store(counts.failed, Ordering::Relaxed);
        self.dropped.store(counts.dropped, Ordering::Relaxed);
        self.expanded.store(counts.expanded, Ordering::Relaxed);
        self.publish_times(busy, blocked);
    }

    /// Publishes the time the thread worked, and the time it waited for room downstream.
    pub(crate) fn publish_times(&self, busy: Duration, blocked: Duration) {
        self.busy_nanos.store(nanos(busy), Ordering::Relaxed);
        self.blocked_nanos.store(nanos(blocked), Ordering::Relaxed);
    }

    /// The time the thread worked, and the time it waited for room downstream.
    pub(crate) fn times(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)),
            Duration::from_nanos(self.blocked_nanos.load(Ordering::Relaxed)),
        )
    }

    pub(crate) fn read(&self) -> Counts {
        let mut counts = Counts::default();
        counts.input = self.input.load(Ordering::Relaxed);
        counts.output = self.output.load(Ordering::Relaxed);
        counts.filtered = self.filtered.load(Ordering::Relaxed);
        counts.failed = self.failed.load(Ordering::Relaxed);
        counts.dropped = self.dropped.load(Ordering::Relaxed);
        counts.expanded = self.expanded.load(Ordering::Relaxed);
        counts
    }
}

/// What a consumer thread did.
#[derive(Debug)]
pub(crate) struct ThreadResult {
    pub(crate) counts: Counts,
    pub(crate) busy: Duration,
}

/// A frontend's marked reads ([`engine_core::waiting_for_input`]) count here.
impl engine_core::plumbing::WaitSink for ThreadStats {
    fn begin_input_wait(&self) {
        self.set_wait(Wait::Input);
    }

    fn end_input_wait(&self, waited: Duration) {
        self.add_input_wait(waited);
        self.set_wait(Wait::Working);
    }
}
