//! A batch of tasks on its way to a worker: the chunks tasks are queued in, what a job is
//! when a task goes alone, how a batch is encoded and sent, and what is in flight. Shared by
//! the drivers and by a thread that hands a trickle to an idle worker itself.

use std::sync::Arc;
use std::time::Instant;

use engine_core::protocol::{Address, Envelope, Kind, ProtocolError, TaskId, to_bytes};
use engine_core::trace::TraceParent;
use ipc_channel::ipc::IpcSender;

use crate::delivery::Ids;
use crate::error::{TaskError, TaskResult};
use crate::program::Program;
use crate::wire::{Packet, send_envelope};

/// One task, and the lane its result goes to: a task taken out of its chunk, to be put
/// back after its worker died, cancelled or failed alone.
pub(crate) struct Job<T> {
    pub(crate) id: TaskId,
    pub(crate) task: T,
    pub(crate) attempts: u32,
    pub(crate) lane: u32,
    /// The trace context of the batch span the task was submitted in (see
    /// `engine_core::trace`): the worker's span for it is that span's child.
    pub(crate) trace: Option<Arc<TraceParent>>,
}

/// The id `n` tasks after `id`: the tasks of a chunk are numbered on from its first.
pub(crate) fn id_after(id: TaskId, n: usize) -> TaskId {
    TaskId(id.0.wrapping_add(n as u64))
}

/// A result, with the lane it goes to.
pub(crate) type Routed<O> = (u32, TaskId, TaskResult<O>);

impl<T> Job<T> {
    pub(crate) fn task(&self) -> &T {
        &self.task
    }

    /// The job's result when it failed with `error`, for its lane.
    pub(crate) fn failed<O>(&self, error: TaskError) -> Routed<O> {
        (self.lane, self.id, Err(error))
    }
}

/// Tasks submitted together for one lane, or what is left of them, or one task put back:
/// their ids run on from `first`. The tasks are kept as they came, and what they share once:
/// making a 32-byte job of each task, on the thread that submits, and reading it on a
/// driver's, moved four times the memory between cores for a pool's `u64` tasks.
pub(crate) struct Chunk<T> {
    pub(crate) first: TaskId,
    pub(crate) tasks: Vec<T>,
    /// How often the tasks' workers died under them.
    pub(crate) attempts: u32,
    pub(crate) lane: u32,
    /// The trace context of the batch span the tasks were submitted in (see
    /// `engine_core::trace`): the worker's span for them is that span's child.
    pub(crate) trace: Option<Arc<TraceParent>>,
}

impl<T> Chunk<T> {
    /// `job` alone.
    pub(crate) fn single(job: Job<T>) -> Self {
        Self {
            first: job.id,
            tasks: vec![job.task],
            attempts: job.attempts,
            lane: job.lane,
            trace: job.trace,
        }
    }

    /// The id of the task at `at`.
    fn id_at(&self, at: usize) -> TaskId {
        id_after(self.first, at)
    }

    /// Each task as a job of its own.
    pub(crate) fn into_jobs(self) -> impl Iterator<Item = Job<T>> {
        let Self {
            first,
            tasks,
            attempts,
            lane,
            trace,
        } = self;
        tasks.into_iter().enumerate().map(move |(at, task)| Job {
            id: id_after(first, at),
            task,
            attempts,
            lane,
            trace: trace.clone(),
        })
    }
}

/// Tasks on their way to a worker, in the order it answers them: one chunk, or several
/// (a placed stage's engine batches, or tasks put back one by one).
pub(crate) struct Batch<T> {
    chunks: Vec<Chunk<T>>,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Self { chunks: Vec::new() }
    }
}

impl<T> FromIterator<Chunk<T>> for Batch<T> {
    fn from_iter<I: IntoIterator<Item = Chunk<T>>>(chunks: I) -> Self {
        let mut batch = Self::default();
        for chunk in chunks {
            batch.push(chunk);
        }
        batch
    }
}

impl<T> Batch<T> {
    /// Jobs one by one, in their order.
    pub(crate) fn from_jobs(jobs: impl IntoIterator<Item = Job<T>>) -> Self {
        Self {
            chunks: jobs.into_iter().map(Chunk::single).collect(),
        }
    }

