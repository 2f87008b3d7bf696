//! Stages and helpers shared by the behaviour tests.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_core::plumbing::{Ticket, TrackedFrontend};
use engine_core::{Backend, StageContext, StageError};

/// A log writer into a shared buffer, for tests that install a global `tracing` subscriber.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// What was written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The longest any test waits for something that should happen at once.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A backend that collects its items into a shared vector (clones share it).
#[derive(Clone, Default)]
pub(crate) struct Collect<T>(pub Arc<Mutex<Vec<T>>>);

impl<T> Collect<T> {
    pub(crate) fn items(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.0.lock().unwrap().clone()
    }

    pub(crate) fn sorted(&self) -> Vec<T>
    where
        T: Clone + Ord,
    {
        let mut items = self.items();
        items.sort();
        items
    }
}

impl<T> Backend for Collect<T> {
    type Input = T;

    fn process(&mut self, item: T, _ctx: &StageContext) -> Result<(), StageError> {
        self.0.lock().unwrap().push(item);
        Ok(())
    }
}

/// Counts setups and cleanups of a stage across threads.
#[derive(Clone, Default)]
pub(crate) struct Lifecycle {
    pub(crate) setups: Arc<AtomicU64>,
    pub(crate) cleanups: Arc<AtomicU64>,
}

impl Lifecycle {
    pub(crate) fn setups(&self) -> u64 {
        self.setups.load(Ordering::SeqCst)
    }

    pub(crate) fn cleanups(&self) -> u64 {
        self.cleanups.load(Ordering::SeqCst)
    }
}

/// Waits until `done()` holds, up to [`PATIENCE`]; panics with `what` otherwise.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// Burns CPU for `d`: a slow stage without sleeping.
pub(crate) fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// A tracked source of the ids `0..n`, each produced with the ticket `ticket(id)`.
pub(crate) struct Ids<F> {
    next: u64,
    end: u64,
    ticket: F,
}

impl<F> Ids<F> {
    pub(crate) fn new(n: u64, ticket: F) -> Self {
        Self {
            next: 0,
            end: n,
            ticket,
        }
    }
}

impl<K: Ticket, F: FnMut(u64) -> K> TrackedFrontend for Ids<F> {
    type Item = u64;
    type Ticket = K;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<(K, u64)>, StageError> {
        if self.next == self.end {
            return Ok(None);
        }
        let id = self.next;
        self.next += 1;
        Ok(Some(((self.ticket)(id), id)))
    }
}
