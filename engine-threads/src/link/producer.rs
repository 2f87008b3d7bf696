//! A transport thread's sending side of a link: its open batch and its sender.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use engine_core::plumbing::Ticket;

use super::Link;
use super::batch::{Batch, drop_items};

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
    pub(super) fn new(tx: Sender<Batch<K, T>>, link: Arc<Link<K, T>>) -> Self {
        Self {
            tx,
            buf: Vec::new(),
            link,
            blocked: Duration::ZERO,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, ticket: K, item: T) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.link.state().max_batch);
        }
        self.buf.push((ticket, item));
    }

    /// Adds items to the open batch (taking their `Vec` whole when the batch is empty); the
    /// caller then flushes what is beyond the largest batch.
    pub(crate) fn append(&mut self, mut items: Vec<(K, T)>) {
        if self.buf.is_empty() {
            self.buf = items;
        } else {
            self.buf.append(&mut items);
        }
    }

    /// Sends the first largest batch's worth of the open batch, as
    /// [`flush`](Self::flush) does.
    pub(crate) fn flush_max(&mut self) -> Result<usize, usize> {
        let max = self.link.state().max_batch;
        if self.buf.len() <= max {
            return self.flush();
        }
        let rest = self.buf.split_off(max);
        let items = std::mem::replace(&mut self.buf, rest);
        self.send(Batch { seq: 0, items })
    }

    /// Whether the open batch holds as many items as the link allows in one batch.
    #[inline]
    pub(crate) fn is_at_max(&self) -> bool {
        self.buf.len() >= self.link.state().max_batch
    }

    /// Whether the open batch should go now: it is full, or a consumer sleeps with nothing
    /// queued for it.
    pub(crate) fn wants_flush(&self) -> bool {
        !self.buf.is_empty()
            && (self.link.state().is_full(self.buf.len()) || self.link.wants_items())
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

    /// Puts a nudge (an empty batch that delivers nothing) in the channel.
    #[cfg(test)]
    pub(crate) fn nudge(&self) {
        self.link.nudge(&self.tx);
    }

    /// Drops the open batch (abort), completing its tickets; returns how many there were.
    pub(crate) fn discard(&mut self) -> u64 {
        drop_items(std::mem::take(&mut self.buf))
    }
}
