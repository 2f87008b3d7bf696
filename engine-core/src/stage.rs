//! The three stage traits: a frontend produces items, a transport maps them, a backend
//! consumes them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::batch_out::BatchOut;
use crate::context::StageContext;
use crate::error::StageError;
use crate::plumbing::Offload;

/// The first stage: produces the items of a run.
///
/// An engine calls [`setup`](Self::setup) once per instance (thread or worker), then
/// [`produce`](Self::produce) until it returns `Ok(None)` or the run is stopped, then
/// [`cleanup`](Self::cleanup). The end of every frontend instance ends the run once downstream
/// has drained.
///
/// Any [`IntoIterator`] is a frontend too, through [`IntoFrontend`](crate::IntoFrontend); see
/// [`try_iter`](crate::try_iter) for iterators of `Result`s.
///
/// # Errors and stopping
///
/// An `Err` from `produce` is counted as a failed item and, under the default
/// [`ErrorPolicy::Skip`], `produce` is called again. A source that has simply run out returns
/// `Ok(None)`; one that is broken for good returns an error marked [`StageError::fatal`], which
/// ends the frontend instance and fails the run instead of retrying forever. A frontend that blocks (reading a pipe, a socket)
/// should check [`StageContext::is_stopping`] when it wakes up; engines do not wait for a
/// frontend stuck in a blocking call after a stop.
///
/// # Examples
///
/// ```
/// use engine::core::{Frontend, StageContext, StageError, StageKind};
///
/// /// Counts down from `from` to 1.
/// struct Countdown { from: u32 }
///
/// impl Frontend for Countdown {
///     type Item = u32;
///
///     fn produce(&mut self, _ctx: &StageContext) -> Result<Option<u32>, StageError> {
///         if self.from == 0 {
///             return Ok(None);
///         }
///         self.from -= 1;
///         Ok(Some(self.from + 1))
///     }
/// }
///
/// let ctx = StageContext::standalone("countdown", StageKind::Frontend);
/// let mut frontend = Countdown { from: 2 };
/// assert_eq!(frontend.produce(&ctx).unwrap(), Some(2));
/// assert_eq!(frontend.produce(&ctx).unwrap(), Some(1));
/// assert_eq!(frontend.produce(&ctx).unwrap(), None);
/// ```
pub trait Frontend {
    /// The type of the items produced.
    type Item;

    /// Called once per instance before the first item. An error stops the run.
    ///
    /// # Errors
    ///
    /// Whatever keeps the stage from starting: a file that will not open, a missing config.
    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let _ = ctx;
        Ok(())
    }

    /// Produces the next item, or `Ok(None)` when there are no more.
    ///
    /// # Errors
    ///
    /// An error for this one attempt; it is counted and handled by the engine's error policy.
    fn produce(&mut self, ctx: &StageContext) -> Result<Option<Self::Item>, StageError>;

    /// Called once per instance after the last item, also after a failed `setup` of a later
    /// stage and after a stop. Not called if this instance's own `setup` failed.
    fn cleanup(&mut self, ctx: &StageContext) {
        let _ = ctx;
    }

    /// How long an engine waits, after a graceful stop has drained the rest of the pipeline,
    /// for this frontend to return from [`produce`](Self::produce) and finish
    /// [`cleanup`](Self::cleanup) before it returns without them.
    ///
    /// The default is zero: a frontend blocked in a read that may never end (a pipe, a
    /// socket) is left behind, and `run` returns at once. A frontend whose reads end within a
    /// known time (a blocking read with a timeout) and whose `cleanup` matters (it sends the
    /// last acknowledgements to a broker) returns that time plus what its `cleanup` needs, so
    /// that its work is done when `run` returns. A stop deadline or a second stop still ends
    /// the wait.
    fn stop_grace(&self) -> Duration {
        Duration::ZERO
    }
}

