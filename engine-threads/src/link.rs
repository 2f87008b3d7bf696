//! The bounded queue between two stages: batches of items on a crossbeam channel, frontend
//! slots that idle consumers can empty, and the abort signal that wakes every blocked thread.
//!
//! Items travel in batches so that the cost of a channel operation is shared by many items.
//! A producer hands a batch on when it is full, when a consumer is waiting (so a lone item is
//! not held back), or before it would wait itself. Frontend threads are special: a frontend may
//! block inside `produce` for as long as its source is silent, so its open batch lives in a
//! [`FrontSlot`] under a mutex, where a consumer about to wait, or the engine at a stop, can
//! take it. No item ever sits in a buffer that only a blocked thread can reach.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use engine_core::plumbing::{Outcome, Ticket, fit_batch, lock};
use engine_core::{Counts, StopHandle};

/// The most items in one batch.
pub(crate) const MAX_BATCH: usize = 1024;

/// The most batches a queue holds (with full batches, 64M items): larger capacities are
/// capped, since the channel allocates its slots up front.
const MAX_SLOTS: usize = 1 << 16;

/// The time a consumer should spend on one batch; batches shrink for slow stages so that an
/// item waits at most about this long behind the others of its batch.
const BATCH_TIME: Duration = Duration::from_micros(100);

/// How long an idle consumer waits for a frontend's partial batch to fill before taking it:
/// the most a lone item waits in a frontend's batch.
pub const LINGER: Duration = Duration::from_micros(100);

/// Adds the time since its start to a total when dropped, whichever way a wait ends.
struct Accrue<'a>(&'a mut Duration, Instant);

impl Drop for Accrue<'_> {
    fn drop(&mut self) {
        *self.0 += self.1.elapsed();
    }
}

/// The sequence number of an empty batch that only wakes a sleeping consumer.
const NUDGE: u64 = u64::MAX;

/// Items with their completion tickets, in frontend order within the batch.
#[derive(Debug)]
pub(crate) struct Batch<K, T> {
    /// The batch's place in frontend order (ordered mode only; 0 otherwise).
    pub(crate) seq: u64,
    pub(crate) items: Vec<(K, T)>,
}

impl<K: Ticket, T> Batch<K, T> {
    /// Completes every ticket as dropped and returns how many items there were.
    pub(crate) fn drop_all(self) -> u64 {
        drop_items(self.items)
    }
}

/// The sending side of a link's channel.
pub(crate) type BatchSender<K, T> = Sender<Batch<K, T>>;

/// Completes the tickets of abandoned items and counts them.
pub(crate) fn drop_items<K: Ticket, T>(items: impl IntoIterator<Item = (K, T)>) -> u64 {
    let mut n = 0;
    for (ticket, item) in items {
        drop(item);
        complete(ticket, Outcome::Dropped);
        n += 1;
    }
    n
}

/// Completes a ticket. A panic in the ticket's own code is a bug in the ticket, not a failure
/// of the item: it is logged and does not disturb the engine's counts.
#[inline]
pub(crate) fn complete<K: Ticket>(ticket: K, outcome: Outcome<'_>) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| ticket.complete(outcome))) {
        tracing::error!(
            error = %engine_core::StageError::from_panic(payload),
            "a completion ticket panicked"
        );
    }
}

/// Wakes every thread blocked on a queue when the run is aborted.
///
/// A run is aborted exactly when its stop handle reaches [`StopLevel::Now`]; the level is
/// read directly, so a thread sees the abort as soon as it is requested, and the channel
/// wakes threads that are blocked.
///
/// [`StopLevel::Now`]: engine_core::StopLevel::Now
#[derive(Debug, Clone)]
pub(crate) struct Abort {
    /// Never receives anything: it becomes ready (disconnected) when the sender is dropped.
    rx: Receiver<()>,
    stop: StopHandle,
}

/// The coordinator's side of [`Abort`].
#[derive(Debug)]
pub(crate) struct AbortTrigger {
    tx: Mutex<Option<Sender<()>>>,
}

