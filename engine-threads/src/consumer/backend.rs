//! A backend thread's stage: the backend, and the tickets of the items processed since its
//! last flush, settled once the flush succeeds.

use std::time::Duration;

use engine_core::plumbing::{ItemOutcome, Offload, Outcome, Ticket, catch_panic};
use engine_core::{Backend, Counts, StageContext, StageError};

use super::{Consume, Here, settle, settle_not_done};
use crate::link::complete;
use crate::shared::Flow;

/// A backend thread's stage, and the tickets of the items processed since its last flush.
#[derive(Debug)]
pub(crate) struct BackendStage<S, K> {
    stage: S,
    unflushed: Vec<K>,
}

impl<S, K> BackendStage<S, K> {
    pub(crate) fn new(stage: S) -> Self {
        Self {
            stage,
            unflushed: Vec::new(),
        }
    }
}

impl<S: Backend, K: Ticket> BackendStage<S, K> {
    /// Flushes the backend and settles the tickets of what it covered. Returns false if the
    /// flush failed and the policy stops the run.
    fn settle(&mut self, at: Here<'_>, counts: &mut Counts) -> bool {
        if self.unflushed.is_empty() {
            return true;
        }
        match catch_panic(|| self.stage.flush(at.ctx)) {
            Ok(()) => {
                for ticket in self.unflushed.drain(..) {
                    complete(ticket, Outcome::Processed);
                }
                true
            }
            Err(error) => {
                let n = self.unflushed.len();
                counts.output -= n as u64;
                counts.failed += n as u64;
                let flow = at
                    .shared
                    .items_failed(at.ctx, error, n, self.unflushed.drain(..));
                flow == Flow::Continue
            }
        }
    }
}

impl<S, K> Consume<K> for BackendStage<S, K>
where
    S: Backend,
    S::Input: Send,
    K: Ticket,
{
    type Input = S::Input;
    type Done = ();
    type Out = ();

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.stage.setup(ctx)
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        self.stage.cleanup(ctx);
    }

    #[inline]
    fn run(&mut self, item: S::Input, ctx: &StageContext) -> Result<(), StageError> {
        self.stage.process(item, ctx)
    }

    /// Processed: counted at once, settled at the next successful flush.
    #[inline]
    fn pass(&mut self, ticket: K, (): (), counts: &mut Counts) -> Result<(), (K, StageError)> {
        self.unflushed.push(ticket);
        counts.output += 1;
        Ok(())
    }

    fn end_batch(&mut self, _seq: u64, _idle: bool, at: Here<'_>, counts: &mut Counts) -> bool {
        self.settle(at, counts)
    }

    fn finish(&mut self, at: Here<'_>, counts: &mut Counts) {
        self.settle(at, counts);
    }

    fn discard(&mut self, at: Here<'_>, counts: &mut Counts) -> u64 {
        // What `process` accepted is flushed even on an abort: it is already counted, and a
        // flush is quick next to losing it.
        self.settle(at, counts);
        0
    }

    fn blocked(&self) -> Duration {
        Duration::ZERO
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = S::Input, Output = ()>> {
        self.stage.offload()
    }

    fn settle_item(
        &mut self,
        ticket: K,
        outcome: ItemOutcome<()>,
        at: Here<'_>,
        counts: &mut Counts,
    ) -> Flow {
        match outcome {
            // Processed and flushed where it ran.
            ItemOutcome::Done(()) => {
                settle(ticket, Outcome::Processed, &mut counts.output);
                Flow::Continue
            }
            other => settle_not_done(ticket, other, at, counts),
        }
    }
}