/// The middle stage: maps each input item to zero or one output item.
///
/// Returning `Ok(None)` filters the item out (it is counted as filtered). Any
/// `FnMut(A) -> B` closure is a transport through [`IntoTransport`](crate::IntoTransport); see
/// [`filter_map`](crate::filter_map), [`try_map`](crate::try_map) and
/// [`try_filter_map`](crate::try_filter_map) for the filtering and fallible forms.
///
/// # Examples
///
/// ```
/// use engine::core::{StageContext, StageError, StageKind, Transport};
///
/// /// Parses lines as numbers and drops blank lines.
/// struct Parse;
///
/// impl Transport for Parse {
///     type Input = String;
///     type Output = u64;
///
///     fn transport(&mut self, line: String, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
///         let line = line.trim();
///         if line.is_empty() {
///             return Ok(None);
///         }
///         Ok(Some(line.parse()?))
///     }
/// }
///
/// let ctx = StageContext::standalone("parse", StageKind::Transport);
/// assert_eq!(Parse.transport(" 12 ".into(), &ctx).unwrap(), Some(12));
/// assert_eq!(Parse.transport("".into(), &ctx).unwrap(), None);
/// assert!(Parse.transport("x".into(), &ctx).is_err());
/// ```
pub trait Transport {
    /// The type of the items received.
    type Input;
    /// The type of the items passed on.
    type Output;

    /// Called once per instance before the first item. An error stops the run.
    ///
    /// # Errors
    ///
    /// Whatever keeps the stage from starting.
    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let _ = ctx;
        Ok(())
    }

    /// Maps one item: `Ok(Some(out))` passes `out` on, `Ok(None)` filters the item out.
    ///
    /// # Errors
    ///
    /// An error for this one item; it is counted and handled by the engine's error policy.
    fn transport(
        &mut self,
        item: Self::Input,
        ctx: &StageContext,
    ) -> Result<Option<Self::Output>, StageError>;

    /// Whether this transport can turn one input into several outputs (a
    /// [`flat_map`](crate::flat_map) transport). Engines then call
    /// [`transport_each`](Self::transport_each) instead of [`transport`](Self::transport).
    /// The default is `false`; override it together with `transport_each`.
    fn emits_many(&self) -> bool {
        false
    }

    /// Maps one item to any number of outputs, pushed onto `out` (which the engine hands over
    /// empty). No output counts the item as filtered; `k` outputs count one input and `k`
    /// outputs. The default pushes what [`transport`](Self::transport) returns.
    ///
    /// # Errors
    ///
    /// As [`transport`](Self::transport): the item fails, and outputs already pushed for it
    /// are discarded.
    fn transport_each(
        &mut self,
        item: Self::Input,
        ctx: &StageContext,
        out: &mut Vec<Self::Output>,
    ) -> Result<(), StageError> {
        out.extend(self.transport(item, ctx)?);
        Ok(())
    }

    /// Whether this transport is batch-native: engines then hand it whole batches through
    /// [`transport_batch`](Self::transport_batch) instead of calling
    /// [`transport`](Self::transport) per item. The default is `false`; override it together
    /// with `transport_batch`. A transport that [emits many](Self::emits_many) outputs per
    /// item is not called in batches.
    fn takes_batches(&self) -> bool {
        false
    }

    /// Maps a whole batch of items (the engine's own batch, as it came from the queue),
    /// reporting what became of each, in order, on `out`: an output, filtered or failed (see
    /// [`BatchOut`]). A light stage then pays once per batch what it would pay per item
    /// (a call, a lock, a lookup), and can use vectorised code.
    ///
    /// Counts and completion tickets stay exact per item: the engine pairs the n-th report
    /// with the n-th item. The default reports what [`transport`](Self::transport) returns
    /// for each item.
    ///
    /// # Errors
    ///
    /// An error (or a panic) fails the items of the batch not yet reported, each counted as
    /// failed, with this error (logged once, and the error policy applied once, for them
    /// together); those already reported keep their outcome. An error after every item was
    /// reported fails none and is logged.
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::core::{BatchOut, StageContext, StageError, StageKind, Transport};
    ///
    /// /// Adds one to every item, a batch at a time.
    /// struct AddOne;
    ///
    /// impl Transport for AddOne {
    ///     type Input = u64;
    ///     type Output = u64;
    ///
    ///     fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
    ///         Ok(Some(x + 1))
    ///     }
    ///
    ///     fn takes_batches(&self) -> bool {
    ///         true
    ///     }
    ///
    ///     fn transport_batch(
    ///         &mut self,
    ///         mut items: Vec<u64>,
    ///         out: &mut BatchOut<u64>,
    ///         _: &StageContext,
    ///     ) -> Result<(), StageError> {
    ///         items.iter_mut().for_each(|x| *x += 1);
    ///         out.push_all(items);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let ctx = StageContext::standalone("add-one", StageKind::Transport);
    /// let mut out = BatchOut::new();
    /// AddOne.transport_batch(vec![1, 2, 3], &mut out, &ctx).unwrap();
    /// assert_eq!(out.take_outputs(), Some(vec![2, 3, 4]));
    /// ```
    fn transport_batch(
        &mut self,
        items: Vec<Self::Input>,
        out: &mut BatchOut<Self::Output>,
        ctx: &StageContext,
    ) -> Result<(), StageError> {
        for item in items {
            match self.transport(item, ctx) {
                Ok(Some(output)) => out.push(output),
                Ok(None) => out.filter(),
                Err(error) => out.fail(error),
            }
        }
        Ok(())
    }

    /// Called once per instance after the last item. Not called if this instance's own `setup`
    /// failed.
    fn cleanup(&mut self, ctx: &StageContext) {
        let _ = ctx;
    }

    /// Plumbing: a transport whose items run somewhere else (engine-proc's `ProcTransport`
    /// runs them in worker processes) returns itself here, after its `setup`, and engines that
    /// move items in batches hand it whole batches instead of calling
    /// [`transport`](Self::transport) per item. Stage code never overrides this; the default
    /// is `None`. See [`plumbing::offload`](crate::plumbing::offload).
    fn offload(&mut self) -> Option<&mut dyn Offload<Input = Self::Input, Output = Self::Output>> {
        None
    }
}

