//! The pool: identical worker processes, tasks in, `(task id, result)` out.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use engine_core::protocol::{Address, Envelope, Frame, Kind, TaskId, from_bytes, to_bytes};
use engine_core::{StageError, StopHandle, StopLevel, StopSubscription};

use crate::boot::{self, Live, Spawned};
use crate::error::{ExitHow, SpawnError, TaskError};
use crate::wire::{self, Packet, RecvError, send_envelope, send_frame};
use crate::worker::{INIT, Reply, Worker, kind_of, pool_entry};
use ipc_channel::ipc::IpcSender;

/// The most tasks sent to a worker in one message, by default.
pub const DEFAULT_MAX_BATCH: usize = 1024;
/// How long a batch should keep a worker busy; batches grow or shrink towards it, so that
/// fast tasks travel in large batches and slow ones one by one.
const TARGET_BATCH_TIME: Duration = Duration::from_millis(1);
/// How many batches a worker has at most: one running, one waiting.
const DEPTH: usize = 2;

/// A task's outcome as the pool delivers it.
pub type TaskResult<O> = Result<O, TaskError>;

/// A task's id and outcome.
pub type Completion<O> = (TaskId, TaskResult<O>);

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
}

#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    worker_deaths: AtomicU64,
    respawns: AtomicU64,
    timeouts: AtomicU64,
    corrupt_frames: AtomicU64,
}

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Open,
    /// No new batches; what runs finishes until `deadline`, then workers are told to die.
    Closing,
    /// Workers are killed now.
    Killing,
}

struct Job<T> {
    id: TaskId,
    task: T,
    attempts: u32,
}

struct Queue<T> {
    jobs: VecDeque<Job<T>>,
    state: State,
    deadline: Option<Instant>,
    /// Drivers with a live worker.
    live: usize,
    /// Drivers waiting for jobs.
    waiting: usize,
    /// Slots whose worker could not be started again: given up for good.
    given_up: usize,
    /// Pids and inboxes of live workers, by slot, for killing at once.
    workers: Vec<Option<(u32, IpcSender<Packet>, Live)>>,
}

struct Shared<W: Worker> {
    queue: Mutex<Queue<W::Task>>,
    wake: Condvar,
    results: Sender<Vec<(TaskId, TaskResult<W::Output>)>>,
    counters: Counters,
    config: Config,
}

