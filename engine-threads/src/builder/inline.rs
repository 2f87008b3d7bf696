//! The builder's `inline_when_idle`: stages run on the thread that has the item while the
//! engine is idle.

use super::EngineBuilder;
use crate::factory::Lendable;

impl<F, T: Lendable, B: Lendable> EngineBuilder<F, T, B> {
    /// Lets an item that arrives while the engine is idle run through the stages on the
    /// thread that has it, instead of waking each stage's thread in turn (default: off).
    ///
    /// Two kinds of thread have such items:
    /// - a frontend thread whose source was silent: an item that `produce` waited for (20 µs
    ///   or more) is a lone one. An item that was there at once goes on as usual, so under
    ///   load the frontend keeps producing and the stages take whole batches on their threads;
    /// - a thread that feeds the engine from outside: the pod's `feed` of calls
    ///   (`engine::pod::Feed::call`, whose documentation has an example), or any frontend
    ///   that keeps what [`TrackedFrontend::attach_inject`] gives it. An HTTP handler then
    ///   finds its answer ready without a single thread switch.
    ///
    /// When such an item finds nothing queued and a transport thread asleep, its thread runs
    /// the transport on it, then the backend the same way if that is idle too. A transport
    /// placed in worker processes (engine-proc's `ProcTransport`) takes part as well: the
    /// thread sends the item to an idle worker itself and waits for the reply, up to about a
    /// millisecond, after which the stage's own thread takes the item over. Under load
    /// nothing changes: busy stages take their batches on their own threads as before.
    ///
    /// Counts, tickets, the failure policy, stops and views are the same as on the stage's
    /// own thread. What differs is the thread: `setup` and `cleanup` still run on the
    /// stage's own thread, but `transport` and `process` may run on the frontend's or the
    /// sender's (a tokio worker, for a pod's HTTP handler). So use it for light stages, which
    /// a sender can afford to run, that keep no state in thread-locals. It covers the stages
    /// set when it is called, which must be `Send`: call it after `transport` and `backend`.
    /// Ordered mode and async stages are never run inline.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use engine::threads::Engine;
    ///
    /// let (items, source) = mpsc::channel::<u64>();
    /// let (answers, answered) = mpsc::channel();
    /// let engine = Engine::builder(source)
    ///     .transport(|n: u64| n * n)
    ///     .transport_threads(2)
    ///     .backend(move |square: u64| answers.send(square).expect("the reader waits"))
    ///     .inline_when_idle()
    ///     .spawn()?;
    /// // One item at a time, each answered before the next is sent: the engine is idle
    /// // whenever one arrives, and the frontend thread runs both stages on it.
    /// for n in 1..=3 {
    ///     items.send(n).expect("the engine reads");
    ///     assert_eq!(answered.recv().expect("an answer"), n * n);
    /// }
    /// drop(items);
    /// assert_eq!(engine.join()?.processed(), 3);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    ///
    /// [`TrackedFrontend::attach_inject`]: engine_core::plumbing::TrackedFrontend::attach_inject
    #[must_use]
    pub fn inline_when_idle(mut self) -> Self {
        self.plan.options.inline = [T::PRESENT, B::PRESENT];
        self
    }
}
