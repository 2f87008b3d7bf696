//! What the owner of a pool's or placed stage's workers and their driver threads share: the
//! queue of tasks, where the pool is in its life, the live workers, and the lanes results go
//! to.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use engine_core::StopLevel;
use engine_core::plumbing::lock;
use engine_core::protocol::TaskId;
use ipc_channel::ipc::IpcSender;

use crate::batch::{Batch, Chunk, Job, id_after};
use crate::boot::{Live, Replies, Spawned};
use crate::config::Config;
#[cfg(feature = "metrics")]
use crate::counters::SlotSnapshot;
use crate::counters::{Counters, SlotCounters};
use crate::delivery::Delivery;
use crate::error::{Completion, ExitHow, TaskError};
use crate::program::{Program, Reply};
use crate::wire::Packet;
use crate::wire::send_stop;

mod chunks;
mod handoff;

use chunks::Chunks;
pub(crate) use handoff::{Handed, Received, Taken, Watch};

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum State {
    Open,
    /// No new batches; what runs finishes until `deadline`, then workers are told to die.
    Closing,
    /// Workers are killed now.
    Killing,
}

/// The receiving end of a lane: results in batches.
pub(crate) type Results<O> = Receiver<Delivery<O>>;

pub(crate) use crate::batch::Routed;

pub(crate) struct Queue<T> {
    jobs: Chunks<T>,
    state: State,
    deadline: Option<Instant>,
    /// Drivers with a live worker.
    live: usize,
    /// The slots whose drivers wait for jobs and have not been woken, in the order they
    /// began to wait.
    waiting: Vec<usize>,
    /// Per slot: a batch the submitting thread sends to the slot's worker for its driver.
    handed: Vec<Handed<T>>,
    /// Slots whose worker could not be started again: given up for good.
    given_up: usize,
    /// Live workers, by slot, for stopping and killing them at once.
    workers: Vec<Option<LiveWorker>>,
    /// The stop level forwarded to the workers.
    stop_level: StopLevel,
}

/// A live worker as the owner of the workers sees it.
pub(crate) struct LiveWorker {
    pid: u32,
    /// Where its batches go (for tests that send it a corrupt frame).
    #[cfg_attr(
        not(feature = "testing"),
        allow(dead_code, reason = "read by a test hook")
    )]
    inbox: IpcSender<Packet>,
    /// Where its stop levels go: read by a thread of its own in the worker, so a stop
    /// reaches the stage while a batch runs.
    control: IpcSender<Packet>,
    /// What it sends, for a thread that watches for the reply to a trickle it sent.
    replies: Replies,
    /// For killing it.
    live: Live,
}

/// What the owner of the workers and their drivers share.
pub(crate) struct Shared<W: Program> {
    queue: Mutex<Queue<W::Task>>,
    /// Per slot: where its driver waits.
    wakes: Vec<Condvar>,
    /// Where results go, by lane: a pool has one, a placed stage one per engine thread.
    results: Vec<Sender<Delivery<W::Output>>>,
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

impl<W: Program> Shared<W> {
    /// Nothing queued, no worker live yet, `slots` slots, results to `results`.
    pub(crate) fn new(
        slots: usize,
        results: Vec<Sender<Delivery<W::Output>>>,
        config: Config,
    ) -> Self {
        Self {
            queue: Mutex::new(Queue {
                jobs: Chunks::new(),
                state: State::Open,
                deadline: None,
                live: 0,
                waiting: Vec::new(),
                handed: (0..slots).map(|_| Handed::None).collect(),
                given_up: 0,
                workers: (0..slots).map(|_| None).collect(),
                stop_level: StopLevel::Running,
            }),
            wakes: (0..slots).map(|_| Condvar::new()).collect(),
            results,
            counters: Counters::default(),
            slots: (0..slots).map(|_| SlotCounters::default()).collect(),
            config,
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
        self.send_to_lanes(results);
    }

    /// Sends counted results to their lanes.
    fn send_to_lanes(&self, results: impl IntoIterator<Item = Routed<W::Output>>) {
        if let [only] = self.results.as_slice() {
            let made = results.into_iter().map(|(_, id, r)| (id, r)).collect();
            let _ = only.send(Delivery::Made(made));
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
                let _ = tx.send(Delivery::Made(results));
            }
        }
    }