#[derive(Debug, Clone)]
struct Config {
    task_timeout: Option<Duration>,
    retries: u32,
    max_batch: usize,
    start_timeout: Duration,
    stop_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Worker> Shared<W> {
    fn deliver(&self, results: Vec<(TaskId, TaskResult<W::Output>)>) {
        if results.is_empty() {
            return;
        }
        let failed = results.iter().filter(|(_, r)| r.is_err()).count() as u64;
        self.counters
            .completed
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        self.counters.failed.fetch_add(failed, Ordering::Relaxed);
        let _ = self.results.send(results);
    }

    /// Takes up to `max` jobs; waits for one if `block`. `None` once the pool closes.
    fn take(&self, max: usize, block: bool) -> Option<Vec<Job<W::Task>>> {
        let mut queue = lock(&self.queue);
        loop {
            if queue.state != State::Open {
                return None;
            }
            if !queue.jobs.is_empty() {
                // Leave a fair share for the other workers when the queue is short.
                let share = queue.jobs.len().div_ceil(queue.live.max(1));
                let mut n = max.min(share).max(1);
                // A task whose worker died runs alone, so that one task that kills its
                // worker does not take the tasks batched with it down too.
                if queue.jobs.front().is_some_and(|job| job.attempts > 0) {
                    n = 1;
                }
                return Some(queue.jobs.drain(..n).collect());
            }
            if !block {
                return Some(Vec::new());
            }
            queue.waiting += 1;
            queue = self
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            queue.waiting -= 1;
        }
    }

    /// Puts jobs whose worker died back at the front of the queue, or fails them when they
    /// have had their attempts (or the pool is closing).
    fn retry(&self, jobs: impl IntoIterator<Item = Job<W::Task>>, how: ExitHow) {
        let mut failed = Vec::new();
        {
            let mut queue = lock(&self.queue);
            for mut job in jobs {
                job.attempts += 1;
                if queue.state != State::Open {
                    failed.push((job.id, Err(TaskError::Cancelled)));
                } else if job.attempts > self.config.retries {
                    failed.push((
                        job.id,
                        Err(TaskError::WorkerDied {
                            how,
                            attempts: job.attempts,
                        }),
                    ));
                } else {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    queue.jobs.push_front(job);
                }
            }
        }
        self.wake.notify_all();
        self.deliver(failed);
    }

    fn state(&self) -> (State, Option<Instant>) {
        let queue = lock(&self.queue);
        (queue.state, queue.deadline)
    }

    /// Moves the pool to `state` (never back), cancelling queued jobs and killing workers as
    /// needed.
    fn close(&self, state: State) {
        let (cancelled, pids) = {
            let mut queue = lock(&self.queue);
            if state <= queue.state {
                return;
            }
            queue.state = state;
            if queue.deadline.is_none() {
                queue.deadline = Some(Instant::now() + self.config.stop_timeout);
            }
            let cancelled: Vec<_> = queue
                .jobs
                .drain(..)
                .map(|job| (job.id, Err(TaskError::Cancelled)))
                .collect();
            let pids: Vec<Live> = if state == State::Killing {
                queue
                    .workers
                    .iter()
                    .flatten()
                    .map(|(_, _, live)| live.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (cancelled, pids)
        };
        self.wake.notify_all();
        self.deliver(cancelled);
        for live in pids {
            live.signal(libc::SIGKILL);
        }
    }
}

/// Builds a [`Pool`].
pub struct PoolBuilder<W: Worker> {
    inits: Vec<W::Init>,
    config: Config,
    stop: Option<StopHandle>,
}

impl<W: Worker> fmt::Debug for PoolBuilder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.inits.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<W: Worker> PoolBuilder<W> {
    /// Adds one worker process, initialised from `init` (DumbPipelineBox's
    /// `add_worker(**kwargs)`). A worker started again after a death gets the same arguments.
    #[must_use]
    pub fn worker(mut self, init: W::Init) -> Self {
        self.inits.push(init);
        self
    }

    /// Adds `n` worker processes initialised from the same arguments.
    #[must_use]
    pub fn workers(mut self, n: usize, init: W::Init) -> Self
    where
        W::Init: Clone,
    {
        self.inits.extend(std::iter::repeat_n(init, n));
        self
    }

    /// Kills a worker whose task runs longer than `timeout` and starts another; the task's
    /// result is [`TaskError::TimedOut`]. With a timeout, each worker runs one task at a time
    /// (no batches). Default: none.
    #[must_use]
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// How many more times a task is tried after its worker died (default 2). After that its
    /// result is [`TaskError::WorkerDied`].
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.config.retries = retries;
        self
    }

    /// The most tasks sent to a worker in one message (default [`DEFAULT_MAX_BATCH`]).
    /// Batches adapt below it: about a millisecond of work each, so slow tasks go one by one.
    #[must_use]
    pub fn max_batch(mut self, max: usize) -> Self {
        self.config.max_batch = max.max(1);
        self
    }

    /// How long a worker may take to start and connect (default 10 s).
    #[must_use]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.config.start_timeout = timeout;
        self
    }

    /// How long a stop waits for running tasks and exiting workers before it kills them
    /// (default 5 s).
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.config.stop_timeout = timeout;
        self
    }

