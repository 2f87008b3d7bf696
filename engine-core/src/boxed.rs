//! Stages chosen at run time: boxed frontends, transports and backends of one item type each,
//! whatever their concrete types.
//!
//! A `Box<dyn Transport<..>>` or `Box<dyn Backend<..>>` is a stage as it stands. Frontends
//! differ in one more way, the type of their items' completion tickets (a broker source's
//! acknowledgement, `()` for plain sources), so [`box_frontend`] also erases the ticket type:
//! every boxed frontend of `T` has the one type [`BoxFrontend<T>`]. A plain frontend's empty
//! ticket stays free (a box of a zero-sized value does not allocate); a broker source's
//! ticket costs one allocation per item.

use std::fmt;

use crate::adapt::IntoFrontend;
use crate::completion::{Outcome, Ticket, TrackedFrontend};
use crate::context::StageContext;
use crate::error::StageError;
use crate::stage::{Backend, Transport, forward_frontend_hooks};

/// A frontend of items `T` chosen at run time, made by [`box_frontend`].
pub type BoxFrontend<T> = Box<dyn TrackedFrontend<Item = T, Ticket = AnyTicket> + Send>;

/// A transport from `A` to `B` chosen at run time: `Box::new(stage)`.
pub type BoxTransport<A, B> = Box<dyn Transport<Input = A, Output = B> + Send>;

/// A backend of items `A` chosen at run time: `Box::new(stage)`.
pub type BoxBackend<A> = Box<dyn Backend<Input = A> + Send>;

/// Boxes anything that is a frontend (a [`Frontend`](crate::Frontend), an iterator, a
/// [`TrackedFrontend`]), with its ticket type erased, so that frontends of different types
/// can be chosen between at run time.
///
/// # Examples
///
/// ```
/// use engine::core::{BoxFrontend, StageContext, StageKind, box_frontend};
/// use engine::core::plumbing::TrackedFrontend;
///
/// let counting = true;
/// let mut numbers: BoxFrontend<u32> = if counting {
///     box_frontend(1..=3)
/// } else {
///     box_frontend(vec![7])
/// };
/// let ctx = StageContext::standalone("numbers", StageKind::Frontend);
/// let mut seen = Vec::new();
/// while let Some((_ticket, n)) = numbers.produce(&ctx)? {
///     seen.push(n);
/// }
/// assert_eq!(seen, [1, 2, 3]);
/// # Ok::<(), engine::core::StageError>(())
/// ```
pub fn box_frontend<M, X>(frontend: X) -> BoxFrontend<<X::Frontend as TrackedFrontend>::Item>
where
    X: IntoFrontend<M>,
    X::Frontend: Send + 'static,
{
    Box::new(Erased(frontend.into_frontend()))
}

/// A completion ticket of any type, boxed: the ticket of a [`BoxFrontend`].
pub struct AnyTicket(Box<dyn ErasedTicket>);

impl AnyTicket {
    /// Boxes a ticket.
    pub fn new<K: Ticket>(ticket: K) -> Self {
        Self(Box::new(ticket))
    }
}

impl fmt::Debug for AnyTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyTicket")
    }
}

impl Ticket for AnyTicket {
    #[inline]
    fn complete(self, outcome: Outcome<'_>) {
        self.0.complete_boxed(outcome);
    }

    fn split(self, parts: usize) -> Result<Vec<Self>, Self> {
        self.0.split_boxed(parts)
    }
}

/// [`Ticket`] in a form that can be called through a box.
trait ErasedTicket: Send {
    fn complete_boxed(self: Box<Self>, outcome: Outcome<'_>);
    fn split_boxed(self: Box<Self>, parts: usize) -> Result<Vec<AnyTicket>, AnyTicket>;
}

impl<K: Ticket> ErasedTicket for K {
    #[inline]
    fn complete_boxed(self: Box<Self>, outcome: Outcome<'_>) {
        (*self).complete(outcome);
    }

    fn split_boxed(self: Box<Self>, parts: usize) -> Result<Vec<AnyTicket>, AnyTicket> {
        match (*self).split(parts) {
            Ok(parts) => Ok(parts.into_iter().map(AnyTicket::new).collect()),
            Err(ticket) => Err(AnyTicket::new(ticket)),
        }
    }
}

/// A tracked frontend whose tickets are boxed.
struct Erased<F>(F);

impl<F: TrackedFrontend> TrackedFrontend for Erased<F> {
    type Item = F::Item;
    type Ticket = AnyTicket;

    forward_frontend_hooks!(|self| self.0);

    #[inline]
    fn produce(&mut self, ctx: &StageContext) -> Result<Option<(AnyTicket, F::Item)>, StageError> {
        Ok(self
            .0
            .produce(ctx)?
            .map(|(ticket, item)| (AnyTicket::new(ticket), item)))
    }

    fn gives_trace_parents(&self) -> bool {
        self.0.gives_trace_parents()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::kind::StageKind;

    /// Counts the finished completions it receives.
    struct Counted(Arc<AtomicUsize>);

    impl Ticket for Counted {
        fn complete(self, outcome: Outcome<'_>) {
            if outcome.is_finished() {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Produces three items with counted tickets.
    struct Source(Arc<AtomicUsize>, u32);

    impl TrackedFrontend for Source {
        type Item = u32;
        type Ticket = Counted;

        fn produce(&mut self, _: &StageContext) -> Result<Option<(Counted, u32)>, StageError> {
            self.1 += 1;
            Ok((self.1 <= 3).then(|| (Counted(Arc::clone(&self.0)), self.1)))
        }
    }

    #[test]
    fn an_erased_ticket_completes_the_original_and_does_not_split_unless_it_can() {
        let finished = Arc::new(AtomicUsize::new(0));
        let mut source = box_frontend(Source(Arc::clone(&finished), 0));
        let ctx = StageContext::standalone("source", StageKind::Frontend);
        let (ticket, item) = source.produce(&ctx).unwrap().unwrap();
        assert_eq!(item, 1);
        let ticket = ticket.split(2).expect_err("a counted ticket cannot split");
        ticket.complete(Outcome::Processed);
        let (ticket, _) = source.produce(&ctx).unwrap().unwrap();
        ticket.complete(Outcome::Dropped);
        assert_eq!(finished.load(Ordering::SeqCst), 1);

        let mut plain = box_frontend([5_u8]);
        let (ticket, _) = plain.produce(&ctx).unwrap().unwrap();
        let parts = ticket.split(3).expect("the empty ticket splits");
        assert_eq!(parts.len(), 3);
        parts
            .into_iter()
            .for_each(|part| part.complete(Outcome::Processed));
    }
}
