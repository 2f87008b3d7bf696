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
use crate::batch::{InFlight, Job, encode_batch, send_batch, weight};
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
    /// Jobs to send (none when it would not wait and nothing was queued).
    Jobs(Vec<Job<T>>),
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
    /// most [`TRICKLE_BATCH`] jobs and items), nothing is queued, and every live driver
    /// waits.
    pub(super) fn idle_slot(
        &self,
        queue: &mut Queue<W::Task>,
        chunks: &[Vec<Job<W::Task>>],
    ) -> Option<Idle> {
        let [jobs] = chunks else {
            return None;
        };
        // A worker due for recycling after a number of tasks is fed by its driver alone,
        // which counts them; under a task timeout, tasks go one by one. The cheap checks go
        // first: this runs under the lock for every submission, and a pool's chunks are long.
        if queue.live == 0
            || queue.waiting.len() < queue.live
            || !queue.jobs.is_empty()
            || queue.state != State::Open
            || self.config.recycle_after.is_some()
            || (self.config.task_timeout.is_some() && jobs.len() > 1)
            || jobs.len() as u64 > TRICKLE_BATCH
            || weight::<W>(jobs) > TRICKLE_BATCH
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

    /// Sends `jobs` to the idle worker from this thread and hands the batch to its driver.
    /// A batch that does not encode goes back to the queue, for the driver to send (and to
    /// fail the tasks that will not encode).
    pub(super) fn hand(&self, to: &Idle, jobs: Vec<Job<W::Task>>) {
        let mut handing = Handing {
            shared: self,
            slot: to.slot,
            jobs: Some(jobs),
            sent: None,
        };
        let jobs = handing.jobs.as_deref().unwrap_or_default();
        let Ok(body) = encode_batch::<W>(jobs) else {
            return;
        };
        let weight = weight::<W>(jobs);
        // A worker that is gone fails the send; its driver's receive sees it, and retries.
        let _ = send_batch(to.pid, &to.inbox, jobs, body);
        self.counters
            .handed
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        handing.sent = handing.jobs.take().map(|jobs| InFlight {
            jobs,
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
    /// The jobs, until they are sent.
    jobs: Option<Vec<Job<W::Task>>>,
    sent: Option<InFlight<W::Task>>,
}

impl<W: Program> Drop for Handing<'_, W> {
    fn drop(&mut self) {
        let mut cancelled = Vec::new();
        let mut queue = lock(&self.shared.queue);
        queue.handed[self.slot] = match self.sent.take() {
            Some(sent) => Handed::Sent(sent),
            None => {
                match self.jobs.take() {
                    // Closed meanwhile: the queue was cancelled, and so are these.
                    Some(jobs) if queue.state != State::Open => cancelled = jobs,
                    Some(jobs) => queue.jobs.push_back(jobs),
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
                .map(|job| (job.lane, job.id, Err(TaskError::Cancelled)))
                .collect(),
        );
    }
}
