//! A driver thread: starts its slot's worker, feeds it batches, delivers results, replaces it
//! when it dies (under the restart policy) or when it is due for recycling, and stops it at
//! the end. One method per event, so that each reads alone.
//!
//! The worker is spawned from this thread, which outlives it, so the worker's parent-death
//! signal fires only when the pool is gone.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use engine_core::plumbing::lock;
use engine_core::protocol::{Address, Envelope, Frame, Kind};
use engine_core::{RestartDecision, RestartTracker, StageError};

use crate::batch::{Batch, InFlight, encode_batch, send_batch, weight};
use crate::boot::{Replies, Spawned};
use crate::config::{TRICKLE_BATCH, TRICKLE_POLL, next_batch};
use crate::counters::Event;
use crate::error::{ExitHow, SpawnError, TaskError};
use crate::program::{Program, Reply};
use crate::shared::{Received, Shared, State, Taken};
use crate::wire::{self, Packet, RecvError, send_frame};
use crate::worker_io::{cancel, start_worker, unencodable};

/// How often at most a worker's resident memory is read, for the memory limit.
const MEMORY_CHECK_EVERY: Duration = Duration::from_millis(50);

/// What the driver does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Go on.
    Go,
    /// The pool is stopping: stop the worker and end.
    End,
    /// The slot's worker is gone for good (the pool is stopping, or no worker can be started
    /// under the restart policy): end at once.
    Gone,
}

