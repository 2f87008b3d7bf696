//! Per-item completion: a frontend that must learn what became of each item it produced (to
//! acknowledge it to a broker, say) attaches a ticket to it, and the engine completes the
//! ticket once the rest of the pipeline is done with the item.
//!
//! Plain frontends go through [`Untracked`], whose ticket is `()`: a zero-sized value whose
//! completion is an empty inlined call, so the hook costs nothing when unused.

use std::sync::Weak;
use std::time::Duration;

use crate::context::StageContext;
use crate::error::StageError;
use crate::stage::{ErrorPolicy, Frontend, forward_frontend_hooks};
use crate::trace::TraceParent;

/// What became of one item, as reported to its [`Ticket`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// The last stage finished with the item.
    Processed,
    /// A transport filtered the item out.
    Filtered,
    /// A stage returned an error or panicked on the item.
    Failed {
        /// The stage the failure happened in.
        stage: &'a str,
        /// The error (for a panic, its message).
        error: &'a StageError,
        /// The error policy in force: under [`ErrorPolicy::Skip`] the pipeline is done with
        /// the item; under [`ErrorPolicy::Stop`] the run stops because of it, and a
        /// broker-backed source should leave it unacknowledged, to be delivered again.
        policy: ErrorPolicy,
    },
    /// The item was abandoned by a forced stop.
    Dropped,
}

impl Outcome<'_> {
    /// Whether the pipeline is done with the item for good: processed, filtered, or failed
    /// under [`ErrorPolicy::Skip`]. A broker-backed source acknowledges exactly these.
    ///
    /// An item dropped by a forced stop, or that failed under [`ErrorPolicy::Stop`], is not
    /// finished: it should be delivered again.
    pub fn is_finished(&self) -> bool {
        match self {
            Self::Processed | Self::Filtered => true,
            Self::Failed { policy, .. } => *policy == ErrorPolicy::Skip,
            Self::Dropped => false,
        }
    }
}

/// A token that travels with one item and is completed exactly once with the item's
/// [`Outcome`].
///
/// Engines complete every ticket they were given, also on a forced stop (with
/// [`Outcome::Dropped`]). A ticket that is never completed (only when the process dies) is
/// simply not acknowledged, which is what at-least-once delivery needs; a ticket type may add a
/// `Drop` implementation if it must learn of that case too. When a transport turns one item
/// into several (a [`flat_map`](crate::flat_map)), the engine [`split`](Self::split)s the
/// item's ticket, one part per output.
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
/// use engine::core::plumbing::{Outcome, Ticket};
///
/// /// Acknowledges a message id on a channel once the item is finished.
/// struct Ack { id: u64, acks: mpsc::Sender<u64> }
///
/// impl Ticket for Ack {
///     fn complete(self, outcome: Outcome<'_>) {
///         if outcome.is_finished() {
///             let _ = self.acks.send(self.id);
///         }
///     }
/// }
///
/// let (tx, rx) = mpsc::channel();
/// Ack { id: 7, acks: tx.clone() }.complete(Outcome::Processed);
/// Ack { id: 8, acks: tx }.complete(Outcome::Dropped);
/// assert_eq!(rx.try_iter().collect::<Vec<_>>(), [7]);
/// ```
pub trait Ticket: Send + 'static {
    /// Reports what became of the item. Called once, from whichever thread finished the item.
    fn complete(self, outcome: Outcome<'_>);

    /// Splits the ticket of an item that a transport turned into `parts` outputs (at least
    /// two) into one ticket per output. The item is finished once every part is, and its
    /// outcome is the first unfinished part's outcome, or processed.
    ///
    /// The default cannot split and hands the ticket back: the engine then fails the item
    /// with an error saying that this source's items cannot be expanded. The empty ticket
    /// `()` splits for free.
    ///
    /// # Errors
    ///
    /// The ticket itself, when this ticket type cannot be split.
    fn split(self, parts: usize) -> Result<Vec<Self>, Self>
    where
        Self: Sized,
    {
        let _ = parts;
        Err(self)
    }

    /// Splits the ticket into exactly `parts` tickets, checking the count that
    /// [`split`](Self::split) returned: what an engine calls when a transport turned one item
    /// into `parts` outputs, so that each output gets a ticket and every part is completed.
    /// Ticket types implement `split`, not this.
    ///
    /// # Errors
    ///
    /// When the item cannot be expanded: the error to fail it with, and the ticket to fail it
    /// through. That is the ticket itself when its type cannot split. When `split` returned
    /// another number of parts than asked (a bug in the ticket type), it is one of them, and
    /// the others are completed as [`Outcome::Processed`] (which leaves the item's outcome to
    /// that one), so that the item fails rather than staying unfinished for ever; it is
    /// `None` only when `split` returned no part at all.
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::core::plumbing::Ticket;
    ///
    /// assert_eq!(().split_exact(3).ok().map(|parts| parts.len()), Some(3));
    /// ```
    fn split_exact(self, parts: usize) -> Result<Vec<Self>, (Option<Self>, StageError)>
    where
        Self: Sized,
    {
        match self.split(parts) {
            Ok(split) if split.len() == parts => Ok(split),
            Ok(mut split) => {
                let error = StageError::msg(format!(
                    "the item's completion ticket split into {} parts for {parts} outputs: \
                     its `Ticket::split` is wrong, so the item fails",
                    split.len()
                ));
                let carrier = split.pop();
                for part in split {
                    part.complete(Outcome::Processed);
                }
                Err((carrier, error))
            }
            Err(ticket) => {
                let error = StageError::msg(format!(
                    "the transport gave {parts} outputs for one item, and this source's \
                     completion tickets cannot be split"
                ));
                Err((Some(ticket), error))
            }
        }
    }
}

