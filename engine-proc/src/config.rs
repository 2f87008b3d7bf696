//! How a pool's or placed stage's workers are run: the settings, the defaults, and the
//! adaptive batch size.

use std::time::Duration;

use engine_core::plumbing::fit_batch;
use engine_core::{Restart, RestartPolicy};

/// The most tasks sent to a worker in one message, by default.
pub const DEFAULT_MAX_BATCH: usize = 1024;

/// How long a batch should keep a worker busy; batches grow or shrink towards it, so that
/// fast tasks travel in large batches and slow ones one by one.
const TARGET_BATCH_TIME: Duration = Duration::from_millis(1);
/// How many batches a worker has at most: one running, one waiting.
pub(crate) const DEPTH: usize = 2;

/// How the workers are run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) max_batch: usize,
    pub(crate) start_timeout: Duration,
    pub(crate) stop_timeout: Duration,
    /// When a worker that died is started again.
    pub(crate) restart: RestartPolicy,
    /// Replace a worker after it ran this many tasks.
    pub(crate) recycle_after: Option<u64>,
    /// Replace a worker whose resident memory passes this many bytes.
    pub(crate) max_memory: Option<u64>,
    /// The pool's or stage's name, for metrics.
    pub(crate) name: String,
}

/// The restart policy of pools and placed stages unless one is given: on failure, at most 10
/// restarts of a slot within 10 s, the first after 1 ms and doubling up to 1 s.
pub(crate) fn default_restart_policy() -> RestartPolicy {
    RestartPolicy::new(Restart::OnFailure)
        .limit(10, Duration::from_secs(10))
        .backoff(Duration::from_millis(1), Duration::from_secs(1))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            task_timeout: None,
            retries: 2,
            max_batch: DEFAULT_MAX_BATCH,
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            restart: default_restart_policy(),
            recycle_after: None,
            max_memory: None,
            name: "pool".to_owned(),
        }
    }
}

/// The next batch size: about [`TARGET_BATCH_TIME`] of work, growing at most fourfold.
pub(crate) fn next_batch(current: usize, done: usize, busy_nanos: u64, max: usize) -> usize {
    let took = Duration::from_nanos(busy_nanos);
    fit_batch(done.max(1), took, TARGET_BATCH_TIME, max).min(current.saturating_mul(4).max(1))
}
