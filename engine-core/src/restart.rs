//! One restart policy for everything that starts something again after it ended: a pool's or
//! placed stage's worker processes, a router's named workers, a pod's beans.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// When something that ended is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Restart {
    /// Never: the end is final.
    #[default]
    Never,
    /// When it failed (an error, a panic, a crash, an exit code other than 0).
    OnFailure,
    /// Whenever it ended, unless a stop was asked for.
    Always,
}

/// A restart policy: when to restart, how often at most within a window, and how long to wait
/// before each restart.
///
/// The limit is the supervisor lesson of Erlang and supervisord: a crash loop must stop. More
/// than [`max_restarts`](Self::max_restarts) restarts within [`within`](Self::within) and the
/// thing stays down. The wait before a restart starts at [`backoff`](Self::backoff) and doubles
/// for each restart in a row, up to [`max_backoff`](Self::max_backoff); a run that lasted
/// longer than twice the first wait ends the row.
///
/// The same value configures a pool (`PoolBuilder::restart`), a placed stage
/// (`ProcTransport::restart`), a router (`RouterBuilder::restart`) and a pod's bean
/// (`BeanSpec::restart`, or `restart = { ... }` in the pod's config file, where durations are
/// written like `"10s"` or `"250ms"`).
///
/// ```
/// use std::time::Duration;
/// use engine::core::{Restart, RestartPolicy};
///
/// let policy = RestartPolicy::new(Restart::OnFailure)
///     .limit(3, Duration::from_secs(60))
///     .backoff(Duration::from_millis(100), Duration::from_secs(5));
/// assert_eq!(policy.max_restarts, 3);
/// assert_eq!(policy.delay(1), Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// When to restart.
    pub when: Restart,
    /// The most restarts within [`within`](Self::within).
    pub max_restarts: u32,
    /// The window for `max_restarts`.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// The wait before the first restart of a row.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// The longest wait between restarts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    /// Never restart; once turned on, at most 5 restarts a minute, waiting 100 ms doubling up
    /// to 10 s.
    fn default() -> Self {
        Self {
            when: Restart::Never,
            max_restarts: 5,
            within: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RestartPolicy {
    /// A policy restarting `when`, with the default limits.
    pub fn new(when: Restart) -> Self {
        Self {
            when,
            ..Self::default()
        }
    }

    /// Sets the most restarts within a window.
    #[must_use]
    pub fn limit(mut self, max_restarts: u32, within: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.within = within;
        self
    }

    /// Sets the first and the longest wait between restarts (the longest is at least the
    /// first).
    #[must_use]
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// The wait before restart number `n` of a row (0-based): the first wait, doubled `n`
    /// times, at most the longest.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use engine::core::{Restart, RestartPolicy};
    /// let policy = RestartPolicy::new(Restart::Always)
    ///     .backoff(Duration::from_millis(100), Duration::from_millis(700));
    /// let waits: Vec<u128> = (0..5).map(|n| policy.delay(n).as_millis()).collect();
    /// assert_eq!(waits, [100, 200, 400, 700, 700]);
    /// ```
    pub fn delay(&self, n: u32) -> Duration {
        self.backoff
            .checked_mul(1_u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// A fresh history of restarts under this policy, for one supervised thing.
    pub fn tracker(&self) -> RestartTracker {
        RestartTracker {
            policy: *self,
            recent: VecDeque::new(),
            in_a_row: 0,
            started: None,
        }
    }
}

/// What a [`RestartTracker`] decides when the thing it watches ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartDecision {
    /// Start it again after waiting this long.
    Restart {
        /// The wait first.
        after: Duration,
    },
    /// The policy does not restart this end (never, or a success under on-failure, or a stop
    /// was asked for).
    Stay,
    /// The policy would restart, but the limit is reached: it stays down.
    LimitReached {
        /// The restarts within the window.
        restarts: u32,
    },
}

/// The restart history of one supervised thing (a worker slot, a router's worker, a bean)
/// under a [`RestartPolicy`].
///
/// ```
/// use std::time::{Duration, Instant};
/// use engine::core::{Restart, RestartDecision, RestartPolicy};
///
/// let policy = RestartPolicy::new(Restart::OnFailure)
///     .limit(2, Duration::from_secs(60))
///     .backoff(Duration::ZERO, Duration::ZERO);
/// let mut tracker = policy.tracker();
/// let now = Instant::now();
/// tracker.started(now);
/// assert_eq!(tracker.ended(false, false, now), RestartDecision::Stay); // a success
/// assert_eq!(tracker.ended(true, false, now), RestartDecision::Restart { after: Duration::ZERO });
/// assert_eq!(tracker.ended(true, false, now), RestartDecision::Restart { after: Duration::ZERO });
/// assert_eq!(tracker.ended(true, false, now), RestartDecision::LimitReached { restarts: 2 });
/// ```
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    in_a_row: u32,
    started: Option<Instant>,
}

impl RestartTracker {
    /// The policy it follows.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Notes that the thing (re)started at `at`.
    pub fn started(&mut self, at: Instant) {
        self.started = Some(at);
    }

    /// Decides what to do now that the thing ended at `now`: `failed` says how it ended,
    /// `stopping` that a stop was asked for (nothing restarts then). A restart it decides on
    /// counts against the limit.
    pub fn ended(&mut self, failed: bool, stopping: bool, now: Instant) -> RestartDecision {
        let wanted = match self.policy.when {
            Restart::Never => false,
            Restart::OnFailure => failed,
            Restart::Always => true,
        };
        if !wanted || stopping {
            return RestartDecision::Stay;
        }
        let within = self.policy.within;
        self.recent
            .retain(|t| now.saturating_duration_since(*t) < within);
        if self.recent.len() >= self.policy.max_restarts as usize {
            return RestartDecision::LimitReached {
                restarts: u32::try_from(self.recent.len()).unwrap_or(u32::MAX),
            };
        }
        // A run that lasted longer than twice the first wait ends the row.
        if self.started.is_some_and(|s| {
            now.saturating_duration_since(s) > self.policy.backoff.saturating_mul(2)
        }) {
            self.in_a_row = 0;
        }
        let after = self.policy.delay(self.in_a_row);
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.recent.push_back(now);
        RestartDecision::Restart { after }
    }

    /// The restarts decided on within the window, as of `now`.
    pub fn restarts(&self, now: Instant) -> usize {
        self.recent
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.policy.within)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_old_restarts() {
        let policy = RestartPolicy::new(Restart::Always)
            .limit(1, Duration::from_secs(10))
            .backoff(Duration::ZERO, Duration::ZERO);
        let mut tracker = policy.tracker();
        let t0 = Instant::now();
        assert!(matches!(
            tracker.ended(false, false, t0),
            RestartDecision::Restart { .. }
        ));
        assert!(matches!(
            tracker.ended(false, false, t0 + Duration::from_secs(1)),
            RestartDecision::LimitReached { restarts: 1 }
        ));
        assert!(matches!(
            tracker.ended(false, false, t0 + Duration::from_secs(11)),
            RestartDecision::Restart { .. }
        ));
        assert_eq!(tracker.ended(true, true, t0), RestartDecision::Stay);
    }

    #[test]
    fn a_long_run_ends_the_row_of_backoffs() {
        let policy = RestartPolicy::new(Restart::OnFailure)
            .limit(100, Duration::from_secs(600))
            .backoff(Duration::from_millis(100), Duration::from_secs(10));
        let mut tracker = policy.tracker();
        let t0 = Instant::now();
        tracker.started(t0);
        let waits: Vec<_> = (0..3)
            .map(|_| match tracker.ended(true, false, t0) {
                RestartDecision::Restart { after } => after.as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(waits, [100, 200, 400]);
        tracker.started(t0);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            tracker.ended(true, false, later),
            RestartDecision::Restart {
                after: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn policies_read_from_config_text() {
        let policy: RestartPolicy = crate::protocol::from_bytes(
            &crate::protocol::to_bytes(&RestartPolicy::new(Restart::OnFailure)).unwrap(),
        )
        .unwrap();
        assert_eq!(policy, RestartPolicy::new(Restart::OnFailure));
    }
}
