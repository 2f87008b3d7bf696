//! Adaptive concurrency: an async stage that finds its own K, by additive increase and
//! multiplicative decrease on latency and errors (as Vector's adaptive request concurrency
//! does for its sinks, after TCP's congestion control).
//!
//! The stage measures each item's time from the moment it got its permit to the end of its
//! future. Over a window of about `limit` items it compares the median (which a few stray
//! slow items, a retransmitted connect say, do not move), smoothed over windows, with the
//! low end of the last [`HISTORY`] windows (the baseline: a service that got slower for good
//! is followed, and the limit's own rise, one step a window, does not drag it along).
//!
//! - Until the latency first rises, the limit doubles each window that used it all (as TCP's
//!   slow start); a smoothed latency above [`SLOW_START_TOLERANCE`] times the baseline ends
//!   that, and from then on a window that used the whole limit with the latency holding
//!   raises it by one.
//! - A smoothed latency above [`TOLERANCE`] times the baseline in two windows in a row (one
//!   alone holds the limit: a stall of a loaded machine looks the same) cuts the limit to
//!   [`DECREASE`] of itself; [`SEVERE`] times above the tolerated latency, in proportion to
//!   how far above it is (to half at most), so that an overshoot far into overload is undone
//!   in a few windows rather than a few dozen. A failed item cuts it to [`DECREASE`]. The window after a cut is not judged: its items started under the
//!   old limit.
//!
//! The limit moves the stage's semaphore: permits are added at once, and removed as they
//! come back.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use engine_core::plumbing::lock;
use tokio::sync::Semaphore;

/// A smoothed latency above this many times the baseline means the service is overloaded.
const TOLERANCE: f64 = 1.5;
/// A smoothed latency above this many times the baseline ends the slow start.
const SLOW_START_TOLERANCE: f64 = 1.25;
/// The most a cut keeps of the limit, and what a failed item keeps.
/// The weight of a new window's median in the smoothed latency.
const SMOOTHING: f64 = 0.5;
const DECREASE: f64 = 0.9;
/// The least a cut keeps of the limit.
const MOST_DECREASE: f64 = 0.5;
/// A smoothed latency this many times the tolerated one is an overshoot, cut in proportion.
const SEVERE: f64 = 2.0;
/// How many windows' latencies the baseline is drawn from, so that it follows a service that
/// slowed for good.
const HISTORY: usize = 64;
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
    /// The recent windows' smoothed latencies, whose low end is the baseline.
    history: History,
    /// Until the latency first rises the limit doubles each window (as TCP's slow start).
    slow_start_over: bool,
    /// After a cut, the next window's items started under the old limit: it is not judged.
    cooling: bool,
    /// The window before was above the tolerance: a second in a row is an overload (one
    /// alone is as likely a stall of the machine as of the service).
    strike: bool,
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
            // Start the smoothed latency afresh from what the cut limit gives; a latency still
            // above the tolerance counts as a first strike.
            let strike = window
                .history
                .baseline()
                .is_some_and(|b| median > b * TOLERANCE);
            let mut history = std::mem::take(&mut window.history);
            history.push(median);
            *window = Window {
                smoothed: Some(median),
                history,
                slow_start_over: true,
                strike,
                ..Window::default()
            };
            return;
        }
        let smoothed = window
            .smoothed
            .map_or(median, |s| s + SMOOTHING * (median - s));
        let mut history = std::mem::take(&mut window.history);
        history.push(smoothed);
        let baseline = history.baseline().unwrap_or(smoothed);
        let over = smoothed > baseline * TOLERANCE;
        let overloaded = window.failed > 0 || (over && window.strike);
        let used = window.peak >= current;
        let rising = smoothed > baseline * SLOW_START_TOLERANCE;
        let next = if overloaded {
            // A latency far above the tolerance (an overshoot) is cut in proportion; a
            // moderate one, as likely noise of a loaded machine, by the least step.
            let tolerated = baseline * TOLERANCE;
            let keep = if window.failed > 0 || smoothed < tolerated * SEVERE {
                DECREASE
            } else {
                (tolerated / smoothed).clamp(MOST_DECREASE, DECREASE)
            };
            ((current as f64 * keep) as usize).min(current - 1).max(1)
        } else if over {
            current
        } else if used && !window.slow_start_over && !rising {
            current.saturating_mul(2).min(self.max)
        } else if used {
            (current + 1).min(self.max)
        } else {
            current
        };
        *window = Window {
            smoothed: Some(smoothed),
            history,
            slow_start_over: window.slow_start_over || overloaded || rising,
            cooling: overloaded,
            strike: over && !overloaded,
            ..Window::default()
        };
        drop(window);
        if next != current {
            tracing::debug!(
                from = current,
                to = next,
                latency_ms = smoothed * 1e3,
                baseline_ms = baseline * 1e3,
                "an adaptive async stage moved its limit"
            );
        }
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

