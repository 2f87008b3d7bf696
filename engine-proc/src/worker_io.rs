//! One pool worker process as its driver talks to it: started and initialised (with the
//! channel its stop levels go to), and its tasks cancelled or refused when they cannot go
//! (a batch on its way is in `batch`).

use std::collections::VecDeque;
use std::time::Duration;

use engine_core::StageError;
use engine_core::protocol::{Address, Envelope, Frame, Kind, to_bytes};
use ipc_channel::ipc::IpcSender;

use crate::batch::{Batch, InFlight};
use crate::boot::{self, Replies, Spawned};
use crate::codes::{CONTROL, INIT};
use crate::error::{ExitHow, SpawnError, TaskError};
use crate::program::{Program, kind_of, pool_entry};
use crate::shared::{Routed, Shared};
use crate::wire::{self, Packet, RecvError, send_envelope};

/// Cancels what is in flight: each job's result is [`TaskError::Cancelled`].
pub(crate) fn cancel<T, O>(inflight: &mut VecDeque<InFlight<T>>) -> Vec<Routed<O>> {
    inflight
        .drain(..)
        .flat_map(|f| f.batch.into_jobs())
        .map(|job| job.failed(TaskError::Cancelled))
        .collect()
}

/// Starts the worker process of `slot` and initialises it with `init`; it is live once this
/// returns.
pub(crate) fn start_worker<W: Program>(
    shared: &Shared<W>,
    slot: usize,
    init: &[u8],
) -> Result<Spawned<Replies>, SpawnError> {
    let worker = boot::spawn(
        pool_entry::<W>,
        &kind_of::<W>(),
        shared.config().start_timeout,
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
    let outcome = receive_control(&worker).and_then(|control| {
        init_result(&worker)?;
        Ok(control)
    });
    match outcome {
        Ok(control) => {
            let worker = worker.share_replies();
            shared.register(slot, &worker, control);
            Ok(worker)
        }
        Err(error) => {
            worker.kill_and_wait();
            Err(error)
        }
    }
}

/// The worker's first packet: the sending end of its control channel, where stop levels go.
fn receive_control(worker: &Spawned) -> Result<IpcSender<Packet>, SpawnError> {
    match wire::recv_packet(&worker.rx, None) {
        Ok(Packet::Peers(mut peers)) if peers.len() == 1 && peers[0].0 == CONTROL => {
            Ok(peers.remove(0).1)
        }
        Ok(_) => Err(SpawnError::Protocol(
            engine_core::protocol::ProtocolError::UnexpectedFrame {
                expected: "the worker's control channel",
                found: "another packet".into(),
            },
        )),
        Err(_) => Err(SpawnError::ExitedEarly {
            how: worker
                .wait_exit(Duration::from_secs(5))
                .unwrap_or(ExitHow::Unknown),
        }),
    }
}

/// The worker's answer to its init arguments.
fn init_result(worker: &Spawned) -> Result<(), SpawnError> {
    match wire::recv_frame(&worker.rx) {
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
    }
}

/// Takes out of `batch` the tasks that will not encode, each with its result: failed with
/// the encoding error. The others stay, in order (each a chunk of its own: this runs only
/// when a batch would not encode).
pub(crate) fn unencodable<W: Program>(batch: &mut Batch<W::Task>) -> Vec<Routed<W::Output>> {
    let mut failed = Vec::new();
    let kept: Vec<_> = std::mem::take(batch)
        .into_jobs()
        .filter(|job| match to_bytes(job.task()) {
            Ok(_) => true,
            Err(error) => {
                let error = TaskError::Failed(StageError::new(error));
                failed.push(job.failed(error));
                false
            }
        })
        .collect();
    *batch = Batch::from_jobs(kept);
    failed
}