pub(crate) fn abort_pair(stop: &StopHandle) -> (AbortTrigger, Abort) {
    let (tx, rx) = crossbeam_channel::bounded(0);
    (
        AbortTrigger {
            tx: Mutex::new(Some(tx)),
        },
        Abort {
            rx,
            stop: stop.clone(),
        },
    )
}

impl AbortTrigger {
    /// Wakes every blocked thread; called once the stop level is `Now`.
    pub(crate) fn fire(&self) {
        lock(&self.tx).take();
    }
}

impl Abort {
    #[inline]
    pub(crate) fn is_fired(&self) -> bool {
        self.stop.is_stopped_now()
    }

    /// Becomes ready (disconnected) when the run is aborted.
    pub(crate) fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

/// The state of a link that both sides read.
#[derive(Debug)]
pub(crate) struct LinkState {
    /// Consumers blocked until something arrives (not lingering on a partial batch).
    sleeping: AtomicUsize,
    /// The batch size producers aim for, set by consumers from their speed.
    target: AtomicUsize,
    /// The largest batch allowed by the queue's capacity.
    max_batch: usize,
    /// Items in the channel.
    queued: AtomicU64,
    /// Items that were on their way through this link when the run was aborted.
    abandoned: AtomicU64,
    /// The most items the channel holds.
    capacity: u64,
}

impl LinkState {
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// The most items the channel holds.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::SeqCst)
    }

    fn abandon<K: Ticket, T>(&self, items: impl IntoIterator<Item = (K, T)>) {
        let n = drop_items(items);
        self.abandoned.fetch_add(n, Ordering::SeqCst);
    }

    /// Whether a batch of `len` items is as large as consumers want it.
    #[inline]
    pub(crate) fn is_full(&self, len: usize) -> bool {
        len >= self.target.load(Ordering::Relaxed)
    }

    /// Whether a consumer is blocked waiting for items.
    #[inline]
    pub(crate) fn has_sleepers(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst) > 0
    }

    /// Records how long a consumer took for a batch, to size the next ones.
    pub(crate) fn observe(&self, items: usize, took: Duration) {
        if items == 0 {
            return;
        }
        let target = fit_batch(items, took, BATCH_TIME, self.max_batch);
        self.target.store(target, Ordering::Relaxed);
    }
}

/// How a queue is sized: batches of at most `max_batch` items, at most `slots` batches queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizing {
    pub(crate) max_batch: usize,
    pub(crate) slots: usize,
}

impl Sizing {
    /// Splits a capacity in items into batch slots, keeping at least two slots per consumer so
    /// that every consumer can find work queued, and never more items than the capacity.
    pub(crate) fn new(capacity: usize, consumers: usize) -> Self {
        let capacity = capacity.max(1);
        let min_slots = (2 * consumers).max(4);
        let max_batch = (capacity / min_slots).clamp(1, MAX_BATCH);
        // The channel allocates its slots up front: a huge capacity is capped.
        let slots = (capacity / max_batch).clamp(1, MAX_SLOTS);
        Self { max_batch, slots }
    }
}

/// What a wait on the channel gave.
enum Waited<B> {
    Batch(B),
    /// A frontend put a first item in its slot while this consumer slept.
    Nudge,
    TimedOut,
    /// Every producer is done.
    Disconnected,
    Aborted,
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
}

