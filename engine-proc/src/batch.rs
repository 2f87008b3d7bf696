//! A batch of jobs on its way to a worker: what a job is, how a batch is encoded and sent,
//! and what is in flight. Shared by the drivers and by a thread that hands a trickle to an
//! idle worker itself.

use std::sync::Arc;
use std::time::Instant;

use engine_core::protocol::{Address, Envelope, Kind, ProtocolError, TaskId, to_bytes};
use engine_core::trace::TraceParent;
use ipc_channel::ipc::IpcSender;

use crate::program::Program;
use crate::wire::{Packet, send_envelope};

/// A queued task, and the lane its result goes to.
pub(crate) struct Job<T> {
    pub(crate) id: TaskId,
    pub(crate) task: T,
    pub(crate) attempts: u32,
    pub(crate) lane: u32,
    /// The trace context of the batch span the task was submitted in (see
    /// `engine_core::trace`): the worker's span for it is that span's child. Shared by the
    /// tasks of one submission, and behind a pointer so that a job stays small.
    pub(crate) trace: Option<Arc<TraceParent>>,
}

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

    pub(crate) fn trace(&self) -> Option<TraceParent> {
        self.trace.as_deref().copied()
    }
}

/// What went to a worker and awaits its reply.
pub(crate) struct InFlight<T> {
    pub(crate) jobs: Vec<Job<T>>,
    /// What the jobs weigh ([`Program::weight`]): their items.
    pub(crate) weight: u64,
    pub(crate) sent: Instant,
}

/// What `jobs` weigh ([`Program::weight`]): their items.
pub(crate) fn weight<W: Program>(jobs: &[Job<W::Task>]) -> u64 {
    jobs.iter().map(|job| W::weight(&job.task)).sum()
}

/// Encodes a batch of jobs as one message's body.
pub(crate) fn encode_batch<W: Program>(jobs: &[Job<W::Task>]) -> Result<Vec<u8>, ProtocolError> {
    // The tasks alone, encoded from the jobs in place as `items` (fixed-width when plain):
    // the worker answers in their order, so their ids stay here.
    let tasks = crate::items::Encoded(jobs.iter().map(Job::task));
    // The trace contexts of the batches the jobs came from (none without a trace hook): the
    // worker opens its span for the message as their child.
    let mut traces = Vec::new();
    for trace in jobs.iter().filter_map(Job::trace) {
        engine_core::trace::add_parent(&mut traces, trace);
    }
    to_bytes(&(traces, tasks))
}

/// Sends a batch of jobs to worker `pid` through its inbox, as one message whose body is
/// `body` ([`encode_batch`]).
pub(crate) fn send_batch(
    pid: u32,
    inbox: &IpcSender<Packet>,
    jobs: &[Job<impl Sized>],
    body: Vec<u8>,
) -> Result<(), ProtocolError> {
    let envelope = Envelope::new(Address::named(pid.to_string()), Address::Main, Kind::Do)
        .with_task(jobs[0].id())
        .with_raw_body(body);
    send_envelope(inbox, envelope)
}
