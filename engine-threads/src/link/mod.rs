//! The bounded queue between two stages: batches of items on a crossbeam channel, frontend
//! slots that idle consumers can empty, and the abort signal that wakes every blocked thread.
//!
//! Items travel in batches so that the cost of a channel operation is shared by many items,
//! and they batch only when they are already queued (natural batching, as in LMAX's
//! disruptor): no timer ever holds an item. A consumer takes whatever is there, a whole queued
//! batch or, with nothing queued, a frontend's open batch however small. A producer hands its
//! batch on when it is full, when a consumer sleeps with nothing queued for it, or before it
//! would wait itself. So under load batches fill while consumers are busy, and a lone item
//! crosses at once. A consumer that has caught up gives its core away a few times before it
//! counts as asleep (see `patience`), so that a producer sharing its core fills a whole batch
//! rather than wake it with a small one.
//!
//! Frontend threads are special: a frontend may block inside `produce` for as long as its
//! source is silent, so its open batch lives in a [`FrontSlot`] under a mutex, where a consumer
//! about to sleep, or the engine at a stop, can take it. No item ever sits in a buffer that
//! only a blocked thread can reach.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use engine_core::plumbing::{Ticket, lock};

use crate::stall::{self, Wait};

mod abort;
mod batch;
mod lend;
mod patience;
mod producer;
mod sizing;
mod slot;
mod view;

pub(crate) use abort::{Abort, AbortTrigger, abort_pair};
pub(crate) use batch::{Batch, complete, drop_items};
pub(crate) use lend::{Lender, RunLent};
pub(crate) use producer::Producer;
pub(crate) use sizing::{LinkState, Sizing};
pub(crate) use slot::{FrontSlot, Offer};
pub(crate) use view::LinkView;

/// The most items in one batch.
pub(crate) const MAX_BATCH: usize = 1024;

/// Adds the time since its start to a total when dropped, whichever way a wait ends.
struct Accrue<'a>(&'a mut Duration, Instant);

impl Drop for Accrue<'_> {
    fn drop(&mut self) {
        *self.0 += self.1.elapsed();
    }
}

/// A consumer counted as asleep on a link, until dropped.
pub(crate) struct Sleeping<'a>(&'a LinkState);

