//! The machinery under a pool and a placed stage: worker processes fed from one queue by a
//! driver thread each, with supervision (retries, replacement), stop, and results routed to
//! lanes (one per receiver).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use engine_core::plumbing::{fit_batch, lock};
use engine_core::protocol::{Address, Envelope, Frame, Kind, ProtocolError, TaskId, to_bytes};
use engine_core::{Restart, RestartPolicy, StageError, StopHandle, StopLevel, StopSubscription};
use ipc_channel::ipc::IpcSender;

use crate::boot::{self, Live, Spawned};
use crate::codes::{INIT, STOP};
use crate::error::{ExitHow, SpawnError, TaskError};
use crate::pool::{Completion, DEFAULT_MAX_BATCH, TaskResult};
use crate::program::{Program, kind_of, pool_entry};
use crate::wire::{self, Packet, RecvError, send_envelope};

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
    pub(crate) recycles: AtomicU64,
}

/// The counters of one worker slot (the processes that held it, one after another), for
/// metrics. Updated per batch or event, never per task.
#[derive(Debug, Default)]
pub(crate) struct SlotCounters {
    pub(crate) tasks: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) deaths: AtomicU64,
    pub(crate) respawns: AtomicU64,
    pub(crate) recycles: AtomicU64,
}

/// One worker slot, as metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotSnapshot {
    pub(crate) tasks: u64,
    pub(crate) failed: u64,
    pub(crate) deaths: u64,
    pub(crate) respawns: u64,
    pub(crate) recycles: u64,
    /// Whether a live process holds the slot.
    pub(crate) up: bool,
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

impl<T> Job<T> {
    pub(crate) fn id(&self) -> TaskId {
        self.id
    }

    pub(crate) fn lane(&self) -> u32 {
        self.lane
    }

    pub(crate) fn task(&self) -> &T {
        &self.task
    }
}

/// A result, with the lane it goes to.
pub(crate) type Routed<O> = (u32, TaskId, TaskResult<O>);

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
    /// Per worker slot, for metrics.
    pub(crate) slots: Vec<SlotCounters>,
    config: Config,
}

#[cfg(feature = "metrics")]
impl<W: Program> crate::metrics::SlotSource for Shared<W> {
    fn read(&self) -> (String, Vec<SlotSnapshot>) {
        (self.config.name.clone(), self.slot_snapshots())
    }
}

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

impl<W: Program> Shared<W> {
    /// Sends results to their lanes.
    pub(crate) fn deliver(&self, results: Vec<Routed<W::Output>>) {
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

    /// Waits up to `wait` while the workers are open; false if they closed meanwhile.
    pub(crate) fn wait_while_open(&self, wait: Duration) -> bool {
        let queue = lock(&self.queue);
        let (queue, _) = self
            .wake
            .wait_timeout_while(queue, wait, |q| q.state == State::Open)
            .unwrap_or_else(PoisonError::into_inner);
        queue.state == State::Open
    }

    /// Gives a slot up for good; once every slot is given up, queued tasks fail with
    /// `reason`, since nobody is left to run them.
    pub(crate) fn give_up(&self, reason: &str) {
        let orphans: Vec<Job<W::Task>> = {
            let mut queue = lock(&self.queue);
            queue.given_up += 1;
            if queue.given_up == queue.workers.len() {
                queue.jobs.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        self.deliver(
            orphans
                .into_iter()
                .map(|j| (j.lane, j.id, Err(TaskError::NoWorkers(reason.to_owned()))))
                .collect(),
        );
    }

    /// Every slot's counters, and whether a live process holds it.
    pub(crate) fn slot_snapshots(&self) -> Vec<SlotSnapshot> {
        let up: Vec<bool> = lock(&self.queue)
            .workers
            .iter()
            .map(Option::is_some)
            .collect();
        self.slots
            .iter()
            .zip(up)
            .map(|(c, up)| SlotSnapshot {
                tasks: c.tasks.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                deaths: c.deaths.load(Ordering::Relaxed),
                respawns: c.respawns.load(Ordering::Relaxed),
                recycles: c.recycles.load(Ordering::Relaxed),
                up,
            })
            .collect()
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
    #[cfg(feature = "testing")]
    pub(crate) fn inject_raw_frame(&self, bytes: Vec<u8>) -> bool {
        let queue = lock(&self.queue);
        let Some((_, tx, _)) = queue.workers.iter().flatten().next() else {
            return false;
        };
        tx.send(Packet::Frame(bytes)).is_ok()
    }

    /// Takes up to `max` jobs holding at most `items` items (at least one job); waits for
    /// one if `block`. `None` once the pool closes.
    pub(crate) fn take(
        &self,
        max: usize,
        items: Option<u64>,
        block: bool,
    ) -> Option<Vec<Job<W::Task>>> {
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
                if let Some(budget) = items {
                    // The jobs that fit the budget; the one that reaches it is the last.
                    let mut held = 0_u64;
                    n = queue
                        .jobs
                        .iter()
                        .take(n)
                        .take_while(|job| {
                            let fits = held < budget;
                            held += W::weight(&job.task);
                            fits
                        })
                        .count()
                        .max(1);
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
    pub(crate) fn retry(&self, jobs: impl IntoIterator<Item = Job<W::Task>>, how: ExitHow) {
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

    pub(crate) fn state(&self) -> (State, Option<Instant>) {
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
            slots: (0..inits.len()).map(|_| SlotCounters::default()).collect(),
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
                .spawn(move || crate::driver::drive(&shared, slot, &init, &ready_tx))
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
pub(crate) struct InFlight<T> {
    pub(crate) jobs: Vec<Job<T>>,
    pub(crate) sent: Instant,
}

pub(crate) fn cancel<T, O>(inflight: &mut VecDeque<InFlight<T>>) -> Vec<Routed<O>> {
    inflight
        .drain(..)
        .flat_map(|f| f.jobs)
        .map(|job| (job.lane, job.id, Err(TaskError::Cancelled)))
        .collect()
}

pub(crate) fn forget<W: Program>(shared: &Shared<W>, slot: usize) {
    let mut queue = lock(&shared.queue);
    if queue.workers[slot].take().is_some() {
        queue.live -= 1;
    }
}

pub(crate) fn start_worker<W: Program>(
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

pub(crate) fn send_batch<W: Program>(
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
pub(crate) fn next_batch(current: usize, done: usize, busy_nanos: u64, max: usize) -> usize {
    let took = Duration::from_nanos(busy_nanos);
    fit_batch(done.max(1), took, TARGET_BATCH_TIME, max).min(current.saturating_mul(4).max(1))
}
