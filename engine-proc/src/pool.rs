//! The pool: identical worker processes, tasks in, `(task id, result)` out.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine_core::StopHandle;
use engine_core::protocol::{ProtocolError, TaskId, to_bytes};

use crate::config::{Config, POOL_DEPTH};
use crate::delivery;
use crate::error::{Completion, RecvTimeoutError, SpawnError, TaskError, TaskResult};
use crate::in_worker::{InItem, PlacedInit};
use crate::remote::RemoteTransport;
use crate::shared::Results;
use crate::workers::Workers;

mod results;

pub use results::{Completed, Ordered};

/// Live counters of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Tasks submitted.
    pub submitted: u64,
    /// Results delivered to the pool's owner (or waiting to be received).
    pub completed: u64,
    /// Results that are errors (of any kind).
    pub failed: u64,
    /// Times a task was handed to another worker after its worker died.
    pub retried: u64,
    /// Worker processes that ended unexpectedly (crash, kill, exit, timeout).
    pub worker_deaths: u64,
    /// Worker processes started to replace dead ones.
    pub respawns: u64,
    /// Tasks that ran past the task timeout.
    pub timeouts: u64,
    /// Corrupt frames reported by workers or received from them.
    pub corrupt_frames: u64,
    /// Worker processes replaced while well: after their task limit or above their memory
    /// limit ([`PoolBuilder::recycle_after`], [`PoolBuilder::max_memory`]).
    pub recycles: u64,
    /// Tasks that went to an idle worker straight from the thread that submitted them (a
    /// trickle, while every worker waits), without waiting for its driver thread to wake.
    pub handed: u64,
}

/// Builds a [`Pool`].
pub struct PoolBuilder<S: RemoteTransport> {
    /// Each worker's stage, encoded.
    stages: Vec<Vec<u8>>,
    /// The first stage that would not encode.
    error: Option<ProtocolError>,
    config: Config,
    stop: Option<StopHandle>,
    _stage: PhantomData<fn() -> S>,
}

impl<S: RemoteTransport> fmt::Debug for PoolBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("name", &self.config.name)
            .field("workers", &self.stages.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: RemoteTransport> PoolBuilder<S> {
    fn encode(&mut self, stage: &S) -> Option<Vec<u8>> {
        match to_bytes(stage) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                self.error.get_or_insert(error);
                None
            }
        }
    }

    /// Adds one worker process running `stage` (DumbPipelineBox's `add_worker(**kwargs)`:
    /// each worker may get a stage value of its own). The value is sent to the worker, whose
    /// `setup` runs once; a worker started again after a death gets the same value.
    #[must_use]
    pub fn worker(mut self, stage: S) -> Self {
        if let Some(bytes) = self.encode(&stage) {
            self.stages.push(bytes);
        }
        self
    }

    /// Adds `n` worker processes running the same stage value.
    #[must_use]
    pub fn workers(mut self, n: usize, stage: S) -> Self {
        if let Some(bytes) = self.encode(&stage) {
            self.stages.extend(std::iter::repeat_n(bytes, n));
        }
        self
    }

    /// The stage's name in the workers' [`StageContext`](engine_core::StageContext) and
    /// logs (default `"pool"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The most tasks sent to a worker in one message (default [`DEFAULT_MAX_BATCH`](crate::DEFAULT_MAX_BATCH)).
    /// Batches adapt below it: about a millisecond of work each, so slow tasks go one by one.
    #[must_use]
    pub fn max_batch(mut self, max: usize) -> Self {
        self.config.max_batch = max.max(1);
        self
    }

    crate::config::worker_settings! {
        config: config,
        unit: "task",
        units: "tasks",
        retries: "2",
        timeout: task_timeout,
        recycle: "it is sent no more than `n` tasks, and told to stop once they are all back.",
    }

    /// Stops the pool when `stop` is raised: a graceful stop lets running tasks finish, tells
    /// the workers to die and kills them after the stop timeout; a stop now kills at once.
    /// Queued tasks come back as [`TaskError::Cancelled`]. Pass it to
    /// [`install_signal_handler`](engine_core::install_signal_handler) for SIGINT/SIGTERM.
    #[must_use]
    pub fn stop_handle(mut self, stop: &StopHandle) -> Self {
        self.stop = Some(stop.clone());
        self
    }

    /// Starts every worker process and waits until each is initialised.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] if a worker cannot start (it names the cause: `init` missing in
    /// `main`, a handshake failure, the worker's own `init` error); the workers already
    /// started are stopped.
    pub fn start(self) -> Result<Pool<S>, SpawnError> {
        if let Some(error) = self.error {
            return Err(SpawnError::Protocol(error));
        }
        let n = self.stages.len();
        let inits = self
            .stages
            .into_iter()
            .enumerate()
            .map(|(index, stage)| PlacedInit::new(stage, &self.config.name, index, n, None))
            .collect();
        let (workers, mut results) =
            Workers::start(inits, self.config, 1, self.stop.unwrap_or_default())?;
        Ok(Pool {
            workers,
            results: results.pop().expect("one lane was asked for"),
            ready: delivery::IntoIter::default(),
            next: TaskId(0),
            submitted: 0,
            received: 0,
        })
    }
}

