//! The machinery under a pool and a placed stage: worker processes fed from one queue by a
//! driver thread each, with supervision (retries, replacement), stop, and results routed to
//! lanes (one per receiver).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use engine_core::protocol::{
    Address, Envelope, Frame, Kind, ProtocolError, TaskId, from_bytes, to_bytes,
};
use engine_core::{StageError, StopHandle, StopLevel, StopSubscription};
use ipc_channel::ipc::IpcSender;

use crate::boot::{self, Live, Spawned};
use crate::error::{ExitHow, SpawnError, TaskError};
use crate::pool::{Completion, DEFAULT_MAX_BATCH, TaskResult};
use crate::program::{INIT, Program, Reply, STOP, kind_of, pool_entry};
use crate::wire::{self, Packet, RecvError, send_envelope, send_frame};

/// How long a batch should keep a worker busy; batches grow or shrink towards it, so that
/// fast tasks travel in large batches and slow ones one by one.
const TARGET_BATCH_TIME: Duration = Duration::from_millis(1);
/// How many batches a worker has at most: one running, one waiting.
pub(crate) const DEPTH: usize = 2;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) worker_deaths: AtomicU64,
    pub(crate) respawns: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) corrupt_frames: AtomicU64,
}

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum State {
    Open,
    /// No new batches; what runs finishes until `deadline`, then workers are told to die.
    Closing,
    /// Workers are killed now.
    Killing,
}

/// A queued task, and the lane its result goes to.
pub(crate) struct Job<T> {
    id: TaskId,
    task: T,
    attempts: u32,
    lane: u32,
}

/// The receiving end of a lane: results in batches.
pub(crate) type Results<O> = Receiver<Vec<Completion<O>>>;

/// Running workers, and the receivers of their lanes.
pub(crate) type Started<W> = (Workers<W>, Vec<Results<<W as Program>::Output>>);

/// A result, with the lane it goes to.
type Routed<O> = (u32, TaskId, TaskResult<O>);

pub(crate) struct Queue<T> {
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
    /// The stop level forwarded to the workers.
    stop_level: StopLevel,
}

/// What the owner of the workers and their drivers share.
pub(crate) struct Shared<W: Program> {
    queue: Mutex<Queue<W::Task>>,
    wake: Condvar,
    /// Where results go, by lane: a pool has one, a placed stage one per engine thread.
    results: Vec<Sender<Vec<Completion<W::Output>>>>,
    pub(crate) counters: Counters,
    config: Config,
}