impl<K: Ticket, T: Send> Link<K, T> {
    /// A link sized by `sizing`; `frontends` is the number of frontend slots (0 when the
    /// producers are transport threads).
    pub(crate) fn new(sizing: Sizing, frontends: usize, abort: Abort) -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::bounded(sizing.slots);
        let state = Arc::new(LinkState {
            sleeping: AtomicUsize::new(0),
            target: AtomicUsize::new(sizing.max_batch),
            max_batch: sizing.max_batch,
            queued: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            capacity: (sizing.slots * sizing.max_batch) as u64,
        });
        let slots = (0..frontends)
            .map(|_| {
                Arc::new(FrontSlot {
                    inner: Mutex::new(SlotInner {
                        buf: Vec::new(),
                        sender: Some(tx.clone()),
                        counts: Counts::default(),
                        next_seq: 0,
                        closed: false,
                    }),
                })
            })
            .collect();
        Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            rx,
            state,
            slots,
            abort,
        })
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
        Producer {
            tx,
            buf: Vec::new(),
            link: Arc::clone(self),
            blocked: Duration::ZERO,
        }
    }

    /// Drops the link's own sender, so that the channel disconnects once every producer is
    /// done. Called once all producer handles exist.
    pub(crate) fn seal(&self) {
        lock(&self.tx).take();
    }

    /// Waits for the next batch. `None` means the end of the stream (every producer is done
    /// and every frontend slot is closed and empty) or an abort.
    ///
    /// With nothing queued, a consumer takes a frontend's partial batch after lingering
    /// [`LINGER`] for it to fill, so items are batched under load and still reach the next
    /// stage promptly when input is slow. With nothing anywhere it blocks without a timeout.
    pub(crate) fn recv(&self) -> Option<Batch<K, T>> {
        loop {
            match self.rx.try_recv() {
                Ok(batch) if batch.seq == NUDGE => {}
                Ok(batch) => return Some(self.took(batch)),
                Err(TryRecvError::Disconnected) => return self.steal(),
                Err(TryRecvError::Empty) => {}
            }
            if self.abort.is_fired() {
                return None;
            }
            if !self.slots_have_items() {
                // Announce the sleep before the last look, so that a frontend pushing its
                // first item after that look (under the slot's lock) sees it and nudges.
                self.state.sleeping.fetch_add(1, Ordering::SeqCst);
                let waited = if self.slots_have_items() {
                    Waited::Nudge
                } else {
                    self.wait(None)
                };
                self.state.sleeping.fetch_sub(1, Ordering::SeqCst);
                match waited {
                    Waited::Batch(batch) => return Some(batch),
                    Waited::Nudge | Waited::TimedOut => continue,
                    Waited::Disconnected => return self.steal(),
                    Waited::Aborted => return None,
                }
            }
            match self.wait(Some(LINGER)) {
                Waited::Batch(batch) => return Some(batch),
                Waited::Nudge => {}
                Waited::TimedOut => {
                    if let Some(batch) = self.steal() {
                        return Some(batch);
                    }
                }
                Waited::Disconnected => return self.steal(),
                Waited::Aborted => return None,
            }
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> Waited<Batch<K, T>> {
        let mut select = Select::new();
        let data = select.recv(&self.rx);
        let abort = select.recv(&self.abort.rx);
        let op = match timeout {
            None => select.select(),
            Some(timeout) => match select.select_timeout(timeout) {
                Ok(op) => op,
                Err(_) => return Waited::TimedOut,
            },
        };
        match op.index() {
            i if i == data => match op.recv(&self.rx) {
                Ok(batch) if batch.seq == NUDGE => Waited::Nudge,
                Ok(batch) => Waited::Batch(self.took(batch)),
                Err(_) => Waited::Disconnected,
            },
            i if i == abort => {
                let _ = op.recv(&self.abort.rx);
                Waited::Aborted
            }
            _ => unreachable!("only two operations were selected"),
        }
    }

    fn slots_have_items(&self) -> bool {
        self.slots.iter().any(|slot| slot.buffered() > 0)
    }

    fn took(&self, batch: Batch<K, T>) -> Batch<K, T> {
        self.state
            .queued
            .fetch_sub(batch.items.len() as u64, Ordering::Relaxed);
        batch
    }

    fn steal(&self) -> Option<Batch<K, T>> {
        let batch = self.slots.iter().find_map(|slot| slot.take())?;
        // This consumer may have swallowed nudges meant for others (one per slot that got a
        // first item); if items are left in some slot and a consumer sleeps, wake it.
        if self.state.has_sleepers()
            && self.slots_have_items()
            && let Some(tx) = self.slots.iter().find_map(|slot| slot.sender())
        {
            self.nudge(&tx);
        }
        Some(batch)
    }

    /// Whether nothing is queued in the channel.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Sends a batch, waiting for room; on abort, gives the batch back. Time spent waiting
    /// for room (backpressure) is added to `blocked`.
    fn send(
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
            let mut select = Select::new();
            let data = select.send(tx);
            let abort = select.recv(&self.abort.rx);
            let op = select.select();
            match op.index() {
                i if i == data => match op.send(tx, batch) {
                    Ok(()) => return Ok(()),
                    Err(err) => err.into_inner(),
                },
                i if i == abort => {
                    let _ = op.recv(&self.abort.rx);
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

    /// Wakes a sleeping consumer to come and linger on a slot that just got its first item.
    /// A full channel needs no nudge: its consumers are not asleep.
    pub(crate) fn nudge(&self, tx: &Sender<Batch<K, T>>) {
        let _ = tx.try_send(Batch {
            seq: NUDGE,
            items: Vec::new(),
        });
    }
}

/// A transport thread's sending side of a link: an open batch and a sender.
#[derive(Debug)]
pub(crate) struct Producer<K, T> {
    tx: Sender<Batch<K, T>>,
    buf: Vec<(K, T)>,
    link: Arc<Link<K, T>>,
    /// Time spent waiting for room in the link (backpressure).
    blocked: Duration,
}

impl<K: Ticket, T: Send> Producer<K, T> {
    #[inline]
    pub(crate) fn push(&mut self, ticket: K, item: T) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.link.state.max_batch);
        }
        self.buf.push((ticket, item));
    }

    /// Whether the open batch holds as many items as the link allows in one batch.
    #[inline]
    pub(crate) fn is_at_max(&self) -> bool {
        self.buf.len() >= self.link.state.max_batch
    }

    /// Whether the open batch should go now: it is full, or a consumer is asleep waiting.
    pub(crate) fn wants_flush(&self) -> bool {
        !self.buf.is_empty()
            && (self.link.state.is_full(self.buf.len()) || self.link.state.has_sleepers())
    }

    /// Sends the open batch, if it has items. `Ok(n)`: `n` items sent; `Err(n)`: `n` items
    /// dropped by an abort (their tickets completed).
    pub(crate) fn flush(&mut self) -> Result<usize, usize> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        let items = std::mem::take(&mut self.buf);
        self.send(Batch { seq: 0, items })
    }

    /// Sends the open batch as the output of input batch `seq`, even if it is empty: ordered
    /// mode needs every sequence number to arrive.
    pub(crate) fn flush_ordered(&mut self, seq: u64) -> Result<usize, usize> {
        let items = std::mem::take(&mut self.buf);
        self.send(Batch { seq, items })
    }

    /// On abort the items were never passed on: they count as dropped by the sending stage.
    fn send(&mut self, batch: Batch<K, T>) -> Result<usize, usize> {
        let n = batch.items.len();
        match self.link.send(&self.tx, batch, &mut self.blocked) {
            Ok(()) => Ok(n),
            Err(batch) => {
                batch.drop_all();
                Err(n)
            }
        }
    }

    /// Time spent waiting for room in the link so far.
    pub(crate) fn blocked(&self) -> Duration {
        self.blocked
    }

    /// Drops the open batch (abort), completing its tickets; returns how many there were.
    pub(crate) fn discard(&mut self) -> u64 {
        drop_items(std::mem::take(&mut self.buf))
    }
}

