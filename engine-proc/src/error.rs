//! Errors of worker processes, pools and routers.

use std::fmt;
use std::io;
use std::time::Duration;

use engine_core::StageError;
use engine_core::protocol::ProtocolError;
use engine_core::protocol::TaskId;
use serde::{Deserialize, Serialize};

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExitHow {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it (9 is SIGKILL, 6 SIGABRT, 11 SIGSEGV).
    Signal(i32),
    /// Its end could not be observed.
    Unknown,
}

impl ExitHow {
    /// Whether the worker exited with code 0.
    pub fn is_success(self) -> bool {
        self == Self::Code(0)
    }
}

impl fmt::Display for ExitHow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Code(code) => write!(f, "exited with code {code}"),
            Self::Signal(signal) => {
                let name = match signal {
                    libc::SIGKILL => "SIGKILL",
                    libc::SIGABRT => "SIGABRT",
                    libc::SIGSEGV => "SIGSEGV",
                    libc::SIGTERM => "SIGTERM",
                    libc::SIGINT => "SIGINT",
                    libc::SIGBUS => "SIGBUS",
                    _ => "",
                };
                if name.is_empty() {
                    write!(f, "killed by signal {signal}")
                } else {
                    write!(f, "killed by signal {signal} ({name})")
                }
            }
            Self::Unknown => f.write_str("ended in an unknown way"),
        }
    }
}

/// Why a worker process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The process could not be spawned, or a channel could not be opened.
    #[error("cannot start a worker process: {0}")]
    Io(#[source] io::Error),
    /// The worker ended before it connected: most often `main` does not call
    /// [`engine_proc::init()`](crate::init) first.
    #[error(
        "the worker process {how} before it connected; does `main` call `engine_proc::init()` on its first line?"
    )]
    ExitedEarly {
        /// How it ended.
        how: ExitHow,
    },
    /// The worker did not connect in time (it was killed): `main` may not call
    /// [`engine_proc::init()`](crate::init), or calls it after slow work.
    #[error(
        "the worker process did not connect within {after:?} and was killed; does `main` call `engine_proc::init()` on its first line?"
    )]
    Timeout {
        /// The start timeout.
        after: Duration,
    },
    /// The handshake failed: another protocol version or another kind of worker.
    #[error("worker handshake failed")]
    Handshake(#[source] ProtocolError),
    /// A frame could not be sent or did not decode.
    #[error("worker protocol error")]
    Protocol(#[source] ProtocolError),
    /// The worker's own initialisation failed.
    #[error("the worker's initialisation failed: {0:#}")]
    Init(StageError),
    /// This process was spawned as a worker but starts workers before calling
    /// [`engine_proc::init()`](crate::init).
    #[error(
        "this process was started as a worker, but `main` starts workers before calling `engine_proc::init()`; call it on main's first line"
    )]
    NotInitialised,
}

/// Why a task has no result.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskError {
    /// The task returned an error or panicked; the message is the worker's.
    #[error("the task failed: {0:#}")]
    Failed(StageError),
    /// Every worker that took the task died while running it.
    #[error("the worker died running the task ({how}), {attempts} attempt(s)")]
    WorkerDied {
        /// How the last one died.
        how: ExitHow,
        /// How many times the task was tried.
        attempts: u32,
    },
    /// The task ran longer than the pool's task timeout; its worker was killed and replaced.
    #[error("the task ran longer than {after:?}; its worker was killed")]
    TimedOut {
        /// The task timeout.
        after: Duration,
    },
    /// The pool stopped before the task ran.
    #[error("the pool stopped before the task ran")]
    Cancelled,
    /// The pool's stage filtered the task out: its `transport` returned `Ok(None)`.
    #[error("the stage filtered the task out (no output)")]
    Filtered,
    /// No worker is left to run the task: every worker failed to start again.
    #[error("no worker is left to run the task: {0}")]
    NoWorkers(String),
}

/// Errors of messaging between processes (router and duplex).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// No process has this name.
    #[error("no process is named {0:?}")]
    NoSuchPeer(String),
    /// The other side is gone.
    #[error("the other process is gone (its channel is closed)")]
    Closed,
    /// A body could not be encoded, or a frame did not decode.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A worker process could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The channel failed.
    #[error("the channel failed: {0}")]
    Channel(String),
}

/// Why [`Pool::recv_timeout`](crate::Pool::recv_timeout) returned no result.
///
/// ```no_run
/// # use std::time::Duration;
/// # use engine::proc::{Pool, RecvTimeoutError};
/// # fn wait(pool: &mut Pool<engine::proc::WorkerStage<Echo>>) {
/// match pool.recv_timeout(Duration::from_millis(100)) {
///     Ok(Some((id, result))) => println!("task {id}: {result:?}"),
///     Ok(None) => println!("nothing outstanding"),
///     Err(RecvTimeoutError::Timeout) => println!("still running"),
///     Err(RecvTimeoutError::Disconnected) => println!("the pool's workers are gone"),
/// }
/// # }
/// # struct Echo;
/// # impl engine::proc::Worker for Echo {
/// #     type Init = (); type Task = u8; type Output = u8;
/// #     fn init(_: ()) -> Result<Self, engine::core::StageError> { Ok(Echo) }
/// #     fn run(&mut self, t: u8) -> Result<u8, engine::core::StageError> { Ok(t) }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No result came within the timeout; tasks are still outstanding.
    #[error("no result within the timeout")]
    Timeout,
    /// No result can come any more: the pool's drivers are gone.
    #[error("the pool's results channel is closed")]
    Disconnected,
}

impl From<crossbeam_channel::RecvTimeoutError> for RecvTimeoutError {
    fn from(error: crossbeam_channel::RecvTimeoutError) -> Self {
        match error {
            crossbeam_channel::RecvTimeoutError::Timeout => Self::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => Self::Disconnected,
        }
    }
}

/// A task's outcome as the pool delivers it.
pub type TaskResult<O> = Result<O, TaskError>;

/// A task's id and outcome.
pub type Completion<O> = (TaskId, TaskResult<O>);
