//! How stages are made, one instance per thread on that thread: the factory, and the
//! builder's stage slots ([`Absent`], or [`Present`] with a factory and a thread count).

use std::fmt;
use std::sync::{Arc, Mutex};

use engine_core::plumbing::lock;
use engine_core::{StageContext, Transport};

/// Makes one stage instance per thread, on that thread, from the thread's context
/// ([`StageContext::index`] is the thread's index).
pub(crate) type Factory<S> = Arc<dyn Fn(&StageContext) -> S + Send + Sync>;

/// Marks a builder without a transport or without a backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct Absent;

/// A transport or backend given to the builder, with its thread count.
pub struct Present<S> {
    pub(crate) factory: Factory<S>,
    pub(crate) threads: usize,
}

impl<S> Present<S> {
    /// A stage on one thread, until its thread count is set.
    pub(crate) fn new(factory: Factory<S>) -> Self {
        Self {
            factory,
            threads: 1,
        }
    }
}

impl<S> fmt::Debug for Present<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Present")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// What the item type is after the transport slot: the transport's output, or the frontend's
/// item when there is no transport.
pub trait Upstream<Item> {
    /// The type of the items the backend receives.
    type Output;
}

impl<Item> Upstream<Item> for Absent {
    type Output = Item;
}

impl<Item, T: Transport> Upstream<Item> for Present<T> {
    type Output = T::Output;
}

/// A transport or backend slot of the builder that [`inline_when_idle`] may run on other
/// threads: absent, or a stage whose type is `Send`.
///
/// [`inline_when_idle`]: crate::EngineBuilder::inline_when_idle
#[diagnostic::on_unimplemented(
    message = "`inline_when_idle` runs stages on other threads: `{Self}` must be `Send`",
    label = "this stage is not `Send`"
)]
pub trait Lendable {
    /// Whether a stage is present.
    #[doc(hidden)]
    const PRESENT: bool;
}

impl Lendable for Absent {
    const PRESENT: bool = false;
}

impl<S: Send> Lendable for Present<S> {
    const PRESENT: bool = true;
}

/// A factory that clones a stage given by value, once per thread: the `.transport(x)` and
/// `.backend(x)` shorthand, made through the same factory as `*_with`.
pub(crate) fn cloner<S: 'static, X>(stage: X, convert: fn(X) -> S) -> Factory<S>
where
    X: Clone + Send + 'static,
{
    // The prototype sits behind a mutex so that a `Send` stage needs not be `Sync`.
    let prototype = Mutex::new(stage);
    Arc::new(move |_: &StageContext| convert(lock(&prototype).clone()))
}
