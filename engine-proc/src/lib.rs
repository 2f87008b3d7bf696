//! Worker processes over `ipc-channel`: bootstrap, pool, router, process-backed stages and
//! supervision. The Rust form of DumbPipelineBox, multipro_lab and pymulproc.
//!
//! - **Bootstrap**: [`init`] on the first line of `main` turns this same binary into a
//!   worker when it was spawned as one. The master hands the worker the name of an
//!   `IpcOneShotServer`; the worker's [`Hello`](engine_core::protocol::Hello) is checked for
//!   the protocol version and the worker kind. A worker that dies before connecting, or a
//!   binary that never calls `init`, is a [`SpawnError`] within the start timeout, never a
//!   hang.
//! - **[`Pool`]** (DumbPipelineBox, multipro_lab's task queue): identical workers running
//!   a [`Transport`](engine_core::Transport), the same trait the threaded engine runs, each
//!   set up once per process; tasks in, `(task id, result)` out, in completion order
//!   ([`Pool::run`]) or task order ([`Pool::map`]). A task that fails or panics is a
//!   [`TaskError::Failed`] value. Idle workers pull adaptive batches (about a millisecond of
//!   work each), so fast tasks travel by the thousand and slow ones one by one. Optional
//!   per-task timeout. DumbPipelineBox's own form, a [`Worker`] built from init arguments,
//!   runs through the [`WorkerStage`] adapter.
//! - **[`Router`]** (multipro_lab, pymulproc's queues): a main process and named workers of
//!   different kinds, each registering typed [`Handlers`] per message kind; any process sends
//!   `(receiver, kind, body)` to any other or broadcasts, workers directly to each other. An
//!   unknown kind or a body that does not decode is logged and counted ([`NodeStats`]). Main
//!   has a periodic action.
//! - **[`Child`] and [`Duplex`]** (pymulproc's pipe): a parent and one child talking both ways
//!   with `DO` / `FINISHED` / `DIE` envelopes.
//! - **[`ProcTransport`] / [`ProcBackend`]**: a stage of the threaded engine placed in N
//!   worker processes with the same stage code (`ProcTransport::new(stage).workers(4)`).
//!   The engine's batches cross whole, several in flight per engine thread, and every item
//!   comes back with its own outcome; the stage's context in the worker has the engine's
//!   stop state and (with [`ProcTransport::config`]) its app config.
//! - **Supervision**: a worker that crashes, aborts or is killed is noticed at once (its
//!   channel closes; a thread waiting on it reaps it and says how it ended, [`ExitHow`]). A
//!   pool retries its tasks on another worker up to the limit, then returns
//!   [`TaskError::WorkerDied`], and starts a new worker. A router reports the crash
//!   ([`WorkerReport`]) and, with [`RouterBuilder::restart`], starts the worker again under
//!   the same name, telling every other process its new address. Workers die with their master
//!   (`PR_SET_PDEATHSIG`), ignore SIGINT (a terminal's Ctrl-C reaches the whole process
//!   group; the master stops them in order), and no zombie is left.
//! - **Shutdown**: a [`StopHandle`](engine_core::StopHandle) (SIGINT/SIGTERM through
//!   [`install_signal_handler`](engine_core::install_signal_handler)) tells every worker to
//!   die, waits up to a deadline, then kills; results already computed are delivered.
//! - **Large payloads**: a body of [`SHARED_MEMORY_THRESHOLD`] bytes or more travels in an
//!   `IpcSharedMemory` region beside its frame instead of through the socket; a sender fills
//!   its regions again once their receiver has copied the body out, so a stream of large
//!   bodies costs one copy on each side.
//! - **Testing**: with the `testing` feature, `test_support!` at the top of a test file lets
//!   ordinary `#[test]`s start workers (every worker runs only the entry test the macro adds),
//!   and the hooks that feed workers corrupt frames exist.
//!
//! Every frame is an [`engine_core::protocol::Frame`]; decoding never panics, and a corrupt
//! frame is a typed error that leaves the pool or router running.
//!
//! # Example
//!
//! ```no_run
//! use engine::core::{StageContext, StageError, Transport};
//! use engine::proc::Pool;
//! use serde::{Deserialize, Serialize};
//!
//! /// Halves images; the same stage could run on the threaded engine.
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Resizer {
//!     quality: u8,
//! }
//!
//! impl Transport for Resizer {
//!     type Input = (u32, u32);
//!     type Output = (u32, u32);
//!
//!     fn setup(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
//!         Ok(()) // expensive set-up happens once per process, not per task
//!     }
//!
//!     fn transport(&mut self, (w, h): (u32, u32), _: &StageContext) -> Result<Option<(u32, u32)>, StageError> {
//!         if w == 0 || h == 0 {
//!             return Err(StageError::msg("empty image"));
//!         }
//!         Ok(Some((w / 2, h / 2)))
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     engine::proc::init(); // first line: workers are copies of this binary
//!     let mut pool = Pool::builder().workers(2, Resizer { quality: 90 }).start()?;
//!     for (id, result) in pool.run([(640, 480), (0, 10), (1024, 768)]) {
//!         match result {
//!             Ok(size) => println!("task {id}: {size:?}"),
//!             Err(error) => println!("task {id} failed: {error}"),
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Linux only: it relies on `/proc/self/exe` and `PR_SET_PDEATHSIG`.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod batch;
mod boot;
mod codes;
mod config;
mod counters;
mod delivery;
mod driver;
mod duplex;
mod error;
mod in_worker;
mod items;
#[cfg(feature = "metrics")]
mod metrics;
mod node;
mod placed;
mod pool;
mod portable;
mod program;
mod regions;
mod remote;
mod router;
mod router_main;
mod router_report;
mod router_worker;
mod shared;
mod stage;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
#[doc(hidden)]
pub mod testing;
mod wire;
mod worker;
mod worker_io;
mod workers;

pub use boot::init;
pub use config::DEFAULT_MAX_BATCH;
pub use duplex::{Child, ChildMain, Duplex};
pub use error::{
    Completion, ExitHow, ProcError, RecvTimeoutError, SpawnError, TaskError, TaskResult,
};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::WorkerMetrics;
pub use node::{Handlers, Node, NodeStats};
pub use pool::{Completed, Ordered, Pool, PoolBuilder, PoolStats};
pub use portable::{NoConfig, PortableConfig, WithConfig};
pub use remote::{RemoteBackend, RemoteTransport};
pub use router::{Router, RouterBuilder};
pub use router_report::{RouterReport, WorkerReport};
pub use router_worker::WorkerMain;
pub use stage::{ProcBackend, ProcTransport};
pub use wire::SHARED_MEMORY_THRESHOLD;
pub use worker::{Worker, WorkerStage};
