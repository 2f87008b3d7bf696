//! What travels on the ipc channels: encoded [`Frame`]s, with large bodies beside them in
//! shared memory.

use engine_core::StopLevel;
use engine_core::protocol::{Address, Envelope, Frame, Kind, ProtocolError};
use ipc_channel::TryRecvError;
use ipc_channel::ipc::{IpcReceiver, IpcSender, IpcSharedMemory};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::codes::STOP;
use crate::regions;

/// Bodies at least this large travel in shared memory instead of through the socket.
///
/// The sending process keeps the shared memory regions it used and fills them again once
/// their receiver has copied the body out (a flag in the region says so), so a stream of
/// large bodies costs one copy on each side instead of a fresh region (and its page faults)
/// per body. A process keeps at most 8 such regions and 64 MiB; beyond that, or while
/// every kept region is still being read, a body gets a region of its own.
pub const SHARED_MEMORY_THRESHOLD: usize = 64 * 1024;

/// One message on an ipc channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Packet {
    /// An encoded [`Frame`].
    Frame(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An encoded [`Frame::Message`] whose envelope's body travels in `region`: its `len`
    /// bytes after the region's header (see [`regions`]).
    Shared {
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
        region: IpcSharedMemory,
        len: u64,
    },
    /// A worker's first packet: where to reach it, and its encoded [`Frame::Hello`].
    Connect {
        inbox: IpcSender<Packet>,
        #[serde(with = "serde_bytes")]
        hello: Vec<u8>,
    },
    /// The senders of every other process of a router, by name (and `"main"`).
    Peers(Vec<(String, IpcSender<Packet>)>),
    /// Nothing: wakes a receiver.
    Wake,
}

/// Why a packet could not be received.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecvError {
    /// The sending side is gone (all its processes ended or dropped it).
    #[error("the channel is closed")]
    Closed,
    /// Nothing arrived in time.
    #[error("nothing arrived in time")]
    Timeout,
    /// The channel failed or the bytes were not a packet.
    #[error("the channel failed: {0}")]
    Channel(String),
    /// The packet held a frame that does not decode.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Encodes and sends a frame.
pub(crate) fn send_frame(tx: &IpcSender<Packet>, frame: &Frame) -> Result<(), ProtocolError> {
    let bytes = frame.encode()?;
    tx.send(Packet::Frame(bytes)).map_err(closed)
}

/// Sends an envelope; a large body goes in shared memory.
pub(crate) fn send_envelope(
    tx: &IpcSender<Packet>,
    mut envelope: Envelope,
) -> Result<(), ProtocolError> {
    if envelope.body.len() < SHARED_MEMORY_THRESHOLD {
        return send_frame(tx, &Frame::Message(envelope));
    }
    let body = std::mem::take(&mut envelope.body);
    let frame = Frame::Message(envelope).encode()?;
    let (region, lease) = regions::lease(&body);
    let len = body.len() as u64;
    tx.send(Packet::Shared { frame, region, len }).map_err(|e| {
        // Nobody will read it: the region is free again.
        lease.release();
        closed(e)
    })
}

/// Tells a worker the run's stop level.
pub(crate) fn send_stop(tx: &IpcSender<Packet>, level: StopLevel) -> Result<(), ProtocolError> {
    let envelope =
        Envelope::new(Address::Main, Address::Main, Kind::user(STOP)).with_body(&level)?;
    send_envelope(tx, envelope)
}

fn closed(error: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::UnexpectedFrame {
        expected: "an open channel",
        found: format!("a send failure: {error}"),
    }
}

/// Turns a packet into a frame, putting a shared body back into its envelope.
pub(crate) fn open(packet: Packet) -> Result<Frame, RecvError> {
    match packet {
        Packet::Frame(bytes) => Ok(Frame::decode(&bytes)?),
        Packet::Shared { frame, region, len } => match Frame::decode(&frame)? {
            Frame::Message(mut envelope) => {
                envelope.body = regions::take(region, len)?;
                Ok(Frame::Message(envelope))
            }
            other => Err(RecvError::Protocol(ProtocolError::UnexpectedFrame {
                expected: "a message with a shared body",
                found: other.describe(),
            })),
        },
        Packet::Connect { .. } | Packet::Peers(_) | Packet::Wake => {
            Err(RecvError::Protocol(ProtocolError::UnexpectedFrame {
                expected: "a frame",
                found: "a control packet".into(),
            }))
        }
    }
}

/// Receives a packet, waiting at most `timeout` (forever if `None`).
pub(crate) fn recv_packet(
    rx: &IpcReceiver<Packet>,
    timeout: Option<Duration>,
) -> Result<Packet, RecvError> {
    let got = match timeout {
        None => rx.recv().map_err(TryRecvError::IpcError),
        // ipc-channel waits whole milliseconds, rounded down: round up instead, so that a
        // timeout never fires early.
        Some(timeout) => rx.try_recv_timeout(round_up_to_millis(timeout)),
    };
    got.map_err(recv_error)
}

/// Why a receive got nothing, as a [`RecvError`] (nothing in time: `Timeout`).
pub(crate) fn recv_error(error: TryRecvError) -> RecvError {
    match error {
        TryRecvError::Empty => RecvError::Timeout,
        TryRecvError::IpcError(ipc_channel::IpcError::Disconnected) => RecvError::Closed,
        TryRecvError::IpcError(e) => RecvError::Channel(e.to_string()),
    }
}

/// Receives and decodes one frame, waiting as long as it takes.
pub(crate) fn recv_frame(rx: &IpcReceiver<Packet>) -> Result<Frame, RecvError> {
    open(recv_packet(rx, None)?)
}

pub(crate) fn round_up_to_millis(d: Duration) -> Duration {
    let millis = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}
