//! The one poison-tolerant mutex lock the engines share.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, also when a thread panicked while holding it.
///
/// Engines catch panics in stage code and go on, so a poisoned lock only means that a stage
/// panicked while the engine held it; the data it guards (queues, counters, listener lists)
/// is kept consistent by the engine itself, and refusing it would turn one item's panic into
/// a dead run.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use engine::core::plumbing::lock;
///
/// let shared = Arc::new(Mutex::new(1));
/// let poisoner = Arc::clone(&shared);
/// let _ = std::thread::spawn(move || {
///     let _guard = poisoner.lock().unwrap();
///     panic!("a stage panicked");
/// })
/// .join();
/// assert!(shared.is_poisoned());
/// *lock(&shared) += 1;
/// assert_eq!(*lock(&shared), 2);
/// ```
#[inline]
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
