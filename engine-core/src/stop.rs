//! The stop handle every engine shares: cloneable, thread-safe, two levels (graceful, now),
//! waitable, with callbacks so that engines can wake blocked threads or async tasks.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How far a stop has gone. Levels only ever rise: `Running` -> `Graceful` -> `Now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum StopLevel {
    /// No stop requested.
    Running = 0,
    /// Stop producing; let everything already accepted flow through (drain).
    Graceful = 1,
    /// Abort: abandon what is queued; the run report counts it as dropped.
    Now = 2,
}

impl StopLevel {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Running,
            1 => Self::Graceful,
            _ => Self::Now,
        }
    }
}

impl fmt::Display for StopLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Running => "running",
            Self::Graceful => "graceful",
            Self::Now => "now",
        })
    }
}

type Listener = Arc<dyn Fn(StopLevel) + Send + Sync>;

struct Inner {
    level: AtomicU8,
    next_id: AtomicU64,
    // The listeners and the condition variable share this mutex, so that a level change, the
    // list of listeners to call and the wake-up of waiters are one atomic step.
    listeners: Mutex<Vec<(u64, Listener)>>,
    changed: Condvar,
    // Set for a child handle: its subscription to the parent, released with the child.
    _parent: Option<StopSubscription>,
}

impl Inner {
    fn new(parent: Option<StopSubscription>) -> Self {
        Self {
            level: AtomicU8::new(StopLevel::Running as u8),
            next_id: AtomicU64::new(0),
            listeners: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            _parent: parent,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(u64, Listener)>> {
        // A panicking listener is called outside the lock, so poisoning can only come from a
        // panic in this module's own short critical sections; the list stays consistent.
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request to stop a run, shared by everything that runs in it.
///
/// Cloning gives another handle to the same state. Stopping is idempotent and levels only
/// rise, so any number of threads (or a signal thread, see
/// [`install_signal_handler`](crate::install_signal_handler)) can stop at once.
///
/// - [`stop`](Self::stop) asks for a graceful stop: frontends stop producing and what was
///   accepted drains.
/// - [`stop_now`](Self::stop_now) aborts: engines abandon queued items and count them as
///   dropped.
/// - [`escalate`](Self::escalate) raises the level by one step: what a repeated Ctrl-C does.
///
/// Waiting: [`wait`](Self::wait) and [`wait_timeout`](Self::wait_timeout) block a thread;
/// [`on_stop`](Self::on_stop) registers a callback, which is how an engine wakes threads
/// blocked on channels or notifies async tasks.
///
/// The methods take a mutex, so they must not be called from inside a raw signal handler;
/// [`install_signal_handler`](crate::install_signal_handler) calls them from a thread.
///
/// # Examples
///
/// ```
/// use std::thread;
/// use engine_core::{StopHandle, StopLevel};
///
/// let stop = StopHandle::new();
/// let worker = {
///     let stop = stop.clone();
///     thread::spawn(move || {
///         let mut done = 0;
///         while !stop.is_stopping() {
///             done += 1;
///             if done == 3 {
///                 stop.stop();
///             }
///         }
///         done
///     })
/// };
/// assert_eq!(stop.wait(), StopLevel::Graceful);
/// assert_eq!(worker.join().unwrap(), 3);
/// assert!(!stop.is_stopped_now());
/// ```
#[derive(Clone)]
pub struct StopHandle {
    inner: Arc<Inner>,
}

impl Default for StopHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl StopHandle {
    /// A new handle in the running state.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner::new(None)),
        }
    }

    /// The current level.
    #[inline]
    pub fn level(&self) -> StopLevel {
        StopLevel::from_u8(self.inner.level.load(Ordering::Acquire))
    }

    /// Whether any stop (graceful or now) was requested.
    #[inline]
    pub fn is_stopping(&self) -> bool {
        self.inner.level.load(Ordering::Acquire) >= StopLevel::Graceful as u8
    }

    /// Whether an immediate stop was requested.
    #[inline]
    pub fn is_stopped_now(&self) -> bool {
        self.inner.level.load(Ordering::Acquire) >= StopLevel::Now as u8
    }

    /// Requests a graceful stop. Returns whether this call changed the level.
    pub fn stop(&self) -> bool {
        self.raise(StopLevel::Graceful)
    }

    /// Requests an immediate stop. Returns whether this call changed the level.
    pub fn stop_now(&self) -> bool {
        self.raise(StopLevel::Now)
    }

    /// Raises the level by one step (running -> graceful -> now) and returns the new level.
    ///
    /// This is what the signal handler does on each SIGINT or SIGTERM.
    ///
    /// ```
    /// # use engine_core::{StopHandle, StopLevel};
    /// let stop = StopHandle::new();
    /// assert_eq!(stop.escalate(), StopLevel::Graceful);
    /// assert_eq!(stop.escalate(), StopLevel::Now);
    /// assert_eq!(stop.escalate(), StopLevel::Now);
    /// ```
    pub fn escalate(&self) -> StopLevel {
        let guard = self.inner.lock();
        let next = match self.level() {
            StopLevel::Running => StopLevel::Graceful,
            StopLevel::Graceful | StopLevel::Now => StopLevel::Now,
        };
        if let Some(listeners) = self.raise_locked(guard, next) {
            Self::notify(&listeners, next);
        }
        next
    }

    /// Raises the level to at least `level`. Returns whether it changed.
    fn raise(&self, level: StopLevel) -> bool {
        if level == StopLevel::Running {
            return false;
        }
        let guard = self.inner.lock();
        match self.raise_locked(guard, level) {
            Some(listeners) => {
                Self::notify(&listeners, level);
                true
            }
            None => false,
        }
    }

    /// With the lock held: stores the level if it is higher, wakes waiters, and returns the
    /// listeners to call once the lock is released (`None` if nothing changed).
    fn raise_locked(
        &self,
        guard: MutexGuard<'_, Vec<(u64, Listener)>>,
        level: StopLevel,
    ) -> Option<Vec<Listener>> {
        let old = self.inner.level.load(Ordering::Acquire);
        if old >= level as u8 {
            return None;
        }
        self.inner.level.store(level as u8, Ordering::Release);
        let listeners = guard.iter().map(|(_, f)| Arc::clone(f)).collect();
        drop(guard);
        self.inner.changed.notify_all();
        Some(listeners)
    }

    fn notify(listeners: &[Listener], level: StopLevel) {
        for listener in listeners {
            listener(level);
        }
    }

    /// Blocks until a stop is requested, and returns the level.
    pub fn wait(&self) -> StopLevel {
        self.wait_for_level(StopLevel::Graceful, None)
            .unwrap_or(StopLevel::Graceful)
    }

    /// Blocks until a stop is requested or `timeout` passes. Returns the level, or `None` on
    /// timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<StopLevel> {
        self.wait_for_level(StopLevel::Graceful, Some(timeout))
    }

    /// Blocks until the level is at least `level` or `timeout` (if any) passes. Returns the
    /// level reached, or `None` on timeout.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use engine_core::{StopHandle, StopLevel};
    /// let stop = StopHandle::new();
    /// stop.stop();
    /// // Graceful is not Now: this times out.
    /// assert_eq!(stop.wait_for_level(StopLevel::Now, Some(Duration::from_millis(1))), None);
    /// ```
    pub fn wait_for_level(&self, level: StopLevel, timeout: Option<Duration>) -> Option<StopLevel> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut guard = self.inner.lock();
        loop {
            let current = self.level();
            if current >= level {
                return Some(current);
            }
            match deadline {
                None => {
                    guard = self
                        .inner
                        .changed
                        .wait(guard)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    guard = self
                        .inner
                        .changed
                        .wait_timeout(guard, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Calls `callback` with the new level each time the level rises, from the thread that
    /// raised it. If a stop was already requested, `callback` is called at once with the
    /// current level.
    ///
    /// The callback runs outside the handle's lock and may stop the handle again; when two
    /// threads raise the level at the same moment the calls may arrive out of order, so act on
    /// [`level`](Self::level) or treat levels as a maximum. Dropping the returned
    /// [`StopSubscription`] unregisters it; [`StopSubscription::detach`] keeps it for the
    /// handle's lifetime.
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::{AtomicU8, Ordering}};
    /// # use engine_core::{StopHandle, StopLevel};
    /// let stop = StopHandle::new();
    /// let seen = Arc::new(AtomicU8::new(0));
    /// let sub = {
    ///     let seen = Arc::clone(&seen);
    ///     stop.on_stop(move |level| { seen.fetch_max(level as u8, Ordering::SeqCst); })
    /// };
    /// stop.stop_now();
    /// assert_eq!(seen.load(Ordering::SeqCst), StopLevel::Now as u8);
    /// drop(sub);
    /// ```
    #[must_use = "dropping the subscription unregisters the callback"]
    pub fn on_stop(
        &self,
        callback: impl Fn(StopLevel) + Send + Sync + 'static,
    ) -> StopSubscription {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let callback: Listener = Arc::new(callback);
        let current = {
            let mut guard = self.inner.lock();
            guard.push((id, Arc::clone(&callback)));
            self.level()
        };
        if current > StopLevel::Running {
            callback(current);
        }
        StopSubscription {
            inner: Arc::downgrade(&self.inner),
            id,
        }
    }

    /// A new handle that stops when this one stops (at the same level), but whose own stop
    /// does not reach this one: a stop scope for one part of a larger run, such as one bean in
    /// a pod or one run of an engine inside a long-lived program.
    ///
    /// ```
    /// # use engine_core::{StopHandle, StopLevel};
    /// let parent = StopHandle::new();
    /// let child = parent.child();
    /// child.stop();
    /// assert!(!parent.is_stopping());
    /// parent.stop_now();
    /// assert_eq!(child.level(), StopLevel::Now);
    /// ```
    pub fn child(&self) -> StopHandle {
        let inner = Arc::new_cyclic(|child: &Weak<Inner>| {
            let child = child.clone();
            // The child owns its subscription to the parent, so the parent's forwarding
            // callback is unregistered when the child's last handle is dropped.
            let forward = self.on_stop(move |level| {
                if let Some(inner) = child.upgrade() {
                    StopHandle { inner }.raise(level);
                }
            });
            Inner::new(Some(forward))
        });
        let child = StopHandle { inner };
        // A parent stopped before the child existed: the callback above could not reach it.
        child.raise(self.level());
        child
    }

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
    /// # use engine_core::{StopHandle, StopLevel};
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
                    let guard = cancelled.lock().unwrap_or_else(PoisonError::into_inner);
                    let (guard, _) = wake
                        .wait_timeout_while(guard, after, |cancelled| !*cancelled)
                        .unwrap_or_else(PoisonError::into_inner);
                    if !*guard {
                        drop(guard);
                        stop.stop_now();
                    }
                })?
        };
        Ok(StopDeadline {
            cancel,
            thread: Some(thread),
        })
    }

