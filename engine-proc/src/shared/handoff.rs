//! A trickle handed straight to an idle worker. When every driver waits for work and a
//! submission is a few tasks, the submitting thread encodes them and sends them to a
//! waiting driver's worker itself, then gives the driver the batch in flight, so that the
//! driver's wake-up runs beside the worker's instead of before it. (On a machine whose
//! cores sleep when idle, each wake-up in turn costs tens of microseconds.)
//!
//! The driver stays the batch's owner: it waits for the reply, delivers it, and retries the
//! batch if the worker dies, as for a batch it sent itself. Its worker's batches are still
//! sent one after another: the driver takes no jobs while a handed batch is being sent.
//!
//! A placed stage's engine thread goes further: it keeps the batch and watches for the reply
//! itself ([`Watch`]), and the driver is not woken at all. A reply that comes soon wakes no
//! thread: the engine thread looks for it, and settles the items as soon as it is there.
//! Only when the reply is late (past a bounded sleep on the worker), or when anything else
//! than a whole reply comes (the worker died, sent something that does not decode), does the
//! driver get the batch, with what came, and go on as if it had received it itself.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine_core::plumbing::lock;
use engine_core::protocol::{Frame, Kind};
use ipc_channel::ipc::IpcSender;

use super::{Queue, Shared, State};
use crate::batch::{Batch, Chunk, InFlight, encode_batch, send_batch, weight};
use crate::boot::Replies;
use crate::config::TRICKLE_BATCH;
use crate::delivery::Delivery;
use crate::error::TaskError;
use crate::program::{Program, Reply};
use crate::wire::{self, Packet, RecvError};

/// What came from a worker, opened: a frame, or why there is none.
pub(crate) type Received = Result<Frame, RecvError>;

/// A driver's batch that the submitting thread sends for it.
pub(crate) enum Handed<T> {
    /// Nothing: the driver takes jobs from the queue.
    None,
    /// Being encoded and sent: the driver waits.
    Sending,
    /// Sent, and the submitting thread watches for the reply ([`Watch`]): the driver waits.
    Watched,
    /// Sent: the driver takes it as in flight, with what the watching thread received for
    /// it and could not settle, if anything.
    Sent(InFlight<T>, Option<Received>),
}

/// What a driver takes from the queue.
pub(crate) enum Taken<T> {
    /// Tasks to send (none when it would not wait and nothing was queued).
    Tasks(Batch<T>),
    /// A batch sent to its worker by the thread that submitted it, and what came for it if
    /// that thread received anything.
    Sent(InFlight<T>, Option<Received>),
    /// The pool is closed to new batches.
    Closed,
}

/// Where a handed batch goes: the slot, and its worker's pid, inbox and replies.
pub(super) struct Idle {
    slot: usize,
    pid: u32,
    inbox: IpcSender<Packet>,
    replies: Replies,
}

/// A trickle sent to an idle worker by the thread that submitted it, which watches for the
/// reply itself: its driver waits meanwhile. A watch ends in [`Shared::poll_watch`] (the
/// reply came, or something else did) or [`Shared::end_watch`] (the driver takes the batch
/// over); a thread that holds one must end it before it sleeps on its results.
pub(crate) struct Watch<T> {
    slot: usize,
    replies: Replies,
    flight: InFlight<T>,
}

impl<T> Watch<T> {
    /// When the batch was sent.
    pub(crate) fn sent(&self) -> Instant {
        self.flight.sent
    }
}

impl<W: Program> Shared<W> {
    /// Under the queue's lock: the waiting driver that a submission of `chunks` goes to
    /// straight, marked as being sent to, when the submission is a trickle (one chunk of at
    /// most [`TRICKLE_BATCH`] tasks and items), nothing is queued, and every live driver
    /// waits.
    pub(super) fn idle_slot(
        &self,
        queue: &mut Queue<W::Task>,
        chunks: &[Chunk<W::Task>],
    ) -> Option<Idle> {
        let [chunk] = chunks else {
            return None;
        };
        let tasks = &chunk.tasks;
        // A worker due for recycling after a number of tasks is fed by its driver alone,
        // which counts them; under a task timeout, tasks go one by one. The cheap checks go
        // first: this runs under the lock for every submission, and a pool's chunks are long.
        if queue.live == 0
            || queue.waiting.len() < queue.live
            || !queue.jobs.is_empty()
            || queue.state != State::Open
            || self.config.recycle_after.is_some()
            || (self.config.task_timeout.is_some() && tasks.len() > 1)
            || tasks.len() as u64 > TRICKLE_BATCH
            || tasks.iter().map(W::weight).sum::<u64>() > TRICKLE_BATCH
        {
            return None;
        }
        // The driver that waited least: its worker was busy last.
        let at = queue
            .waiting
            .iter()
            .rposition(|&slot| queue.workers[slot].is_some())?;
        let slot = queue.waiting.remove(at);
        let worker = queue.workers[slot].as_ref()?;
        let idle = Idle {
            slot,
            pid: worker.pid,
            inbox: worker.inbox.clone(),
            replies: std::sync::Arc::clone(&worker.replies),
        };
        queue.handed[slot] = Handed::Sending;
        Some(idle)
    }