    /// Stops the pool when `stop` is raised: a graceful stop lets running tasks finish, tells
    /// the workers to die and kills them after the stop timeout; a stop now kills at once.
    /// Queued tasks come back as [`TaskError::Cancelled`]. Pass it to
    /// [`install_signal_handler`](engine_core::install_signal_handler) for SIGINT/SIGTERM.
    #[must_use]
    pub fn stop_handle(mut self, stop: StopHandle) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Starts every worker process and waits until each is initialised.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] if a worker cannot start (it names the cause: `init` missing in
    /// `main`, a handshake failure, the worker's own `init` error); the workers already
    /// started are stopped.
    pub fn start(self) -> Result<Pool<W>, SpawnError> {
        if self.inits.is_empty() {
            return Err(SpawnError::Io(std::io::Error::other(
                "a pool needs at least one worker: call `worker` or `workers`",
            )));
        }
        let (results_tx, results) = unbounded();
        let shared = Arc::new(Shared::<W> {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                state: State::Open,
                deadline: None,
                live: 0,
                waiting: 0,
                given_up: 0,
                workers: (0..self.inits.len()).map(|_| None).collect(),
            }),
            wake: Condvar::new(),
            results: results_tx,
            counters: Counters::default(),
            config: self.config,
        });
        let stop = self.stop.unwrap_or_default();
        let mut drivers = Vec::new();
        let mut started = Vec::new();
        for (slot, init) in self.inits.into_iter().enumerate() {
            let init = match to_bytes(&init) {
                Ok(init) => init,
                Err(e) => {
                    shared.close(State::Killing);
                    return Err(SpawnError::Protocol(e));
                }
            };
            let (ready_tx, ready) = bounded(1);
            let driver_shared = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name(format!("engine-proc-pool-{slot}"))
                .spawn(move || drive(&driver_shared, slot, &init, &ready_tx))
                .map_err(SpawnError::Io)?;
            drivers.push(handle);
            started.push(ready);
        }
        let mut error = None;
        for ready in started {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error = error.or(Some(e)),
                Err(_) => {
                    error = error.or(Some(SpawnError::Io(std::io::Error::other(
                        "a pool thread ended",
                    ))))
                }
            }
        }
        let subscription = {
            let shared = Arc::clone(&shared);
            stop.on_stop(move |level| {
                shared.close(if level >= StopLevel::Now {
                    State::Killing
                } else {
                    State::Closing
                });
            })
        };
        let pool = Pool {
            shared,
            drivers,
            results,
            ready: VecDeque::new(),
            next: TaskId(0),
            submitted: 0,
            received: 0,
            stop,
            _subscription: subscription,
            _worker: PhantomData,
        };
        match error {
            None => Ok(pool),
            Some(error) => {
                drop(pool);
                Err(error)
            }
        }
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
/// Workers are this same binary: `main` must call [`init`](crate::init) on its first line.
///
/// ```no_run
/// # use engine_core::StageError;
/// # use engine_proc::{Pool, Worker};
/// # struct Adder(u64);
/// # impl Worker for Adder {
/// #     type Init = u64; type Task = u64; type Output = u64;
/// #     fn init(offset: u64) -> Result<Self, StageError> { Ok(Adder(offset)) }
/// #     fn run(&mut self, task: u64) -> Result<u64, StageError> { Ok(task + self.0) }
/// # }
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     engine_proc::init();
///     let mut pool = Pool::<Adder>::builder().workers(2, 1).start()?;
///     let squares: Vec<u64> = pool.map(0..1000).collect::<Result<_, _>>()?;
///     assert_eq!(squares[999], 1000);
///     for (id, result) in pool.run([5, 6, 7]) {
///         println!("task {id}: {result:?}");
///     }
///     Ok(())
/// }
/// ```
pub struct Pool<W: Worker> {
    shared: Arc<Shared<W>>,
    drivers: Vec<JoinHandle<()>>,
    results: Receiver<Vec<(TaskId, TaskResult<W::Output>)>>,
    ready: VecDeque<(TaskId, TaskResult<W::Output>)>,
    next: TaskId,
    submitted: u64,
    received: u64,
    stop: StopHandle,
    _subscription: StopSubscription,
    _worker: PhantomData<fn() -> W>,
}

