//! The threaded 3-stage engine: frontend threads -> bounded queue -> transport threads ->
//! bounded queue -> backend threads.
//!
//! A pipeline is a frontend (required) followed by a transport, a backend, or both. Each stage
//! runs on its own threads, with one stage instance per thread, and the stages are connected
//! by bounded queues, so memory stays bounded whatever the speed of each stage.
//!
//! ```
//! use engine::threads::Engine;
//!
//! let report = Engine::builder(1..=10_000_u64)   // Any iterator is a frontend.
//!     .transport(|n: u64| n + 1)                 // Any `FnMut(A) -> B` a transport.
//!     .transport_threads(2)
//!     .backend(|_n: u64| {})                     // Any `FnMut(A)` a backend.
//!     .run()?;
//! assert_eq!(report.processed(), 10_000);
//! report.check().expect("every item is accounted for");
//! # Ok::<(), engine::threads::EngineError>(())
//! ```
//!
//! The closure forms name what a closure does, and need no type annotations:
//! [`filter_map`](EngineBuilder::filter_map), [`try_map`](EngineBuilder::try_map) and
//! [`flat_map`](EngineBuilder::flat_map) transports (one input to any number of outputs),
//! [`map_batch`](EngineBuilder::map_batch) (a whole batch per call, for light stages),
//! [`for_each`](EngineBuilder::for_each) and [`try_for_each`](EngineBuilder::try_for_each)
//! backends.
//!
//! ```
//! use engine::threads::Engine;
//!
//! let report = Engine::builder(["a b", "", "c"])
//!     .flat_map(|line| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
//!     .for_each(|_word| {})
//!     .run()?;
//! assert_eq!(report.processed(), 3); // "a", "b" and "c"; the empty line is filtered.
//! # Ok::<(), engine::threads::EngineError>(())
//! ```
//!
//! **Async stages** (feature `async`) are for I/O-bound work: each item's work is a future,
//! up to K of them in flight per stage on a tokio runtime, under every promise below; see
//! [`async_stage`] and [`Async`].
//!
//! # Promises
//!
//! 1. **No item is lost silently.** The [`RunReport`](engine_core::RunReport) accounts for
//!    every produced item as processed, filtered, failed, or (only after an abort) dropped;
//!    [`RunReport::check`](engine_core::RunReport::check) proves it.
//! 2. **A graceful stop drains.** [`StopHandle::stop`](engine_core::StopHandle::stop) (or a
//!    first Ctrl-C, through [`engine_core::install_signal_handler`]) stops the frontends and
//!    lets everything accepted flow through. [`stop_now`](engine_core::StopHandle::stop_now),
//!    a second Ctrl-C or an expired [`stop_timeout`](EngineBuilder::stop_timeout) aborts, and
//!    the report's dropped counts say how much was abandoned.
//! 3. **The end of the frontend ends the run**, once downstream has drained. Idle threads
//!    block on their queues and use no CPU; nothing polls with sleeps.
//! 4. **Failures are contained.** An error or a panic in a stage on one item is caught,
//!    counted as failed and logged with the stage and thread. Under the default
//!    [`ErrorPolicy::Skip`](engine_core::ErrorPolicy::Skip) the run goes on; under
//!    [`ErrorPolicy::Stop`](engine_core::ErrorPolicy::Stop), or for a
//!    [fatal](engine_core::StageError::fatal) error, it aborts and returns
//!    [`EngineError::StageFailed`]. A failing `setup` does the same, after `cleanup` ran for
//!    every instance that was set up.
//! 5. **Memory is bounded** by the queue capacities (backpressure).
//! 6. **Throughput** is close to the channels' own limit: items travel in batches of up to
//!    1024, and a batch goes as soon as the next stage is idle, so a lone item is not held
//!    back (see `cargo xtask bench threads`).
//!
//! # Threads and stopping
//!
//! Each thread makes its own stage instance. The one way to give each thread its own state
//! is a factory that receives the thread's [`StageContext`](engine_core::StageContext)
//! ([`Engine::builder_with`], [`EngineBuilder::transport_with`],
//! [`EngineBuilder::backend_with`], as rayon's `map_init`): the stage is made on its thread,
//! so it need not be `Send` or `Clone`. `.transport(x)` and `.backend(x)` are the shorthand
//! that clones `x` through the same factory. Stages chosen at run time are boxed: a
//! [`BoxFrontend`](engine_core::BoxFrontend) goes to [`Engine::builder`] by value, and a
//! [`BoxTransport`](engine_core::BoxTransport) or [`BoxBackend`](engine_core::BoxBackend) is
//! what the factory returns. `setup` and `cleanup` run once per thread, on that thread.
//!
//! A frontend may block in `produce` for as long as its source is silent (a pipe with no
//! data, a socket). Its produced items never wait behind it: its open batch is reachable by
//! the other threads, and an idle one takes it at once. On a stop,
//! the engine does not wait for a frontend stuck in `produce`: the run ends as soon as what
//! was accepted has drained, and an item that `produce` returns later is not accepted (its
//! [ticket](engine_core::plumbing::Ticket) completes as dropped) and the thread runs its `cleanup` and
//! ends. A frontend whose reads end in a known time and whose `cleanup` must finish before
//! the program exits (a broker source sending its last acknowledgements) says so with
//! [`stop_grace`](engine_core::Frontend::stop_grace): after a graceful stop has drained, the
//! run waits up to the longest grace for the frontends to end (a second stop or the stop
//! deadline ends the wait). Transport and backend calls are not interrupted: a call that never returns keeps the
//! run from ending, so give blocking stage code its own timeouts.
//!
//! # Ordered mode
//!
//! [`EngineBuilder::ordered`] delivers items to the last stage in frontend order, however many
//! transport threads run, with one frontend thread and one thread in the last stage. The
//! reorder buffer is bounded: the frontend waits when it runs too far ahead. In ordered mode
//! the output of one input batch travels to the backend as one batch, so the backend queue
//! may hold up to its number of batch slots times the frontend's batch size.
//!
//! # Live statistics
//!
//! [`EngineHandle::stats`] gives counts, items per second and queue depths while the engine
//! runs; [`EngineBuilder::stats_interval`] logs them through `tracing`.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The API: building, running and watching an engine.
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub mod async_stage;
mod builder;
mod closures;
mod engine;
mod error;
mod factory;
mod handle;
#[cfg(feature = "metrics")]
mod metrics;
mod plan;
mod stages;
mod stats;

// The machinery: starting and coordinating a run, the threads' loops, the queues.
mod consumer;
mod counters;
mod frontend;
mod input;
mod launch;
mod link;
mod run;
mod shared;
mod stall;
mod stall_watch;
mod wait;

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use async_stage::{Async, AsyncBackend, AsyncError, AsyncSink, AsyncStage, AsyncTransport};
pub use builder::EngineBuilder;
pub use engine::Engine;
pub use error::EngineError;
pub use factory::{Absent, Lendable, Present, Upstream};
pub use handle::EngineHandle;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::EngineMetrics;
pub use plan::DEFAULT_QUEUE_CAPACITY;
pub use stages::Stages;
pub use stats::{StageStats, Stats, StatsReader, ThreadSnapshot};
