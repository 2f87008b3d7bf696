//! A trickle handed straight to an idle worker. When every driver waits for work and a
//! submission is a few tasks, the submitting thread encodes them and sends them to a
//! waiting driver's worker itself, then gives the driver the batch in flight, so that the
//! driver's wake-up runs beside the worker's instead of before it. (On a machine whose
//! cores sleep when idle, each wake-up in turn costs tens of microseconds.)
//!
//! The driver stays the batch's owner: it waits for the reply, delivers it, and retries the
//! batch if the worker dies, as for a batch it sent itself. Its worker's batches are still
//! sent one after another: the driver takes no jobs while a handed batch is being sent.

use std::sync::atomic::Ordering;
use std::time::Instant;

use engine_core::plumbing::lock;
use ipc_channel::ipc::IpcSender;

use super::{Queue, Shared, State};
use crate::batch::{Batch, Chunk, InFlight, encode_batch, send_batch, weight};
use crate::config::TRICKLE_BATCH;
use crate::error::TaskError;
use crate::program::Program;
use crate::wire::Packet;

/// A driver's batch that the submitting thread sends for it.
pub(crate) enum Handed<T> {
    /// Nothing: the driver takes jobs from the queue.
    None,
    /// Being encoded and sent: the driver waits.
    Sending,
    /// Sent: the driver takes it as in flight.
    Sent(InFlight<T>),
}

/// What a driver takes from the queue.
pub(crate) enum Taken<T> {
    /// Tasks to send (none when it would not wait and nothing was queued).
    Tasks(Batch<T>),
    /// A batch sent to its worker by the thread that submitted it.
    Sent(InFlight<T>),
    /// The pool is closed to new batches.
    Closed,
}

/// Where a handed batch goes: the slot, and its worker's pid and inbox.
pub(super) struct Idle {
    slot: usize,
    pid: u32,
    inbox: IpcSender<Packet>,
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
        };
        queue.handed[slot] = Handed::Sending;
        Some(idle)
    }

    /// Sends `batch` to the idle worker from this thread and hands it to the worker's driver.
    /// A batch that does not encode goes back to the queue, for the driver to send (and to
    /// fail the tasks that will not encode).
    pub(super) fn hand(&self, to: &Idle, batch: Batch<W::Task>) {
        let mut handing = Handing {
            shared: self,
            slot: to.slot,
            batch: Some(batch),
            sent: None,
        };
        let Some(batch) = handing.batch.as_ref() else {
            return;
        };
        let Ok(body) = encode_batch::<W>(batch) else {
            return;
        };
        let weight = weight::<W>(batch);
        // A worker that is gone fails the send; its driver's receive sees it, and retries.
        let _ = send_batch(to.pid, &to.inbox, batch, body);
        self.counters
            .handed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        handing.sent = handing.batch.take().map(|batch| InFlight {
            batch,
            weight,
            sent: Instant::now(),
        });
    }
}

/// A batch being handed: whatever happens (sent, not encodable, a panic in a task's
/// `Serialize`), its driver hears of it when this drops, and no job is lost.
struct Handing<'a, W: Program> {
    shared: &'a Shared<W>,
    slot: usize,
    /// The tasks, until they are sent.
    batch: Option<Batch<W::Task>>,
    sent: Option<InFlight<W::Task>>,
}

impl<W: Program> Drop for Handing<'_, W> {
    fn drop(&mut self) {
        let mut cancelled = Vec::new();
        let mut queue = lock(&self.shared.queue);
        queue.handed[self.slot] = match self.sent.take() {
            Some(sent) => Handed::Sent(sent),
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
        drop(queue);
        self.shared.wakes[self.slot].notify_one();
        self.shared.deliver(
            cancelled
                .into_iter()
                .map(|job| job.failed(TaskError::Cancelled))
                .collect(),
        );
    }
}