impl<W: Worker> fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.drivers.len())
            .field("outstanding", &self.outstanding())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<W: Worker> Pool<W> {
    /// A builder; add workers with [`worker`](PoolBuilder::worker) or
    /// [`workers`](PoolBuilder::workers).
    pub fn builder() -> PoolBuilder<W> {
        PoolBuilder {
            inits: Vec::new(),
            config: Config {
                task_timeout: None,
                retries: 2,
                max_batch: DEFAULT_MAX_BATCH,
                start_timeout: Duration::from_secs(10),
                stop_timeout: Duration::from_secs(5),
            },
            stop: None,
        }
    }

    /// Queues a task and returns its id. Once the pool is stopping, the task's result is
    /// [`TaskError::Cancelled`].
    pub fn submit(&mut self, task: W::Task) -> TaskId {
        let id = self.next;
        self.submit_from(&mut std::iter::once(task), 1);
        id
    }

    /// Queues up to `max` tasks from `tasks` under one lock, waking only drivers that wait;
    /// returns how many were taken.
    fn submit_from(&mut self, tasks: &mut impl Iterator<Item = W::Task>, max: u64) -> u64 {
        let mut queue = lock(&self.shared.queue);
        // Why tasks are refused: the pool is stopping, or it has no worker left.
        let refused: Option<fn() -> TaskError> = if queue.state != State::Open {
            Some(|| TaskError::Cancelled)
        } else if queue.given_up == queue.workers.len() {
            Some(|| TaskError::NoWorkers("every worker failed to restart".into()))
        } else {
            None
        };
        let mut taken = 0;
        let mut refusals = Vec::new();
        for task in tasks
            .by_ref()
            .take(usize::try_from(max).unwrap_or(usize::MAX))
        {
            let id = self.next;
            self.next = id.next();
            taken += 1;
            match &refused {
                Some(error) => refusals.push((id, Err(error()))),
                None => queue.jobs.push_back(Job {
                    id,
                    task,
                    attempts: 0,
                }),
            }
        }
        let waiting = queue.waiting;
        drop(queue);
        self.submitted += taken;
        self.shared.deliver(refusals);
        if refused.is_none() {
            // Each waiting driver takes a batch: wake as many as there are tasks, at most.
            for _ in 0..taken.min(waiting as u64) {
                self.shared.wake.notify_one();
            }
        }
        taken
    }

    /// Submits from `tasks` until `window` are outstanding, once fewer than three quarters
    /// are: refilling in chunks keeps the lock and the wake-ups off the per-task path.
    fn top_up(&mut self, tasks: &mut impl Iterator<Item = W::Task>, window: u64) {
        if self.outstanding() < window - window / 4 {
            self.submit_from(tasks, window - self.outstanding());
        }
    }

    /// How many submitted tasks have not been received yet.
    pub fn outstanding(&self) -> u64 {
        self.submitted - self.received
    }

    /// The next result, in completion order; waits for it. `None` when no task is
    /// outstanding.
    pub fn recv(&mut self) -> Option<(TaskId, TaskResult<W::Output>)> {
        self.recv_deadline(None).ok().flatten()
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] if nothing came in time.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Completion<W::Output>>, RecvTimeoutError> {
        self.recv_deadline(Instant::now().checked_add(timeout))
    }

    fn recv_deadline(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Completion<W::Output>>, RecvTimeoutError> {
        if self.outstanding() == 0 {
            return Ok(None);
        }
        if self.ready.is_empty() {
            let batch = match deadline {
                None => self
                    .results
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected)?,
                Some(deadline) => self.results.recv_deadline(deadline)?,
            };
            self.ready.extend(batch);
        }
        let next = self.ready.pop_front();
        if next.is_some() {
            self.received += 1;
        }
        Ok(next)
    }

    /// Runs `tasks` and yields `(id, result)` pairs as they complete (DumbPipelineBox's
    /// `master.run(...)`). Tasks are submitted as the pool has room, so an endless iterator
    /// works; results of tasks submitted before are yielded too.
    pub fn run<I: IntoIterator<Item = W::Task>>(
        &mut self,
        tasks: I,
    ) -> Completed<'_, W, I::IntoIter> {
        Completed {
            window: self.window(),
            pool: self,
            tasks: tasks.into_iter(),
        }
    }

    /// Runs `tasks` and yields their results in the order of `tasks`. Other outstanding tasks
    /// must not exist (their results would be consumed); submit-and-receive and `map` are
    /// not meant to be mixed.
    pub fn map<I: IntoIterator<Item = W::Task>>(
        &mut self,
        tasks: I,
    ) -> Ordered<'_, W, I::IntoIter> {
        Ordered {
            window: self.window(),
            first: self.next.0,
            pending: BTreeMap::new(),
            pool: self,
            tasks: tasks.into_iter(),
        }
    }

    /// How many tasks `run` and `map` keep outstanding.
    fn window(&self) -> u64 {
        let workers = self.drivers.len() as u64;
        (workers * (DEPTH as u64 + 2) * self.shared.config.max_batch as u64).max(64)
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        PoolStats {
            submitted: self.submitted,
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            worker_deaths: c.worker_deaths.load(Ordering::Relaxed),
            respawns: c.respawns.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            corrupt_frames: c.corrupt_frames.load(Ordering::Relaxed),
        }
    }

    /// The process ids of the live workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        lock(&self.shared.queue)
            .workers
            .iter()
            .flatten()
            .map(|(pid, _, _)| *pid)
            .collect()
    }

    /// The pool's stop handle (its own unless one was given to the builder).
    pub fn stop_handle(&self) -> &StopHandle {
        &self.stop
    }

    /// Stops the pool: running tasks finish (up to the stop timeout), queued ones are
    /// cancelled, workers are told to die, and killed if they do not within the stop timeout.
    /// Returns the results not yet received, then the final counters.
    pub fn shutdown(mut self) -> (Vec<Completion<W::Output>>, PoolStats) {
        self.shared.close(State::Closing);
        for driver in self.drivers.drain(..) {
            let _ = driver.join();
        }
        let mut rest = Vec::new();
        while let Some(result) = self.recv_timeout(Duration::ZERO).ok().flatten() {
            rest.push(result);
        }
        (rest, self.stats())
    }

    /// Sends raw bytes to the first live worker as if they were a frame: for tests of what a
    /// corrupt frame does (the worker reports it, the pool counts it, and both go on).
    /// Returns false if no worker is live.
    #[doc(hidden)]
    pub fn inject_raw_frame(&self, bytes: Vec<u8>) -> bool {
        let queue = lock(&self.shared.queue);
        let Some((_, tx, _)) = queue.workers.iter().flatten().next() else {
            return false;
        };
        tx.send(Packet::Frame(bytes)).is_ok()
    }
}

