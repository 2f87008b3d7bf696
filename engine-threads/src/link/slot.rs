//! A frontend thread's open batch, under a mutex, where idle consumers and the coordinator can
//! reach it while the frontend is blocked in `produce`.

use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use engine_core::Counts;
use engine_core::plumbing::{Ticket, lock};

use super::batch::{Batch, BatchSender, Traces};
use super::sizing::LinkState;
use engine_core::trace::{BatchSampler, TraceParent};

/// A frontend thread's open batch, reachable by consumers and by the coordinator.
#[derive(Debug)]
pub(crate) struct FrontSlot<K, T> {
    inner: Mutex<SlotInner<K, T>>,
}

#[derive(Debug)]
struct SlotInner<K, T> {
    buf: Vec<(K, T)>,
    /// The trace contexts of the buffered items.
    traces: Traces,
    /// With a trace hook: chooses the batches that start a trace, when they are taken.
    sampling: Option<Box<Sampling>>,
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
    /// Accepted; the batch is full, or a consumer sleeps with nothing queued, and the batch
    /// must now be sent with this sender.
    Send(Sender<Batch<K, T>>, Batch<K, T>),
    /// The slot was closed by a stop: the item was not accepted.
    Closed(K, T),
}

impl<K: Ticket, T: Send> FrontSlot<K, T> {
    /// An open, empty slot that sends with `sender`.
    pub(super) fn new(sender: BatchSender<K, T>) -> Self {
        Self {
            inner: Mutex::new(SlotInner {
                buf: Vec::new(),
                traces: Traces::default(),
                sampling: None,
                sender: Some(sender),
                counts: Counts::default(),
                next_seq: 0,
                closed: false,
            }),
        }
    }

    /// From now on, the batches taken from this slot, whoever takes them, start a trace as
    /// the trace hook's ratio chooses (see `engine_core::trace::BatchSampler`), as batches
    /// of the frontend `stage`. A frontend thread says so when it starts, if a hook is
    /// installed.
    pub(crate) fn sample_batches(&self, stage: Arc<str>) {
        lock(&self.inner).sampling = Some(Box::new(Sampling {
            stage,
            sampler: BatchSampler::new(),
        }));
    }

    /// Offers a produced item, with the trace context its source gave it, if any. `wanted`
    /// says whether a consumer sleeps with nothing queued for it; it is asked under the
    /// slot's lock, after the item is in (see `Link::recv`).
    #[inline]
    pub(crate) fn offer(
        &self,
        state: &LinkState,
        ticket: K,
        item: T,
        parent: Option<TraceParent>,
        wanted: impl FnOnce() -> bool,
    ) -> Offer<K, T> {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Offer::Closed(ticket, item);
        }
        if let Some(parent) = parent {
            inner.traces.add(parent);
        }
        inner.counts.input += 1;
        inner.counts.output += 1;
        if inner.buf.capacity() == 0 {
            inner.buf.reserve_exact(state.max_batch);
        }
        inner.buf.push((ticket, item));
        if state.is_full(inner.buf.len()) || wanted() {
            let batch = inner.take_batch();
            return Offer::Send(inner.sender(), batch);
        }
        Offer::Kept
    }

    /// Accepts an item from another thread (`inline_when_idle`) when the slot is open and
    /// holds nothing: counts it as the frontend's and returns it as a batch of its own, with
    /// the sender to send it with. Gives the item back otherwise.
    #[allow(clippy::type_complexity, reason = "the item comes back whole")]
    pub(crate) fn offer_alone(
        &self,
        ticket: K,
        item: T,
        parent: Option<TraceParent>,
    ) -> Result<(BatchSender<K, T>, Batch<K, T>), (K, T)> {
        let mut inner = lock(&self.inner);
        if inner.closed || !inner.buf.is_empty() {
            return Err((ticket, item));
        }
        if let Some(parent) = parent {
            inner.traces.add(parent);
        }
        inner.counts.input += 1;
        inner.counts.output += 1;
        // The batch is the item alone; the slot keeps its buffer for the frontend thread.
        let buffer = std::mem::replace(&mut inner.buf, vec![(ticket, item)]);
        let batch = inner.take_batch();
        inner.buf = buffer;
        Ok((inner.sender(), batch))
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

    pub(crate) fn buffered(&self) -> usize {
        lock(&self.inner).buf.len()
    }
}

/// A slot's batch sampler, and the frontend stage its traces start in.
#[derive(Debug)]
struct Sampling {
    stage: Arc<str>,
    sampler: BatchSampler,
}

impl<K, T> SlotInner<K, T> {
    fn take_batch(&mut self) -> Batch<K, T> {
        let seq = self.next_seq;
        self.next_seq += 1;
        // A batch whose items came with contexts of their own is traced already: it starts
        // no trace, and is not counted.
        if let Some(sampling) = &mut self.sampling
            && self.traces.is_empty()
            && let Some(parent) = sampling.sampler.sample(&sampling.stage, self.buf.len())
        {
            self.traces.add(parent);
        }
        Batch {
            seq,
            items: std::mem::take(&mut self.buf),
            traces: self.traces.take(),
        }
    }

    fn sender(&self) -> Sender<Batch<K, T>> {
        self.sender.clone().expect("an open slot has its sender")
    }
}
