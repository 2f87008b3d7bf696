//! Worker processes over `ipc-channel`: bootstrap, pool, router, process-backed stages and
//! supervision.

mod boot;
mod duplex;
mod error;
mod node;
mod pool;
mod router;
mod stage;
mod wire;
mod worker;

pub use boot::init;
pub use duplex::{Child, ChildMain, Duplex};
pub use error::{ExitHow, ProcError, SpawnError, TaskError};
pub use node::{Handlers, Node, NodeStats};
pub use pool::{Completed, DEFAULT_MAX_BATCH, Ordered, Pool, PoolBuilder, PoolStats, TaskResult};
pub use router::{Router, RouterBuilder, RouterReport, WorkerMain, WorkerReport};
pub use stage::{
    InBackend, InTransport, ProcBackend, ProcTransport, RemoteBackend, RemoteTransport,
};
pub use wire::SHARED_MEMORY_THRESHOLD;
pub use worker::Worker;