    /// Sends `batch` to the idle worker from this thread, and hands it to the worker's driver
    /// or, with `watch`, keeps watching for the reply. A batch that does not encode goes back
    /// to the queue, for the driver to send (and to fail the tasks that will not encode).
    pub(super) fn hand(
        &self,
        to: Idle,
        batch: Batch<W::Task>,
        watch: bool,
    ) -> Option<Watch<W::Task>> {
        let mut handing = Handing {
            shared: self,
            slot: to.slot,
            batch: Some(batch),
            sent: None,
        };
        let batch = handing.batch.as_ref()?;
        let body = encode_batch::<W>(batch).ok()?;
        let weight = weight::<W>(batch);
        // A worker that is gone fails the send; its driver's receive sees it, and retries.
        let _ = send_batch(to.pid, &to.inbox, batch, body);
        self.counters
            .handed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let flight = handing.batch.take().map(|batch| InFlight {
            batch,
            weight,
            sent: Instant::now(),
        })?;
        if !watch {
            handing.sent = Some(Handed::Sent(flight, None));
            return None;
        }
        handing.sent = Some(Handed::Watched);
        Some(Watch {
            slot: to.slot,
            replies: to.replies,
            flight,
        })
    }

    /// Looks once for the reply to a watched trickle, waiting up to `wait` for it (not at
    /// all if `None`).
    ///
    /// - `Ok(Some(answers))`: it came. The watch is over, the driver was never woken, and the
    ///   answers are the caller's to take (they do not go through its lane).
    /// - `Err(watch)`: nothing came yet.
    /// - `Ok(None)`: something else came (the worker is gone, or sent what is not a whole
    ///   reply). The driver takes the batch over with it, as if it had received it itself,
    ///   and the results come through the lane.
    pub(crate) fn poll_watch(
        &self,
        watch: Watch<W::Task>,
        wait: Option<Duration>,
    ) -> Result<Option<Delivery<W::Output>>, Watch<W::Task>> {
        // The driver never receives while the watch lasts; if it did, it keeps receiving.
        let Ok(replies) = watch.replies.try_lock() else {
            self.end_watch(watch, None);
            return Ok(None);
        };
        let packet = match wait {
            None => replies.try_recv(),
            // Whole milliseconds, rounded up: ipc-channel rounds down, and a wait shorter
            // than one would not wait at all.
            Some(wait) => replies.try_recv_timeout(wire::round_up_to_millis(wait)),
        };
        drop(replies);
        let received = match packet {
            Ok(packet) => wire::open(packet),
            Err(ipc_channel::TryRecvError::Empty) => return Err(watch),
            Err(error) => Err(wire::recv_error(error)),
        };
        let reply = match &received {
            Ok(Frame::Message(envelope)) if envelope.kind == Kind::Finished => {
                Reply::<W::Output>::decode(&envelope.body, watch.flight.batch.len()).ok()
            }
            _ => None,
        };
        let Some(reply) = reply else {
            self.end_watch(watch, Some(received));
            return Ok(None);
        };
        let Watch { slot, flight, .. } = watch;
        let answers = self.count_answers(slot, &flight.batch, reply);
        // The worker is idle again, and its driver still waits. With nothing for it to do, it
        // is waiting once more, unwoken. Otherwise it is woken: tasks were queued meanwhile
        // (submitters wake only drivers that wait, and it was not one of them), or the
        // workers are closing.
        let mut queue = lock(&self.queue);
        queue.handed[slot] = Handed::None;
        if queue.state != State::Open || !queue.jobs.is_empty() {
            drop(queue);
            self.wakes[slot].notify_one();
        } else if !queue.waiting.contains(&slot) {
            queue.waiting.push(slot);
        }
        Ok(Some(answers))
    }

    /// Ends a watch without the reply: the driver takes the batch over, with what was
    /// received for it (`received`) if anything was.
    pub(crate) fn end_watch(&self, watch: Watch<W::Task>, received: Option<Received>) {
        lock(&self.queue).handed[watch.slot] = Handed::Sent(watch.flight, received);
        self.wakes[watch.slot].notify_one();
    }
}

/// A batch being handed: whatever happens (sent, not encodable, a panic in a task's
/// `Serialize`), its driver hears of it when this drops, and no job is lost.
struct Handing<'a, W: Program> {
    shared: &'a Shared<W>,
    slot: usize,
    /// The tasks, until they are sent.
    batch: Option<Batch<W::Task>>,
    /// Once the batch is sent, what its driver is told: take it (`Sent`), or wait on while
    /// the submitting thread watches for the reply (`Watched`).
    sent: Option<Handed<W::Task>>,
}

impl<W: Program> Drop for Handing<'_, W> {
    fn drop(&mut self) {
        let mut cancelled = Vec::new();
        let mut queue = lock(&self.shared.queue);
        let handed = match self.sent.take() {
            Some(sent) => sent,
            None => {
                match self.batch.take() {
                    // Closed meanwhile: the queue was cancelled, and so are these.
                    Some(batch) if queue.state != State::Open => {
                        cancelled = batch.into_jobs().collect();
                    }
                    Some(batch) => {
                        for chunk in batch.into_chunks() {
                            queue.jobs.push_back(chunk);
                        }
                    }
                    None => {}
                }
                Handed::None
            }
        };
        let watched = matches!(handed, Handed::Watched);
        queue.handed[self.slot] = handed;
        drop(queue);
        if watched {
            // The driver waits on, unwoken.
            return;
        }
        self.shared.wakes[self.slot].notify_one();
        self.shared.deliver(
            cancelled
                .into_iter()
                .map(|job| job.failed(TaskError::Cancelled))
                .collect(),
        );
    }
}