    /// Sends a worker's answers to a batch to their lanes: `reply` answers `batch`, and
    /// [`Reply::check`] found it whole.
    pub(crate) fn deliver_batch(
        &self,
        slot: usize,
        batch: &Batch<W::Task>,
        reply: Reply<W::Output>,
    ) {
        let lane = batch.chunks().first().map_or(0, |chunk| chunk.lane);
        let answers = self.count_answers(slot, batch, reply);
        if !batch.chunks().iter().all(|chunk| chunk.lane == lane) {
            let results = batch
                .routes()
                .zip(answers)
                .map(|((lane, _), (id, result))| (lane, id, result));
            self.send_to_lanes(results);
            return;
        }
        // One lane (always in a pool): the answers go as they are, without routing.
        if let Some(tx) = self.results.get(lane as usize) {
            let _ = tx.send(answers);
        }
    }

    /// Counts a worker's answers to a batch of `slot` as completed, and gives them.
    fn count_answers(
        &self,
        slot: usize,
        batch: &Batch<W::Task>,
        reply: Reply<W::Output>,
    ) -> Delivery<W::Output> {
        let n = batch.len() as u64;
        let failed = reply.failures.len() as u64;
        self.slots[slot].batch(n, failed);
        self.counters.completed.fetch_add(n, Ordering::Relaxed);
        self.counters.failed.fetch_add(failed, Ordering::Relaxed);
        Delivery::Answered {
            ids: batch.ids(),
            failures: reply.failures,
            outputs: reply.outputs,
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
        self.queue_tasks(lane, next, tasks, max, false).0
    }

    /// Submits one task as task `id` for `lane`, as [`submit`](Self::submit) does; when it is
    /// a trickle sent straight to an idle worker, the caller watches for the reply itself
    /// (see [`Watch`]), unless the workers' memory is checked (their drivers read it after
    /// each reply).
    pub(crate) fn submit_watched(
        &self,
        lane: u32,
        id: TaskId,
        task: W::Task,
    ) -> Option<Watch<W::Task>> {
        let watch = self.config.max_memory.is_none();
        let mut next = id;
        self.queue_tasks(lane, &mut next, &mut std::iter::once(task), 1, watch)
            .1
    }

    /// [`submit`](Self::submit), and the watch of a trickle sent straight to an idle worker
    /// when `watch`.
    fn queue_tasks(
        &self,
        lane: u32,
        next: &mut TaskId,
        tasks: &mut impl Iterator<Item = W::Task>,
        max: u64,
        watch: bool,
    ) -> (u64, Option<Watch<W::Task>>) {
        // One relaxed load without a trace hook.
        let trace = engine_core::trace::current_batch().map(Arc::new);
        // The chunks are made before the lock is taken, so that the drivers never wait for
        // the tasks' iterator, and the lock is held to queue them only: chunks of the
        // largest batch, which a driver takes whole. A chunk keeps the tasks as they come,
        // numbered from its first id.
        let mut left = usize::try_from(max).unwrap_or(usize::MAX);
        let mut chunks: Vec<Chunk<W::Task>> = Vec::new();
        let mut first = *next;
        while left > 0 {
            let want = left.min(self.config.max_batch.max(1));
            let tasks: Vec<W::Task> = tasks.by_ref().take(want).collect();
            // A short chunk: the tasks ran out (and are not asked for once more).
            let ended = tasks.len() < want;
            left -= tasks.len();
            let n = tasks.len();
            if !tasks.is_empty() {
                chunks.push(Chunk {
                    first,
                    tasks,
                    attempts: 0,
                    lane,
                    trace: trace.clone(),
                });
            }
            first = id_after(first, n);
            if ended {
                break;
            }
        }
        *next = first;
        let taken = chunks.iter().map(|chunk| chunk.tasks.len()).sum::<usize>() as u64;
        let mut queue = lock(&self.queue);
        // Why tasks are refused: the workers are stopping, or none is left.
        let refused: Option<fn() -> TaskError> = if queue.state != State::Open {
            Some(|| TaskError::Cancelled)
        } else if queue.given_up == queue.workers.len() {
            Some(|| TaskError::NoWorkers("every worker failed to restart".into()))
        } else {
            None
        };
        if let Some(error) = refused {
            drop(queue);
            self.deliver(
                chunks
                    .into_iter()
                    .flat_map(Chunk::into_jobs)
                    .map(|job| job.failed(error()))
                    .collect(),
            );
            return (taken, None);
        }
        if let Some(idle) = self.idle_slot(&mut queue, &chunks) {
            drop(queue);
            return (taken, self.hand(idle, chunks.into_iter().collect(), watch));
        }
        for chunk in chunks {
            queue.jobs.push_back(chunk);
        }
        // Each waiting driver takes a batch: wake as many as there are tasks, at most. A
        // woken driver leaves the list, so that the next submission wakes another.
        let n = queue
            .waiting
            .len()
            .min(usize::try_from(taken).unwrap_or(usize::MAX));
        let woken: Vec<usize> = queue.waiting.drain(..n).collect();
        drop(queue);
        for slot in woken {
            self.wakes[slot].notify_one();
        }
        (taken, None)
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
                .map(|w| w.control.clone())
                .collect()
        };
        for tx in inboxes {
            let _ = send_stop(&tx, level);
        }
    }