/// A pool of identical worker processes (DumbPipelineBox's `Master`, multipro_lab's task
/// queue).
///
/// Tasks get ids in submission order; results come back as `(id, result)`. Idle workers pull
/// batches from a shared queue, so a slow worker does not hoard tasks. A worker that dies is
/// noticed at once: its tasks go to another worker (up to the retry limit) and it is started
/// again. Dropping the pool stops it gracefully and reaps every worker.
///
/// Its code is a [`Transport`](engine_core::Transport), the trait the threaded engine runs:
/// each worker process gets the stage value, runs its `setup` once (as worker `i` of `N`),
/// `transport` per task and `cleanup` at the end. A task's result is its output; a task the
/// stage filters out (`Ok(None)`) is [`TaskError::Filtered`]. DumbPipelineBox's form, a
/// [`Worker`](crate::Worker) built from init arguments, is a `Transport` through
/// [`WorkerStage`](crate::WorkerStage).
///
/// Workers are this same binary: `main` must call [`init`](crate::init) on its first line.
///
/// ```no_run
/// # use engine::core::{StageContext, StageError, Transport};
/// # use engine::proc::Pool;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Add(u64);
///
/// impl Transport for Add {
///     type Input = u64;
///     type Output = u64;
///     fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
///         Ok(Some(x + self.0))
///     }
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     engine::proc::init();
///     let mut pool = Pool::builder().workers(2, Add(1)).start()?;
///     let plus_one: Vec<u64> = pool.map(0..1000).collect::<Result<_, _>>()?;
///     assert_eq!(plus_one[999], 1000);
///     for (id, result) in pool.run([5, 6, 7]) {
///         println!("task {id}: {result:?}");
///     }
///     Ok(())
/// }
/// ```
pub struct Pool<S: RemoteTransport> {
    workers: Workers<InItem<S>>,
    results: Results<Option<S::Output>>,
    /// The rest of the last batch of results received.
    ready: delivery::IntoIter<Option<S::Output>>,
    next: TaskId,
    submitted: u64,
    received: u64,
}

