//! Running a batch on an idle consumer from another thread (`inline_when_idle`): a consumer
//! about to sleep on its input lends itself out through its [`Lender`], and a thread holding a
//! batch for that link while nothing is queued runs the batch on the lent consumer itself,
//! instead of queueing it and waking the consumer's thread. A lone item then crosses every
//! idle stage on the thread that has it.
//!
//! The lent consumer lives on its own thread's stack; the lender holds a pointer to it only
//! between [`Lender::lend`] and the drop of the [`Lent`] guard, during which that thread does
//! not touch it, and every use of the pointer is under the lender's mutex.

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::{Mutex, TryLockError};

use engine_core::plumbing::lock;

use super::Batch;

/// A consumer that can run a batch lent out to another thread. Only consumers of stages whose
/// type is `Send` get a lender (`EngineBuilder::inline_when_idle` requires it); the rest of a
/// consumer (its input, counts, the run's shared state) is `Send` for every stage.
pub(crate) trait RunLent<K, T> {
    /// Runs `batch` as the consumer's own thread would, then hands on every output it holds
    /// (its thread sleeps). Returns false if the consumer should stop taking input.
    fn run_lent(&mut self, batch: Batch<K, T>) -> bool;
}

struct State<K, T> {
    /// The consumer, while its thread sleeps on its input.
    lent: Option<NonNull<dyn RunLent<K, T>>>,
    /// Set when a lent run said to stop taking input: no more runs, and the thread stops.
    halted: bool,
}

// SAFETY: the pointer is used only under the mutex, while its thread does not touch the
// consumer (see the module's documentation), and only consumers that may move between
// threads are lent (see `RunLent`).
unsafe impl<K, T> Send for State<K, T> {}

/// One consumer thread's lending desk.
pub(crate) struct Lender<K, T> {
    state: Mutex<State<K, T>>,
}

impl<K, T> std::fmt::Debug for Lender<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lender").finish_non_exhaustive()
    }
}

thread_local! {
    /// How deep this thread is in lent runs: a stage run lent hands its outputs to the next
    /// link the same way.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread runs a lent consumer now.
#[inline]
pub(crate) fn in_lent_run() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// Takes the consumer back when dropped: its thread may use it again.
pub(crate) struct Lent<'a, K, T>(&'a Lender<K, T>);

impl<K, T> Lent<'_, K, T> {
    /// Takes the consumer back; returns whether a lent run said to stop taking input.
    pub(crate) fn reclaim(self) -> bool {
        let halted = lock(&self.0.state).halted;
        drop(self);
        halted
    }
}

impl<K, T> Drop for Lent<'_, K, T> {
    fn drop(&mut self) {
        // Waits for a lent run in progress to end.
        lock(&self.0.state).lent = None;
    }
}

impl<K, T> Lender<K, T> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                lent: None,
                halted: false,
            }),
        }
    }

    /// Lends `consumer` until the guard is dropped. The caller must not touch `consumer` until
    /// then (it sleeps on its input), and must drop the guard before `consumer` goes away.
    ///
    /// # Safety
    ///
    /// As above: the consumer stays in place and untouched by its thread while the guard
    /// lives.
    pub(crate) unsafe fn lend<'a>(
        &'a self,
        consumer: &mut (dyn RunLent<K, T> + '_),
    ) -> Lent<'a, K, T> {
        let mut state = lock(&self.state);
        if !state.halted {
            let ptr = NonNull::from(consumer);
            // SAFETY: only the lifetime is erased; the guard takes the pointer back before
            // the consumer's lifetime ends (see the caller's contract).
            let ptr: NonNull<dyn RunLent<K, T>> = unsafe { std::mem::transmute(ptr) };
            state.lent = Some(ptr);
        }
        Lent(self)
    }

    /// Runs `batch` on the lent consumer, if it is lent and no other thread runs it; gives the
    /// batch back otherwise.
    pub(crate) fn try_run(&self, batch: Batch<K, T>) -> Result<(), Batch<K, T>> {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(batch),
        };
        let Some(mut consumer) = state.lent.filter(|_| !state.halted) else {
            return Err(batch);
        };
        DEPTH.with(|d| d.set(d.get() + 1));
        let _depth = Depth;
        // SAFETY: lent and untouched by its thread while lent; we hold the lock.
        let go_on = unsafe { consumer.as_mut() }.run_lent(batch);
        if !go_on {
            state.halted = true;
        }
        Ok(())
    }
}

/// Leaves a lent run when dropped, whichever way it ends.
struct Depth;

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::batch::Traces;

    /// Sums what it is lent; says to stop at a batch holding 0.
    struct Summing(u64);

    impl RunLent<(), u64> for Summing {
        fn run_lent(&mut self, batch: Batch<(), u64>) -> bool {
            assert!(in_lent_run());
            let items: Vec<u64> = batch.items.into_iter().map(|((), x)| x).collect();
            self.0 += items.iter().sum::<u64>();
            !items.contains(&0)
        }
    }

    fn batch(items: &[u64]) -> Batch<(), u64> {
        Batch {
            seq: 0,
            items: items.iter().map(|&x| ((), x)).collect(),
            traces: Traces::default(),
        }
    }

    #[test]
    fn a_batch_runs_on_a_lent_consumer_only_while_it_is_lent() {
        let lender = Lender::new();
        let mut consumer = Summing(0);
        assert!(lender.try_run(batch(&[1])).is_err(), "not lent yet");
        // SAFETY: `consumer` is not touched until the guard is dropped.
        let lent = unsafe { lender.lend(&mut consumer) };
        assert!(lender.try_run(batch(&[2, 3])).is_ok());
        assert!(!in_lent_run());
        assert!(!lent.reclaim());
        assert!(lender.try_run(batch(&[4])).is_err(), "taken back");
        assert_eq!(consumer.0, 5);
    }

    #[test]
    fn a_lent_run_that_says_stop_halts_the_consumer() {
        let lender = Lender::new();
        let mut consumer = Summing(0);
        // SAFETY: as above.
        let lent = unsafe { lender.lend(&mut consumer) };
        assert!(lender.try_run(batch(&[0, 7])).is_ok());
        assert!(lender.try_run(batch(&[1])).is_err(), "halted: no more runs");
        assert!(lent.reclaim(), "the consumer hears it should stop");
        // SAFETY: as above.
        let lent = unsafe { lender.lend(&mut consumer) };
        assert!(
            lender.try_run(batch(&[1])).is_err(),
            "a halted consumer is not lent again"
        );
        drop(lent);
        assert_eq!(consumer.0, 7);
    }
}
