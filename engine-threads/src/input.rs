//! A consumer's input: the link it receives batches from, and in ordered mode the reorder
//! buffer and the window that keeps the frontend within reach of the sink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Select, Sender};
use engine_core::plumbing::Ticket;

use crate::link::{Abort, Batch, Link, Polled};
use crate::stall::{self, Wait};

/// Ordered mode: how far the sink has delivered, so that the frontend stays within a window
/// of it and the sink's reorder buffer stays bounded.
#[derive(Debug)]
pub(crate) struct Window {
    delivered: AtomicU64,
    size: u64,
    progress_tx: Sender<()>,
    progress_rx: Receiver<()>,
}

impl Window {
    pub(crate) fn new(size: u64) -> Arc<Self> {
        let (progress_tx, progress_rx) = crossbeam_channel::bounded(1);
        Arc::new(Self {
            delivered: AtomicU64::new(0),
            size: size.max(1),
            progress_tx,
            progress_rx,
        })
    }

    /// The next batch the sink waits for: the oldest not yet delivered.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }

    pub(crate) fn advance(&self, delivered: u64) {
        self.delivered.store(delivered, Ordering::SeqCst);
        let _ = self.progress_tx.try_send(());
    }

    /// Waits until batch `seq` is within the window; false on abort.
    pub(crate) fn admit(&self, seq: u64, abort: &Abort) -> bool {
        while seq >= self.delivered.load(Ordering::SeqCst) + self.size {
            if abort.is_fired() {
                return false;
            }
            let _waiting = stall::waiting(Wait::Window);
            let mut select = Select::new();
            let progress = select.recv(&self.progress_rx);
            select.recv(abort.receiver());
            let op = select.select();
            if op.index() == progress {
                let _ = op.recv(&self.progress_rx);
            } else {
                let _ = op.recv(abort.receiver());
                return false;
            }
        }
        true
    }
}

/// A consumer's input: the link, with a reorder buffer in ordered mode.
#[derive(Debug)]
pub(crate) struct Input<K, T> {
    link: Arc<Link<K, T>>,
    order: Option<Reorder<K, T>>,
}

#[derive(Debug)]
struct Reorder<K, T> {
    next: u64,
    pending: BTreeMap<u64, Batch<K, T>>,
    window: Arc<Window>,
}

impl<K: Ticket, T: Send> Input<K, T> {
    pub(crate) fn new(link: Arc<Link<K, T>>) -> Self {
        Self { link, order: None }
    }

    /// The link the batches come from.
    pub(crate) fn link(&self) -> &Arc<Link<K, T>> {
        &self.link
    }

    /// Whether a batch can be received without waiting.
    pub(crate) fn has_ready(&self) -> bool {
        !self.link.is_empty()
            || self
                .order
                .as_ref()
                .is_some_and(|order| order.pending.contains_key(&order.next))
    }

    pub(crate) fn recv(&mut self) -> Option<Batch<K, T>> {
        let Some(order) = &mut self.order else {
            return self.link.recv();
        };
        loop {
            if let Some(batch) = order.pending.remove(&order.next) {
                order.next += 1;
                order.window.advance(order.next);
                return Some(batch);
            }
            let batch = self.link.recv()?;
            order.pending.insert(batch.seq, batch);
        }
    }

    /// Takes a batch without waiting (in ordered mode, only the next in sequence).
    pub(crate) fn try_recv(&mut self) -> Polled<Batch<K, T>> {
        let Some(order) = &mut self.order else {
            return self.link.try_recv();
        };
        loop {
            if let Some(batch) = order.pending.remove(&order.next) {
                order.next += 1;
                order.window.advance(order.next);
                return Polled::Ready(batch);
            }
            match self.link.try_recv() {
                Polled::Ready(batch) => {
                    order.pending.insert(batch.seq, batch);
                }
                other => return other,
            }
        }
    }

    /// For a thread with batches of its own out elsewhere: takes the next batch if there is
    /// one, else sleeps until input may have arrived, the run is aborted, or an operation the
    /// caller put in `select` (the return of a batch) is ready, and then gives `Empty`; the
    /// caller looks again. The sleep is announced first, so that a frontend hands its open
    /// batch on rather than keep it while this thread sleeps.
    pub(crate) fn wait_or(&mut self, select: Select<'_>) -> Polled<Batch<K, T>> {
        let link = Arc::clone(&self.link);
        let _sleeping = link.sleeping();
        match self.try_recv() {
            Polled::Empty => {}
            other => return other,
        }
        // The caller's operations, and this link's, borrowed no longer than here.
        let mut select: Select<'_> = select;
        link.watch(&mut select);
        let _waiting = stall::waiting(Wait::Worker);
        select.ready();
        Polled::Empty
    }

    /// Delivers batches in sequence order, as the last stage of an ordered run.
    pub(crate) fn ordered(mut self, window: Arc<Window>) -> Self {
        self.order = Some(Reorder {
            next: 0,
            pending: BTreeMap::new(),
            window,
        });
        self
    }

    /// Items received but held back for order when the run stopped.
    pub(crate) fn discard_pending(&mut self) -> u64 {
        let Some(order) = &mut self.order else {
            return 0;
        };
        std::mem::take(&mut order.pending)
            .into_values()
            .map(Batch::drop_all)
            .sum()
    }
}