/// A frontend thread's open batch, reachable by consumers and by the coordinator.
#[derive(Debug)]
pub(crate) struct FrontSlot<K, T> {
    inner: Mutex<SlotInner<K, T>>,
}

#[derive(Debug)]
struct SlotInner<K, T> {
    buf: Vec<(K, T)>,
    /// `None` once the slot is closed.
    sender: Option<Sender<Batch<K, T>>>,
    /// The frontend thread's counts, kept here so that they are exact whenever the slot is
    /// read, even if the thread is stuck in `produce`.
    counts: Counts,
    next_seq: u64,
    closed: bool,
}

/// What became of an item offered to a slot.
pub(crate) enum Offer<K, T> {
    /// Accepted and buffered.
    Kept,
    /// Accepted as the slot's first item while a consumer sleeps: nudge it with this sender.
    Nudge(Sender<Batch<K, T>>),
    /// Accepted; the batch is full and must now be sent with this sender.
    Send(Sender<Batch<K, T>>, Batch<K, T>),
    /// The slot was closed by a stop: the item was not accepted.
    Closed(K, T),
}

impl<K: Ticket, T: Send> FrontSlot<K, T> {
    /// Offers a produced item.
    #[inline]
    pub(crate) fn offer(&self, state: &LinkState, ticket: K, item: T) -> Offer<K, T> {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Offer::Closed(ticket, item);
        }
        inner.counts.input += 1;
        inner.counts.output += 1;
        if inner.buf.capacity() == 0 {
            inner.buf.reserve_exact(state.max_batch);
        }
        inner.buf.push((ticket, item));
        let len = inner.buf.len();
        if state.is_full(len) {
            let batch = inner.take_batch();
            return Offer::Send(inner.sender(), batch);
        }
        // Read under the lock: see `Link::recv`.
        if len == 1 && state.has_sleepers() {
            return Offer::Nudge(inner.sender());
        }
        Offer::Kept
    }

    /// Counts a failed `produce` call; returns false if the slot is already closed.
    pub(crate) fn count_failure(&self) -> bool {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return false;
        }
        inner.counts.input += 1;
        inner.counts.failed += 1;
        true
    }

    /// Takes the open batch, if it has items.
    pub(crate) fn take(&self) -> Option<Batch<K, T>> {
        let mut inner = lock(&self.inner);
        (!inner.buf.is_empty()).then(|| inner.take_batch())
    }

    /// Closes the slot: no item is accepted any more, and the channel loses this sender. What
    /// is buffered stays for consumers to take. Returns whether it was open.
    pub(crate) fn close(&self) -> bool {
        let mut inner = lock(&self.inner);
        inner.sender = None;
        !std::mem::replace(&mut inner.closed, true)
    }

    /// Closes the slot at the end of its frontend thread, returning the last partial batch and
    /// a sender to send it with (unless the coordinator closed the slot first, leaving the
    /// batch for consumers to take).
    pub(crate) fn finish(&self) -> Option<(BatchSender<K, T>, Batch<K, T>)> {
        let mut inner = lock(&self.inner);
        inner.closed = true;
        let sender = inner.sender.take()?;
        (!inner.buf.is_empty()).then(|| (sender, inner.take_batch()))
    }

    pub(crate) fn counts(&self) -> Counts {
        lock(&self.inner).counts
    }

    /// The sequence number of the next batch taken from the slot.
    pub(crate) fn next_seq(&self) -> u64 {
        lock(&self.inner).next_seq
    }

    /// A sender, while the slot is open.
    fn sender(&self) -> Option<BatchSender<K, T>> {
        lock(&self.inner).sender.clone()
    }

    pub(crate) fn buffered(&self) -> usize {
        lock(&self.inner).buf.len()
    }
}

