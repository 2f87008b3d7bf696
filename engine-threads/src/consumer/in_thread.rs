//! The consumer loop of a stage that runs its items on this thread: batch after batch, item
//! after item, with one `catch_unwind` per batch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use engine_core::StageError;
use engine_core::plumbing::{Outcome, Ticket};
use engine_core::trace::BatchScope;

use super::{Consume, Consumer, settle};
use crate::link::{Batch, Polled, drop_items};
use crate::shared::Flow;

/// How the items of a batch ended, inside the `catch_unwind`.
enum BatchEnd {
    Done,
    Failed(StageError),
    Aborted,
}

impl<K: Ticket, S: Consume<K>> Consumer<'_, K, S> {
    /// Consumes batches until the input ends or the run aborts; returns whether the input
    /// ended without an abort.
    pub(super) fn run_in_thread(&mut self) -> bool {
        while let Some(batch) = self.next_batch() {
            self.counts.input += batch.items.len() as u64;
            if self.at.shared.abort.is_fired() {
                self.counts.dropped += batch.drop_all();
                return false;
            }
            if !self.run_batch(batch) {
                return false;
            }
            self.publish();
        }
        !self.halted
    }

    /// The next batch: what is there, or else, once the outputs this thread holds have gone
    /// on, the next to arrive. `None` at the end of the input, on abort, or if handing the
    /// outputs on failed (an abort).
    fn next_batch(&mut self) -> Option<Batch<K, S::Input>> {
        match self.input.try_recv() {
            Polled::Ready(batch) => Some(batch),
            Polled::Ended => None,
            Polled::Empty => {
                if !self.stage.before_wait(&mut self.counts) {
                    return None;
                }
                self.publish();
                let Some(lender) = self.lender.clone() else {
                    return self.input.recv();
                };
                // Lent out while asleep: a thread with a batch for this idle stage may run it
                // here (`inline_when_idle`). Lenders exist only in unordered mode, where the
                // input is the link alone.
                let link = Arc::clone(self.input.link());
                // SAFETY: this thread does not touch `self` until `lent` is dropped, and
                // `self` outlives it.
                let lent = unsafe { lender.lend(self) };
                let batch = link.recv();
                if lent.reclaim() {
                    // A lent run said to stop taking input.
                    if let Some(batch) = batch {
                        self.counts.input += batch.items.len() as u64;
                        self.counts.dropped += batch.drop_all();
                    }
                    self.halted = true;
                    return None;
                }
                batch
            }
        }
    }

    /// Runs one batch through the stage and hands its outputs on if they should go now;
    /// returns false if the run should stop taking input (the batch's rest is dropped).
    pub(super) fn run_batch(&mut self, batch: Batch<K, S::Input>) -> bool {
        let started = Instant::now();
        let blocked_before = self.stage.blocked();
        let (seq, len) = (batch.seq, batch.items.len());
        // One span per batch whose items carry trace contexts, linked to them; the outputs
        // carry its context onward. Kept until the outputs have gone on.
        let scope = super::batch_scope(self.at.ctx, batch.traces.as_slice(), len);
        self.stage
            .set_trace(scope.as_ref().and_then(BatchScope::context));
        let (done, items) = if self.stage.takes_batches() {
            (self.consume_whole(batch.items), Vec::new().into_iter())
        } else {
            let mut items = batch.items.into_iter();
            (self.consume_items(&mut items), items)
        };
        let took = started.elapsed();
        // Time spent waiting for room downstream is backpressure, not work.
        let blocked = self.stage.blocked().saturating_sub(blocked_before);
        self.busy += took.saturating_sub(blocked);
        let link = self.input.link();
        link.state().observe(len, took);
        let idle = link.is_empty();
        let go_on = done && self.stage.end_batch(seq, idle, self.at, &mut self.counts);
        if !go_on {
            self.counts.dropped += drop_items(items);
        }
        drop(scope);
        go_on
    }

    /// Consumes a batch in one call of a batch-native stage, its tickets kept apart; returns
    /// false if the run was aborted or the policy stops it.
    fn consume_whole(&mut self, items: Vec<(K, S::Input)>) -> bool {
        if self.at.shared.abort.is_fired() {
            self.counts.dropped += drop_items(items);
            return false;
        }
        let mut tickets = Vec::with_capacity(items.len());
        // With the empty ticket `()`, this reuses the batch's allocation.
        let inputs: Vec<S::Input> = items
            .into_iter()
            .map(|(ticket, item)| {
                tickets.push(ticket);
                item
            })
            .collect();
        let ran = catch_unwind(AssertUnwindSafe(|| {
            self.stage.run_whole(inputs, self.at.ctx)
        }));
        let error = match ran {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(payload) => Some(StageError::from_panic(payload)),
        };
        self.stage
            .pass_whole(tickets, error, self.at, &mut self.counts)
    }

    /// Consumes the items of a batch; after an item's failure or panic (counted, its ticket
    /// completed, the policy applied), goes on with the next item. Returns false if the run
    /// was aborted or the policy stops it.
    fn consume_items(&mut self, items: &mut impl Iterator<Item = (K, S::Input)>) -> bool {
        let mut current: Option<K> = None;
        loop {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                for (ticket, item) in &mut *items {
                    if self.at.shared.abort.is_fired() {
                        drop(item);
                        settle(ticket, Outcome::Dropped, &mut self.counts.dropped);
                        return BatchEnd::Aborted;
                    }
                    current = Some(ticket);
                    let out = match self.stage.run(item, self.at.ctx) {
                        Ok(out) => out,
                        Err(error) => return BatchEnd::Failed(error),
                    };
                    let ticket = current
                        .take()
                        .expect("the item's ticket was set just above");
                    if let Err((ticket, error)) = self.stage.pass(ticket, out, &mut self.counts) {
                        current = Some(ticket);
                        return BatchEnd::Failed(error);
                    }
                }
                BatchEnd::Done
            }));
            let error = match outcome {
                Ok(BatchEnd::Done) => return true,
                Ok(BatchEnd::Aborted) => return false,
                Ok(BatchEnd::Failed(error)) => error,
                Err(payload) => StageError::from_panic(payload),
            };
            self.counts.failed += 1;
            if self
                .at
                .shared
                .item_failed(self.at.ctx, error, current.take())
                == Flow::Stop
            {
                return false;
            }
        }
    }
}
