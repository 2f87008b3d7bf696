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
/// How many batches a placed stage's worker has at most: one running, one waiting.
pub(crate) const DEPTH: usize = 2;
/// How many batches a pool's worker has at most: one running, two waiting. With one
/// waiting, a worker that finished both before its driver thread got a core to send the next
/// went idle: with three, a pool of small tasks runs about a third faster on two cores. (A
/// placed stage keeps two: its batches of large items ran slower with three.)
pub(crate) const POOL_DEPTH: usize = 3;

/// The most tasks (or a placed stage's items) in a batch that count as a trickle: the thread
/// waiting for the worker's reply looks for it a while before it sleeps, so that a lone item
/// does not pay for waking it. A pool's driver polls for up to [`TRICKLE_POLL`]; a placed
/// stage's engine thread, which sent the trickle itself, watches for the reply instead of
/// the driver ([`WATCH_SPIN`], [`WATCH_POLL`]). Only one thread looks for a given reply: on
/// two cores, a second one would take the core the worker needs.
pub(crate) const TRICKLE_BATCH: u64 = 4;

/// How long a driver waiting for a trickle's reply polls before it sleeps.
pub(crate) const TRICKLE_POLL: Duration = Duration::from_micros(60);

/// How long a placed stage's engine thread, waiting for the reply to a trickle it sent
/// itself, spins before it yields between looks ...
pub(crate) const WATCH_SPIN: Duration = Duration::from_micros(30);

/// ... how long it looks before it sleeps on the worker ...
pub(crate) const WATCH_POLL: Duration = Duration::from_micros(150);

/// ... and how long it sleeps on the worker before it gives the batch to the worker's driver:
/// bounded, so that a task timeout, which the driver keeps, still fires in time.
pub(crate) const WATCH_WAIT: Duration = Duration::from_millis(1);

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
    /// Whether a worker leaves the others their share of a short queue (placed stages),
    /// rather than taking a whole batch (pools).
    pub(crate) share_short_queue: bool,
    /// How many batches a worker has at most ([`DEPTH`], [`POOL_DEPTH`]).
    pub(crate) depth: usize,
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
            share_short_queue: true,
            depth: DEPTH,
        }
    }
}

/// The next batch size: about [`TARGET_BATCH_TIME`] of work, growing at most fourfold.
pub(crate) fn next_batch(current: usize, done: usize, busy_nanos: u64, max: usize) -> usize {
    let took = Duration::from_nanos(busy_nanos);
    fit_batch(done.max(1), took, TARGET_BATCH_TIME, max).min(current.saturating_mul(4).max(1))
}

/// The setters that pools and placed stages share, defined once: expanded in the `impl` of
/// [`PoolBuilder`](crate::PoolBuilder) and of each placed stage, with `config` the path from
/// `self` to its [`Config`], `unit`/`units` what a worker is sent ("task" or "batch"),
/// `retries` the default retries, `timeout` the name of the per-unit timeout setter and
/// `recycle` what [`recycle_after`](crate::PoolBuilder::recycle_after) counts exactly.
macro_rules! worker_settings {
    (
        config: $($field:ident).+,
        unit: $unit:literal,
        units: $units:literal,
        retries: $retries:literal,
        timeout: $timeout:ident,
        recycle: $recycle:literal $(,)?
    ) => {
        #[doc = concat!(
            "How many more times a ", $unit, " is tried after its worker died (default ",
            $retries, "); after that it fails, saying how the worker ended."
        )]
        #[must_use]
        pub fn retries(mut self, retries: u32) -> Self {
            self.$($field).+.retries = retries;
            self
        }

        #[doc = concat!(
            "When a worker that died is started again, and how often at most: the restart ",
            "policy shared with pools, placed stages, routers and the pod. The default ",
            "restarts on failure, at most 10 times a worker within 10 s, after 1 ms doubling ",
            "up to 1 s; past the limit that worker stays gone, and once all are, the ",
            $units, " sent to them fail."
        )]
        #[must_use]
        pub fn restart(mut self, policy: engine_core::RestartPolicy) -> Self {
            self.$($field).+.restart = policy;
            self
        }

        #[doc = concat!(
            "Replaces each worker once it ran `n` of them (Python's `maxtasksperchild`), ",
            "between ", $units, ": ", $recycle, " Nothing is lost or run twice by it, and ",
            "the stage's `cleanup` and a new worker's `setup` run."
        )]
        #[must_use]
        pub fn recycle_after(mut self, n: u64) -> Self {
            self.$($field).+.recycle_after = Some(n.max(1));
            self
        }

        #[doc = concat!(
            "Replaces a worker between ", $units, ", as [`recycle_after`](Self::recycle_after) ",
            "does, once its resident memory passes `bytes` (read from `/proc` at most every ",
            "50 ms)."
        )]
        #[must_use]
        pub fn max_memory(mut self, bytes: u64) -> Self {
            self.$($field).+.max_memory = Some(bytes);
            self
        }

        #[doc = concat!(
            "Kills a worker whose ", $unit, " runs longer than `timeout` and starts another; ",
            "the ", $unit, " fails as timed out. With a timeout, each worker has one ", $unit,
            " at a time. Default: none."
        )]
        #[must_use]
        pub fn $timeout(mut self, timeout: std::time::Duration) -> Self {
            self.$($field).+.task_timeout = Some(timeout);
            self
        }

        /// How long a worker may take to start and connect (default 10 s).
        #[must_use]
        pub fn start_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.$($field).+.start_timeout = timeout;
            self
        }

        #[doc = concat!(
            "How long a stop waits for running ", $units, " and exiting workers before it ",
            "kills them (default 5 s)."
        )]
        #[must_use]
        pub fn stop_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.$($field).+.stop_timeout = timeout;
            self
        }
    };
}
pub(crate) use worker_settings;
