//! The builder's `inline_when_idle`: stages run on the thread that has the item while the
//! engine is idle.

use super::EngineBuilder;
use crate::factory::Lendable;

impl<F, T: Lendable, B: Lendable> EngineBuilder<F, T, B> {
    /// Lets an item that arrives while the engine is idle run through the stages on the
    /// thread that has it, instead of waking each stage's thread in turn (default: off).
    ///
    /// Only sources whose items come from other threads take part: the pod's `feed` of
    /// calls (`engine::pod::Feed::call`, whose documentation has an example), or any
    /// frontend that keeps what [`TrackedFrontend::attach_inject`] gives it. When such an
    /// item finds nothing queued and a transport thread asleep, its sender runs the
    /// transport on it, then the backend the same way if that is idle too: an HTTP handler
    /// finds its answer ready without a single thread switch. Under load nothing changes:
    /// busy stages take their batches on their own threads as before.
    ///
    /// Counts, tickets, the failure policy, stops and views are the same as on the stage's
    /// own thread. What differs is the thread: `setup` and `cleanup` still run on the
    /// stage's own thread, but `transport` and `process` may run on the sender's (a tokio
    /// worker, for a pod's HTTP handler). So use it for light stages, which a sender can
    /// afford to run, that keep no state in thread-locals. It covers the stages set when it
    /// is called, which must be `Send`: call it after `transport` and `backend`. Ordered
    /// mode, and stages that run their items elsewhere (async, placed in worker processes),
    /// are never run inline.
    ///
    /// [`TrackedFrontend::attach_inject`]: engine_core::plumbing::TrackedFrontend::attach_inject
    #[must_use]
    pub fn inline_when_idle(mut self) -> Self {
        self.plan.options.inline = [T::PRESENT, B::PRESENT];
        self
    }
}
