//! The consumer threads (transports and backends): one loop for both, driving a stage through
//! [`Consume`], with its items run on the thread ([`in_thread`]) or elsewhere
//! ([`offloaded`]).
//!
//! Panics are caught once per batch rather than once per item: the loop over a batch runs
//! inside `catch_unwind`, the ticket of the item being handled waits outside it, and after a
//! panic the loop resumes with the next item of the same batch. The happy path pays nothing.

mod backend;
mod in_thread;
mod offloaded;
mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::plumbing::{ItemOutcome, Offload, Outcome, Ticket, catch_panic};
use engine_core::trace::{self, BatchInfo, BatchScope, TraceParent};
use engine_core::{Counts, StageContext, StageError};

pub(crate) use backend::BackendStage;
pub(crate) use transport::TransportStage;

use crate::counters::{ThreadResult, ThreadStats};
use crate::input::Input;
use crate::link::{Batch, Lender, RunLent, complete};
use crate::shared::{Flow, Shared, cleanup, last_resort, stage_span};

/// A transport or a backend, as the consumer loop drives it.
pub(crate) trait Consume<K: Ticket> {
    type Input: Send;
    /// What an item gives back when the stage runs it elsewhere.
    type Done;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError>;

    fn cleanup(&mut self, ctx: &StageContext);

    /// What the stage's code gives for one item, for [`pass`](Self::pass).
    type Out;

    /// Runs the stage's code on one item. Its ticket waits in the loop meanwhile, so that an
    /// error or a panic can still complete it.
    fn run(&mut self, item: Self::Input, ctx: &StageContext) -> Result<Self::Out, StageError>;

    /// Passes on what [`run`](Self::run) gave, with the item's ticket (or settles the
    /// item). A ticket that cannot go on comes back with the error that fails the item.
    fn pass(
        &mut self,
        ticket: K,
        out: Self::Out,
        counts: &mut Counts,
    ) -> Result<(), (K, StageError)>;

    /// Whether the stage takes whole batches (a batch-native transport): the loop then calls
    /// [`run_whole`](Self::run_whole) and [`pass_whole`](Self::pass_whole) instead of `run`
    /// and `pass`.
    fn takes_batches(&self) -> bool {
        false
    }

    /// Runs the stage's code on a whole batch, keeping what it reports for
    /// [`pass_whole`](Self::pass_whole); the batch's tickets wait in the loop meanwhile.
    fn run_whole(&mut self, items: Vec<Self::Input>, ctx: &StageContext) -> Result<(), StageError> {
        let _ = (items, ctx);
        Err(StageError::msg("this stage does not take whole batches"))
    }

    /// Passes on or settles every item of a batch from what [`run_whole`](Self::run_whole)
    /// reported, pairing reports with `tickets` in order; the items left without a report fail
    /// with `error` (what the call returned, or its panic). Returns false if the run should
    /// stop taking input.
    fn pass_whole(
        &mut self,
        tickets: Vec<K>,
        error: Option<StageError>,
        at: Here<'_>,
        counts: &mut Counts,
    ) -> bool {
        let error = error.unwrap_or_else(|| StageError::msg("no outcome for these items"));
        counts.failed += tickets.len() as u64;
        at.shared
            .items_failed(at.ctx, error, tickets.len(), tickets)
            == Flow::Continue
    }

