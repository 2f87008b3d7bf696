//! A parent and one child process talking both ways (pymulproc's pipe).

use std::fmt;
use std::time::Duration;

use engine_core::StageError;
use engine_core::protocol::{Address, Envelope, Frame, Kind, to_bytes};
use ipc_channel::ipc::{IpcReceiver, IpcSender};
use serde::Serialize;

use crate::boot::{self, Process, address_at, offset_of};
use crate::codes::{EXIT_BOOT_FAILED, INIT};
use crate::error::{ExitHow, ProcError, SpawnError};
use crate::wire::{self, Packet, RecvError, send_envelope};

/// A child's code: runs with its end of the pipe; an error is logged and makes the exit
/// code 1. A plain `fn`, or a closure that captures nothing: it runs in the child process.
pub type ChildMain = fn(&mut Duplex) -> Result<(), StageError>;

const KIND: &str = "duplex";

/// One end of a two-way channel between a parent and its child process. Messages are
/// [`Envelope`]s (pymulproc's request, sender, recipient and data); bodies of
/// [`SHARED_MEMORY_THRESHOLD`](crate::SHARED_MEMORY_THRESHOLD) bytes or more travel in
/// shared memory.
pub struct Duplex {
    me: Address,
    peer: Address,
    tx: IpcSender<Packet>,
    rx: IpcReceiver<Packet>,
}

impl fmt::Debug for Duplex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Duplex")
            .field("me", &self.me)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Duplex {
    /// This end's address: [`Address::Main`] for the parent, the child's pid for the child.
    pub fn me(&self) -> &Address {
        &self.me
    }

    /// The other end's address.
    pub fn peer(&self) -> &Address {
        &self.peer
    }

    /// Sends a message of `kind` ([`Kind::Do`], [`Kind::Finished`], [`Kind::Die`] or a user
    /// kind) with `body`.
    ///
    /// # Errors
    ///
    /// [`ProcError::Closed`] if the other end is gone, [`ProcError::Protocol`] if the body
    /// cannot be encoded.
    pub fn send<T: Serialize + ?Sized>(&self, kind: Kind, body: &T) -> Result<(), ProcError> {
        self.send_bytes(kind, to_bytes(body)?)
    }

    /// Sends a message whose body is `bytes` as they are (no encoding; the receiver reads
    /// [`Envelope::body`]). The cheapest way to move a large buffer.
    ///
    /// # Errors
    ///
    /// [`ProcError::Closed`] if the other end is gone.
    pub fn send_bytes(&self, kind: Kind, bytes: Vec<u8>) -> Result<(), ProcError> {
        let envelope = Envelope::new(self.peer.clone(), self.me.clone(), kind).with_raw_body(bytes);
        send_envelope(&self.tx, envelope).map_err(|_| ProcError::Closed)
    }

    /// Waits for the next message.
    ///
    /// # Errors
    ///
    /// [`ProcError::Closed`] once the other end is gone, [`ProcError::Protocol`] for a frame
    /// that does not decode (the channel stays usable).
    pub fn recv(&self) -> Result<Envelope, ProcError> {
        self.recv_inner(None)?.ok_or(ProcError::Closed)
    }

    /// Waits at most `timeout` for the next message; `Ok(None)` if none came.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Envelope>, ProcError> {
        self.recv_inner(Some(timeout))
    }

    fn recv_inner(&self, timeout: Option<Duration>) -> Result<Option<Envelope>, ProcError> {
        match wire::recv_packet(&self.rx, timeout) {
            Ok(packet) => match wire::open(packet) {
                Ok(Frame::Message(envelope)) => Ok(Some(envelope)),
                Ok(other) => Err(ProcError::Channel(format!(
                    "unexpected {}",
                    other.describe()
                ))),
                Err(RecvError::Protocol(e)) => Err(ProcError::Protocol(e)),
                Err(e) => Err(ProcError::Channel(e.to_string())),
            },
            Err(RecvError::Timeout) => Ok(None),
            Err(RecvError::Closed) => Err(ProcError::Closed),
            Err(RecvError::Protocol(e)) => Err(ProcError::Protocol(e)),
            Err(RecvError::Channel(e)) => Err(ProcError::Channel(e)),
        }
    }

    /// Sends raw bytes as if they were a frame: for tests of how the other end takes
    /// corrupt input. Only with the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn send_raw_frame(&self, bytes: Vec<u8>) -> Result<(), ProcError> {
        self.tx
            .send(Packet::Frame(bytes))
            .map_err(|_| ProcError::Closed)
    }
}

