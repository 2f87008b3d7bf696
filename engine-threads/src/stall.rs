//! The wait marks of stage threads: what each stage thread waits on, marked only where a
//! thread blocks, for the stall report ([`StallWatch`](crate::stall_watch::StallWatch)).
//!
//! A thread marks its wait in its own [`ThreadStats`] just before it blocks and clears it
//! after, so the mark costs a thread-local lookup and an atomic store on paths that are
//! about to sleep anyway, and nothing on the hot path. The coordinator reads the marks only
//! when the run has made no progress for a while.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use crate::counters::ThreadStats;
// Stage threads name their waits through this module; the type sits below, beside the
// counters that store it.
pub(crate) use crate::wait::Wait;

thread_local! {
    /// The stats of the stage thread running here, if any.
    static CURRENT: RefCell<Option<Arc<ThreadStats>>> = const { RefCell::new(None) };
}

/// Makes `stats` the current thread's, for the marks of [`waiting`] and of the stage's own
/// [`waiting_for_input`](engine_core::waiting_for_input).
pub(crate) fn enter(stats: &Arc<ThreadStats>) {
    CURRENT.with(|current| *current.borrow_mut() = Some(Arc::clone(stats)));
    engine_core::plumbing::set_wait_sink(Some(Arc::clone(stats) as _));
}

/// Marks the current thread as ended and forgets its stats.
pub(crate) fn leave() {
    engine_core::plumbing::set_wait_sink(None);
    if let Some(stats) = CURRENT.with(|current| current.borrow_mut().take()) {
        stats.set_wait(Wait::Ended);
    }
}

/// Marks the current stage thread as waiting until the guard is dropped; a wait for input
/// also counts its time.
pub(crate) fn waiting(wait: Wait) -> Waiting {
    let stats = CURRENT.with(|current| current.borrow().clone());
    if let Some(stats) = &stats {
        stats.set_wait(wait);
    }
    let since = (wait == Wait::Input && stats.is_some()).then(Instant::now);
    Waiting(stats, since)
}

/// Clears a wait mark when dropped (and counts a wait for input).
pub(crate) struct Waiting(Option<Arc<ThreadStats>>, Option<Instant>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(stats) = &self.0 {
            if let Some(since) = self.1 {
                stats.add_input_wait(since.elapsed());
            }
            stats.set_wait(Wait::Working);
        }
    }
}