    /// After input batch `seq`: hands outputs on if they should go now (always when `idle`,
    /// the input being empty). Returns false if the run was aborted meanwhile.
    fn end_batch(&mut self, seq: u64, idle: bool, at: Here<'_>, counts: &mut Counts) -> bool;

    /// Before the thread sleeps on its input: hands on what it holds, so that no output waits
    /// on a thread that waits itself. Returns false if the run was aborted meanwhile. The
    /// default holds nothing between batches (a backend settles at the end of each).
    fn before_wait(&mut self, counts: &mut Counts) -> bool {
        let _ = counts;
        true
    }

    /// At the end of the input: hands every remaining output on.
    fn finish(&mut self, at: Here<'_>, counts: &mut Counts);

    /// On abort: drops held outputs, completing their tickets; returns how many.
    fn discard(&mut self, at: Here<'_>, counts: &mut Counts) -> u64;

    /// Time spent waiting for room in the next queue (backpressure).
    fn blocked(&self) -> Duration;

    /// The outputs passed on from now on carry `trace`, the context of the span of the input
    /// batch they come from (see `engine_core::trace`). A stage with no next queue ignores it.
    fn set_trace(&mut self, trace: Option<TraceParent>) {
        let _ = trace;
    }

    /// The stage as an [`Offload`], if it runs its items elsewhere.
    fn offload(&mut self) -> Option<&mut dyn Offload<Input = Self::Input, Output = Self::Done>>;

    /// Settles one item that ran elsewhere, from its outcome.
    fn settle_item(
        &mut self,
        ticket: K,
        outcome: ItemOutcome<Self::Done>,
        at: Here<'_>,
        counts: &mut Counts,
    ) -> Flow;
}

/// Settles an offloaded item whose outcome is not `Done`, as any stage does.
fn settle_not_done<K: Ticket, D>(
    ticket: K,
    outcome: ItemOutcome<D>,
    at: Here<'_>,
    counts: &mut Counts,
) -> Flow {
    match outcome {
        ItemOutcome::Done(_) => unreachable!("done items are settled by their stage"),
        // Only a transport may give many outputs, and it settles them itself: from a backend
        // this is a bug in the offloading stage, which fails the item rather than the thread.
        ItemOutcome::Many(_) => {
            let error = StageError::msg("the offloaded backend gave outputs for an item");
            settle_not_done(ticket, ItemOutcome::<D>::Failed(error), at, counts)
        }
        ItemOutcome::Filtered => {
            settle(ticket, Outcome::Filtered, &mut counts.filtered);
            Flow::Continue
        }
        ItemOutcome::Failed(error) => {
            counts.failed += 1;
            at.shared.item_failed(at.ctx, error, Some(ticket))
        }
        ItemOutcome::Dropped => {
            settle(ticket, Outcome::Dropped, &mut counts.dropped);
            Flow::Continue
        }
    }
}

/// Where a consumer runs: its context and what the run shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Here<'a> {
    pub(crate) ctx: &'a StageContext,
    pub(crate) shared: &'a Shared,
}

/// Completes the ticket of an item the stage is done with, and counts it.
#[inline]
fn settle<K: Ticket>(ticket: K, outcome: Outcome<'_>, count: &mut u64) {
    complete(ticket, outcome);
    *count += 1;
}

/// A consumer thread at work: its stage, its input, where it runs, and what it counted.
struct Consumer<'a, K: Ticket, S: Consume<K>> {
    stage: S,
    input: Input<K, S::Input>,
    at: Here<'a>,
    stats: &'a ThreadStats,
    counts: Counts,
    busy: Duration,
    /// With `inline_when_idle`: where this consumer is lent out while its thread sleeps.
    lender: Option<Arc<Lender<K, S::Input>>>,
    /// A run lent out said to stop taking input.
    halted: bool,
    /// An offloading stage's tag for its next batch: runs lent out submit under this
    /// thread's tags.
    next_tag: u64,
    /// An offloading stage lent out: what a lent run left in flight for this thread, and
    /// the signal that wakes it to take them over.
    left: Option<offloaded::Left<K>>,
}

impl<K: Ticket, S: Consume<K>> Consumer<'_, K, S> {
    /// Publishes the counts and times so far, for the live statistics.
    fn publish(&self) {
        self.stats
            .publish(&self.counts, self.busy, self.stage.blocked());
    }

    /// After the loop: hands the last outputs on (or drops them after an abort), drops what
    /// the reorder buffer still holds, and publishes the final counts.
    fn end(&mut self, clean_end: bool) {
        if clean_end && !self.at.shared.abort.is_fired() {
            self.stage.finish(self.at, &mut self.counts);
        } else {
            self.counts.dropped += self.stage.discard(self.at, &mut self.counts);
        }
        let pending = self.input.discard_pending();
        self.counts.input += pending;
        self.counts.dropped += pending;
        self.publish();
    }
}