/// How the workers are run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) max_batch: usize,
    pub(crate) start_timeout: Duration,
    pub(crate) stop_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            task_timeout: None,
            retries: 2,
            max_batch: DEFAULT_MAX_BATCH,
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Program> Shared<W> {
    /// Sends results to their lanes.
    fn deliver(&self, results: Vec<Routed<W::Output>>) {
        if results.is_empty() {
            return;
        }
        let failed = results.iter().filter(|(_, _, r)| r.is_err()).count() as u64;
        self.counters
            .completed
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        self.counters.failed.fetch_add(failed, Ordering::Relaxed);
        if let [only] = self.results.as_slice() {
            let _ = only.send(results.into_iter().map(|(_, id, r)| (id, r)).collect());
            return;
        }
        let mut by_lane: Vec<Vec<Completion<W::Output>>> =
            self.results.iter().map(|_| Vec::new()).collect();
        for (lane, id, result) in results {
            if let Some(lane) = by_lane.get_mut(lane as usize) {
                lane.push((id, result));
            }
        }
        for (tx, results) in self.results.iter().zip(by_lane) {
            if !results.is_empty() {
                let _ = tx.send(results);
            }
        }
    }

    /// Queues up to `max` tasks from `tasks` for `lane` under one lock, numbering them from
    /// `next`, and wakes only drivers that wait; returns how many were taken. Once the
    /// workers are stopping, or none is left, the tasks' results are errors at once.
    pub(crate) fn submit(
        &self,
        lane: u32,
        next: &mut TaskId,
        tasks: &mut impl Iterator<Item = W::Task>,
        max: u64,
    ) -> u64 {
        let mut queue = lock(&self.queue);
        // Why tasks are refused: the workers are stopping, or none is left.
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
            let id = *next;
            *next = id.next();
            taken += 1;
            match &refused {
                Some(error) => refusals.push((lane, id, Err(error()))),
                None => queue.jobs.push_back(Job {
                    id,
                    task,
                    attempts: 0,
                    lane,
                }),
            }
        }
        let waiting = queue.waiting;
        drop(queue);
        self.deliver(refusals);
        if refused.is_none() {
            // Each waiting driver takes a batch: wake as many as there are tasks, at most.
            for _ in 0..taken.min(waiting as u64) {
                self.wake.notify_one();
            }
        }
        taken
    }

    /// Tells every live worker, and every worker started later, that the run is stopping at
    /// `level`, so that stage code there sees it in its context.
    pub(crate) fn forward_stop(&self, level: StopLevel) {
        let inboxes: Vec<IpcSender<Packet>> = {
            let mut queue = lock(&self.queue);
            if level <= queue.stop_level {
                return;
            }
            queue.stop_level = level;
            queue
                .workers
                .iter()
                .flatten()
                .map(|(_, tx, _)| tx.clone())
                .collect()
        };
        for tx in inboxes {
            let _ = send_stop(&tx, level);
        }
    }

    /// How the workers are run.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The pids of the live workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        lock(&self.queue)
            .workers
            .iter()
            .flatten()
            .map(|(pid, _, _)| *pid)
            .collect()
    }

    /// Sends raw bytes to the first live worker as if they were a frame; false if none is.
    pub(crate) fn inject_raw_frame(&self, bytes: Vec<u8>) -> bool {
        let queue = lock(&self.queue);
        let Some((_, tx, _)) = queue.workers.iter().flatten().next() else {
            return false;
        };
        tx.send(Packet::Frame(bytes)).is_ok()
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
                    failed.push((job.lane, job.id, Err(TaskError::Cancelled)));
                } else if job.attempts > self.config.retries {
                    failed.push((
                        job.lane,
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
    pub(crate) fn close(&self, state: State) {
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
                .map(|job| (job.lane, job.id, Err(TaskError::Cancelled)))
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

/// Running workers and their drivers. Dropping it stops them gracefully and waits for them.
pub(crate) struct Workers<W: Program> {
    pub(crate) shared: Arc<Shared<W>>,
    drivers: Vec<JoinHandle<()>>,
    stop: StopHandle,
    _subscription: StopSubscription,
}

impl<W: Program> Workers<W> {
    /// Starts one worker per init and waits until each is initialised; results go to
    /// `lanes` receivers. `stop` stops the workers: graceful lets running tasks finish, now
    /// kills at once; either is forwarded to the workers' stage code.
    pub(crate) fn start(
        inits: Vec<W::Init>,
        config: Config,
        lanes: usize,
        stop: StopHandle,
    ) -> Result<Started<W>, SpawnError> {
        Self::start_with(inits, config, lanes, stop, |shared, level| {
            shared.forward_stop(level);
            shared.close(if level >= StopLevel::Now {
                State::Killing
            } else {
                State::Closing
            });
        })
    }

    /// As [`start`](Self::start), with `on_stop` deciding what a stop does.
    pub(crate) fn start_with(
        inits: Vec<W::Init>,
        config: Config,
        lanes: usize,
        stop: StopHandle,
        on_stop: fn(&Shared<W>, StopLevel),
    ) -> Result<Started<W>, SpawnError> {
        if inits.is_empty() {
            return Err(SpawnError::Io(std::io::Error::other(
                "a pool needs at least one worker: call `worker` or `workers`",
            )));
        }
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..lanes.max(1)).map(|_| unbounded()).unzip();
        let shared = Arc::new(Shared::<W> {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                state: State::Open,
                deadline: None,
                live: 0,
                waiting: 0,
                given_up: 0,
                workers: (0..inits.len()).map(|_| None).collect(),
                stop_level: StopLevel::Running,
            }),
            wake: Condvar::new(),
            results: senders,
            counters: Counters::default(),
            config,
        });
        let subscription = {
            let shared = Arc::clone(&shared);
            stop.on_stop(move |level| on_stop(&shared, level))
        };
        let mut workers = Self {
            shared,
            drivers: Vec::new(),
            stop,
            _subscription: subscription,
        };
        let mut started = Vec::new();
        for (slot, init) in inits.into_iter().enumerate() {
            let init = to_bytes(&init).map_err(SpawnError::Protocol)?;
            let (ready_tx, ready) = bounded(1);
            let shared = Arc::clone(&workers.shared);
            let handle = thread::Builder::new()
                .name(format!("engine-proc-pool-{slot}"))
                .spawn(move || drive(&shared, slot, &init, &ready_tx))
                .map_err(SpawnError::Io)?;
            workers.drivers.push(handle);
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
                    ))));
                }
            }
        }
        match error {
            None => Ok((workers, receivers)),
            // Dropping the workers stops those that started.
            Some(error) => Err(error),
        }
    }

    /// How many worker slots there are.
    pub(crate) fn len(&self) -> usize {
        self.drivers.len()
    }

    /// The stop handle the workers follow.
    pub(crate) fn stop_handle(&self) -> &StopHandle {
        &self.stop
    }

    /// Stops the workers gracefully (running tasks finish, up to the stop timeout) and waits
    /// for their drivers.
    pub(crate) fn shutdown(&mut self) {
        self.shared.close(State::Closing);
        for driver in self.drivers.drain(..) {
            let _ = driver.join();
        }
    }
}

