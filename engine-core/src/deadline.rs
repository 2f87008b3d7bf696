//! A deadline for a graceful stop: after it, the stop becomes immediate.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::plumbing::lock;
use crate::stop::StopHandle;

impl StopHandle {
    /// Calls [`stop_now`](Self::stop_now) after `after`, unless the returned guard is dropped
    /// first: the deadline of a graceful stop.
    ///
    /// An engine arms it when a graceful stop begins and drops it when the run has drained;
    /// if draining takes longer, the stop becomes immediate and what is left is dropped.
    ///
    /// # Errors
    ///
    /// The timer thread could not be started.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use engine::core::{StopHandle, StopLevel};
    /// let stop = StopHandle::new();
    /// stop.stop();
    /// let deadline = stop.stop_now_after(Duration::from_millis(10))?;
    /// assert_eq!(stop.wait_for_level(StopLevel::Now, Some(Duration::from_secs(10))), Some(StopLevel::Now));
    /// drop(deadline);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stop_now_after(&self, after: Duration) -> io::Result<StopDeadline> {
        let cancel = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let cancel = Arc::clone(&cancel);
            let stop = self.clone();
            thread::Builder::new()
                .name("engine-stop-deadline".into())
                .spawn(move || {
                    let (cancelled, wake) = &*cancel;
                    let guard = lock(cancelled);
                    let (guard, _) = wake
                        .wait_timeout_while(guard, after, |cancelled| !*cancelled)
                        .unwrap_or_else(PoisonError::into_inner);
                    if !*guard {
                        drop(guard);
                        // A panicking stop callback is the callback's bug; it has been resumed
                        // here and must not be mistaken for a failure of the deadline.
                        let _ = catch_unwind(AssertUnwindSafe(|| stop.stop_now()));
                    }
                })?
        };
        Ok(StopDeadline {
            cancel,
            thread: Some(thread),
        })
    }
}

/// A pending [`StopHandle::stop_now_after`]; dropping it cancels the deadline.
#[derive(Debug)]
#[must_use = "dropping the guard cancels the deadline at once"]
pub struct StopDeadline {
    cancel: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for StopDeadline {
    fn drop(&mut self) {
        let (cancelled, wake) = &*self.cancel;
        *lock(cancelled) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // A stop callback run by the timer thread may itself drop this guard; a thread
            // cannot join itself, and it is about to end anyway.
            if thread.thread().id() != thread::current().id() {
                // The timer thread catches every panic; joining reports nothing.
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;
    use crate::stop::StopLevel;

    #[test]
    fn a_dropped_deadline_never_fires() {
        let stop = StopHandle::new();
        stop.stop();
        let deadline = stop.stop_now_after(Duration::from_secs(3600)).unwrap();
        // Drop on another thread, so that a drop that fails to cancel shows as a timeout here
        // instead of a test that hangs for an hour.
        let (done_tx, done_rx) = mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            drop(deadline);
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dropping the deadline cancels its timer at once");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(stop.level(), StopLevel::Graceful);
    }

    #[test]
    fn an_expired_deadline_stops_now() {
        let stop = StopHandle::new();
        let _deadline = stop.stop_now_after(Duration::from_millis(1)).unwrap();
        assert_eq!(
            stop.wait_for_level(StopLevel::Now, Some(Duration::from_secs(30))),
            Some(StopLevel::Now)
        );
    }

    #[test]
    fn a_callback_may_drop_the_deadline_that_fired_it() {
        let stop = StopHandle::new();
        let slot: Arc<Mutex<Option<StopDeadline>>> = Arc::new(Mutex::new(None));
        let (fired_tx, fired_rx) = mpsc::channel();
        let _sub = {
            let slot = Arc::clone(&slot);
            stop.on_stop(move |_| {
                // Runs on the timer thread: dropping the guard there must not self-join.
                drop(slot.lock().unwrap().take());
                let _ = fired_tx.send(());
            })
        };
        *slot.lock().unwrap() = Some(stop.stop_now_after(Duration::from_millis(1)).unwrap());
        fired_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(stop.level(), StopLevel::Now);
    }

    #[test]
    fn deadlines_are_send() {
        fn sendable<T: Send + 'static>() {}
        sendable::<StopDeadline>();
    }
}
