//! The core of the engine workspace: the stage traits, the wire protocol, the stop handle and
//! the run report that every engine (threads, worker processes, the pod, Redis) shares.
//!
//! A pipeline has three stages. A [`Frontend`] produces items, a [`Transport`] maps each item
//! to zero or one output, and a [`Backend`] consumes them. The item types are associated
//! types, so a pipeline whose stages do not fit together does not compile. Each stage gets a
//! [`StageContext`] (its name, its thread or worker index, the shared [`AppConfig`] and the
//! [`StopHandle`]), and `setup`/`cleanup` hooks run once per instance.
//!
//! Stages need no boilerplate: any [`IntoIterator`] is a frontend, any `FnMut(A) -> B` a
//! transport and any `FnMut(A)` a backend (see [`IntoFrontend`], [`IntoTransport`],
//! [`IntoBackend`], and [`filter_map`], [`try_map`], [`flat_map`], [`try_iter`] for the
//! filtering, fallible and expanding forms). A boxed stage (`Box<dyn Transport<..> + Send>`)
//! is a stage too, so stages can be chosen at run time.
//!
//! This crate runs nothing by itself; the engines do. It has few dependencies and changes
//! rarely.
//!
//! # Example
//!
//! A stage written as a type, next to stages written as a range and a closure, driven by hand
//! the way an engine drives them on one thread:
//!
//! ```
//! use engine::core::{
//!     Backend, Counts, IntoBackend, IntoFrontend, IntoTransport, RunEnd, RunReport, StageContext,
//!     StageError, StageKind, StageReport, StopHandle, Transport,
//! };
//! use engine::core::plumbing::{Outcome, Ticket, TrackedFrontend};
//!
//! /// Keeps the even numbers, halved.
//! struct Halve;
//!
//! impl Transport for Halve {
//!     type Input = u64;
//!     type Output = u64;
//!
//!     fn transport(&mut self, n: u64, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
//!         Ok(n.is_multiple_of(2).then_some(n / 2))
//!     }
//! }
//!
//! let stop = StopHandle::new();
//! let ctx = |name, kind| StageContext::new(name, kind, 0, 1, stop.clone());
//! let (f_ctx, t_ctx, b_ctx) = (
//!     ctx("numbers", StageKind::Frontend),
//!     ctx("halve", StageKind::Transport),
//!     ctx("sum", StageKind::Backend),
//! );
//!
//! let mut frontend = (1..=10_u64).into_frontend();
//! let mut transport = Halve.into_transport();
//! let mut total = 0;
//! let mut backend = (|n: u64| total += n).into_backend();
//!
//! let (mut f, mut t, mut b) = (Counts::default(), Counts::default(), Counts::default());
//! // Every item comes with a completion ticket; for plain sources it is `()`.
//! while let Some((ticket, n)) = frontend.produce(&f_ctx)? {
//!     f.input += 1;
//!     f.output += 1;
//!     t.input += 1;
//!     match transport.transport(n, &t_ctx)? {
//!         None => {
//!             t.filtered += 1;
//!             ticket.complete(Outcome::Filtered);
//!         }
//!         Some(half) => {
//!             t.output += 1;
//!             b.input += 1;
//!             backend.process(half, &b_ctx)?;
//!             b.output += 1;
//!             ticket.complete(Outcome::Processed);
//!         }
//!     }
//! }
//! drop(backend);
//! assert_eq!(total, 1 + 2 + 3 + 4 + 5);
//!
//! let report = RunReport::new(
//!     vec![
//!         StageReport::new("numbers", StageKind::Frontend).with_counts(f),
//!         StageReport::new("halve", StageKind::Transport).with_counts(t),
//!         StageReport::new("sum", StageKind::Backend).with_counts(b),
//!     ],
//!     std::time::Duration::from_millis(1),
//!     RunEnd::Completed,
//! );
//! report.check()?; // Every item is accounted for.
//! assert_eq!((report.produced(), report.filtered(), report.processed()), (10, 5, 5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Mismatched stages do not compile
//!
//! Engines require each stage's input type to be the previous stage's output type, as this
//! function does:
//!
//! ```
//! use engine::core::{Backend, IntoBackend, IntoTransport, Transport};
//!
//! fn connect<T: Transport, B: Backend<Input = T::Output>>(_: T, _: B) {}
//!
//! connect((|x: u32| x.to_string()).into_transport(), (|s: String| drop(s)).into_backend());
//! ```
//!
//! A backend of `u64` after a transport that outputs `String` is a compile error:
//!
//! ```compile_fail,E0271
//! # use engine::core::{Backend, IntoBackend, IntoTransport, Transport};
//! # fn connect<T: Transport, B: Backend<Input = T::Output>>(_: T, _: B) {}
//! connect((|x: u32| x.to_string()).into_transport(), (|n: u64| drop(n)).into_backend());
//! ```
//!
//! # Contents
//!
//! - Stages: [`Frontend`], [`Transport`], [`Backend`], [`StageKind`], [`ErrorPolicy`], the
//!   closure and iterator adapters, and stages chosen at run time: [`BoxFrontend`],
//!   [`BoxTransport`], [`BoxBackend`], [`box_frontend`].
//! - Context: [`StageContext`], [`AppConfig`].
//! - Stopping: [`StopHandle`], [`StopLevel`], [`install_signal_handler`].
//! - Reporting: [`RunReport`], [`StageReport`], [`Counts`], [`RunEnd`].
//! - Supervision: [`RestartPolicy`], [`Restart`], [`RestartTracker`], shared by the pool, the
//!   router and the pod.
//! - The wire protocol between processes: [`protocol`].
//! - Plumbing for engine authors and broker-backed sources, which stage code never names:
//!   per-item completion ([`plumbing::TrackedFrontend`], [`plumbing::Ticket`]), stages that
//!   run their items in other processes ([`plumbing::offload`]), the shared lock and batch
//!   sizing helpers: [`plumbing`].
//! - One trace per item across threads, processes and machines: [`trace`].
//! - Errors: [`StageError`], [`ConfigError`], [`SignalError`], [`CountMismatch`],
//!   [`protocol::ProtocolError`].

#![cfg_attr(docsrs, feature(doc_cfg))]

mod adapt;
mod batch_out;
mod boxed;
mod completion;
mod context;
mod deadline;
mod error;
mod kind;
pub mod plumbing;
pub mod protocol;
mod report;
mod restart;
#[cfg(unix)]
mod signal;
mod stage;
mod stop;
pub mod trace;
mod waiting;

pub use adapt::{
    FilterMapFn, FlatMapFn, ForEachFn, IntoBackend, IntoFrontend, IntoTransport, IterFrontend,
    MapBatchFn, MapFn, TryFilterMapFn, TryForEachFn, TryIterFrontend, TryMapFn, filter_map,
    flat_map, map_batch, try_filter_map, try_iter, try_map,
};
pub use batch_out::BatchOut;
pub use boxed::{BoxBackend, BoxFrontend, BoxTransport, box_frontend};
pub use context::{AppConfig, StageContext};
pub use error::{BoxError, ConfigError, StageError};
pub use kind::StageKind;
pub use report::{CountMismatch, Counts, RunEnd, RunReport, StageReport, ThreadReport};
pub use restart::{Restart, RestartDecision, RestartPolicy, RestartTracker};
#[cfg(unix)]
pub use signal::{
    Signal, SignalError, SignalGuard, install_signal_handler, install_signal_handler_with,
};
pub use stage::{Backend, ErrorPolicy, Frontend, Transport};
pub use stop::{StopHandle, StopLevel, StopSubscription};
pub use waiting::waiting_for_input;