impl<W: Program> Drop for Workers<W> {
    fn drop(&mut self) {
        self.shutdown();
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
fn drive<W: Program>(
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
                            // The worker answers a batch's tasks in the order it got them.
                            shared.deliver(
                                done.jobs
                                    .iter()
                                    .zip(results)
                                    .map(|(job, (id, r))| {
                                        (job.lane, id, r.map_err(TaskError::Failed))
                                    })
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
                        .map(|j| (j.lane, j.id, Err(TaskError::TimedOut { after })))
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

fn cancel<T, O>(inflight: &mut VecDeque<InFlight<T>>) -> Vec<Routed<O>> {
    inflight
        .drain(..)
        .flat_map(|f| f.jobs)
        .map(|job| (job.lane, job.id, Err(TaskError::Cancelled)))
        .collect()
}

fn forget<W: Program>(shared: &Shared<W>, slot: usize) {
    let mut queue = lock(&shared.queue);
    if queue.workers[slot].take().is_some() {
        queue.live -= 1;
    }
}

/// After a death: retries the worker's tasks elsewhere and starts another worker in the
/// slot. `None` if none could be started (the slot is given up).
fn replace<W: Program>(
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
            .map(|j| (j.lane, j.id, Err(TaskError::NoWorkers(reason.clone()))))
            .collect(),
    );
    None
}

fn start_worker<W: Program>(
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
    let stop_level = queue.stop_level;
    drop(queue);
    if stop_level > StopLevel::Running {
        let _ = send_stop(&worker.tx, stop_level);
    }
    shared.wake.notify_all();
    Ok(worker)
}

fn send_batch<W: Program>(
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

/// Tells a worker the run's stop level.
fn send_stop(tx: &IpcSender<Packet>, level: StopLevel) -> Result<(), ProtocolError> {
    let envelope =
        Envelope::new(Address::Main, Address::Main, Kind::user(STOP)).with_body(&level)?;
    send_envelope(tx, envelope)
}

/// The next batch size: about [`TARGET_BATCH_TIME`] of work, growing at most fourfold.
fn next_batch(current: usize, done: usize, busy_nanos: u64, max: usize) -> usize {
    let per_task = (busy_nanos / done.max(1) as u64).max(1);
    let fit = (TARGET_BATCH_TIME.as_nanos() as u64 / per_task) as usize;
    fit.clamp(1, current.saturating_mul(4).max(1)).min(max)
}