/// The last stage: consumes items.
///
/// Any `FnMut(A)` or `FnMut(A) -> Result<(), E>` closure is a backend through
/// [`IntoBackend`](crate::IntoBackend).
///
/// # Examples
///
/// ```
/// use engine::core::{Backend, StageContext, StageError, StageKind};
///
/// /// Sums what it receives.
/// #[derive(Default)]
/// struct Sum(u64);
///
/// impl Backend for Sum {
///     type Input = u64;
///
///     fn process(&mut self, item: u64, _ctx: &StageContext) -> Result<(), StageError> {
///         self.0 = self.0.checked_add(item).ok_or_else(|| StageError::msg("sum overflows"))?;
///         Ok(())
///     }
/// }
///
/// let ctx = StageContext::standalone("sum", StageKind::Backend);
/// let mut sum = Sum::default();
/// sum.process(2, &ctx).unwrap();
/// sum.process(3, &ctx).unwrap();
/// assert_eq!(sum.0, 5);
/// assert!(sum.process(u64::MAX, &ctx).is_err());
/// ```
pub trait Backend {
    /// The type of the items received.
    type Input;

    /// Called once per instance before the first item. An error stops the run.
    ///
    /// # Errors
    ///
    /// Whatever keeps the stage from starting.
    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let _ = ctx;
        Ok(())
    }

    /// Consumes one item.
    ///
    /// # Errors
    ///
    /// An error for this one item; it is counted and handled by the engine's error policy.
    fn process(&mut self, item: Self::Input, ctx: &StageContext) -> Result<(), StageError>;

    /// Finishes the items handed to [`process`](Self::process) since the last flush.
    ///
    /// A backend that buffers (a pipelined network sink, a batching writer) writes its buffer
    /// here. The threaded engine calls it after every batch of input it hands this instance
    /// (batches are small when input is slow, so nothing waits long), at the end of the
    /// input, and on an abort; an item's completion ticket is settled only after the flush
    /// that covers it returned, so a broker source never acknowledges an item a sink has not
    /// written. The default does nothing.
    ///
    /// # Errors
    ///
    /// An error fails every item processed since the last flush; they are counted as failed
    /// and handled by the engine's error policy.
    fn flush(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let _ = ctx;
        Ok(())
    }

    /// Called once per instance after the last item. Not called if this instance's own `setup`
    /// failed.
    fn cleanup(&mut self, ctx: &StageContext) {
        let _ = ctx;
    }

    /// Plumbing: a backend whose items run somewhere else returns itself here, as
    /// [`Transport::offload`] does. An item it reports [`Done`](crate::plumbing::ItemOutcome::Done)
    /// has been processed and flushed where it ran. The default is `None`.
    fn offload(&mut self) -> Option<&mut dyn Offload<Input = Self::Input, Output = ()>> {
        None
    }
}

