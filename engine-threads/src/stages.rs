//! The stage combinations an engine runs after its frontend: a transport, a backend, or
//! both; sealed, implemented for the builder's type states.

use engine_core::plumbing::TrackedFrontend;
use engine_core::{Backend, Transport};

use crate::error::EngineError;
use crate::factory::{Absent, Present};
use crate::launch::Launcher;
use crate::link::{Link, Sizing};

mod sealed {
    //! The stage combinations an engine can run, sealed so that only this crate names them.
    #![allow(unreachable_pub, reason = "sealed-trait plumbing, not part of the API")]

    use super::{EngineError, Launcher, TrackedFrontend};

    /// Thread counts of the consumer stages: `(transport, backend)`.
    pub type ConsumerThreads = (Option<usize>, Option<usize>);

    #[diagnostic::on_unimplemented(
        message = "a pipeline needs a transport or a backend after its frontend",
        label = "add `.transport(...)` or `.backend(...)` to the builder"
    )]
    pub trait Sealed<F: TrackedFrontend> {
        fn threads(&self) -> ConsumerThreads;

        fn launch(self, launcher: &mut Launcher<F::Ticket, F::Item>) -> Result<(), EngineError>;
    }
}

/// The stage combinations an engine runs: a transport, a backend, or both, after the
/// frontend `F`. Implemented for the builder's type states; nothing to implement.
#[diagnostic::on_unimplemented(
    message = "a pipeline needs a transport or a backend after its frontend",
    label = "add `.transport(...)` or `.backend(...)` to the builder"
)]
pub trait Stages<F: TrackedFrontend>: sealed::Sealed<F> {}

impl<F: TrackedFrontend, S: sealed::Sealed<F>> Stages<F> for S {}

/// The thread counts of the consumer stages present: `(transport, backend)`.
pub(crate) fn threads<F: TrackedFrontend, S: Stages<F>>(stages: &S) -> sealed::ConsumerThreads {
    sealed::Sealed::threads(stages)
}

/// Starts the consumer threads of `stages`.
pub(crate) fn launch<F: TrackedFrontend, S: Stages<F>>(
    stages: S,
    launcher: &mut Launcher<F::Ticket, F::Item>,
) -> Result<(), EngineError> {
    sealed::Sealed::launch(stages, launcher)
}

impl<F, X> sealed::Sealed<F> for (Present<X>, Absent)
where
    F: TrackedFrontend,
    F::Item: Send + 'static,
    X: Transport<Input = F::Item> + 'static,
    X::Output: Send + 'static,
{
    fn threads(&self) -> sealed::ConsumerThreads {
        (Some(self.0.threads), None)
    }

    fn launch(self, launcher: &mut Launcher<F::Ticket, F::Item>) -> Result<(), EngineError> {
        let first = launcher.first();
        launcher.transports(self.0, &first, None)
    }
}

impl<F, Y> sealed::Sealed<F> for (Absent, Present<Y>)
where
    F: TrackedFrontend,
    F::Item: Send + 'static,
    Y: Backend<Input = F::Item> + 'static,
{
    fn threads(&self) -> sealed::ConsumerThreads {
        (None, Some(self.1.threads))
    }

    fn launch(self, launcher: &mut Launcher<F::Ticket, F::Item>) -> Result<(), EngineError> {
        let first = launcher.first();
        launcher.backends(self.1, &first)
    }
}

impl<F, X, Y> sealed::Sealed<F> for (Present<X>, Present<Y>)
where
    F: TrackedFrontend,
    F::Item: Send + 'static,
    X: Transport<Input = F::Item> + 'static,
    X::Output: Send + 'static,
    Y: Backend<Input = X::Output> + 'static,
{
    fn threads(&self) -> sealed::ConsumerThreads {
        (Some(self.0.threads), Some(self.1.threads))
    }

    fn launch(self, launcher: &mut Launcher<F::Ticket, F::Item>) -> Result<(), EngineError> {
        let first = launcher.first();
        let (transport, backend) = self;
        let second = Link::<F::Ticket, X::Output>::new(
            Sizing::new(launcher.options().backend_queue, backend.threads),
            0,
            launcher.abort(),
        );
        launcher.backends(backend, &second)?;
        let result = launcher.transports(transport, &first, Some(&second));
        second.seal();
        // The transport stage was pushed last; keep the stages in pipeline order.
        launcher.swap_last_two();
        result
    }
}
