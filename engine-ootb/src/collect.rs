//! A backend that collects every item into one shared vector.

use std::fmt;
use std::sync::{Arc, Mutex};

use engine_core::plumbing::lock;
use engine_core::{Backend, StageContext, StageError};

/// A backend that pushes every item into a shared vector.
///
/// Clones share the vector, so when an engine clones the backend once per thread, every
/// thread collects into the same place. Read what was collected through a [`Collected`]
/// handle from [`collected`](Self::collected), taken before the backend is handed to the
/// engine.
///
/// With several backend threads the items are in the order the threads pushed them.
///
/// # Examples
///
/// ```
/// use engine::core::{Backend, StageContext, StageKind};
/// use engine::ootb::CollectBackend;
///
/// let ctx = StageContext::standalone("collect", StageKind::Backend);
/// let backend = CollectBackend::new();
/// let collected = backend.collected();
/// let (mut first, mut second) = (backend.clone(), backend);
/// first.process("a", &ctx)?;
/// second.process("b", &ctx)?;
/// assert_eq!(collected.take(), ["a", "b"]);
/// assert!(collected.is_empty());
/// # Ok::<(), engine::core::StageError>(())
/// ```
pub struct CollectBackend<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> CollectBackend<T> {
    /// A backend with a new, empty vector.
    ///
    /// ```
    /// # use engine::ootb::CollectBackend;
    /// assert!(CollectBackend::<u32>::new().collected().is_empty());
    /// ```
    pub fn new() -> Self {
        Self {
            items: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A handle on the shared vector, to read what this backend and its clones collected.
    ///
    /// ```
    /// use engine::core::{Backend, StageContext, StageKind};
    /// use engine::ootb::CollectBackend;
    ///
    /// let ctx = StageContext::standalone("collect", StageKind::Backend);
    /// let mut backend = CollectBackend::new();
    /// backend.process(7_u8, &ctx)?;
    /// assert_eq!(backend.collected().snapshot(), [7]);
    /// # Ok::<(), engine::core::StageError>(())
    /// ```
    pub fn collected(&self) -> Collected<T> {
        Collected {
            items: Arc::clone(&self.items),
        }
    }
}

impl<T> Backend for CollectBackend<T> {
    type Input = T;

    fn process(&mut self, item: T, _ctx: &StageContext) -> Result<(), StageError> {
        lock(&self.items).push(item);
        Ok(())
    }
}

impl<T> Clone for CollectBackend<T> {
    /// Another backend collecting into the same vector.
    fn clone(&self) -> Self {
        Self {
            items: Arc::clone(&self.items),
        }
    }
}

impl<T> Default for CollectBackend<T> {
    /// The same as [`CollectBackend::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for CollectBackend<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectBackend")
            .field("len", &lock(&self.items).len())
            .finish()
    }
}

/// A handle on the vector a [`CollectBackend`] and its clones collect into.
///
/// Cloning the handle shares the same vector.
///
/// # Examples
///
/// ```
/// use engine::core::{Backend, StageContext, StageKind};
/// use engine::ootb::CollectBackend;
///
/// let ctx = StageContext::standalone("collect", StageKind::Backend);
/// let mut backend = CollectBackend::new();
/// let collected = backend.collected();
/// backend.process(1, &ctx)?;
/// backend.process(2, &ctx)?;
/// assert_eq!(collected.len(), 2);
/// assert_eq!(collected.snapshot(), [1, 2]);
/// assert_eq!(collected.take(), [1, 2]);
/// assert_eq!(collected.len(), 0);
/// # Ok::<(), engine::core::StageError>(())
/// ```
pub struct Collected<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> Collected<T> {
    /// How many items are in the vector.
    pub fn len(&self) -> usize {
        lock(&self.items).len()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        lock(&self.items).is_empty()
    }

    /// Takes the items collected so far, leaving the vector empty; the backends go on
    /// collecting into it.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *lock(&self.items))
    }

    /// A copy of the items collected so far, leaving them in place.
    pub fn snapshot(&self) -> Vec<T>
    where
        T: Clone,
    {
        lock(&self.items).clone()
    }
}

impl<T> Clone for Collected<T> {
    /// Another handle on the same vector.
    fn clone(&self) -> Self {
        Self {
            items: Arc::clone(&self.items),
        }
    }
}

impl<T> fmt::Debug for Collected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collected")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_vector_is_still_readable() {
        let backend = CollectBackend::new();
        let collected = backend.collected();
        lock(&backend.items).push(1);
        let items = Arc::clone(&backend.items);
        let panicked = std::thread::spawn(move || {
            let _guard = items.lock();
            panic!("poisons the mutex");
        })
        .join();
        assert!(panicked.is_err());
        assert!(backend.items.is_poisoned());
        let ctx = StageContext::standalone("collect", engine_core::StageKind::Backend);
        let mut backend = backend;
        backend.process(2, &ctx).unwrap();
        assert_eq!(collected.snapshot(), [1, 2]);
        assert_eq!(format!("{collected:?}"), "Collected { len: 2 }");
        assert_eq!(format!("{backend:?}"), "CollectBackend { len: 2 }");
    }
}