/// The lifecycle hooks of a frontend adapter (`setup`, `cleanup`, `stop_grace`), forwarded to
/// the frontend it wraps: `forward_frontend_hooks!(|self| self.0)`.
macro_rules! forward_frontend_hooks {
    (|$this:ident| $inner:expr) => {
        fn setup(&mut $this, ctx: &$crate::StageContext) -> Result<(), $crate::StageError> {
            $inner.setup(ctx)
        }

        fn cleanup(&mut $this, ctx: &$crate::StageContext) {
            $inner.cleanup(ctx);
        }

        fn stop_grace(&$this) -> std::time::Duration {
            $inner.stop_grace()
        }
    };
}
pub(crate) use forward_frontend_hooks;

/// A boxed frontend is a frontend, so one can be chosen at run time:
/// `Box<dyn Frontend<Item = String> + Send>`.
impl<S: Frontend + ?Sized> Frontend for Box<S> {
    type Item = S::Item;

    forward_frontend_hooks!(|self| (**self));

    #[inline]
    fn produce(&mut self, ctx: &StageContext) -> Result<Option<S::Item>, StageError> {
        (**self).produce(ctx)
    }
}

/// A boxed transport is a transport, so one can be chosen at run time:
/// `Box<dyn Transport<Input = String, Output = String> + Send>`.
///
/// ```
/// use engine::core::{IntoTransport, StageContext, StageKind, Transport, filter_map};
///
/// type Step = Box<dyn Transport<Input = u32, Output = u32> + Send>;
/// let choose = |double: bool| -> Step {
///     if double {
///         Box::new((|x: u32| x * 2).into_transport())
///     } else {
///         Box::new(filter_map(|x: u32| (x > 1).then_some(x)))
///     }
/// };
/// let ctx = StageContext::standalone("step", StageKind::Transport);
/// assert_eq!(choose(true).transport(3, &ctx).unwrap(), Some(6));
/// assert_eq!(choose(false).transport(1, &ctx).unwrap(), None);
/// ```
impl<S: Transport + ?Sized> Transport for Box<S> {
    type Input = S::Input;
    type Output = S::Output;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        (**self).setup(ctx)
    }

    #[inline]
    fn transport(
        &mut self,
        item: S::Input,
        ctx: &StageContext,
    ) -> Result<Option<S::Output>, StageError> {
        (**self).transport(item, ctx)
    }

    fn emits_many(&self) -> bool {
        (**self).emits_many()
    }

    #[inline]
    fn transport_each(
        &mut self,
        item: S::Input,
        ctx: &StageContext,
        out: &mut Vec<S::Output>,
    ) -> Result<(), StageError> {
        (**self).transport_each(item, ctx, out)
    }

    fn takes_batches(&self) -> bool {
        (**self).takes_batches()
    }

    fn transport_batch(
        &mut self,
        items: Vec<S::Input>,
        out: &mut BatchOut<S::Output>,
        ctx: &StageContext,
    ) -> Result<(), StageError> {
        (**self).transport_batch(items, out, ctx)
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        (**self).cleanup(ctx);
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = S::Input, Output = S::Output>> {
        (**self).offload()
    }
}

/// A boxed backend is a backend, so one can be chosen at run time:
/// `Box<dyn Backend<Input = String> + Send>`.
impl<S: Backend + ?Sized> Backend for Box<S> {
    type Input = S::Input;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        (**self).setup(ctx)
    }

    #[inline]
    fn process(&mut self, item: S::Input, ctx: &StageContext) -> Result<(), StageError> {
        (**self).process(item, ctx)
    }

    fn flush(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        (**self).flush(ctx)
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        (**self).cleanup(ctx);
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = S::Input, Output = ()>> {
        (**self).offload()
    }
}

/// What an engine does when a stage fails on one item (returns an error or panics).
///
/// Either way the failure is counted in the [`RunReport`](crate::RunReport) and logged with
/// the stage and instance it happened in. An error marked [`StageError::fatal`] ends the stage
/// instance whatever the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Count the item as failed and go on with the next one.
    #[default]
    Skip,
    /// Count the item as failed and stop the run at once: items still queued are dropped and
    /// counted as such (a broker-backed source gets them delivered again), and the run ends
    /// as failed.
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_skips() {
        assert_eq!(ErrorPolicy::default(), ErrorPolicy::Skip);
    }
}
