//! Retrying what a reconnect or a short wait can cure, with a capped exponential backoff that
//! gives up after a budget and wakes at once when the run is aborted.

use std::time::{Duration, Instant};

use engine_core::{StopHandle, StopLevel};

use crate::error::{Chain, Error, Result};

/// The first pause after a failure.
const FIRST_DELAY: Duration = Duration::from_millis(10);
/// The longest pause between attempts.
const MAX_DELAY: Duration = Duration::from_millis(500);

/// The backoff of one operation being retried.
#[derive(Debug)]
pub(crate) struct Backoff {
    started: Instant,
    delay: Duration,
    first: Duration,
    max: Duration,
    budget: Duration,
}

impl Backoff {
    /// A backoff for reconnecting: 10 ms doubling up to 500 ms, for `budget` in all.
    pub(crate) fn new(budget: Duration) -> Self {
        Self::with_delays(budget, FIRST_DELAY, MAX_DELAY)
    }

    /// A backoff from `first` doubling up to `max`, for `budget` in all.
    pub(crate) fn with_delays(budget: Duration, first: Duration, max: Duration) -> Self {
        Self {
            started: Instant::now(),
            delay: first,
            first,
            max,
            budget,
        }
    }

    /// Pauses before the next attempt after `error`.
    ///
    /// # Errors
    ///
    /// [`Error::GaveUp`] with `error` once the budget is spent, [`Error::Aborted`] if `stop`
    /// reaches [`StopLevel::Now`] (checked before and during the pause).
    pub(crate) fn pause(&mut self, error: Error, stop: Option<&StopHandle>) -> Result<()> {
        let waited = self.started.elapsed();
        if waited >= self.budget {
            return Err(Error::GaveUp {
                waited,
                source: Box::new(error),
            });
        }
        let delay = self.delay.min(self.budget - waited);
        self.delay = (self.delay * 2).min(self.max);
        match stop {
            Some(stop) => {
                if stop.wait_for_level(StopLevel::Now, Some(delay)).is_some() {
                    return Err(Error::Aborted);
                }
            }
            // A pause between attempts, not a synchronisation: nothing else can end it.
            None => std::thread::sleep(delay),
        }
        Ok(())
    }

    /// Starts the backoff afresh after progress.
    pub(crate) fn reset(&mut self) {
        self.started = Instant::now();
        self.delay = self.first;
    }
}

/// Runs `op` until it succeeds, fails for good, or retryable failures outlast `budget`.
///
/// # Errors
///
/// The first error that is not [retryable](Error::is_retryable), or as [`Backoff::pause`].
pub(crate) fn retrying<T>(
    what: &str,
    budget: Duration,
    stop: Option<&StopHandle>,
    mut op: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut backoff = Backoff::new(budget);
    let mut failed = false;
    loop {
        match op() {
            Ok(value) => {
                if failed {
                    tracing::info!("{what}: the broker is back");
                }
                return Ok(value);
            }
            Err(error) if error.is_retryable() => {
                if !failed {
                    tracing::warn!(error = %Chain(&error), "{what}: retrying");
                    failed = true;
                }
                backoff.pause(error, stop)?;
            }
            Err(error) => return Err(error),
        }
    }
}
