//! A transport thread's stage: the transport, and where its outputs go (the next link, or
//! settled at once when the transport is the last stage); one input may give many outputs,
//! and a batch-native transport takes a whole batch at once.

use std::time::Duration;

use engine_core::plumbing::{ItemOutcome, Offload, Outcome, Ticket};
use engine_core::trace::TraceParent;
use engine_core::{BatchOut, Counts, StageContext, StageError, Transport};

use super::{Consume, Here, settle, settle_not_done};
use crate::link::{Producer, complete};
use crate::shared::Flow;

/// What a transport gave for one input: at most one output, or (from a transport that emits
/// many) outputs waiting in the stage's buffer.
pub(crate) enum Transported<O> {
    One(Option<O>),
    Many,
}

/// A transport thread's stage: the transport and where its outputs go.
#[derive(Debug)]
pub(crate) struct TransportStage<S: Transport, K> {
    stage: S,
    /// `None` when the transport is the last stage.
    out: Option<Producer<K, S::Output>>,
    ordered: bool,
    /// Whether the stage emits many outputs per input (read once, at setup).
    many: bool,
    /// The outputs of one input of a stage that emits many, reused between items.
    outputs: Vec<S::Output>,
    /// Whether the stage takes whole batches (read once, at setup).
    batches: bool,
    /// What a batch-native stage reported for its batch.
    reports: BatchOut<S::Output>,
}

impl<S: Transport, K: Ticket> TransportStage<S, K>
where
    S::Output: Send,
{
    pub(crate) fn new(stage: S, out: Option<Producer<K, S::Output>>, ordered: bool) -> Self {
        Self {
            stage,
            out,
            ordered,
            many: false,
            outputs: Vec::new(),
            batches: false,
            reports: BatchOut::new(),
        }
    }

    /// Passes on the outputs of one input of a stage that emits many, each with its own part
    /// of the input's ticket, split by [`Ticket::split_exact`], which checks the count. A
    /// ticket that cannot be split is handed back with the error that fails the item.
    fn pass_on_many(&mut self, ticket: K, counts: &mut Counts) -> Result<(), (K, StageError)> {
        let mut outputs = std::mem::take(&mut self.outputs);
        match outputs.len() {
            0 | 1 => self.pass_on(ticket, outputs.pop(), counts),
            k => match ticket.split_exact(k) {
                Ok(parts) => {
                    counts.expanded += (k - 1) as u64;
                    for (part, output) in parts.into_iter().zip(outputs.drain(..)) {
                        self.pass_on(part, Some(output), counts);
                    }
                }
                Err((ticket, error)) => {
                    outputs.clear();
                    self.outputs = outputs;
                    let Some(ticket) = ticket else {
                        // The ticket type split into no part at all: nothing is left to
                        // complete, and the item counts as failed.
                        tracing::error!(error = %error, "an item's outputs are dropped");
                        counts.failed += 1;
                        return Ok(());
                    };
                    return Err((ticket, error));
                }
            },
        }
        self.outputs = outputs;
        Ok(())
    }
}