impl<W: Worker> Drop for Pool<W> {
    fn drop(&mut self) {
        self.shared.close(State::Closing);
        for driver in self.drivers.drain(..) {
            let _ = driver.join();
        }
    }
}

/// Results in completion order, from [`Pool::run`].
pub struct Completed<'p, W: Worker, I> {
    pool: &'p mut Pool<W>,
    tasks: I,
    window: u64,
}

impl<W: Worker, I> fmt::Debug for Completed<'_, W, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completed")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<W: Worker, I: Iterator<Item = W::Task>> Iterator for Completed<'_, W, I> {
    type Item = (TaskId, TaskResult<W::Output>);

    fn next(&mut self) -> Option<Self::Item> {
        self.pool.top_up(&mut self.tasks, self.window);
        self.pool.recv()
    }
}

/// Results in submission order, from [`Pool::map`].
pub struct Ordered<'p, W: Worker, I> {
    pool: &'p mut Pool<W>,
    tasks: I,
    window: u64,
    first: u64,
    pending: BTreeMap<u64, TaskResult<W::Output>>,
}

impl<W: Worker, I> fmt::Debug for Ordered<'_, W, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ordered")
            .field("pool", &self.pool)
            .field("next", &self.first)
            .field("held", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<W: Worker, I: Iterator<Item = W::Task>> Iterator for Ordered<'_, W, I> {
    type Item = TaskResult<W::Output>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(result) = self.pending.remove(&self.first) {
                self.first += 1;
                return Some(result);
            }
            self.pool.top_up(&mut self.tasks, self.window);
            let (id, result) = self.pool.recv()?;
            self.pending.insert(id.0, result);
        }
    }
}