impl Ticket for () {
    #[inline(always)]
    fn complete(self, _outcome: Outcome<'_>) {}

    #[inline]
    fn split(self, parts: usize) -> Result<Vec<Self>, Self> {
        // A vector of a zero-sized type does not allocate.
        Ok(vec![(); parts])
    }
}

/// A frontend whose items carry a [`Ticket`].
///
/// Every [`Frontend`] becomes one through [`Untracked`], and [`IntoFrontend`] turns plain
/// frontends, iterators and tracked frontends alike into one. Engines are written against this
/// trait, so a broker-backed source plugs in without a second code path.
///
/// [`IntoFrontend`]: crate::IntoFrontend
pub trait TrackedFrontend {
    /// The type of the items produced.
    type Item;
    /// The ticket attached to each item.
    type Ticket: Ticket;

    /// As [`Frontend::setup`].
    ///
    /// # Errors
    ///
    /// As [`Frontend::setup`].
    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let _ = ctx;
        Ok(())
    }

    /// As [`Frontend::produce`], with the item's ticket.
    ///
    /// # Errors
    ///
    /// As [`Frontend::produce`].
    fn produce(&mut self, ctx: &StageContext) -> Result<Option<TrackedItem<Self>>, StageError>;

    /// As [`Frontend::cleanup`].
    fn cleanup(&mut self, ctx: &StageContext) {
        let _ = ctx;
    }

    /// As [`Frontend::stop_grace`].
    fn stop_grace(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether this source says which trace context each item it hands out carries
    /// ([`trace::set_item_parent`](crate::trace::set_item_parent), from a broker entry's
    /// `traceparent`). An engine that runs it with a trace hook installed then takes the
    /// context after each item; for other sources it does not look. The default is no.
    fn gives_trace_parents(&self) -> bool {
        false
    }

    /// Takes a way for other threads to run items through the engine themselves while it is
    /// idle ([`Inject`]): an engine whose run opts in (engine-threads' `inline_when_idle`)
    /// hands one to each frontend after its `setup`. A source whose items come from other
    /// threads (the pod's feed of calls) keeps it, and its senders try it before their
    /// channel. It lives as long as the frontend's run. The default ignores it.
    fn attach_inject(&mut self, inject: Weak<dyn Inject<Self::Ticket, Self::Item>>) {
        let _ = inject;
    }
}

/// A way into a running engine for an item from another thread, from a frontend's
/// [`attach_inject`](TrackedFrontend::attach_inject): when every stage the item meets is idle
/// (its threads asleep, nothing queued), the engine runs the item through them on the calling
/// thread, so that no thread has to be woken for it; otherwise it gives the item back, and
/// the caller sends it the usual way. The item counts as one the frontend produced, and every
/// promise of the engine holds for it.
pub trait Inject<K, T>: Send + Sync {
    /// Runs `item` through the engine on this thread, with its `ticket` and the trace context
    /// it carries, if the engine is idle.
    ///
    /// # Errors
    ///
    /// The ticket and the item, untouched, when the engine is busy, stopping or over.
    fn inject(&self, ticket: K, item: T, parent: Option<TraceParent>) -> Result<(), (K, T)>;
}

/// A boxed tracked frontend is a tracked frontend, so a broker source can be chosen at run
/// time.
impl<S: TrackedFrontend + ?Sized> TrackedFrontend for Box<S> {
    type Item = S::Item;
    type Ticket = S::Ticket;