impl Drop for Sleeping<'_> {
    fn drop(&mut self) {
        self.0.sleeping.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The sequence number of an empty batch that only wakes a sleeping consumer (tests use it to
/// make a queue look non-empty).
#[cfg(test)]
const NUDGE: u64 = u64::MAX;

/// Whether a batch is a nudge, with no items to deliver.
#[cfg(test)]
fn is_nudge<K, T>(batch: &Batch<K, T>) -> bool {
    batch.seq == NUDGE && batch.items.is_empty()
}

/// Outside tests nothing sends nudges.
#[cfg(not(test))]
#[inline(always)]
fn is_nudge<K, T>(_: &Batch<K, T>) -> bool {
    false
}

/// What a look at a queue without waiting gave.
#[derive(Debug)]
pub(crate) enum Polled<B> {
    Ready(B),
    /// Nothing is queued now.
    Empty,
    /// The stream ended, or the run was aborted.
    Ended,
}

/// A queue between two stages.
#[derive(Debug)]
pub(crate) struct Link<K, T> {
    tx: Mutex<Option<Sender<Batch<K, T>>>>,
    rx: Receiver<Batch<K, T>>,
    state: Arc<LinkState>,
    /// The open batches of the frontend threads feeding this link (first link only).
    slots: Vec<Arc<FrontSlot<K, T>>>,
    abort: Abort,
    /// The lending desks of this link's consumers, with `inline_when_idle`.
    lenders: RwLock<Vec<Arc<Lender<K, T>>>>,
}

impl<K: Ticket, T: Send> Link<K, T> {
    /// A link sized by `sizing`; `frontends` is the number of frontend slots (0 when the
    /// producers are transport threads).
    pub(crate) fn new(sizing: Sizing, frontends: usize, abort: Abort) -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::bounded(sizing.slots);
        let state = Arc::new(LinkState::new(sizing));
        let slots = (0..frontends)
            .map(|_| Arc::new(FrontSlot::new(tx.clone())))
            .collect();
        Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            rx,
            state,
            slots,
            abort,
            lenders: RwLock::new(Vec::new()),
        })
    }

    /// A lending desk for a consumer of this link (`inline_when_idle`).
    pub(crate) fn lender(&self) -> Arc<Lender<K, T>> {
        let lender = Arc::new(Lender::new());
        self.lenders
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&lender));
        lender
    }

    /// Runs `batch` on this thread on a consumer asleep with nothing queued, if there is one
    /// (see `lend`); gives the batch back otherwise.
    pub(crate) fn try_run_here(&self, batch: Batch<K, T>) -> Result<(), Batch<K, T>> {
        if !self.rx.is_empty() || self.abort.is_fired() {
            return Err(batch);
        }
        // Written only while the run starts: readers never wait.
        let lenders = self.lenders.read().unwrap_or_else(PoisonError::into_inner);
        let mut batch = batch;
        for lender in lenders.iter() {
            match lender.try_run(batch) {
                Ok(()) => return Ok(()),
                Err(back) => batch = back,
            }
        }
        Err(batch)
    }

    pub(crate) fn state(&self) -> &Arc<LinkState> {
        &self.state
    }

    pub(crate) fn slots(&self) -> &[Arc<FrontSlot<K, T>>] {
        &self.slots
    }

    /// A producer handle for a transport thread.
    pub(crate) fn producer(self: &Arc<Self>) -> Producer<K, T> {
        let tx = lock(&self.tx)
            .clone()
            .expect("producers are made before the link is sealed");
        Producer::new(tx, Arc::clone(self))
    }

    /// Drops the link's own sender, so that the channel disconnects once every producer is
    /// done. Called once all producer handles exist.
    pub(crate) fn seal(&self) {
        lock(&self.tx).take();
    }

    /// Waits for the next batch. `None` means the end of the stream (every producer is done
    /// and every frontend slot is closed and empty) or an abort.
    ///
    /// Takes a queued batch, else a frontend's open batch however small; with nothing
    /// anywhere, sleeps until a producer hands a batch on. Nothing waits on a timer.
    pub(crate) fn recv(&self) -> Option<Batch<K, T>> {
        match self.recv_or(None) {
            Polled::Ready(batch) => Some(batch),
            _ => None,
        }
    }

    /// As [`recv`](Self::recv), but a signal on `wake` also ends the wait, with `Empty` (the
    /// signal taken): a consumer lent out while it sleeps (see `lend`) hears that a run lent
    /// out left it something to do.
    pub(crate) fn recv_or(&self, wake: Option<&Receiver<()>>) -> Polled<Batch<K, T>> {
        let woken = || wake.is_some_and(|wake| wake.try_recv().is_ok());
        loop {
            match self.try_recv() {
                Polled::Empty if woken() => return Polled::Empty,
                Polled::Empty => {}
                other => return other,
            }
            // Not yet a sleeper: give the core to a producer a few times first (see
            // `patience`).
            if let Some(batch) = self.patiently() {
                return Polled::Ready(batch);
            }
            // Announce the sleep before the last look, so that a producer that adds to its
            // batch after that look (a frontend: under its slot's lock) sees the sleeper and
            // hands its batch on.
            self.state.sleeping.fetch_add(1, Ordering::SeqCst);
            let polled = match self.try_recv() {
                Polled::Empty => self.wait(wake),
                other => other,
            };
            self.state.sleeping.fetch_sub(1, Ordering::SeqCst);
            match polled {
                Polled::Empty if wake.is_some() => return Polled::Empty,
                Polled::Empty => {}
                other => return other,
            }
        }
    }

    /// Takes a queued batch, or else a frontend's open batch, without waiting. A consumer with
    /// work in flight elsewhere uses it: another consumer may take the batch it saw queued,
    /// and it must not then block on its input while its own results wait to be settled.
    pub(crate) fn try_recv(&self) -> Polled<Batch<K, T>> {
        loop {
            match self.rx.try_recv() {
                Ok(batch) if is_nudge(&batch) => {}
                Ok(batch) => return Polled::Ready(self.took(batch)),
                Err(TryRecvError::Empty) if self.abort.is_fired() => return Polled::Ended,
                Err(TryRecvError::Empty) => {
                    return self.steal().map_or(Polled::Empty, Polled::Ready);
                }
                Err(TryRecvError::Disconnected) => {
                    return self.steal().map_or(Polled::Ended, Polled::Ready);
                }
            }
        }
    }

    /// Yields a few times before a sleep, taking a batch that arrives meanwhile (see
    /// `patience`).
    fn patiently(&self) -> Option<Batch<K, T>> {
        let patience = patience::Patience::begin()?;
        let _waiting = stall::waiting(Wait::Input);
        for _ in 0..patience::YIELDS {
            let go_on = patience.yield_once();
            if !self.rx.is_empty() {
                return match self.rx.try_recv() {
                    Ok(batch) if !is_nudge(&batch) => Some(self.took(batch)),
                    _ => None,
                };
            }
            if !go_on || self.abort.is_fired() {
                break;
            }
        }
        None
    }

    /// Sleeps until a batch arrives (`Empty` after a nudge or a signal on `wake`), the stream
    /// ends or the run is aborted.
    fn wait(&self, wake: Option<&Receiver<()>>) -> Polled<Batch<K, T>> {
        let _waiting = stall::waiting(Wait::Input);
        let mut select = Select::new();
        let data = select.recv(&self.rx);
        let abort = select.recv(self.abort.receiver());
        if let Some(wake) = wake {
            select.recv(wake);
        }
        let op = select.select();
        match op.index() {
            i if i == data => match op.recv(&self.rx) {
                Ok(batch) if is_nudge(&batch) => Polled::Empty,
                Ok(batch) => Polled::Ready(self.took(batch)),
                Err(_) => self.steal().map_or(Polled::Ended, Polled::Ready),
            },
            i if i == abort => {
                let _ = op.recv(self.abort.receiver());
                Polled::Ended
            }
            _ => {
                let wake = wake.expect("a third operation is selected only with `wake`");
                let _ = op.recv(wake);
                Polled::Empty
            }
        }
    }

    /// Counts the caller as a consumer asleep on this link until the guard drops, so that a
    /// producer hands its batch on however small (see [`recv`](Self::recv)).
    pub(crate) fn sleeping(&self) -> Sleeping<'_> {
        self.state.sleeping.fetch_add(1, Ordering::SeqCst);
        Sleeping(&self.state)
    }

    /// Adds the arrival of a batch and the abort to `select`, to be watched
    /// ([`Select::ready`]), not performed: the caller then takes the batch with
    /// [`try_recv`](Self::try_recv).
    pub(crate) fn watch<'a>(&'a self, select: &mut Select<'a>) {
        select.recv(&self.rx);
        select.recv(self.abort.receiver());
    }

    fn took(&self, batch: Batch<K, T>) -> Batch<K, T> {
        self.state
            .queued
            .fetch_sub(batch.items.len() as u64, Ordering::Relaxed);
        batch
    }

    /// Takes a frontend's open batch, if one has items.
    fn steal(&self) -> Option<Batch<K, T>> {
        self.slots.iter().find_map(|slot| slot.take())
    }

    /// Whether a consumer sleeps with nothing queued for it: a producer then hands its batch
    /// on, however small.
    #[inline]
    pub(crate) fn wants_items(&self) -> bool {
        self.state.has_sleepers() && self.rx.is_empty()
    }

    /// Whether nothing is queued in the channel.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Sends a batch, waiting for room; on abort, gives the batch back. Time spent waiting
    /// for room (backpressure) is added to `blocked`.
    pub(super) fn send(
        &self,
        tx: &Sender<Batch<K, T>>,
        batch: Batch<K, T>,
        blocked: &mut Duration,
    ) -> Result<(), Batch<K, T>> {
        let len = batch.items.len() as u64;
        // Counted before the send so that a consumer's decrement never goes below zero.
        self.state.queued.fetch_add(len, Ordering::Relaxed);
        let batch = match tx.try_send(batch) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => batch,
        };
        let waiting = Instant::now();
        let _count = Accrue(blocked, waiting);
        let batch = if self.abort.is_fired() {
            batch
        } else {
            let _waiting = stall::waiting(Wait::Room);
            let mut select = Select::new();
            let data = select.send(tx);
            let abort = select.recv(self.abort.receiver());
            let op = select.select();
            match op.index() {
                i if i == data => match op.send(tx, batch) {
                    Ok(()) => return Ok(()),
                    Err(err) => err.into_inner(),
                },
                i if i == abort => {
                    let _ = op.recv(self.abort.receiver());
                    batch
                }
                _ => unreachable!("only two operations were selected"),
            }
        };
        self.state.queued.fetch_sub(len, Ordering::Relaxed);
        Err(batch)
    }

    /// After an abort, once every consumer has left: drops what is left in the channel and
    /// the slots, counting it as abandoned in this link. Waits until no producer is left (the
    /// slots are closed, and a frontend caught in a send gives up at the abort), so that no
    /// batch arrives after the count.
    pub(crate) fn drain_abandoned(&self) {
        while let Ok(batch) = self.rx.recv() {
            let batch = self.took(batch);
            self.state.abandon(batch.items);
        }
        for slot in &self.slots {
            if let Some(batch) = slot.take() {
                self.state.abandon(batch.items);
            }
        }
    }

    /// Sends a batch a frontend took from its slot; returns whether it was sent. The
    /// frontend counted the items as passed on when it accepted them, so on abort they are
    /// counted as abandoned in this link (dropped by the next stage).
    pub(crate) fn send_from_slot(
        &self,
        tx: &Sender<Batch<K, T>>,
        batch: Batch<K, T>,
        blocked: &mut Duration,
    ) -> bool {
        match self.send(tx, batch, blocked) {
            Ok(()) => true,
            Err(batch) => {
                self.state.abandon(batch.items);
                false
            }
        }
    }

    /// Puts an empty batch in the channel that wakes a sleeping consumer and gives it
    /// nothing: tests use it to make a queue look non-empty.
    #[cfg(test)]
    pub(crate) fn nudge(&self, tx: &Sender<Batch<K, T>>) {
        let _ = tx.try_send(Batch {
            seq: NUDGE,
            items: Vec::new(),
            traces: batch::Traces::default(),
        });
    }
}