/// What went to a worker and awaits its reply.
struct InFlight<T> {
    jobs: Vec<Job<T>>,
    sent: Instant,
}

/// A pool thread: starts its worker, feeds it batches, delivers results, replaces it when it
/// dies, and stops it at the end. The worker is spawned from this thread, which outlives it,
/// so the worker's parent-death signal fires only when the pool is gone.
fn drive<W: Worker>(
    shared: &Shared<W>,
    slot: usize,
    init: &[u8],
    ready: &Sender<Result<(), SpawnError>>,
) {
    let mut worker = match start_worker::<W>(shared, slot, init) {
        Ok(worker) => {
            let _ = ready.send(Ok(()));
            worker
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let mut batch = 1_usize;
    let mut inflight: VecDeque<InFlight<W::Task>> = VecDeque::new();
    let depth = if shared.config.task_timeout.is_some() {
        1
    } else {
        DEPTH
    };
    let max_batch = if shared.config.task_timeout.is_some() {
        1
    } else {
        shared.config.max_batch
    };
    loop {
        // Keep the worker fed: a batch running and one waiting.
        let mut closed = false;
        while inflight.len() < depth {
            let Some(jobs) = shared.take(batch, inflight.is_empty()) else {
                closed = true;
                break;
            };
            if jobs.is_empty() {
                break;
            }
            match send_batch::<W>(&worker, &jobs) {
                Ok(()) => inflight.push_back(InFlight {
                    jobs,
                    sent: Instant::now(),
                }),
                Err(_) => {
                    // The worker is gone; the receive below sees it.
                    inflight.push_back(InFlight {
                        jobs,
                        sent: Instant::now(),
                    });
                    break;
                }
            }
        }
        if inflight.is_empty() {
            if closed {
                break;
            }
            continue;
        }
        let (state, deadline) = shared.state();
        if state == State::Killing {
            break;
        }
        let timeout = match (shared.config.task_timeout, deadline) {
            (Some(t), Some(d)) => Some((inflight[0].sent + t).min(d)),
            (Some(t), None) => Some(inflight[0].sent + t),
            (None, d) => d,
        }
        .map(|at| at.saturating_duration_since(Instant::now()));
        match wire::recv_packet(&worker.rx, timeout).and_then(wire::open) {
            Ok(Frame::Message(envelope)) => match envelope.kind {
                Kind::Finished => {
                    let Some(done) = inflight.pop_front() else {
                        continue;
                    };
                    match from_bytes::<Reply<W::Output>>(&envelope.body) {
                        Ok((busy, results)) => {
                            batch = next_batch(batch, done.jobs.len(), busy, max_batch);
                            shared.deliver(
                                results
                                    .into_iter()
                                    .map(|(id, r)| (id, r.map_err(TaskError::Failed)))
                                    .collect(),
                            );
                        }
                        Err(error) => {
                            // The reply is corrupt: this worker cannot be trusted; replace it.
                            tracing::error!(
                                slot,
                                "a worker's reply does not decode: {error}; replacing it"
                            );
                            shared
                                .counters
                                .corrupt_frames
                                .fetch_add(1, Ordering::Relaxed);
                            inflight.push_front(done);
                            let how = worker.kill_and_wait();
                            worker = match replace(shared, slot, init, &mut inflight, how) {
                                Some(w) => w,
                                None => return,
                            };
                        }
                    }
                }
                Kind::Failed => {
                    // The worker could not read a frame (or a batch): it says so and goes on.
                    let error = envelope
                        .body::<StageError>()
                        .map_or_else(|e| e.to_string(), |e| format!("{e:#}"));
                    tracing::warn!(
                        slot,
                        pid = worker.pid,
                        "a worker reported a corrupt frame: {error}"
                    );
                    shared
                        .counters
                        .corrupt_frames
                        .fetch_add(1, Ordering::Relaxed);
                }
                other => tracing::warn!(slot, "unexpected {other} message from a worker"),
            },
            Ok(other) => tracing::warn!(slot, "unexpected {} from a worker", other.describe()),
            Err(RecvError::Timeout) => {
                let (state, _) = shared.state();
                if state != State::Open {
                    // The stop deadline passed: what runs is abandoned.
                    break;
                }
                let timed_out = inflight.pop_front().map(|f| f.jobs).unwrap_or_default();
                let after = shared.config.task_timeout.unwrap_or_default();
                tracing::warn!(
                    slot,
                    pid = worker.pid,
                    "a task ran longer than {after:?}; killing its worker"
                );
                shared
                    .counters
                    .timeouts
                    .fetch_add(timed_out.len() as u64, Ordering::Relaxed);
                let how = worker.kill_and_wait();
                // The death is counted and the replacement started before the result goes
                // out, so that counters read after it are settled.
                let next = replace(shared, slot, init, &mut inflight, how);
                shared.deliver(
                    timed_out
                        .into_iter()
                        .map(|j| (j.id, Err(TaskError::TimedOut { after })))
                        .collect(),
                );
                worker = match next {
                    Some(w) => w,
                    None => return,
                };
            }
            Err(RecvError::Protocol(error)) => {
                tracing::error!(slot, "a worker sent a corrupt frame: {error}; replacing it");
                shared
                    .counters
                    .corrupt_frames
                    .fetch_add(1, Ordering::Relaxed);
                let how = worker.kill_and_wait();
                worker = match replace(shared, slot, init, &mut inflight, how) {
                    Some(w) => w,
                    None => return,
                };
            }
            Err(RecvError::Closed | RecvError::Channel(_)) => {
                let how = worker
                    .wait_exit(Duration::from_secs(5))
                    .unwrap_or_else(|| worker.kill_and_wait());
                let (state, _) = shared.state();
                if state != State::Open {
                    shared.deliver(cancel(&mut inflight));
                    forget(shared, slot);
                    return;
                }
                tracing::warn!(
                    slot,
                    pid = worker.pid,
                    "a worker {how}; retrying its tasks and starting another"
                );
                worker = match replace(shared, slot, init, &mut inflight, how) {
                    Some(w) => w,
                    None => return,
                };
            }
        }
    }
    // The end: what is still in flight is cancelled, the worker told to die, and killed if
    // it does not in time.
    shared.deliver(cancel(&mut inflight));
    let _ = send_frame(
        &worker.tx,
        &Frame::Message(Envelope::new(Address::Main, Address::Main, Kind::Die)),
    );
    let (state, deadline) = shared.state();
    let wait = if state == State::Killing {
        Duration::ZERO
    } else {
        deadline.map_or(shared.config.stop_timeout, |d| {
            d.saturating_duration_since(Instant::now())
        })
    };
    if worker.wait_exit(wait).is_none() {
        worker.kill_and_wait();
    }
    forget(shared, slot);
}

fn cancel<T, O>(inflight: &mut VecDeque<InFlight<T>>) -> Vec<(TaskId, TaskResult<O>)> {
    inflight
        .drain(..)
        .flat_map(|f| f.jobs)
        .map(|job| (job.id, Err(TaskError::Cancelled)))
        .collect()
}

fn forget<W: Worker>(shared: &Shared<W>, slot: usize) {
    let mut queue = lock(&shared.queue);
    if queue.workers[slot].take().is_some() {
        queue.live -= 1;
    }
}

/// After a death: retries the worker's tasks elsewhere and starts another worker in the
/// slot. `None` if none could be started (the slot is given up).
fn replace<W: Worker>(
    shared: &Shared<W>,
    slot: usize,
    init: &[u8],
    inflight: &mut VecDeque<InFlight<W::Task>>,
    how: ExitHow,
) -> Option<Spawned> {
    shared
        .counters
        .worker_deaths
        .fetch_add(1, Ordering::Relaxed);
    forget(shared, slot);
    shared.retry(inflight.drain(..).flat_map(|f| f.jobs), how);
    let mut last = None;
    for attempt in 0..3_u32 {
        if shared.state().0 != State::Open {
            return None;
        }
        match start_worker::<W>(shared, slot, init) {
            Ok(worker) => {
                shared.counters.respawns.fetch_add(1, Ordering::Relaxed);
                return Some(worker);
            }
            Err(error) => {
                tracing::error!(slot, attempt, "cannot start a replacement worker: {error}");
                last = Some(error.to_string());
            }
        }
    }
    // Nobody left in this slot. If no slot is left at all, queued tasks cannot run.
    let orphans = {
        let mut queue = lock(&shared.queue);
        queue.given_up += 1;
        if queue.given_up == queue.workers.len() {
            queue.jobs.drain(..).collect()
        } else {
            Vec::new()
        }
    };
    let reason = last.unwrap_or_default();
    shared.deliver(
        orphans
            .into_iter()
            .map(|j| (j.id, Err(TaskError::NoWorkers(reason.clone()))))
            .collect(),
    );
    None
}

fn start_worker<W: Worker>(
    shared: &Shared<W>,
    slot: usize,
    init: &[u8],
) -> Result<Spawned, SpawnError> {
    let worker = boot::spawn(
        pool_entry::<W>,
        &kind_of::<W>(),
        shared.config.start_timeout,
    )?;
    let envelope = Envelope::new(
        Address::named(worker.pid.to_string()),
        Address::Main,
        Kind::user(INIT),
    )
    .with_raw_body(init.to_vec());
    if let Err(e) = send_envelope(&worker.tx, envelope) {
        worker.kill_and_wait();
        return Err(SpawnError::Protocol(e));
    }
    let outcome = match wire::recv_frame(&worker.rx) {
        Ok(Frame::Message(e)) if e.kind == Kind::Finished => Ok(()),
        Ok(Frame::Message(e)) if e.kind == Kind::Failed => Err(SpawnError::Init(
            e.body::<StageError>().unwrap_or_else(StageError::new),
        )),
        Ok(other) => Err(SpawnError::Protocol(
            engine_core::protocol::ProtocolError::UnexpectedFrame {
                expected: "the worker's init result",
                found: other.describe(),
            },
        )),
        Err(RecvError::Protocol(e)) => Err(SpawnError::Protocol(e)),
        Err(_) => Err(SpawnError::ExitedEarly {
            how: worker
                .wait_exit(Duration::from_secs(5))
                .unwrap_or(ExitHow::Unknown),
        }),
    };
    if let Err(error) = outcome {
        worker.kill_and_wait();
        return Err(error);
    }
    let mut queue = lock(&shared.queue);
    queue.workers[slot] = Some((worker.pid, worker.tx.clone(), worker.live()));
    queue.live += 1;
    drop(queue);
    shared.wake.notify_all();
    Ok(worker)
}

fn send_batch<W: Worker>(
    worker: &Spawned,
    jobs: &[Job<W::Task>],
) -> Result<(), engine_core::protocol::ProtocolError> {
    let tasks: Vec<(TaskId, &W::Task)> = jobs.iter().map(|j| (j.id, &j.task)).collect();
    let body = to_bytes(&tasks)?;
    let envelope = Envelope::new(
        Address::named(worker.pid.to_string()),
        Address::Main,
        Kind::Do,
    )
    .with_task(jobs[0].id)
    .with_raw_body(body);
    send_envelope(&worker.tx, envelope)
}

/// The next batch size: about [`TARGET_BATCH_TIME`] of work, growing at most fourfold.
fn next_batch(current: usize, done: usize, busy_nanos: u64, max: usize) -> usize {
    let per_task = (busy_nanos / done.max(1) as u64).max(1);
    let fit = (TARGET_BATCH_TIME.as_nanos() as u64 / per_task) as usize;
    fit.clamp(1, current.saturating_mul(4).max(1)).min(max)
}