impl<S, K> Consume<K> for TransportStage<S, K>
where
    S: Transport,
    S::Input: Send,
    S::Output: Send,
    K: Ticket,
{
    type Input = S::Input;
    type Done = S::Output;
    type Out = Transported<S::Output>;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.stage.setup(ctx)?;
        self.many = self.stage.emits_many();
        self.batches = !self.many && self.stage.takes_batches();
        Ok(())
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        self.stage.cleanup(ctx);
    }

    #[inline]
    fn run(
        &mut self,
        item: S::Input,
        ctx: &StageContext,
    ) -> Result<Transported<S::Output>, StageError> {
        if self.many {
            self.outputs.clear();
            self.stage.transport_each(item, ctx, &mut self.outputs)?;
            return Ok(Transported::Many);
        }
        self.stage.transport(item, ctx).map(Transported::One)
    }

    #[inline]
    fn pass(
        &mut self,
        ticket: K,
        out: Transported<S::Output>,
        counts: &mut Counts,
    ) -> Result<(), (K, StageError)> {
        match out {
            Transported::One(output) => {
                self.pass_on(ticket, output, counts);
                Ok(())
            }
            Transported::Many => self.pass_on_many(ticket, counts),
        }
    }

    fn takes_batches(&self) -> bool {
        self.batches
    }

    fn run_whole(&mut self, items: Vec<S::Input>, ctx: &StageContext) -> Result<(), StageError> {
        self.stage.transport_batch(items, &mut self.reports, ctx)
    }

    fn pass_whole(
        &mut self,
        tickets: Vec<K>,
        error: Option<StageError>,
        at: Here<'_>,
        counts: &mut Counts,
    ) -> bool {
        let n = tickets.len();
        if error.is_none()
            && self.reports.len() == n
            && let Some(outputs) = self.reports.take_outputs()
        {
            self.pass_all(tickets, outputs, counts);
            return true;
        }
        let mut reports = std::mem::take(&mut self.reports);
        let reported = reports.len();
        let mut tickets = tickets.into_iter();
        let mut flow = Flow::Continue;
        // Reports first: `zip` takes from its first iterator before it learns that the second
        // is done, and a ticket must not be lost that way.
        for (report, ticket) in reports.drain().zip(tickets.by_ref()) {
            match report {
                _ if flow == Flow::Stop => settle(ticket, Outcome::Dropped, &mut counts.dropped),
                Ok(output) => self.pass_on(ticket, output, counts),
                Err(error) => {
                    counts.failed += 1;
                    flow = at.shared.item_failed(at.ctx, error, Some(ticket));
                }
            }
        }
        // Emptied by the drain, kept for its allocations.
        self.reports = reports;
        if reported > n {
            tracing::error!(
                stage = at.ctx.stage(),
                thread = at.ctx.index(),
                "transport_batch reported {reported} outcomes for {n} items; the surplus is dropped"
            );
        }
        let rest = n.saturating_sub(reported);
        if rest > 0 {
            if flow == Flow::Stop {
                counts.dropped += crate::link::drop_items(tickets.map(|t| (t, ())));
            } else {
                let error = error.unwrap_or_else(|| {
                    StageError::msg(format!(
                        "transport_batch reported {reported} outcomes for {n} items"
                    ))
                });
                counts.failed += rest as u64;
                flow = at.shared.items_failed(at.ctx, error, rest, tickets);
            }
        } else if let Some(error) = error {
            // Every item has its outcome: the error concerns none of them.
            tracing::warn!(
                stage = at.ctx.stage(),
                thread = at.ctx.index(),
                error = format_args!("{error:#}"),
                "transport_batch failed after reporting every item of its batch"
            );
        }
        flow == Flow::Continue
    }

    fn end_batch(&mut self, seq: u64, idle: bool, _at: Here<'_>, counts: &mut Counts) -> bool {
        let Some(out) = &mut self.out else {
            return true;
        };
        let sent = if self.ordered {
            out.flush_ordered(seq)
        } else if idle || out.wants_flush() {
            out.flush()
        } else {
            return true;
        };
        record_send(sent, counts)
    }

    fn before_wait(&mut self, counts: &mut Counts) -> bool {
        match &mut self.out {
            // Ordered, every input batch's outputs went on at its end.
            Some(out) if !self.ordered => record_send(out.flush(), counts),
            _ => true,
        }
    }

    fn finish(&mut self, _at: Here<'_>, counts: &mut Counts) {
        if let Some(out) = &mut self.out {
            record_send(out.flush(), counts);
        }
    }

    fn discard(&mut self, _at: Here<'_>, _counts: &mut Counts) -> u64 {
        self.out.as_mut().map_or(0, Producer::discard)
    }

    fn blocked(&self) -> Duration {
        self.out.as_ref().map_or(Duration::ZERO, Producer::blocked)
    }

    #[inline]
    fn set_trace(&mut self, trace: Option<TraceParent>) {
        if let Some(out) = &mut self.out {
            out.set_trace(trace);
        }
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = S::Input, Output = S::Output>> {
        self.stage.offload()
    }

    fn settle_item(
        &mut self,
        ticket: K,
        outcome: ItemOutcome<S::Output>,
        at: Here<'_>,
        counts: &mut Counts,
    ) -> Flow {
        match outcome {
            ItemOutcome::Done(output) => {
                self.pass_on(ticket, Some(output), counts);
                Flow::Continue
            }
            ItemOutcome::Many(outputs) => {
                self.outputs = outputs;
                match self.pass_on_many(ticket, counts) {
                    Ok(()) => Flow::Continue,
                    Err((ticket, error)) => {
                        settle_not_done(ticket, ItemOutcome::<S::Output>::Failed(error), at, counts)
                    }
                }
            }
            other => settle_not_done(ticket, other, at, counts),
        }
    }
}

impl<S, K> TransportStage<S, K>
where
    S: Transport,
    S::Output: Send,
    K: Ticket,
{
    /// Passes an item's output on (or settles it at the last stage), or counts it filtered.
    #[inline]
    fn pass_on(&mut self, ticket: K, output: Option<S::Output>, counts: &mut Counts) {
        match (output, &mut self.out) {
            (Some(output), Some(out)) => {
                out.push(ticket, output);
                // Unordered, a batch never exceeds what the next queue allows; ordered, the
                // output of one input batch travels as one batch (see `EngineBuilder::ordered`).
                if !self.ordered && out.is_at_max() {
                    record_send(out.flush(), counts);
                }
            }
            (Some(output), None) => {
                drop(output);
                settle(ticket, Outcome::Processed, &mut counts.output);
            }
            (None, _) => {
                settle(ticket, Outcome::Filtered, &mut counts.filtered);
            }
        }
    }
}

impl<S, K> TransportStage<S, K>
where
    S: Transport,
    S::Output: Send,
    K: Ticket,
{
    /// Passes on a whole batch's outputs, one per ticket (every item passed): with the empty
    /// ticket `()`, without touching the items one by one.
    fn pass_all(&mut self, tickets: Vec<K>, outputs: Vec<S::Output>, counts: &mut Counts) {
        let Some(out) = &mut self.out else {
            counts.output += outputs.len() as u64;
            drop(outputs);
            for ticket in tickets {
                complete(ticket, Outcome::Processed);
            }
            return;
        };
        out.append(
            outputs
                .into_iter()
                .zip(tickets)
                .map(|(o, k)| (k, o))
                .collect(),
        );
        // As in `pass_on`: unordered, no batch exceeds what the next queue allows.
        while !self.ordered && out.is_at_max() {
            if !record_send(out.flush_max(), counts) {
                return;
            }
        }
    }
}

fn record_send(sent: Result<usize, usize>, counts: &mut Counts) -> bool {
    match sent {
        Ok(n) => {
            counts.output += n as u64;
            true
        }
        Err(n) => {
            counts.dropped += n as u64;
            false
        }
    }
}