    /// How many callbacks are registered (for tests and diagnostics).
    pub fn subscriber_count(&self) -> usize {
        self.inner.lock().len()
    }
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopHandle")
            .field("level", &self.level())
            .finish_non_exhaustive()
    }
}

/// A pending [`StopHandle::stop_now_after`]; dropping it cancels the deadline.
#[derive(Debug)]
pub struct StopDeadline {
    cancel: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for StopDeadline {
    fn drop(&mut self) {
        let (cancelled, wake) = &*self.cancel;
        *cancelled.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The timer thread runs no user code and cannot panic; nothing to report.
            let _ = thread.join();
        }
    }
}

/// A callback registered with [`StopHandle::on_stop`]; dropping it unregisters the callback.
#[derive(Debug)]
pub struct StopSubscription {
    inner: Weak<Inner>,
    id: u64,
}

impl StopSubscription {
    /// Keeps the callback registered for as long as the handle lives.
    pub fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for StopSubscription {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.lock().retain(|(id, _)| *id != self.id);
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StopState")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    #[test]
    fn levels_only_rise() {
        let stop = StopHandle::new();
        assert_eq!(stop.level(), StopLevel::Running);
        assert!(stop.stop_now());
        assert!(!stop.stop());
        assert_eq!(stop.level(), StopLevel::Now);
        assert!(stop.is_stopping() && stop.is_stopped_now());
    }

    #[test]
    fn stop_from_another_thread_wakes_a_waiter() {
        let stop = StopHandle::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        let waiter = {
            let stop = stop.clone();
            thread::spawn(move || {
                ready_tx.send(()).unwrap();
                stop.wait()
            })
        };
        ready_rx.recv().unwrap();
        let stopper = {
            let stop = stop.clone();
            thread::spawn(move || stop.stop())
        };
        assert!(stopper.join().unwrap());
        assert_eq!(waiter.join().unwrap(), StopLevel::Graceful);
    }

    #[test]
    fn wait_timeout_returns_none_while_running() {
        let stop = StopHandle::new();
        assert_eq!(stop.wait_timeout(Duration::from_millis(5)), None);
        stop.stop();
        assert_eq!(
            stop.wait_timeout(Duration::from_secs(5)),
            Some(StopLevel::Graceful)
        );
    }

    #[test]
    fn callbacks_see_each_level_once_and_unregister_on_drop() {
        let stop = StopHandle::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sub = {
            let calls = Arc::clone(&calls);
            stop.on_stop(move |level| calls.lock().unwrap().push(level))
        };
        assert_eq!(stop.subscriber_count(), 1);
        stop.stop();
        stop.stop();
        stop.stop_now();
        drop(sub);
        assert_eq!(stop.subscriber_count(), 0);
        assert_eq!(
            *calls.lock().unwrap(),
            [StopLevel::Graceful, StopLevel::Now]
        );
    }

    #[test]
    fn a_late_subscriber_is_called_at_once() {
        let stop = StopHandle::new();
        stop.stop();
        let hits = Arc::new(AtomicUsize::new(0));
        let hits2 = Arc::clone(&hits);
        stop.on_stop(move |_| {
            hits2.fetch_add(1, Ordering::SeqCst);
        })
        .detach();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_callback_may_stop_the_handle_again() {
        let stop = StopHandle::new();
        let again = stop.clone();
        let _sub = stop.on_stop(move |_| {
            again.stop_now();
        });
        stop.stop();
        assert_eq!(stop.level(), StopLevel::Now);
    }

    #[test]
    fn children_follow_the_parent_and_release_their_callback() {
        let parent = StopHandle::new();
        let child = parent.child();
        let grandchild = child.child();
        assert_eq!(parent.subscriber_count(), 1);
        child.stop();
        assert!(!parent.is_stopping());
        assert_eq!(grandchild.level(), StopLevel::Graceful);
        parent.stop_now();
        assert_eq!(child.level(), StopLevel::Now);
        assert_eq!(grandchild.level(), StopLevel::Now);
        drop(grandchild);
        drop(child);
        assert_eq!(parent.subscriber_count(), 0);
    }

    #[test]
    fn a_dropped_deadline_never_fires() {
        let stop = StopHandle::new();
        stop.stop();
        let started = Instant::now();
        drop(stop.stop_now_after(Duration::from_secs(3600)).unwrap());
        // Dropping joins the timer thread at once, and the level stays graceful.
        assert!(started.elapsed() < Duration::from_secs(60));
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
    fn handles_and_contexts_cross_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<StopHandle>();
        shared::<crate::StageContext>();
        shared::<crate::AppConfig>();
        fn sendable<T: Send + 'static>() {}
        sendable::<StopSubscription>();
        sendable::<StopDeadline>();
        sendable::<crate::StageError>();
    }

    #[test]
    fn many_threads_escalating_end_at_now() {
        let stop = StopHandle::new();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || stop.escalate())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(stop.level(), StopLevel::Now);
    }
}