/// The smoothed latencies of the last [`HISTORY`] windows.
#[derive(Debug, Default)]
struct History(VecDeque<f64>);

impl History {
    fn push(&mut self, latency: f64) {
        if self.0.len() == HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(latency);
    }

    /// The latency the service gives when not loaded: the low end of the recent windows (the
    /// tenth percentile, so that one window lucky on a noisy machine does not set it).
    fn baseline(&self) -> Option<f64> {
        let mut sorted: Vec<f64> = self.0.iter().copied().collect();
        let at = sorted.len() / 10;
        (!sorted.is_empty()).then(|| *sorted.select_nth_unstable_by(at, f64::total_cmp).1)
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
        // Slow start: 8, 16, 32, 64, then latency eight times the baseline (an overshoot)
        // cuts it in proportion, to half at most ...
        for _ in 0..3 {
            run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        }
        assert_eq!(limit.load(Ordering::Relaxed), 64);
        // One window above the tolerance holds the limit; the second cuts it.
        run_window(&aimd, &limit, &permits, Duration::from_millis(40));
        assert_eq!(limit.load(Ordering::Relaxed), 64);
        run_window(&aimd, &limit, &permits, Duration::from_millis(40));
        run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        assert_eq!(limit.load(Ordering::Relaxed), 32);
        assert_eq!(permits.available_permits(), 32);
        // A moderate rise (smoothed within twice the tolerated latency) cuts by the least
        // step.
        run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        let before = limit.load(Ordering::Relaxed);
        run_window(&aimd, &limit, &permits, Duration::from_millis(12));
        run_window(&aimd, &limit, &permits, Duration::from_millis(12));
        assert_eq!(
            limit.load(Ordering::Relaxed),
            (before as f64 * DECREASE) as usize
        );
        run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        // ... and once the latency holds again, it rises by one a window.
        for _ in 0..30 {
            run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        }
        assert!(
            (33..=100).contains(&limit.load(Ordering::Relaxed)),
            "{}",
            limit.load(Ordering::Relaxed)
        );
        assert_eq!(permits.available_permits(), limit.load(Ordering::Relaxed));
    }

    #[test]
    fn an_overshoot_far_into_overload_is_undone_in_a_few_windows() {
        let aimd = Aimd::new(1_024);
        let limit = AtomicUsize::new(Aimd::start(1_024));
        let permits = Semaphore::new(Aimd::start(1_024));
        for _ in 0..6 {
            run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        }
        assert_eq!(limit.load(Ordering::Relaxed), 512);
        // The service answers in a second at 512: each judged window halves the limit.
        for _ in 0..6 {
            run_window(&aimd, &limit, &permits, Duration::from_secs(1));
        }
        assert!(limit.load(Ordering::Relaxed) <= 64, "{limit:?}");
    }

    #[test]
    fn a_latency_that_rises_step_by_step_with_the_limit_is_still_cut() {
        let aimd = Aimd::new(100);
        let limit = AtomicUsize::new(64);
        let permits = Semaphore::new(64);
        for _ in 0..5 {
            run_window(&aimd, &limit, &permits, Duration::from_millis(5));
        }
        assert_eq!(limit.load(Ordering::Relaxed), 100);
        // Each window 3% slower than the one before (as a limit rising a step a window would
        // make it): the baseline does not follow, and within 30 windows the limit is cut.
        let mut lowest = 100;
        for i in 1..=30 {
            let took = Duration::from_secs_f64(0.005 * 1.03_f64.powi(i));
            run_window(&aimd, &limit, &permits, took);
            lowest = lowest.min(limit.load(Ordering::Relaxed));
        }
        assert!(lowest < 100, "never cut");
    }

    #[test]
    fn a_rising_latency_ends_the_slow_start_without_a_cut() {
        let aimd = Aimd::new(1_024);
        let limit = AtomicUsize::new(Aimd::start(1_024));
        let permits = Semaphore::new(Aimd::start(1_024));
        run_window(&aimd, &limit, &permits, Duration::from_millis(10));
        assert_eq!(limit.load(Ordering::Relaxed), 16);
        // 1.4 times the baseline, smoothed 1.2: below the tolerance, above the slow start's.
        run_window(&aimd, &limit, &permits, Duration::from_millis(14));
        assert_eq!(limit.load(Ordering::Relaxed), 32);
        run_window(&aimd, &limit, &permits, Duration::from_millis(16));
        assert_eq!(limit.load(Ordering::Relaxed), 33);
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