/// Runs slot `slot` until the pool ends; `ready` hears whether its first worker started.
pub(crate) fn drive<W: Program>(
    shared: &Shared<W>,
    slot: usize,
    init: &[u8],
    ready: &Sender<Result<(), SpawnError>>,
) {
    let worker = match start_worker::<W>(shared, slot, init) {
        Ok(worker) => {
            let _ = ready.send(Ok(()));
            worker
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let mut driver = Driver::new(shared, slot, init, worker);
    loop {
        match driver.step() {
            Step::Go => {}
            Step::End => return driver.finish(),
            Step::Gone => return,
        }
    }
}

/// Why a worker is replaced although it is well.
#[derive(Debug, Clone, Copy)]
enum Recycle {
    Tasks(u64),
    Memory(u64),
}

struct Driver<'a, W: Program> {
    shared: &'a Shared<W>,
    slot: usize,
    init: &'a [u8],
    worker: Spawned<Replies>,
    inflight: VecDeque<InFlight<W::Task>>,
    /// What the thread that watched the first batch in flight received for it and left.
    pending: Option<Received>,
    /// The size of the next batch, adapted to the worker's speed.
    batch: usize,
    depth: usize,
    max_batch: usize,
    restarts: RestartTracker,
    /// Tasks sent to the current worker.
    sent: u64,
    last_memory_check: Instant,
    /// Set once the worker is due for replacement: no new batches go to it, and it is
    /// replaced once every batch it has came back.
    recycle: Option<Recycle>,
}

impl<'a, W: Program> Driver<'a, W> {
    fn new(shared: &'a Shared<W>, slot: usize, init: &'a [u8], worker: Spawned<Replies>) -> Self {
        let config = shared.config();
        let one_by_one = config.task_timeout.is_some();
        let mut restarts = config.restart.tracker();
        restarts.started(Instant::now());
        Self {
            shared,
            slot,
            init,
            worker,
            inflight: VecDeque::new(),
            pending: None,
            batch: 1,
            depth: if one_by_one { 1 } else { config.depth },
            max_batch: if one_by_one { 1 } else { config.max_batch },
            restarts,
            sent: 0,
            last_memory_check: Instant::now(),
            recycle: None,
        }
    }

    /// Feeds the worker, waits for one event and handles it.
    fn step(&mut self) -> Step {
        let closed = self.feed();
        if self.inflight.is_empty() {
            if let Some(reason) = self.recycle {
                return self.recycle_now(reason);
            }
            return if closed { Step::End } else { Step::Go };
        }
        let (state, deadline) = self.shared.state();
        if state == State::Killing {
            return Step::End;
        }
        let timeout = match (self.shared.config().task_timeout, deadline) {
            (Some(t), Some(d)) => Some((self.inflight[0].sent + t).min(d)),
            (Some(t), None) => Some(self.inflight[0].sent + t),
            (None, d) => d,
        }
        .map(|at| at.saturating_duration_since(Instant::now()));
        let received = match self.pending.take() {
            Some(received) => received,
            None => match self.poll_trickle() {
                Some(packet) => Ok(packet),
                None => wire::recv_packet(&lock(&self.worker.rx), timeout),
            }
            .and_then(wire::open),
        };
        match received {
            Ok(Frame::Message(envelope)) => match envelope.kind {
                Kind::Finished => self.on_reply(&envelope.body),
                Kind::Failed => self.on_reported_corrupt(&envelope),
                other => {
                    tracing::warn!(slot = self.slot, "unexpected {other} message from a worker");
                    Step::Go
                }
            },
            Ok(other) => {
                tracing::warn!(
                    slot = self.slot,
                    "unexpected {} from a worker",
                    other.describe()
                );
                Step::Go
            }
            Err(RecvError::Timeout) => self.on_timeout(),
            Err(RecvError::Protocol(error)) => self.on_corrupt(&error.to_string()),
            Err(RecvError::Closed | RecvError::Channel(_)) => self.on_death(),
        }
    }

    /// A trickle (one small batch in flight): looks for the reply for up to
    /// [`TRICKLE_POLL`] before the thread sleeps on it, so that a lone item's reply does not
    /// wait for this thread to wake. Under load batches are large and this is skipped.
    fn poll_trickle(&self) -> Option<Packet> {
        // Items, not tasks: a placed stage's task is a whole batch of the engine's.
        let only = match self.inflight.front() {
            Some(only) if self.inflight.len() == 1 && only.weight <= TRICKLE_BATCH => only,
            _ => return None,
        };
        let until = only.sent + TRICKLE_POLL;
        let rx = lock(&self.worker.rx);
        while Instant::now() < until {
            match rx.try_recv() {
                Ok(packet) => return Some(packet),
                Err(ipc_channel::TryRecvError::Empty) => std::hint::spin_loop(),
                // The blocking receive reports it.
                Err(_) => return None,
            }
        }
        None
    }

    /// Keeps the worker fed: a batch running and more waiting (its depth), unless it is due for
    /// recycling. Returns whether the pool is closed to new batches.
    fn feed(&mut self) -> bool {
        while self.inflight.len() < self.depth && self.recycle.is_none() {
            // Never more than the worker has left before its replacement.
            let left = self
                .shared
                .config()
                .recycle_after
                .map(|limit| limit.saturating_sub(self.sent));
            if left == Some(0) {
                self.recycle = self.shared.config().recycle_after.map(Recycle::Tasks);
                break;
            }
            let block = self.inflight.is_empty();
            let mut batch = match self.shared.take(self.slot, self.batch, left, block) {
                Taken::Tasks(batch) => batch,
                Taken::Sent(batch, received) => {
                    // Nothing else is in flight: the batch was handed to an idle driver.
                    self.pending = received;
                    self.sent += batch.weight;
                    self.inflight.push_back(batch);
                    continue;
                }
                Taken::Closed => return true,
            };
            if batch.is_empty() {
                break;
            }
            let Some(body) = self.encode(&mut batch) else {
                continue;
            };
            let weight = weight::<W>(&batch);
            self.sent += weight;
            let sent = send_batch(self.worker.pid, &self.worker.tx, &batch, body);
            self.inflight.push_back(InFlight {
                batch,
                weight,
                sent: Instant::now(),
            });
            if sent.is_err() {
                // The worker is gone; the receive sees it.
                break;
            }
        }
        false
    }

    /// Encodes a batch's tasks as one message's body. A task that will not encode fails
    /// alone, with its encoding error, and is taken out of `batch`; `None` when no task is
    /// left to send (each result delivered).
    fn encode(&self, batch: &mut Batch<W::Task>) -> Option<Vec<u8>> {
        if let Ok(body) = encode_batch::<W>(batch) {
            return Some(body);
        }
        self.shared.deliver(unencodable::<W>(batch));
        if batch.is_empty() {
            return None;
        }
        match encode_batch::<W>(batch) {
            Ok(body) => Some(body),
            // Each task encodes alone, but not the batch: the batch fails.
            Err(error) => {
                let error = format!("{error:#}");
                let failed = std::mem::take(batch).into_jobs().map(|job| {
                    let error = TaskError::Failed(StageError::msg(&error));
                    job.failed(error)
                });
                self.shared.deliver(failed.collect());
                None
            }
        }
    }

    fn on_reply(&mut self, body: &[u8]) -> Step {
        let Some(done) = self.inflight.pop_front() else {
            return Step::Go;
        };
        match Reply::<W::Output>::decode(body, done.batch.len()) {
            Ok(reply) => {
                let n = done.batch.len();
                self.batch = next_batch(self.batch, n, reply.busy, self.max_batch);
                // The worker answers a batch's tasks in the order it got them.
                self.shared.deliver_batch(self.slot, &done.batch, reply);
                self.check_memory();
                Step::Go
            }
            Err(error) => {
                self.inflight.push_front(done);
                self.on_corrupt(&error)
            }
        }
    }

    /// The worker could not read a frame (or a batch): it says so and goes on.
    fn on_reported_corrupt(&mut self, envelope: &Envelope) -> Step {
        let error = envelope
            .body::<StageError>()
            .map_or_else(|e| e.to_string(), |e| format!("{e:#}"));
        tracing::warn!(
            slot = self.slot,
            pid = self.worker.pid,
            "a worker reported a corrupt frame: {error}"
        );
        self.count_corrupt();
        Step::Go
    }

    /// The worker sent something that does not decode: it cannot be trusted; replace it.
    fn on_corrupt(&mut self, error: &str) -> Step {
        tracing::error!(
            slot = self.slot,
            "a worker sent a corrupt frame: {error}; replacing it"
        );
        self.count_corrupt();
        let how = self.worker.kill_and_wait();
        self.replace(how)
    }

    fn count_corrupt(&self) {
        self.shared
            .counters
            .corrupt_frames
            .fetch_add(1, Ordering::Relaxed);
    }

    fn on_timeout(&mut self) -> Step {
        if self.shared.state().0 != State::Open {
            // The stop deadline passed: what runs is abandoned.
            return Step::End;
        }
        let timed_out = self
            .inflight
            .pop_front()
            .map(|f| f.batch)
            .unwrap_or_default();
        let after = self.shared.config().task_timeout.unwrap_or_default();
        tracing::warn!(
            slot = self.slot,
            pid = self.worker.pid,
            "a task ran longer than {after:?}; killing its worker"
        );
        self.shared
            .counters
            .timeouts
            .fetch_add(timed_out.len() as u64, Ordering::Relaxed);
        let n = timed_out.len() as u64;
        self.shared.slots[self.slot].batch(n, n);
        let how = self.worker.kill_and_wait();
        // The death is counted and the replacement started before the result goes out, so
        // that counters read after it are settled.
        let step = self.replace(how);
        self.shared.deliver(
            timed_out
                .into_jobs()
                .map(|j| j.failed(TaskError::TimedOut { after }))
                .collect(),
        );
        step
    }

    fn on_death(&mut self) -> Step {
        let how = self
            .worker
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| self.worker.kill_and_wait());
        if self.shared.state().0 != State::Open {
            self.shared.deliver(cancel(&mut self.inflight));
            self.shared.forget(self.slot);
            return Step::Gone;
        }
        tracing::warn!(
            slot = self.slot,
            pid = self.worker.pid,
            "a worker {how}; retrying its tasks and starting another"
        );
        self.replace(how)
    }

    /// After a death: retries the worker's tasks elsewhere and starts another worker in the
    /// slot when the restart policy allows, after its backoff.
    fn replace(&mut self, how: ExitHow) -> Step {
        let shared = self.shared;
        shared
            .counters
            .count(&shared.slots[self.slot], Event::Death);
        shared.forget(self.slot);
        shared.retry(
            self.inflight.drain(..).flat_map(|f| f.batch.into_jobs()),
            how,
        );
        let mut reason = format!("the last worker {how}");
        loop {
            let after = match self.restarts.ended(true, false, Instant::now()) {
                RestartDecision::Restart { after } => after,
                RestartDecision::LimitReached { restarts } => {
                    reason = format!("{reason}; {restarts} restarts reached the restart limit");
                    break;
                }
                _ => break,
            };
            if !shared.wait_while_open(self.slot, after) {
                return Step::Gone;
            }
            match self.start_again(Event::Respawn) {
                Ok(()) => {
                    self.restarts.started(Instant::now());
                    return Step::Go;
                }
                Err(error) => {
                    tracing::error!(
                        slot = self.slot,
                        "cannot start a replacement worker: {error}"
                    );
                    reason = error.to_string();
                }
            }
        }
        tracing::error!(slot = self.slot, "{reason}; the slot stays empty");
        shared.give_up(&reason);
        Step::Gone
    }

    /// Replaces a well worker between batches: it is told to stop (its stage's cleanup
    /// runs), and a new one takes its place. Nothing is in flight, so nothing is lost or
    /// run twice.
    fn recycle_now(&mut self, reason: Recycle) -> Step {
        let shared = self.shared;
        match reason {
            Recycle::Tasks(n) => {
                tracing::debug!(
                    slot = self.slot,
                    pid = self.worker.pid,
                    "recycling a worker after {n} tasks"
                );
            }
            Recycle::Memory(bytes) => tracing::info!(
                slot = self.slot,
                pid = self.worker.pid,
                "recycling a worker whose resident memory passed {bytes} bytes"
            ),
        }
        self.stop_worker(shared.config().stop_timeout);
        shared.forget(self.slot);
        if shared.state().0 != State::Open {
            return Step::Gone;
        }
        match self.start_again(Event::Recycle) {
            Ok(()) => Step::Go,
            // A replacement that cannot start is a failure under the restart policy.
            Err(error) => {
                tracing::error!(
                    slot = self.slot,
                    "cannot start a recycled worker's replacement: {error}"
                );
                self.replace(ExitHow::Code(0))
            }
        }
    }

    /// Starts a new worker in the slot, in place of a dead one (`Event::Respawn`) or a well
    /// one (`Event::Recycle`), and counts it.
    fn start_again(&mut self, event: Event) -> Result<(), SpawnError> {
        let shared = self.shared;
        self.worker = start_worker::<W>(shared, self.slot, self.init)?;
        shared.counters.count(&shared.slots[self.slot], event);
        self.sent = 0;
        self.recycle = None;
        self.last_memory_check = Instant::now();
        Ok(())
    }

    /// Marks the worker for recycling once its resident memory passes the limit (read at
    /// most every [`MEMORY_CHECK_EVERY`]).
    fn check_memory(&mut self) {
        let Some(limit) = self.shared.config().max_memory else {
            return;
        };
        if self.last_memory_check.elapsed() < MEMORY_CHECK_EVERY {
            return;
        }
        self.last_memory_check = Instant::now();
        if crate::counters::resident_bytes(self.worker.pid).is_some_and(|rss| rss > limit) {
            self.recycle = Some(Recycle::Memory(limit));
        }
    }

    /// Tells the worker to die, waits up to `wait`, then kills it.
    fn stop_worker(&self, wait: Duration) {
        let _ = send_frame(
            &self.worker.tx,
            &Frame::Message(Envelope::new(Address::Main, Address::Main, Kind::Die)),
        );
        if self.worker.wait_exit(wait).is_none() {
            self.worker.kill_and_wait();
        }
    }

    /// The end: what is still in flight is cancelled, the worker told to die, and killed if
    /// it does not in time.
    fn finish(mut self) {
        self.shared.deliver(cancel(&mut self.inflight));
        let (state, deadline) = self.shared.state();
        let wait = if state == State::Killing {
            Duration::ZERO
        } else {
            deadline.map_or(self.shared.config().stop_timeout, |d| {
                d.saturating_duration_since(Instant::now())
            })
        };
        self.stop_worker(wait);
        self.shared.forget(self.slot);
    }
}
