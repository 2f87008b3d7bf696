//! Worker processes over `ipc-channel`: bootstrap, pool, router, process-backed stages and
//! supervision.

mod boot;
mod error;
mod pool;
mod wire;
mod worker;

pub use boot::init;
pub use error::{ExitHow, SpawnError, TaskError};
pub use pool::{Completed, DEFAULT_MAX_BATCH, Ordered, Pool, PoolBuilder, PoolStats, TaskResult};
pub use wire::SHARED_MEMORY_THRESHOLD;
pub use worker::Worker;