impl<K, T> SlotInner<K, T> {
    fn take_batch(&mut self) -> Batch<K, T> {
        let seq = self.next_seq;
        self.next_seq += 1;
        Batch {
            seq,
            items: std::mem::take(&mut self.buf),
        }
    }

    fn sender(&self) -> Sender<Batch<K, T>> {
        self.sender.clone().expect("an open slot has its sender")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_never_exceeds_the_capacity_and_keeps_two_batches_per_consumer() {
        for capacity in [1, 2, 3, 7, 64, 1000, 1024, 4096, 100_000] {
            for consumers in [1, 2, 4, 16] {
                let s = Sizing::new(capacity, consumers);
                assert!(s.max_batch >= 1 && s.max_batch <= MAX_BATCH);
                assert!(
                    s.slots * s.max_batch <= capacity,
                    "{capacity} {consumers} {s:?}"
                );
                if capacity >= 2 * consumers {
                    assert!(s.slots >= 2 * consumers, "{capacity} {consumers} {s:?}");
                }
            }
        }
        assert_eq!(
            Sizing::new(1024, 2),
            Sizing {
                max_batch: 256,
                slots: 4
            }
        );
    }

    #[test]
    fn batch_target_shrinks_for_slow_consumers() {
        let (_trigger, abort) = abort_pair(&StopHandle::new());
        let link = Link::<(), u32>::new(Sizing::new(1024, 1), 0, abort);
        let state = link.state();
        assert!(!state.is_full(255));
        state.observe(10, Duration::from_millis(10));
        assert!(state.is_full(1));
        state.observe(256, Duration::from_micros(2));
        assert!(!state.is_full(255));
    }
}