impl<K: Ticket, S: Consume<K>> RunLent<K, S::Input> for Consumer<'_, K, S> {
    fn run_lent(&mut self, batch: Batch<K, S::Input>) -> bool {
        if self.left.is_some() {
            return self.run_lent_offloaded(batch);
        }
        self.counts.input += batch.items.len() as u64;
        if self.at.shared.abort.is_fired() {
            self.counts.dropped += batch.drop_all();
            return false;
        }
        // Its thread sleeps: what the batch gave goes on now.
        let go_on = self.run_batch(batch) && self.stage.before_wait(&mut self.counts);
        self.publish();
        go_on
    }
}

/// Opens and enters the span of a batch whose items carry `traces` (see
/// `engine_core::trace`); `None`, at the cost of one branch, when they carry none.
#[inline]
fn batch_scope(ctx: &StageContext, parents: &[TraceParent], items: usize) -> Option<BatchScope> {
    if parents.is_empty() {
        return None;
    }
    trace::enter_batch(BatchInfo::new(
        ctx.stage(),
        ctx.kind().as_str(),
        ctx.index(),
        items,
        parents,
    ))
}

/// Makes the stage on this thread and sets it up; a failure fails the run.
fn make_stage<K: Ticket, S: Consume<K>>(
    make: impl FnOnce(&StageContext) -> S,
    ctx: &StageContext,
    shared: &Shared,
) -> Option<S> {
    let setup = catch_panic(|| {
        let mut stage = make(ctx);
        stage.setup(ctx).map(|()| stage)
    });
    setup.map_err(|error| shared.fail(ctx, error, true)).ok()
}

/// A consumer's input, and with `inline_when_idle` its lending desk.
pub(crate) type InputOf<K, T> = (Input<K, T>, Option<Arc<Lender<K, T>>>);

/// A transport or backend thread's body: make the stage, consume batches until the input
/// ends or the run aborts, clean up. Should anything escape (a panic in an item's `Drop`,
/// say), the run fails and the thread still reports what it counted.
pub(crate) fn run_consumer<K, S>(
    make: impl FnOnce(&StageContext) -> S,
    ctx: StageContext,
    (input, lender): InputOf<K, S::Input>,
    stats: Arc<ThreadStats>,
    shared: Arc<Shared>,
) -> ThreadResult
where
    K: Ticket,
    S: Consume<K>,
{
    let _span = stage_span(&ctx).entered();
    crate::stall::enter(&stats);
    let result = last_resort(
        &ctx,
        &shared,
        || work(make, &ctx, (input, lender), &stats, &shared),
        || {
            shared.done();
            ThreadResult {
                counts: stats.read(),
                busy: Duration::ZERO,
            }
        },
    );
    crate::stall::leave();
    result
}

/// What a consumer thread does, inside its guard.
fn work<K, S>(
    make: impl FnOnce(&StageContext) -> S,
    ctx: &StageContext,
    (input, lender): InputOf<K, S::Input>,
    stats: &ThreadStats,
    shared: &Shared,
) -> ThreadResult
where
    K: Ticket,
    S: Consume<K>,
{
    let t = Instant::now();
    let stage = make_stage(make, ctx, shared);
    let busy = t.elapsed();
    let Some(stage) = stage else {
        shared.done();
        return ThreadResult {
            counts: Counts::default(),
            busy,
        };
    };
    let mut consumer = Consumer {
        stage,
        input,
        at: Here { ctx, shared },
        stats,
        counts: Counts::default(),
        busy,
        lender,
        halted: false,
        next_tag: 0,
        left: None,
    };
    let clean_end = if consumer.stage.offload().is_some() {
        consumer.run_offloaded()
    } else {
        consumer.run_in_thread()
    };
    consumer.end(clean_end);

    let t = Instant::now();
    cleanup(ctx, || consumer.stage.cleanup(ctx));
    consumer.busy += t.elapsed();
    shared.done();
    ThreadResult {
        counts: consumer.counts,
        busy: consumer.busy,
    }
}