impl<S: RemoteTransport> fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers.len())
            .field("outstanding", &self.outstanding())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<S: RemoteTransport> Pool<S> {
    /// A builder; add workers with [`worker`](PoolBuilder::worker) or
    /// [`workers`](PoolBuilder::workers).
    pub fn builder() -> PoolBuilder<S> {
        PoolBuilder {
            stages: Vec::new(),
            error: None,
            config: Config {
                share_short_queue: false,
                depth: POOL_DEPTH,
                ..Config::default()
            },
            stop: None,
            _stage: PhantomData,
        }
    }

    /// Queues a task and returns its id. Once the pool is stopping, the task's result is
    /// [`TaskError::Cancelled`].
    pub fn submit(&mut self, task: S::Input) -> TaskId {
        let id = self.next;
        self.submit_from(&mut std::iter::once(task), 1);
        id
    }

    /// Queues up to `max` tasks from `tasks` under one lock, waking only drivers that wait;
    /// returns how many were taken.
    fn submit_from(&mut self, tasks: &mut impl Iterator<Item = S::Input>, max: u64) -> u64 {
        let taken = self.workers.shared.submit(0, &mut self.next, tasks, max);
        self.submitted += taken;
        taken
    }

    /// Submits from `tasks` until `window` are outstanding, once fewer than three quarters
    /// are: refilling in chunks keeps the lock and the wake-ups off the per-task path.
    pub(crate) fn top_up(&mut self, tasks: &mut impl Iterator<Item = S::Input>, window: u64) {
        if self.outstanding() < window - window / 4 {
            // Whole batches when there is room for one: a remainder would travel as a short
            // batch of its own (the mean batch was a tenth short of the largest).
            let room = window - self.outstanding();
            let batch = self.workers.shared.config().max_batch.max(1) as u64;
            self.submit_from(
                tasks,
                if room >= batch {
                    room - room % batch
                } else {
                    room
                },
            );
        }
    }

    /// The id the next submitted task gets.
    pub(crate) fn next_id(&self) -> TaskId {
        self.next
    }

    /// How many submitted tasks have not been received yet.
    pub fn outstanding(&self) -> u64 {
        self.submitted - self.received
    }

    /// The next result, in completion order; waits for it. `None` when no task is
    /// outstanding.
    #[inline]
    pub fn recv(&mut self) -> Option<(TaskId, TaskResult<S::Output>)> {
        // A result of the batch in hand costs a few instructions inlined here, where the
        // whole receive as a call per result was a tenth of a pool's CPU on small tasks.
        if let Some(completion) = self.ready.next() {
            return Some(self.received(completion));
        }
        self.recv_deadline(None).ok().flatten()
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] if nothing came in time,
    /// [`RecvTimeoutError::Disconnected`] if nothing can come any more.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Completion<S::Output>>, RecvTimeoutError> {
        self.recv_deadline(Instant::now().checked_add(timeout))
    }

    fn recv_deadline(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Completion<S::Output>>, RecvTimeoutError> {
        if self.outstanding() == 0 {
            return Ok(None);
        }
        // Results come in batches, taken one by one.
        let (id, result) = loop {
            if let Some(next) = self.ready.next() {
                break next;
            }
            self.ready = match deadline {
                None => self
                    .results
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected)?,
                Some(deadline) => self.results.recv_deadline(deadline)?,
            }
            .into_iter();
        };
        Ok(Some(self.received((id, result))))
    }

    /// Counts a result as received, and says a filtered task's result is an error.
    #[inline]
    fn received(&mut self, (id, result): Completion<Option<S::Output>>) -> Completion<S::Output> {
        self.received += 1;
        let result = match result {
            Ok(Some(output)) => Ok(output),
            Ok(None) => Err(TaskError::Filtered),
            Err(error) => Err(error),
        };
        (id, result)
    }

    /// Runs `tasks` and yields `(id, result)` pairs as they complete (DumbPipelineBox's
    /// `master.run(...)`). Tasks are submitted as the pool has room, so an endless iterator
    /// works; results of tasks submitted before are yielded too.
    pub fn run<I: IntoIterator<Item = S::Input>>(
        &mut self,
        tasks: I,
    ) -> Completed<'_, S, I::IntoIter> {
        Completed::new(self, tasks.into_iter())
    }

    /// Runs `tasks` and yields their results in the order of `tasks`. Other outstanding tasks
    /// must not exist (their results would be consumed); submit-and-receive and `map` are
    /// not meant to be mixed.
    pub fn map<I: IntoIterator<Item = S::Input>>(
        &mut self,
        tasks: I,
    ) -> Ordered<'_, S, I::IntoIter> {
        Ordered::new(self, tasks.into_iter())
    }

    /// How many tasks `run` and `map` keep outstanding: per worker, its batches in flight
    /// and room for six more of the largest between the queue and the owner, so that the
    /// queue still holds whole batches while results wait for the owner to take them.
    pub(crate) fn window(&self) -> u64 {
        let workers = self.workers.len() as u64;
        let config = self.workers.shared.config();
        (workers * (config.depth as u64 + 6) * config.max_batch as u64).max(64)
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let c = &self.workers.shared.counters;
        PoolStats {
            submitted: self.submitted,
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            worker_deaths: c.worker_deaths.load(Ordering::Relaxed),
            respawns: c.respawns.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            corrupt_frames: c.corrupt_frames.load(Ordering::Relaxed),
            recycles: c.recycles.load(Ordering::Relaxed),
            handed: c.handed.load(Ordering::Relaxed),
        }
    }

    /// The pool's worker processes as Prometheus metrics (feature `metrics`): per worker,
    /// tasks, failures, deaths, respawns, recycles, whether it is up, and its resident
    /// memory.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(&self) -> crate::WorkerMetrics {
        crate::WorkerMetrics::new(
            self.workers.shared.clone() as std::sync::Arc<dyn crate::metrics::SlotSource>
        )
    }

    /// The process ids of the live workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.shared.pids()
    }

    /// The pool's stop handle (its own unless one was given to the builder).
    pub fn stop_handle(&self) -> &StopHandle {
        self.workers.stop_handle()
    }

    /// Stops the pool: running tasks finish (up to the stop timeout), queued ones are
    /// cancelled, workers are told to die, and killed if they do not within the stop timeout.
    /// Returns the results not yet received, then the final counters.
    pub fn shutdown(mut self) -> (Vec<Completion<S::Output>>, PoolStats) {
        self.workers.shutdown();
        let mut rest = Vec::new();
        while let Some(result) = self.recv_timeout(Duration::ZERO).ok().flatten() {
            rest.push(result);
        }
        (rest, self.stats())
    }

    /// Sends raw bytes to the first live worker as if they were a frame: for tests of what a
    /// corrupt frame does (the worker reports it, the pool counts it, and both go on).
    /// Returns false if no worker is live. Only with the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn inject_raw_frame(&self, bytes: Vec<u8>) -> bool {
        self.workers.shared.inject_raw_frame(bytes)
    }
}
