//! The stop handle every engine shares: cloneable, thread-safe, two levels (graceful, now),
//! waitable, with callbacks so that engines can wake blocked threads or async tasks.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::plumbing::lock;
use listeners::{Due, Listener, Listeners};

mod listeners;

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

struct Inner {
    level: AtomicU8,
    next_id: AtomicU64,
    // The listeners and the condition variable share this mutex, so that a level change, the
    // list of listeners to call and the wake-up of waiters are one atomic step.
    listeners: Mutex<Listeners>,
    changed: Condvar,
    // Threads blocked in `wait_for_level`, for diagnostics and tests.
    waiters: AtomicUsize,
    // Set for a child handle: its subscription to the parent, released with the child.
    _parent: Option<StopSubscription>,
}

impl Inner {
    fn new(parent: Option<StopSubscription>) -> Self {
        Self {
            level: AtomicU8::new(StopLevel::Running as u8),
            next_id: AtomicU64::new(0),
            listeners: Mutex::new(Listeners::Few(Vec::new())),
            changed: Condvar::new(),
            waiters: AtomicUsize::new(0),
            _parent: parent,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Listeners> {
        // A panicking listener is called outside the lock, so poisoning can only come from a
        // panic in this module's own short critical sections; the list stays consistent.
        lock(&self.listeners)
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
/// - [`escalate`](Self::escalate) raises the level by one step, for a request repeated by one
///   source.
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
/// use engine::core::{StopHandle, StopLevel};
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
    /// For a single source of repeated requests, such as a "stop" button pressed twice. The
    /// signal handler does not use it: it counts its own signals, so that two handlers on one
    /// handle do not turn one Ctrl-C into two steps.
    ///
    /// ```
    /// # use engine::core::{StopHandle, StopLevel};
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
    fn raise_locked(&self, guard: MutexGuard<'_, Listeners>, level: StopLevel) -> Option<Due> {
        let old = self.inner.level.load(Ordering::Acquire);
        if old >= level as u8 {
            return None;
        }
        self.inner.level.store(level as u8, Ordering::Release);
        let listeners = guard.due();
        // Waiters count themselves under the lock before they block, so this count is
        // exact: with none, the wake-up (a system call) is skipped. A pod stop raises two
        // handles per bean, nearly always with nobody blocked on them.
        let waiters = self.inner.waiters.load(Ordering::Relaxed);
        drop(guard);
        if waiters > 0 {
            self.inner.changed.notify_all();
        }
        Some(listeners)
    }

    /// Calls every listener, even when one panics; the first panic is then resumed in the
    /// caller, so a bug in a callback is not silent but cannot keep the others from running.
    fn notify(listeners: &Due, level: StopLevel) {
        let listeners = match listeners {
            Due::One(listener) => std::slice::from_ref(listener),
            Due::Many(listeners) => listeners.as_slice(),
        };
        let mut first_panic = None;
        for listener in listeners {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| listener(level))) {
                first_panic.get_or_insert(payload);
            }
        }
        if let Some(payload) = first_panic {
            resume_unwind(payload);
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
    /// # use engine::core::{StopHandle, StopLevel};
    /// let stop = StopHandle::new();
    /// stop.stop();
    /// // Graceful is not Now: this times out.
    /// assert_eq!(stop.wait_for_level(StopLevel::Now, Some(Duration::from_millis(1))), None);
    /// ```
    pub fn wait_for_level(&self, level: StopLevel, timeout: Option<Duration>) -> Option<StopLevel> {
        // A timeout too large to represent is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut guard = self.inner.lock();
        loop {
            let current = self.level();
            if current >= level {
                return Some(current);
            }
            self.inner.waiters.fetch_add(1, Ordering::Relaxed);
            let _waiting = Waiting(&self.inner.waiters);
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
    /// [`level`](Self::level) or treat levels as a maximum. Because a late subscriber is called
    /// at once on the registering thread, do not register while holding a lock the callback
    /// takes. Keep callbacks short (wake a thread, send on a channel): they run on the thread
    /// that stopped, which may be the signal thread.
    ///
    /// # Panics
    ///
    /// A panicking callback does not keep the other callbacks from running; its panic is
    /// resumed afterwards in the thread that raised the level (or that registered it late). Dropping the returned
    /// [`StopSubscription`] unregisters it; [`StopSubscription::detach`] keeps it for the
    /// handle's lifetime.
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::{AtomicU8, Ordering}};
    /// # use engine::core::{StopHandle, StopLevel};
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
        let callback: Listener = Arc::new(callback);
        let (id, current) = {
            let mut guard = self.inner.lock();
            // Taken under the lock, so that ids follow the order of registration.
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            guard.insert(id, Arc::clone(&callback));
            (id, self.level())
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
    /// # use engine::core::{StopHandle, StopLevel};
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

    /// How many callbacks are registered (for tests and diagnostics).
    pub fn subscriber_count(&self) -> usize {
        self.inner.lock().len()
    }

    /// How many threads are blocked in a `wait` call right now (for tests and diagnostics).
    pub fn waiter_count(&self) -> usize {
        self.inner.waiters.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopHandle")
            .field("level", &self.level())
            .finish_non_exhaustive()
    }
}

/// Counts a thread as waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
            // Dropped outside the lock: the callback may hold the last handle of a child.
            let removed = inner.lock().remove(self.id);
            drop(removed);
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StopState")
    }
}

#[cfg(test)]
mod tests;