    /// Waits up to `wait` while the workers are open (as the driver of `slot`); false if
    /// they closed meanwhile.
    pub(crate) fn wait_while_open(&self, slot: usize, wait: Duration) -> bool {
        let queue = lock(&self.queue);
        let (queue, _) = self.wakes[slot]
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
                queue.jobs.take_all().collect()
            } else {
                Vec::new()
            }
        };
        self.deliver(
            orphans
                .into_iter()
                .map(|j| j.failed(TaskError::NoWorkers(reason.to_owned())))
                .collect(),
        );
    }

    /// Every slot's counters, whether a live process holds it, and that process's memory
    /// (read from `/proc` after the queue's lock is let go: a scrape never holds up the
    /// drivers for it).
    #[cfg(feature = "metrics")]
    pub(crate) fn slot_snapshots(&self) -> Vec<SlotSnapshot> {
        let pids: Vec<Option<u32>> = lock(&self.queue)
            .workers
            .iter()
            .map(|w| w.as_ref().map(|w| w.pid))
            .collect();
        self.slots
            .iter()
            .zip(pids)
            .map(|(c, pid)| c.snapshot(pid))
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
            .map(|w| w.pid)
            .collect()
    }

    /// Sends raw bytes to the first live worker as if they were a frame; false if none is.
    #[cfg(feature = "testing")]
    pub(crate) fn inject_raw_frame(&self, bytes: Vec<u8>) -> bool {
        let queue = lock(&self.queue);
        let Some(worker) = queue.workers.iter().flatten().next() else {
            return false;
        };
        worker.inbox.send(Packet::Frame(bytes)).is_ok()
    }

    /// Takes, as the driver of `slot`, up to `max` tasks holding at most `items` items (at
    /// least one task), or a batch the submitting thread sent for it; waits for one if
    /// `block`.
    pub(crate) fn take(
        &self,
        slot: usize,
        max: usize,
        items: Option<u64>,
        block: bool,
    ) -> Taken<W::Task> {
        let mut queue = lock(&self.queue);
        loop {
            match std::mem::replace(&mut queue.handed[slot], Handed::None) {
                // Sent by the submitting thread: in flight now, even if the pool closed.
                Handed::Sent(sent, received) => return Taken::Sent(sent, received),
                // Being sent, or watched by the thread that sent it: what this driver sends
                // must go after it.
                handed @ (Handed::Sending | Handed::Watched) => {
                    queue.handed[slot] = handed;
                    queue = self.wakes[slot]
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                Handed::None => {}
            }
            if queue.state != State::Open {
                return Taken::Closed;
            }
            if !queue.jobs.is_empty() {
                // Leave a fair share for the other workers when the queue is short (placed
                // stages, whose jobs are whole engine batches). A pool's batches are about a
                // millisecond of work at most, so a full one costs the others little, while
                // splitting a short queue made its small tasks travel in small batches.
                let share = if self.config.share_short_queue {
                    queue.jobs.len().div_ceil(queue.live.max(1))
                } else {
                    queue.jobs.len()
                };
                let mut n = max.min(share).max(1);
                // A task whose worker died runs alone, so that one task that kills its
                // worker does not take the tasks batched with it down too.
                if queue
                    .jobs
                    .front_attempts()
                    .is_some_and(|attempts| attempts > 0)
                {
                    n = 1;
                }
                if let Some(budget) = items {
                    // The tasks that fit the budget; the one that reaches it is the last.
                    let mut held = 0_u64;
                    n = queue
                        .jobs
                        .tasks()
                        .take(n)
                        .take_while(|task| {
                            let fits = held < budget;
                            held += W::weight(task);
                            fits
                        })
                        .count()
                        .max(1);
                }
                return Taken::Tasks(queue.jobs.take(n));
            }
            if !block {
                return Taken::Tasks(Batch::default());
            }
            queue.waiting.push(slot);
            queue = self.wakes[slot]
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            // Woken by another than a submitter (or spuriously): no longer waiting.
            queue.waiting.retain(|&s| s != slot);
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
                    failed.push(job.failed(TaskError::Cancelled));
                } else if job.attempts > self.config.retries {
                    failed.push(job.failed(TaskError::WorkerDied {
                        how,
                        attempts: job.attempts,
                    }));
                } else {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    queue.jobs.push_front(job);
                }
            }
        }
        self.wake_all();
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
                .take_all()
                .map(|job| job.failed(TaskError::Cancelled))
                .collect();
            let pids: Vec<Live> = if state == State::Killing {
                queue
                    .workers
                    .iter()
                    .flatten()
                    .map(|w| w.live.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (cancelled, pids)
        };
        self.wake_all();
        self.deliver(cancelled);
        for live in pids {
            live.signal(libc::SIGKILL);
        }
    }

    /// Records the new worker of `slot` as live, with `control` where its stop levels go,
    /// tells it the stop level if the run is stopping already, and wakes the drivers.
    pub(crate) fn register(
        &self,
        slot: usize,
        worker: &Spawned<Replies>,
        control: IpcSender<Packet>,
    ) {
        let mut queue = lock(&self.queue);
        let stop_level = queue.stop_level;
        if stop_level > StopLevel::Running {
            let _ = send_stop(&control, stop_level);
        }
        queue.workers[slot] = Some(LiveWorker {
            pid: worker.pid,
            inbox: worker.tx.clone(),
            control,
            replies: Arc::clone(&worker.rx),
            live: worker.live(),
        });
        queue.live += 1;
        drop(queue);
        self.wake_all();
    }

    /// Wakes every driver.
    fn wake_all(&self) {
        for wake in &self.wakes {
            wake.notify_all();
        }
    }

    /// Forgets the worker of `slot`: it is gone, or going.
    pub(crate) fn forget(&self, slot: usize) {
        let mut queue = lock(&self.queue);
        if queue.workers[slot].take().is_some() {
            queue.live -= 1;
        }
    }
}
