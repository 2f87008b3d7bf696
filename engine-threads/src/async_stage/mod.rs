//! Async stages: a transport or backend whose work on an item is a future, with up to K items
//! in flight per stage on a tokio runtime.
//!
//! Most pipelines wait on the network. With blocking stages, an I/O-bound stage gets as many
//! calls in flight as it has threads; an async stage gets as many as its
//! [`concurrency`](AsyncStage::concurrency), on a few runtime threads. It is a stage like any
//! other: the engine hands it whole batches from its queue, keeps each item's ticket, and
//! settles every item when its future has finished, so every promise of the engine holds:
//!
//! - the counts add up, and a broker source's ticket completes only when the item's future
//!   has finished (at-least-once holds through an async stage);
//! - at most `concurrency` futures of the stage run at once (a semaphore shared by its
//!   threads), and a full stage blocks its upstream: memory stays bounded by the concurrency,
//!   one batch per engine thread and the queue capacities;
//! - a future that errs, panics or exceeds the per-item [`timeout`](AsyncStage::timeout)
//!   fails its item alone, under the engine's error policy, with its own error;
//! - in ordered mode the outputs leave in input order;
//! - a graceful stop waits for the futures in flight; a stop now cancels them and counts their
//!   items as dropped.
//!
//! Each item's future is first polled on the engine thread that took its batch, inside the
//! runtime's context: a future ready at once (no I/O to wait for) never leaves the thread, so
//! a light async stage costs little more than a blocking one. Futures that wait go on to the
//! runtime, one task per batch.
//!
//! With a trace hook installed ([`engine_core::trace`]), a batch whose items carry trace
//! contexts runs in its batch span from first poll to last: spans the futures open are its
//! children, and [`trace::current`](engine_core::trace::current) inside them gives its
//! context (with a hook whose spans are `tracing` spans, as engine-observe's `otel` is).
//!
//! The runtime is the engine's own (a small multi-thread runtime made at the first run,
//! [`runtime_threads`](AsyncStage::runtime_threads), 2 by default), or the program's, given
//! by its [`Handle`](tokio::runtime::Handle) ([`runtime`](AsyncStage::runtime)), so that a
//! program that has one, such as the pod, builds no second one.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use engine::threads::{Async, Engine};
//!
//! let report = Engine::builder(0..1_000_u64)
//!     .transport(
//!         Async::map(|x: u64| async move {
//!             tokio::time::sleep(Duration::from_millis(1)).await; // a network call
//!             x * 2
//!         })
//!         .concurrency(256),
//!     )
//!     .backend(|_: u64| {})
//!     .run()?;
//! assert_eq!(report.processed(), 1_000);
//! # Ok::<(), engine::threads::EngineError>(())
//! ```
//!
//! # Threads, processes or async?
//!
//! - Blocking stages on threads: CPU work, or blocking clients, with a few items in flight.
//! - Worker processes (`engine::proc`): CPU work that must not share a process (a crash, a
//!   leak, a library that is not thread-safe), or more cores than one process uses well.
//! - Async stages: waiting (HTTP, databases, brokers), hundreds or thousands of items in
//!   flight, async clients (reqwest, sqlx, tonic) without `block_on`.

mod adaptive;
mod closures;
mod lane;
mod settings;
mod stage;
#[cfg(feature = "tower")]
mod tower;

use std::future::Future;

use engine_core::{StageContext, StageError};

pub use closures::{AsyncFilterMap, AsyncForEach, AsyncMap, AsyncTryForEach, AsyncTryMap};
pub use settings::AsyncError;
pub use stage::{Async, AsyncSink, AsyncStage};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use tower::ServiceStage;

/// A transport whose work on an item is a future: `None` filters the item out.
///
/// One value serves all the items of an engine thread at once (hence `&self`); state per
/// thread comes from the factory of [`Async::transport_with`], which receives the thread's
/// context.
///
/// # Examples
///
/// ```
/// use engine::core::{StageContext, StageError};
/// use engine::threads::{Async, AsyncTransport, Engine};
///
/// struct Lookup {
///     table: Vec<&'static str>,
/// }
///
/// impl AsyncTransport for Lookup {
///     type Input = usize;
///     type Output = &'static str;
///
///     async fn transport(&self, i: usize, _: &StageContext) -> Result<Option<&'static str>, StageError> {
///         Ok(self.table.get(i).copied())
///     }
/// }
///
/// let report = Engine::builder(0..4_usize)
///     .transport(Async::transport_with(|_| Lookup { table: vec!["a", "b"] }))
///     .backend(|_: &str| {})
///     .run()?;
/// assert_eq!((report.processed(), report.filtered()), (2, 2));
/// # Ok::<(), engine::threads::EngineError>(())
/// ```
pub trait AsyncTransport: Send + Sync + 'static {
    /// What the stage takes.
    type Input: Send + 'static;
    /// What the stage gives.
    type Output: Send + 'static;

    /// The work on one item: `Ok(Some(out))` passes `out` on, `Ok(None)` filters the item,
    /// `Err` fails it.
    fn transport(
        &self,
        item: Self::Input,
        ctx: &StageContext,
    ) -> impl Future<Output = Result<Option<Self::Output>, StageError>> + Send;

    /// Called once per engine thread before its first item. An error stops the run.
    fn setup(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    /// Called once per engine thread after its last item's future has finished.
    fn cleanup(&self, _ctx: &StageContext) {}
}

/// A backend whose work on an item is a future.
///
/// As for [`AsyncTransport`], one value serves all the items of an engine thread.
pub trait AsyncBackend: Send + Sync + 'static {
    /// What the stage takes.
    type Input: Send + 'static;

    /// The work on one item; `Err` fails it.
    fn consume(
        &self,
        item: Self::Input,
        ctx: &StageContext,
    ) -> impl Future<Output = Result<(), StageError>> + Send;

    /// Called once per engine thread before its first item. An error stops the run.
    fn setup(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    /// Called once per engine thread after its last item's future has finished.
    fn cleanup(&self, _ctx: &StageContext) {}
}