    /// Adds `chunk` at the end.
    pub(crate) fn push(&mut self, chunk: Chunk<T>) {
        if !chunk.tasks.is_empty() {
            self.chunks.push(chunk);
        }
    }

    /// How many tasks it holds.
    pub(crate) fn len(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.tasks.len()).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The id of its first task.
    pub(crate) fn first_id(&self) -> Option<TaskId> {
        self.chunks.first().map(|chunk| chunk.first)
    }

    pub(crate) fn chunks(&self) -> &[Chunk<T>] {
        &self.chunks
    }

    pub(crate) fn into_chunks(self) -> Vec<Chunk<T>> {
        self.chunks
    }

    /// The tasks, in order.
    pub(crate) fn tasks(&self) -> Tasks<'_, T> {
        Tasks {
            chunks: self.chunks.iter(),
            current: [].iter(),
            left: self.len(),
        }
    }

    /// Each task's lane and id, in order.
    pub(crate) fn routes(&self) -> impl Iterator<Item = (u32, TaskId)> + '_ {
        self.chunks
            .iter()
            .flat_map(|chunk| (0..chunk.tasks.len()).map(|at| (chunk.lane, chunk.id_at(at))))
    }

    /// The tasks' ids, in order: a run when they are one chunk.
    pub(crate) fn ids(&self) -> Ids {
        match self.chunks.as_slice() {
            [only] => Ids::of((0..only.tasks.len()).map(|at| only.id_at(at))),
            _ => Ids::of(
                self.routes()
                    .map(|(_, id)| id)
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
        }
    }

    /// Each task as a job of its own.
    pub(crate) fn into_jobs(self) -> impl Iterator<Item = Job<T>> {
        self.chunks.into_iter().flat_map(Chunk::into_jobs)
    }
}

/// A batch's tasks, in order, as [`crate::items::Encoded`] takes them.
pub(crate) struct Tasks<'a, T> {
    chunks: std::slice::Iter<'a, Chunk<T>>,
    current: std::slice::Iter<'a, T>,
    left: usize,
}

impl<T> Clone for Tasks<'_, T> {
    fn clone(&self) -> Self {
        Self {
            chunks: self.chunks.clone(),
            current: self.current.clone(),
            left: self.left,
        }
    }
}

impl<'a, T> Iterator for Tasks<'a, T> {
    type Item = &'a T;

    #[inline]
    fn next(&mut self) -> Option<&'a T> {
        loop {
            if let Some(task) = self.current.next() {
                self.left -= 1;
                return Some(task);
            }
            self.current = self.chunks.next()?.tasks.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T> ExactSizeIterator for Tasks<'_, T> {}

/// What went to a worker and awaits its reply.
pub(crate) struct InFlight<T> {
    pub(crate) batch: Batch<T>,
    /// What the tasks weigh ([`Program::weight`]): their items.
    pub(crate) weight: u64,
    pub(crate) sent: Instant,
}

/// What `batch` weighs ([`Program::weight`]): its items.
pub(crate) fn weight<W: Program>(batch: &Batch<W::Task>) -> u64 {
    batch.tasks().map(W::weight).sum()
}

/// Encodes a batch as one message's body.
pub(crate) fn encode_batch<W: Program>(batch: &Batch<W::Task>) -> Result<Vec<u8>, ProtocolError> {
    // The tasks alone, encoded in place as `items` (fixed-width when plain): the worker
    // answers in their order, so their ids stay here.
    let tasks = crate::items::Encoded(batch.tasks());
    // The trace contexts of the batches the tasks came from (none without a trace hook): the
    // worker opens its span for the message as their child.
    let mut traces = Vec::new();
    for trace in batch
        .chunks()
        .iter()
        .filter_map(|chunk| chunk.trace.as_deref())
    {
        engine_core::trace::add_parent(&mut traces, *trace);
    }
    to_bytes(&(traces, tasks))
}

/// Sends a batch to worker `pid` through its inbox, as one message whose body is `body`
/// ([`encode_batch`]).
pub(crate) fn send_batch(
    pid: u32,
    inbox: &IpcSender<Packet>,
    batch: &Batch<impl Sized>,
    body: Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut envelope =
        Envelope::new(Address::named(pid.to_string()), Address::Main, Kind::Do).with_raw_body(body);
    if let Some(first) = batch.first_id() {
        envelope = envelope.with_task(first);
    }
    send_envelope(inbox, envelope)
}
