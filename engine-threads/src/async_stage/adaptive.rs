//! Adaptive concurrency: an async stage that finds its own K, by additive increase and
//! multiplicative decrease on latency and errors (as Vector's adaptive request concurrency
//! does for its sinks, after TCP's congestion control).
//!
//! The stage measures each item's time from the moment it got its permit to the end of its
//! future. Over a window of about `limit` items it compares the median (which a few stray
//! slow items, a retransmitted connect say, do not move) with the lowest it
//! has seen (the baseline, which creeps up slowly so that a service that got slower for good is
//! followed): a smoothed median above [`TOLERANCE`] times the baseline, or any failed item, cuts the limit
//! to [`DECREASE`] of itself; a window that used the whole limit with the latency holding
//! raises it by one. The limit moves the stage's semaphore: permits are added at once, and
//! removed as they come back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use engine_core::plumbing::lock;
use tokio::sync::Semaphore;

/// A smoothed latency above this many times the baseline means the service is overloaded.
const TOLERANCE: f64 = 2.0;
/// The weight of a new window's median in the smoothed latency.
const SMOOTHING: f64 = 0.5;
/// The share of the limit kept on a cut.
const DECREASE: f64 = 0.9;
/// The baseline grows by this factor each window, so that it follows a service that slowed.
const BASELINE_CREEP: f64 = 1.02;
/// The limit an adaptive stage starts from, unless its maximum is lower.
const START: usize = 8;
/// The fewest items a window holds.
const MIN_WINDOW: u64 = 32;

/// The state of an adaptive stage's limit.
#[derive(Debug)]
pub(crate) struct Aimd {
    max: usize,
    /// Permits to remove as they come back, after a cut found them in use.
    debt: AtomicUsize,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    items: u64,
    /// The items' times, in seconds.
    samples: Vec<f64>,
    failed: u64,
    /// The most futures running at once during the window.
    peak: usize,
    /// The recent latency: window medians, smoothed, in seconds.
    smoothed: Option<f64>,
    /// The lowest smoothed latency seen (creeping up), in seconds.
    baseline: Option<f64>,
    /// Until the first overload the limit doubles each window (as TCP's slow start).
    overloaded_once: bool,
    /// After a cut, the next window's items started under the old limit: it is not judged.
    cooling: bool,
}

impl Aimd {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            debt: AtomicUsize::new(0),
            window: Mutex::new(Window::default()),
        }
    }

    /// The limit to start from.
    pub(crate) fn start(max: usize) -> usize {
        START.min(max).max(1)
    }

    /// Records one item's time and whether it failed; at the end of a window, moves `limit`
    /// and the semaphore's permits.
    pub(crate) fn record(
        &self,
        took: Duration,
        failed: bool,
        running: usize,
        limit: &AtomicUsize,
        permits: &Semaphore,
    ) {
        let current = limit.load(Ordering::Relaxed);
        let mut window = lock(&self.window);
        window.items += 1;
        window.samples.push(took.as_secs_f64());
        window.failed += u64::from(failed);
        window.peak = window.peak.max(running);
        if window.items < (current as u64).max(MIN_WINDOW) {
            return;
        }
        let middle = window.samples.len() / 2;
        let median = *window
            .samples
            .select_nth_unstable_by(middle, f64::total_cmp)
            .1;
        if window.cooling {
            // Start the smoothed latency afresh from what the cut limit gives.
            *window = Window {
                smoothed: Some(median),
                baseline: window.baseline,
                overloaded_once: true,
                ..Window::default()
            };
            return;
        }
        let smoothed = window
            .smoothed
            .map_or(median, |s| s + SMOOTHING * (median - s));
        let baseline = window
            .baseline
            .map_or(smoothed, |b| (b * BASELINE_CREEP).min(smoothed));
        let overloaded = window.failed > 0 || smoothed > baseline * TOLERANCE;
        let next = if overloaded {
            ((current as f64 * DECREASE) as usize)
                .min(current - 1)
                .max(1)
        } else if window.peak >= current && !window.overloaded_once {
            current.saturating_mul(2).min(self.max)
        } else if window.peak >= current {
            (current + 1).min(self.max)
        } else {
            current
        };
        *window = Window {
            smoothed: Some(smoothed),
            baseline: Some(baseline),
            overloaded_once: window.overloaded_once || overloaded,
            cooling: overloaded,
            ..Window::default()
        };
        drop(window);
        limit.store(next, Ordering::Relaxed);
        if next > current {
            permits.add_permits(next - current);
        } else if next < current {
            let cut = current - next;
            let removed = permits.forget_permits(cut);
            self.debt.fetch_add(cut - removed, Ordering::Relaxed);
        }
    }

    /// Whether a permit coming back should be removed (a cut found it in use).
    pub(crate) fn take_back(&self) -> bool {
        self.debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_window(aimd: &Aimd, limit: &AtomicUsize, permits: &Semaphore, took: Duration) {
        let n = limit.load(Ordering::Relaxed).max(MIN_WINDOW as usize);
        for _ in 0..n {
            aimd.record(took, false, limit.load(Ordering::Relaxed), limit, permits);
        }
    }

    #[test]
    fn the_limit_rises_while_latency_holds_and_falls_when_it_rises() {
        let aimd = Aimd::new(100);
        let limit = AtomicUsize::new(Aimd::start(100));
        let permits = Semaphore::new(Aimd::start(100));
        // Slow start: 8, 16, 32, 64, then a rise of latency cuts it to 57 ...
        for _ in 0..3 {
            run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        }
        assert_eq!(limit.load(Ordering::Relaxed), 64);
        run_window(&aimd, &limit, &permits, Duration::from_millis(20));
        run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        assert_eq!(limit.load(Ordering::Relaxed), 57);
        assert_eq!(permits.available_permits(), 57);
        // ... and once the latency holds again, it rises by one a window.
        for _ in 0..30 {
            run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        }
        assert!(
            (58..=100).contains(&limit.load(Ordering::Relaxed)),
            "{}",
            limit.load(Ordering::Relaxed)
        );
        assert_eq!(permits.available_permits(), limit.load(Ordering::Relaxed));
    }

    #[test]
    fn a_cut_of_permits_in_use_is_taken_back_as_they_return() {
        let aimd = Aimd::new(100);
        let limit = AtomicUsize::new(40);
        let permits = Semaphore::new(40);
        let held = permits.try_acquire_many(40).unwrap();
        for _ in 0..40 {
            aimd.record(Duration::from_millis(5), true, 40, &limit, &permits);
        }
        assert_eq!(limit.load(Ordering::Relaxed), 36);
        held.forget();
        assert!((0..4).all(|_| aimd.take_back()) && !aimd.take_back());
    }
}
