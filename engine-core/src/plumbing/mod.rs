//! Plumbing for engine authors and broker-backed sources: what the engines share and stage
//! code never names.
//!
//! A program that writes stages and runs them needs the crate root only. This module is for
//! three kinds of code:
//!
//! - **Engines** (engine-threads, engine-proc, the pod): they drive any frontend as a
//!   [`TrackedFrontend`] (plain frontends through [`Untracked`]), complete every item's
//!   [`Ticket`] with its [`Outcome`], arm a [`StopDeadline`] when a graceful stop begins,
//!   catch panics in stage code with [`catch_panic`], size their batches with [`fit_batch`],
//!   and take poison-tolerant locks with [`lock`].
//! - **Broker-backed sources** (engine-redis): they implement [`TrackedFrontend`], attaching a
//!   [`Ticket`] to each item to learn when the pipeline is done with it and acknowledge it.
//! - **Stages that run their items elsewhere** (engine-proc's placed stages): they implement
//!   [`Offload`] and return it from [`Transport::offload`](crate::Transport::offload); see
//!   [`offload`].
//!
//! The [`markers`] tell the `Into*` conversions apart; nobody names them.

mod batch;
pub mod offload;
mod sync;

pub use batch::fit_batch;
pub use offload::{Finished, InFlight, ItemOutcome, Offload};
pub use sync::lock;

pub use crate::adapt::markers;
pub use crate::boxed::AnyTicket;
pub use crate::completion::{Inject, Outcome, Ticket, TrackedFrontend, TrackedItem, Untracked};
pub use crate::deadline::StopDeadline;
pub use crate::error::catch_panic;
pub use crate::waiting::WaitSink;

/// Installs `sink` as the current thread's [`WaitSink`] (an engine's stage thread, at its
/// start), or removes it (`None`, at its end): [`waiting_for_input`](crate::waiting_for_input)
/// on this thread then reports to it.
pub fn set_wait_sink(sink: Option<std::sync::Arc<dyn WaitSink>>) {
    crate::waiting::set_wait_sink(sink);
}