/// A child process with a [`Duplex`] to it. Dropping it kills the child (if it still runs)
/// and reaps it; for a graceful end, tell it to finish and call [`wait`](Self::wait).
///
/// ```no_run
/// use engine::core::protocol::Kind;
/// use engine::proc::{Child, Duplex};
///
/// fn doubler(pipe: &mut Duplex) -> Result<(), engine::core::StageError> {
///     loop {
///         let message = pipe.recv()?;
///         match message.kind {
///             Kind::Do => pipe.send(Kind::Finished, &(message.body::<u64>()? * 2))?,
///             _ => return Ok(()), // DIE
///         }
///     }
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     engine::proc::init();
///     let child = Child::spawn(doubler)?;
///     child.duplex().send(Kind::Do, &21_u64)?;
///     assert_eq!(child.duplex().recv()?.body::<u64>()?, 42);
///     child.duplex().send(Kind::Die, &())?;
///     assert!(child.wait().is_success());
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Child {
    duplex: Duplex,
    process: Process,
    ended: Option<ExitHow>,
}

impl Child {
    /// Starts this binary as a child process running `main`.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] if it cannot start (for example `main` does not call
    /// [`init`](crate::init) first).
    pub fn spawn(main: ChildMain) -> Result<Self, SpawnError> {
        Self::spawn_with_timeout(main, Duration::from_secs(10))
    }

    /// Like [`spawn`](Self::spawn), with a start timeout.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub fn spawn_with_timeout(main: ChildMain, timeout: Duration) -> Result<Self, SpawnError> {
        let spawned = boot::spawn(duplex_entry, KIND, timeout)?;
        let envelope = Envelope::new(
            Address::named(spawned.pid.to_string()),
            Address::Main,
            Kind::user(INIT),
        )
        .with_raw_body(to_bytes(&offset_of(main as usize)).map_err(SpawnError::Protocol)?);
        if let Err(error) = send_envelope(&spawned.tx, envelope) {
            spawned.kill_and_wait();
            return Err(SpawnError::Protocol(error));
        }
        let peer = Address::named(spawned.pid.to_string());
        Ok(Self {
            duplex: Duplex {
                me: Address::Main,
                peer,
                tx: spawned.tx,
                rx: spawned.rx,
            },
            process: spawned.process,
            ended: None,
        })
    }

    /// The parent's end of the pipe.
    pub fn duplex(&self) -> &Duplex {
        &self.duplex
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// Waits for the child to end.
    pub fn wait(mut self) -> ExitHow {
        let how = self.process.wait();
        self.ended = Some(how);
        how
    }

    /// Kills the child and waits for its end.
    pub fn kill(mut self) -> ExitHow {
        let how = self.process.kill_and_wait();
        self.ended = Some(how);
        how
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.ended.is_none() {
            self.process.kill_and_wait();
        }
    }
}

/// The main function of a child process.
pub(crate) fn duplex_entry(server: String) -> i32 {
    let (conn, offset) = match boot::connect_with_init::<isize>(server, KIND) {
        Ok(started) => started,
        Err(reason) => {
            tracing::error!("child process cannot start: {reason}");
            return EXIT_BOOT_FAILED;
        }
    };
    // SAFETY: the parent computed the offset of a `ChildMain` of this same binary (the
    // handshake and the executable's identity were checked at start).
    let main: ChildMain = unsafe { std::mem::transmute::<usize, ChildMain>(address_at(offset)) };
    let mut duplex = Duplex {
        me: Address::named(std::process::id().to_string()),
        peer: Address::Main,
        tx: conn.to_master,
        rx: conn.inbox,
    };
    match main(&mut duplex) {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!("child process failed: {error:#}");
            1
        }
    }
}
