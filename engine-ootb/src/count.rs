//! A backend that counts the items it receives.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use engine_core::{Backend, StageContext, StageError};

/// A backend that counts the items it receives, and drops them.
///
/// Clones share the counter, so when an engine clones the backend once per thread,
/// [`count`](Self::count) on any clone is the total over every thread.
///
/// # Examples
///
/// ```
/// use engine::core::{Backend, StageContext, StageKind};
/// use engine::ootb::CountBackend;
///
/// let ctx = StageContext::standalone("count", StageKind::Backend);
/// let counter = CountBackend::new();
/// let (mut first, mut second) = (counter.clone(), counter.clone());
/// first.process("a", &ctx)?;
/// second.process("b", &ctx)?;
/// second.process("c", &ctx)?;
/// assert_eq!(counter.count(), 3);
/// # Ok::<(), engine::core::StageError>(())
/// ```
pub struct CountBackend<T> {
    count: Arc<AtomicU64>,
    // A function pointer type, so that the backend is `Send` and `Sync` whatever `T` is.
    items: PhantomData<fn(T)>,
}

impl<T> CountBackend<T> {
    /// A backend with a new counter at zero.
    ///
    /// ```
    /// # use engine::ootb::CountBackend;
    /// assert_eq!(CountBackend::<String>::new().count(), 0);
    /// ```
    pub fn new() -> Self {
        Self {
            count: Arc::new(AtomicU64::new(0)),
            items: PhantomData,
        }
    }

    /// How many items this backend and its clones received so far.
    pub fn count(&self) -> u64 {
        // The count is a statistic, not a signal that publishes other data, so relaxed
        // ordering is enough; joining the engine's threads makes the final count visible.
        self.count.load(Ordering::Relaxed)
    }
}

impl<T> Backend for CountBackend<T> {
    type Input = T;

    fn process(&mut self, item: T, _ctx: &StageContext) -> Result<(), StageError> {
        drop(item);
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl<T> Clone for CountBackend<T> {
    /// Another backend counting into the same counter.
    fn clone(&self) -> Self {
        Self {
            count: Arc::clone(&self.count),
            items: PhantomData,
        }
    }
}

impl<T> Default for CountBackend<T> {
    /// The same as [`CountBackend::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for CountBackend<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountBackend")
            .field("count", &self.count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_count() {
        let ctx = StageContext::standalone("count", engine_core::StageKind::Backend);
        let mut counter = CountBackend::default();
        counter.process((), &ctx).unwrap();
        assert_eq!(format!("{counter:?}"), "CountBackend { count: 1 }");
    }
}
