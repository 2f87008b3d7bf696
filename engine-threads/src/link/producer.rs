//! A transport thread's sending side of a link: its open batch and its sender.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use engine_core::plumbing::Ticket;

use super::Link;
use super::batch::{Batch, Traces, drop_items};
use engine_core::trace::TraceParent;

/// A transport thread's sending side of a link: an open batch and a sender.
#[derive(Debug)]
pub(crate) struct Producer<K, T> {
    tx: Sender<Batch<K, T>>,
    buf: Vec<(K, T)>,
    link: Arc<Link<K, T>>,
    /// The trace contexts of the open batch's items, beside `current`.
    traces: Traces,
    /// The context of the batch whose outputs are pushed now (see [`set_trace`](Self::set_trace)).
    current: Option<TraceParent>,
    /// Time spent waiting for room in the link (backpressure).
    blocked: Duration,
}

impl<K: Ticket, T: Send> Producer<K, T> {
    pub(super) fn new(tx: Sender<Batch<K, T>>, link: Arc<Link<K, T>>) -> Self {
        Self {
            tx,
            buf: Vec::new(),
            link,
            traces: Traces::default(),
            current: None,
            blocked: Duration::ZERO,
        }
    }

    /// The outputs pushed from now on carry `trace`: the context of the span of the input
    /// batch they come from (see `engine_core::trace`). Without traces, one comparison.
    #[inline]
    pub(crate) fn set_trace(&mut self, trace: Option<TraceParent>) {
        if self.current == trace {
            return;
        }
        if let Some(previous) = self.current
            && !self.buf.is_empty()
        {
            self.traces.add(previous);
        }
        self.current = trace;
    }

    /// The trace contexts of a batch about to be sent from the open batch.
    #[inline]
    fn take_traces(&mut self) -> Traces {
        let mut traces = self.traces.take();
        if let Some(current) = self.current {
            traces.add(current);
        }
        traces
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
        let traces = self.take_traces();
        self.send(Batch {
            seq: 0,
            items,
            traces,
        })
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
        let traces = self.take_traces();
        self.send(Batch {
            seq: 0,
            items,
            traces,
        })
    }

    /// Sends the open batch as the output of input batch `seq`, even if it is empty: ordered
    /// mode needs every sequence number to arrive.
    pub(crate) fn flush_ordered(&mut self, seq: u64) -> Result<usize, usize> {
        let items = std::mem::take(&mut self.buf);
        let traces = if items.is_empty() {
            Traces::default()
        } else {
            self.take_traces()
        };
        self.send(Batch { seq, items, traces })
    }

    /// On abort the items were never passed on: they count as dropped by the sending stage.
    fn send(&mut self, batch: Batch<K, T>) -> Result<usize, usize> {
        let n = batch.items.len();
        // A stage run lent to another thread runs the next idle stage there too.
        let batch = if super::lend::in_lent_run() {
            match self.link.try_run_here(batch) {
                Ok(()) => return Ok(n),
                Err(batch) => batch,
            }
        } else {
            batch
        };
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
        self.traces.clear();
        drop_items(std::mem::take(&mut self.buf))
    }
}
