//! The worker side of a pool or placed stage: the [`Program`] a worker process runs, and its
//! loop.

use std::any::type_name;
use std::sync::OnceLock;
use std::thread;
use std::time::Instant;

use engine_core::plumbing::catch_panic;
use engine_core::protocol::{Address, Envelope, Frame, Kind, from_bytes, to_bytes};
use engine_core::trace::{self, TraceParent};
use engine_core::{StageContext, StageError, StopHandle, StopLevel};
use ipc_channel::ipc::{self, IpcReceiver};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::boot::{self, Connection};
use crate::codes::{CONTROL, EXIT_BOOT_FAILED, EXIT_CHANNEL_FAILED, EXIT_INIT_FAILED, INIT, STOP};
use crate::wire::{Packet, RecvError, recv_frame, send_envelope};

/// This worker process's view of the master's stop handle.
static WORKER_STOP: OnceLock<StopHandle> = OnceLock::new();

/// The stop handle of this process's stage code: in a worker process, it follows the stop
/// handle of the master's run (the master forwards every stop level); elsewhere it is a
/// handle that nothing stops.
pub(crate) fn worker_stop() -> StopHandle {
    WORKER_STOP.get_or_init(StopHandle::new).clone()
}

/// Applies the stop levels the master sends on the control channel, on a thread of its own,
/// so that a stop reaches the stage's context while a batch runs. The batches themselves
/// come on the inbox, which the worker's loop reads directly: a lone batch wakes one thread
/// in the worker, not two.
fn watch_control(control: IpcReceiver<Packet>) {
    let stop = worker_stop();
    let spawned = thread::Builder::new()
        .name("engine-proc-control".into())
        .spawn(move || {
            loop {
                match recv_frame(&control) {
                    Ok(Frame::Message(envelope)) if envelope.kind == Kind::user(STOP) => {
                        apply_stop(&stop, &envelope);
                    }
                    Ok(other) => {
                        tracing::warn!("pool worker: unexpected {} on control", other.describe());
                    }
                    Err(RecvError::Protocol(error)) => {
                        tracing::warn!("pool worker: a bad control frame: {error}");
                    }
                    // The master is gone or forgot this worker.
                    Err(_) => return,
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!("pool worker: cannot start its control thread: {error}");
    }
}

/// Raises this process's stop handle to the level a stop message carries.
fn apply_stop(stop: &StopHandle, envelope: &Envelope) {
    match envelope.body::<StopLevel>() {
        Ok(StopLevel::Now) => {
            stop.stop_now();
        }
        Ok(_) => {
            stop.stop();
        }
        Err(error) => tracing::warn!("pool worker: a bad stop message: {error}"),
    }
}

/// Opens the control channel and hands its sending end to the master, which sends stop
/// levels there (see [`watch_control`]).
fn open_control(conn: &Connection) -> Result<IpcReceiver<Packet>, String> {
    let (tx, rx) = ipc::channel::<Packet>().map_err(|e| format!("cannot open a channel: {e}"))?;
    conn.to_master
        .send(Packet::Peers(vec![(CONTROL.to_owned(), tx)]))
        .map_err(|e| format!("cannot reach the master: {e}"))?;
    Ok(rx)
}

/// The code a worker process runs: built once from serialisable arguments, then running
/// tasks. Pools run [`InItem`](crate::in_worker::InItem) (one item of a stage per task), placed
/// stages run [`InTransport`](crate::in_worker::InTransport) and
/// [`InBackend`](crate::in_worker::InBackend) (one engine batch per task).
pub(crate) trait Program: Sized + 'static {
    /// The arguments each worker process is initialised from.
    type Init: Serialize + DeserializeOwned;
    /// A task.
    type Task: Serialize + DeserializeOwned + Send + 'static;
    /// A task's result.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Builds the worker, once per process.
    ///
    /// # Errors
    ///
    /// Whatever keeps it from starting: the pool's `start` returns it.
    fn init(init: Self::Init) -> Result<Self, StageError>;

    /// Runs one task.
    ///
    /// # Errors
    ///
    /// The task's failure, returned to the master as its result.
    fn run(&mut self, task: Self::Task) -> Result<Self::Output, StageError>;

    /// Called once when the worker is told to stop (not when it is killed).
    fn cleanup(&mut self) {}

    /// The stage's context, if the program runs a stage: its span names it.
    fn context(&self) -> Option<&StageContext> {
        None
    }

    /// How many items a task holds, for recycling after a number of items: one, unless the
    /// task is a batch.
    fn weight(task: &Self::Task) -> u64 {
        let _ = task;
        1
    }
}

/// What the master sends a worker to run: the trace contexts of the tasks (see
/// `engine_core::trace`), and the tasks (without their ids: the reply's results come in the
/// tasks' order), as [`items`](crate::items) (fixed-width when they are plain).
#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct Batch<T> {
    traces: Vec<TraceParent>,
    #[serde(with = "crate::items")]
    tasks: Vec<T>,
}

/// The span of a message of tasks whose batches were traced: the child of their contexts'
/// first, linked to the others. `None` without a trace hook in this process, or contexts.
fn batch_span<W: Program>(
    worker: &W,
    traces: &[TraceParent],
    items: usize,
) -> Option<trace::BatchScope> {
    if traces.is_empty() {
        return None;
    }
    let (stage, kind, index) = match worker.context() {
        Some(ctx) => (ctx.stage(), ctx.kind().as_str(), ctx.index()),
        None => ("worker", "worker", 0),
    };
    trace::enter_batch(trace::BatchInfo::new(stage, kind, index, items, traces))
}

/// What a worker answers to a batch (the master knows the tasks' ids, so they do not travel
/// back). Failures travel apart from the outputs, so that the common answer, all succeeded,
/// is a plain sequence of outputs, and decodes as one; the outputs travel as
/// [`items`](crate::items) (fixed-width when they are plain).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "O: Serialize", deserialize = "O: DeserializeOwned"))]
pub(crate) struct Reply<O> {
    /// How long the worker ran the batch, in nanoseconds.
    pub(crate) busy: u64,
    /// The failed tasks' errors, by their place in the batch, in its order.
    pub(crate) failures: Vec<(u64, StageError)>,
    /// The other tasks' outputs, in the batch's order.
    #[serde(with = "crate::items")]
    pub(crate) outputs: Vec<O>,
}

impl<O> Reply<O> {
    /// Decodes a worker's reply to a batch of `n` tasks and [checks](Self::check) it.
    ///
    /// # Errors
    ///
    /// What is wrong with it, when it does not decode or is not whole.
    pub(crate) fn decode(body: &[u8], n: usize) -> Result<Self, String>
    where
        O: DeserializeOwned,
    {
        let reply = from_bytes::<Self>(body)
            .map_err(|error| format!("its reply does not decode: {error}"))?;
        reply.check(n)?;
        Ok(reply)
    }

    /// Checks that the reply answers a batch of `n` tasks, each once.
    ///
    /// # Errors
    ///
    /// What is wrong with it, when it is not.
    pub(crate) fn check(&self, n: usize) -> Result<(), String> {
        if self.outputs.len() + self.failures.len() != n {
            return Err(format!(
                "its reply has {} results for {} tasks",
                self.outputs.len() + self.failures.len(),
                n
            ));
        }
        let mut next = 0;
        for &(at, _) in &self.failures {
            if at < next || at >= n as u64 {
                return Err(format!("its reply has a failure out of place ({at})"));
            }
            next = at + 1;
        }
        Ok(())
    }
}

/// The kind a pool worker of type `W` says hello as.
pub(crate) fn kind_of<W>() -> String {
    format!("pool:{}", type_name::<W>())
}

/// The main function of a pool's worker process.
pub(crate) fn pool_entry<W: Program>(server: String) -> i32 {
    let conn = match boot::connect(server, &kind_of::<W>()) {
        Ok(conn) => conn,
        Err(reason) => {
            tracing::error!("pool worker cannot start: {reason}");
            return EXIT_BOOT_FAILED;
        }
    };
    let control = match open_control(&conn) {
        Ok(control) => control,
        Err(reason) => {
            tracing::error!("pool worker cannot start: {reason}");
            return EXIT_BOOT_FAILED;
        }
    };
    let me = Address::named(std::process::id().to_string());
    let reply = |kind: Kind, body: Vec<u8>| {
        let envelope = Envelope::new(Address::Main, me.clone(), kind).with_raw_body(body);
        send_envelope(&conn.to_master, envelope)
    };
    let mut worker = match init_worker::<W>(&conn) {
        Ok(worker) => {
            if reply(Kind::Finished, Vec::new()).is_err() {
                return EXIT_CHANNEL_FAILED;
            }
            worker
        }
        Err(error) => {
            let _ = reply(Kind::Failed, to_bytes(&error).unwrap_or_default());
            return EXIT_INIT_FAILED;
        }
    };
    watch_control(control);
    let code = loop {
        let envelope = match recv_frame(&conn.inbox) {
            Ok(Frame::Message(envelope)) if envelope.kind == Kind::user(STOP) => {
                apply_stop(&worker_stop(), &envelope);
                continue;
            }
            Ok(Frame::Message(envelope)) => envelope,
            Ok(other) => {
                tracing::warn!("pool worker: unexpected {}", other.describe());
                continue;
            }
            Err(RecvError::Closed) => break 0,
            Err(RecvError::Protocol(error)) => {
                // A corrupt frame: say so (the master counts it) and go on.
                let error = StageError::new(error);
                if reply(Kind::Failed, to_bytes(&error).unwrap_or_default()).is_err() {
                    return EXIT_CHANNEL_FAILED;
                }
                continue;
            }
            Err(error) => {
                tracing::error!("pool worker: {error}");
                return EXIT_CHANNEL_FAILED;
            }
        };
        match envelope.kind {
            Kind::Do => {
                let body = match from_bytes::<Batch<W::Task>>(&envelope.body) {
                    Ok(Batch { traces, tasks }) => {
                        let _span = batch_span(&worker, &traces, tasks.len());
                        run_batch(&mut worker, tasks)
                    }
                    Err(error) => Err(StageError::new(error)),
                };
                let sent = match body {
                    Ok(body) => reply(Kind::Finished, body),
                    Err(error) => reply(Kind::Failed, to_bytes(&error).unwrap_or_default()),
                };
                if sent.is_err() {
                    return EXIT_CHANNEL_FAILED;
                }
            }
            Kind::Die => break 0,
            other => tracing::warn!("pool worker: unexpected {other} message"),
        }
    };
    if let Err(error) = catch_panic(|| {
        worker.cleanup();
        Ok(())
    }) {
        tracing::error!("pool worker: cleanup {error:#}");
    }
    code
}

fn init_worker<W: Program>(conn: &Connection) -> Result<W, StageError> {
    let envelope = match recv_frame(&conn.inbox) {
        Ok(Frame::Message(envelope)) if envelope.kind == Kind::user(INIT) => envelope,
        Ok(other) => {
            return Err(StageError::msg(format!(
                "expected init arguments, got {}",
                other.describe()
            )));
        }
        Err(error) => return Err(StageError::new(error)),
    };
    let init = envelope.body::<W::Init>().map_err(StageError::new)?;
    catch_panic(|| W::init(init))
}

/// Runs a batch, each task inside `catch_unwind`, and encodes the reply.
fn run_batch<W: Program>(worker: &mut W, tasks: Vec<W::Task>) -> Result<Vec<u8>, StageError> {
    let n = tasks.len();
    let started = Instant::now();
    let mut outputs = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for (at, task) in (0_u64..).zip(tasks) {
        match catch_panic(|| worker.run(task)) {
            Ok(output) => outputs.push(output),
            Err(error) => failures.push((at, error)),
        }
    }
    let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let reply = Reply {
        busy,
        failures,
        outputs,
    };
    match to_bytes(&reply) {
        Ok(bytes) => Ok(bytes),
        // One output would not encode: encode each alone, so only that one fails.
        Err(_) => {
            let mut failures = reply.failures.into_iter().peekable();
            let mut outputs = reply.outputs.into_iter();
            let (mut kept, mut failed) = (Vec::new(), Vec::new());
            for at in 0..n as u64 {
                if let Some(failure) = failures.next_if(|(i, _)| *i == at) {
                    failed.push(failure);
                } else if let Some(output) = outputs.next() {
                    match to_bytes(&output) {
                        Ok(_) => kept.push(output),
                        Err(error) => failed.push((at, StageError::new(error))),
                    }
                }
            }
            to_bytes(&Reply {
                busy,
                failures: failed,
                outputs: kept,
            })
            .map_err(StageError::new)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(failures: &[u64], outputs: usize) -> Reply<u64> {
        Reply {
            busy: 0,
            failures: failures
                .iter()
                .map(|&at| (at, StageError::msg("no")))
                .collect(),
            outputs: vec![7; outputs],
        }
    }

    #[test]
    fn a_reply_answers_each_task_of_its_batch_once() {
        assert!(reply(&[], 3).check(3).is_ok());
        assert!(reply(&[0, 2], 1).check(3).is_ok());
        assert!(reply(&[0, 1, 2], 0).check(3).is_ok());
        // Too few or too many results.
        assert!(reply(&[], 2).check(3).is_err());
        assert!(reply(&[1], 3).check(3).is_err());
        // Failures out of order, twice at one place, or past the batch.
        assert!(reply(&[2, 0], 1).check(3).is_err());
        assert!(reply(&[1, 1], 1).check(3).is_err());
        assert!(reply(&[3], 2).check(3).is_err());
    }

    #[test]
    fn a_reply_round_trips() {
        let bytes = to_bytes(&reply(&[1], 2)).unwrap();
        let back = from_bytes::<Reply<u64>>(&bytes).unwrap();
        assert_eq!((back.busy, back.outputs), (0, vec![7, 7]));
        assert_eq!(back.failures.len(), 1);
        assert_eq!(back.failures[0].0, 1);
    }

    #[test]
    fn a_reply_cut_short_or_corrupt_does_not_decode() {
        let bytes = to_bytes(&reply(&[], 3)).unwrap();
        for end in 0..bytes.len() {
            assert!(
                from_bytes::<Reply<u64>>(&bytes[..end]).is_err(),
                "{end} bytes"
            );
        }
        // The outputs' layout byte, then their count (after the length of their byte
        // string), made wrong.
        let layout = bytes.len() - 3 * 8 - 8 - 1 - 1;
        for (at, byte) in [(layout, 7), (layout + 2, 4)] {
            let mut corrupt = bytes.clone();
            corrupt[at] = byte;
            assert!(from_bytes::<Reply<u64>>(&corrupt).is_err(), "byte {at}");
        }
    }

    #[test]
    fn a_batch_of_tasks_round_trips() {
        // The tasks encoded as the driver encodes them.
        let tasks = crate::items::Encoded([5_u64, 6].iter());
        let bytes = to_bytes(&(Vec::<TraceParent>::new(), tasks)).unwrap();
        let batch = from_bytes::<Batch<u64>>(&bytes).unwrap();
        assert_eq!((batch.traces.len(), batch.tasks), (0, vec![5, 6]));
    }
}