    forward_frontend_hooks!(|self| (**self));

    #[inline]
    fn produce(&mut self, ctx: &StageContext) -> Result<Option<TrackedItem<S>>, StageError> {
        (**self).produce(ctx)
    }

    fn gives_trace_parents(&self) -> bool {
        (**self).gives_trace_parents()
    }

    fn attach_inject(&mut self, inject: Weak<dyn Inject<S::Ticket, S::Item>>) {
        (**self).attach_inject(inject);
    }
}

/// An item of a [`TrackedFrontend`] with its ticket.
pub type TrackedItem<F> = (<F as TrackedFrontend>::Ticket, <F as TrackedFrontend>::Item);

/// A plain [`Frontend`] seen as a [`TrackedFrontend`] with the empty ticket `()`.
///
/// # Examples
///
/// ```
/// use engine::core::plumbing::{TrackedFrontend, Untracked};
/// use engine::core::{IntoFrontend, StageContext, StageKind};
///
/// let ctx = StageContext::standalone("f", StageKind::Frontend);
/// let mut frontend = [5].into_frontend(); // An `Untracked<IterFrontend<_>>`.
/// assert_eq!(frontend.produce(&ctx).unwrap(), Some(((), 5)));
/// assert_eq!(frontend.produce(&ctx).unwrap(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Untracked<F>(F);

impl<F> Untracked<F> {
    /// Wraps a frontend.
    pub fn new(frontend: F) -> Self {
        Self(frontend)
    }

    /// The wrapped frontend.
    pub fn into_inner(self) -> F {
        self.0
    }
}

impl<F: Frontend> TrackedFrontend for Untracked<F> {
    type Item = F::Item;
    type Ticket = ();

    forward_frontend_hooks!(|self| self.0);

    #[inline]
    fn produce(&mut self, ctx: &StageContext) -> Result<Option<((), F::Item)>, StageError> {
        Ok(self.0.produce(ctx)?.map(|item| ((), item)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn dropped_items_and_items_that_stopped_the_run_are_unfinished() {
        let error = StageError::msg("x");
        let failed = |policy| Outcome::Failed {
            stage: "t",
            error: &error,
            policy,
        };
        assert!(Outcome::Processed.is_finished());
        assert!(Outcome::Filtered.is_finished());
        assert!(failed(ErrorPolicy::Skip).is_finished());
        assert!(!failed(ErrorPolicy::Stop).is_finished());
        assert!(!Outcome::Dropped.is_finished());
    }

    /// A ticket that splits into `self.0` parts whatever it is asked, counting completions.
    #[derive(Debug)]
    struct Miscounting(usize, Arc<AtomicUsize>);

    impl Ticket for Miscounting {
        fn complete(self, outcome: Outcome<'_>) {
            assert!(matches!(outcome, Outcome::Processed));
            self.1.fetch_add(1, Ordering::SeqCst);
        }

        fn split(self, _parts: usize) -> Result<Vec<Self>, Self> {
            Ok((0..self.0)
                .map(|_| Miscounting(self.0, Arc::clone(&self.1)))
                .collect())
        }
    }

    /// A ticket that cannot split.
    #[derive(Debug, PartialEq)]
    struct Whole;

    impl Ticket for Whole {
        fn complete(self, _outcome: Outcome<'_>) {}
    }

    #[test]
    fn split_exact_checks_the_count() {
        let completed = Arc::new(AtomicUsize::new(0));
        let ticket = |n| Miscounting(n, Arc::clone(&completed));
        assert_eq!(ticket(3).split_exact(3).map(|p| p.len()).ok(), Some(3));
        for wrong in [1, 2, 4, 5] {
            completed.store(0, Ordering::SeqCst);
            let (carrier, error) = ticket(wrong).split_exact(3).unwrap_err();
            assert!(carrier.is_some(), "one part carries the failure");
            assert!(error.to_string().contains("is wrong"), "{error}");
            // The others are completed, as processed, so the item is not left unfinished.
            assert_eq!(completed.load(Ordering::SeqCst), wrong - 1);
        }
        assert!(ticket(0).split_exact(3).unwrap_err().0.is_none());
        let (ticket, error) = Whole.split_exact(2).unwrap_err();
        assert_eq!(ticket, Some(Whole));
        assert!(error.to_string().contains("cannot be split"), "{error}");
        assert_eq!(().split_exact(5).map(|p| p.len()).ok(), Some(5));
    }
}
