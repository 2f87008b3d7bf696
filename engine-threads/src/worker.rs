//! The loops that run on each stage thread: a frontend loop that produces into its slot, and
//! one consumer loop shared by transports and backends.
//!
//! Panics are caught once per batch rather than once per item: the loop over a batch runs
//! inside `catch_unwind`, the ticket of the item being handled waits outside it, and after a
//! panic the loop resumes with the next item of the same batch. The happy path pays nothing.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};
use engine_core::plumbing::{ItemOutcome, Offload};
use engine_core::plumbing::{Outcome, Ticket, TrackedFrontend, lock};
use engine_core::{
    Backend, Counts, ErrorPolicy, StageContext, StageError, StageKind, StopHandle, Transport,
};

use crate::link::{Abort, Batch, FrontSlot, Link, Offer, Producer, complete, drop_items};

/// What went wrong in a stage, for the error the run returns.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) stage: Arc<str>,
    pub(crate) kind: StageKind,
    pub(crate) thread: usize,
    pub(crate) error: StageError,
    pub(crate) during_setup: bool,
}

/// Messages from stage threads (and the stop handle) to the coordinator.
#[derive(Debug)]
pub(crate) enum Event {
    /// A consumer thread left its loop (and ran its cleanup).
    ThreadDone,
    /// A frontend thread left its loop (and ran its cleanup), with its busy time.
    FrontendDone { index: usize, busy: Duration },
    /// The run's stop handle was raised.
    Stop,
}

/// What every stage thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stop: StopHandle,
    pub(crate) abort: Abort,
    pub(crate) policy: ErrorPolicy,
    pub(crate) failure: Mutex<Option<Failure>>,
    pub(crate) events: Sender<Event>,
    /// The longest [`stop_grace`](TrackedFrontend::stop_grace) of the frontends, in
    /// nanoseconds (saturated).
    pub(crate) stop_grace: AtomicU64,
}

/// Whether a loop goes on after a failed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

impl Shared {
    /// How long the run waits, after a graceful stop drained the pipeline, for its frontends.
    pub(crate) fn stop_grace(&self) -> Duration {
        Duration::from_nanos(self.stop_grace.load(Ordering::SeqCst))
    }

    /// Notes a frontend's grace: the run waits for the longest.
    fn note_stop_grace(&self, grace: Duration) {
        let nanos = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self.stop_grace.fetch_max(nanos, Ordering::SeqCst);
    }

    /// Handles an item that failed: logs it, completes its ticket, and under the stop policy
    /// (or for a fatal error) records the failure and aborts the run.
    fn item_failed<K: Ticket>(
        &self,
        ctx: &StageContext,
        error: StageError,
        ticket: Option<K>,
    ) -> Flow {
        self.items_failed(ctx, error, 1, ticket)
    }

    /// Handles `n` items that failed together (a backend's flush): logs once, completes every
    /// ticket, and applies the policy as [`item_failed`](Self::item_failed) does.
    pub(crate) fn items_failed<K: Ticket>(
        &self,
        ctx: &StageContext,
        error: StageError,
        n: usize,
        tickets: impl IntoIterator<Item = K>,
    ) -> Flow {
        let stop = self.policy == ErrorPolicy::Stop || error.is_fatal();
        tracing::warn!(
            stage = ctx.stage(),
            kind = ctx.kind().as_str(),
            thread = ctx.index(),
            items = n,
            error = format_args!("{error:#}"),
            "{}",
            match (stop, n) {
                (true, 1) => "item failed; stopping the run",
                (false, 1) => "item failed; skipped",
                (true, _) => "flush failed for these items; stopping the run",
                (false, _) => "flush failed for these items; skipped",
            }
        );
        for ticket in tickets {
            complete(
                ticket,
                Outcome::Failed {
                    stage: ctx.stage(),
                    error: &error,
                    policy: if stop {
                        ErrorPolicy::Stop
                    } else {
                        ErrorPolicy::Skip
                    },
                },
            );
        }
        if stop {
            self.fail(ctx, error, false);
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// Records the run's first failure and aborts the run.
    fn fail(&self, ctx: &StageContext, error: StageError, during_setup: bool) {
        if during_setup {
            tracing::error!(
                stage = ctx.stage(),
                kind = ctx.kind().as_str(),
                thread = ctx.index(),
                error = format_args!("{error:#}"),
                "setup failed; stopping the run"
            );
        }
        {
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                *failure = Some(Failure {
                    stage: Arc::clone(ctx.stage_name()),
                    kind: ctx.kind(),
                    thread: ctx.index(),
                    error,
                    during_setup,
                });
            }
        }
        self.stop.stop_now();
    }

    pub(crate) fn done(&self) {
        let _ = self.events.send(Event::ThreadDone);
    }
}

/// Runs a stage thread's body; should anything escape it (a panic in an item's `Drop`, say),
/// fails the run and still reports the thread as done, so that the run cannot hang.
pub(crate) fn last_resort<R>(
    ctx: &StageContext,
    shared: &Shared,
    body: impl FnOnce() -> R,
    fallback: impl FnOnce() -> R,
) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            tracing::error!(
                stage = ctx.stage(),
                thread = ctx.index(),
                "a stage thread panicked outside stage code"
            );
            shared.fail(ctx, StageError::from_panic(payload), false);
            fallback()
        }
    }
}

/// Runs `f`, turning a panic into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, StageError>) -> Result<T, StageError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(StageError::from_panic(payload)))
}

/// Runs a stage's cleanup, logging a panic instead of spreading it.
fn cleanup(ctx: &StageContext, f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        let error = StageError::from_panic(payload);
        tracing::error!(
            stage = ctx.stage(),
            kind = ctx.kind().as_str(),
            thread = ctx.index(),
            error = %error,
            "cleanup panicked"
        );
    }
}

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

    fn advance(&self, delivered: u64) {
        self.delivered.store(delivered, Ordering::SeqCst);
        let _ = self.progress_tx.try_send(());
    }

    /// Waits until batch `seq` is within the window; false on abort.
    fn admit(&self, seq: u64, abort: &Abort) -> bool {
        while seq >= self.delivered.load(Ordering::SeqCst) + self.size {
            if abort.is_fired() {
                return false;
            }
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

/// A frontend thread: make the stage, produce until the source ends or the run stops. Returns
/// the time spent outside blocking sends.
pub(crate) fn run_frontend<F>(
    make: impl FnOnce(&StageContext) -> F,
    ctx: StageContext,
    slot: Arc<FrontSlot<F::Ticket, F::Item>>,
    link: Arc<Link<F::Ticket, F::Item>>,
    window: Option<Arc<Window>>,
    shared: Arc<Shared>,
    stats: Arc<ThreadStats>,
) -> Duration
where
    F: TrackedFrontend,
    F::Item: Send,
{
    let started = Instant::now();
    let mut blocked = Duration::ZERO;
    let mut stage = match guarded(|| {
        let mut stage = make(&ctx);
        stage.setup(&ctx).map(|()| stage)
    }) {
        Ok(stage) => stage,
        Err(error) => {
            shared.fail(&ctx, error, true);
            slot.close();
            return started.elapsed();
        }
    };
    shared.note_stop_grace(stage.stop_grace());
    loop {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            produce(
                &mut stage,
                &ctx,
                &slot,
                &link,
                window.as_deref(),
                &shared,
                (&mut blocked, &stats, started),
            )
        }));
        let error = match outcome {
            Ok(Ok(())) => break,
            Ok(Err(error)) => error,
            Err(payload) => StageError::from_panic(payload),
        };
        if !slot.count_failure() {
            break;
        }
        if shared.item_failed::<F::Ticket>(&ctx, error, None) == Flow::Stop {
            break;
        }
    }
    // Hand the last partial batch on, then let the channel lose this sender.
    if let Some((tx, batch)) = slot.finish() {
        link.send_from_slot(&tx, batch, &mut blocked);
    }
    cleanup(&ctx, || stage.cleanup(&ctx));
    let busy = started.elapsed().saturating_sub(blocked);
    stats.publish_times(busy, blocked);
    busy
}

/// The frontend's inner loop; returns `Ok` at the end of the source or a stop.
fn produce<F>(
    stage: &mut F,
    ctx: &StageContext,
    slot: &FrontSlot<F::Ticket, F::Item>,
    link: &Link<F::Ticket, F::Item>,
    window: Option<&Window>,
    shared: &Shared,
    (blocked, stats, started): (&mut Duration, &ThreadStats, Instant),
) -> Result<(), StageError>
where
    F: TrackedFrontend,
    F::Item: Send,
{
    let state = link.state();
    loop {
        if shared.stop.is_stopping() {
            return Ok(());
        }
        let Some((ticket, item)) = stage.produce(ctx)? else {
            return Ok(());
        };
        match slot.offer(state, ticket, item) {
            Offer::Kept => {}
            Offer::Nudge(tx) => link.nudge(&tx),
            Offer::Send(tx, batch) => {
                let sent = link.send_from_slot(&tx, batch, blocked);
                stats.publish_times(started.elapsed().saturating_sub(*blocked), *blocked);
                if !sent {
                    return Ok(());
                }
            }
            Offer::Closed(ticket, item) => {
                // The run stopped while `produce` was running: the item came too late to be
                // accepted. Its ticket says so, so a broker-backed source delivers it again.
                drop(item);
                complete(ticket, Outcome::Dropped);
                tracing::debug!(
                    stage = ctx.stage(),
                    thread = ctx.index(),
                    "an item produced after the stop was not accepted"
                );
                return Ok(());
            }
        }
        // Ordered mode: stay within the window of what the sink has delivered, whoever takes
        // the batches (this thread or an idle consumer), so the reorder buffer stays bounded.
        if let Some(window) = window {
            let t = Instant::now();
            let admitted = window.admit(slot.next_seq(), &shared.abort);
            *blocked += t.elapsed();
            if !admitted {
                return Ok(());
            }
        }
    }
}

/// Live counts and times of one stage thread, written only by that thread, after each batch.
#[derive(Debug, Default)]
pub(crate) struct ThreadStats {
    input: AtomicU64,
    output: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    expanded: AtomicU64,
    busy_nanos: AtomicU64,
    blocked_nanos: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ThreadStats {
    pub(crate) fn publish(&self, counts: &Counts, busy: Duration, blocked: Duration) {
        self.input.store(counts.input, Ordering::Relaxed);
        self.output.store(counts.output, Ordering::Relaxed);
        self.filtered.store(counts.filtered, Ordering::Relaxed);
        self.failed.store(counts.failed, Ordering::Relaxed);
        self.dropped.store(counts.dropped, Ordering::Relaxed);
        self.expanded.store(counts.expanded, Ordering::Relaxed);
        self.publish_times(busy, blocked);
    }

    /// Publishes the time the thread worked, and the time it waited for room downstream.
    pub(crate) fn publish_times(&self, busy: Duration, blocked: Duration) {
        self.busy_nanos.store(nanos(busy), Ordering::Relaxed);
        self.blocked_nanos.store(nanos(blocked), Ordering::Relaxed);
    }

    /// The time the thread worked, and the time it waited for room downstream.
    pub(crate) fn times(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)),
            Duration::from_nanos(self.blocked_nanos.load(Ordering::Relaxed)),
        )
    }

    pub(crate) fn read(&self) -> Counts {
        let mut counts = Counts::default();
        counts.input = self.input.load(Ordering::Relaxed);
        counts.output = self.output.load(Ordering::Relaxed);
        counts.filtered = self.filtered.load(Ordering::Relaxed);
        counts.failed = self.failed.load(Ordering::Relaxed);
        counts.dropped = self.dropped.load(Ordering::Relaxed);
        counts.expanded = self.expanded.load(Ordering::Relaxed);
        counts
    }
}

/// What a consumer thread did.
#[derive(Debug)]
pub(crate) struct ThreadResult {
    pub(crate) counts: Counts,
    pub(crate) busy: Duration,
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
    fn discard_pending(&mut self) -> u64 {
        let Some(order) = &mut self.order else {
            return 0;
        };
        std::mem::take(&mut order.pending)
            .into_values()
            .map(Batch::drop_all)
            .sum()
    }
}

/// A transport or a backend, as the consumer loop drives it.
pub(crate) trait Consume<K: Ticket> {
    type Input: Send;
    /// What an item gives back when the stage runs it elsewhere.
    type Done;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError>;

    fn cleanup(&mut self, ctx: &StageContext);

    /// Handles one item. Its ticket is in `current` while stage code runs, so that a panic
    /// can still complete it; on success the ticket is taken and completed or passed on.
    fn consume(
        &mut self,
        item: Self::Input,
        current: &mut Option<K>,
        ctx: &StageContext,
        counts: &mut Counts,
    ) -> Result<(), StageError>;

    /// After input batch `seq`: hands outputs on if they should go now (always when `idle`,
    /// the input being empty). Returns false if the run was aborted meanwhile.
    fn end_batch(&mut self, seq: u64, idle: bool, at: Here<'_>, counts: &mut Counts) -> bool;

    /// At the end of the input: hands every remaining output on.
    fn finish(&mut self, at: Here<'_>, counts: &mut Counts);

    /// On abort: drops held outputs, completing their tickets; returns how many.
    fn discard(&mut self, at: Here<'_>, counts: &mut Counts) -> u64;

    /// Time spent waiting for room in the next queue (backpressure).
    fn blocked(&self) -> Duration;

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
        ItemOutcome::Done(_) | ItemOutcome::Many(_) => {
            unreachable!("done items are settled by their stage")
        }
        ItemOutcome::Filtered => {
            complete(ticket, Outcome::Filtered);
            counts.filtered += 1;
            Flow::Continue
        }
        ItemOutcome::Failed(error) => {
            counts.failed += 1;
            at.shared.item_failed(at.ctx, error, Some(ticket))
        }
        ItemOutcome::Dropped => {
            complete(ticket, Outcome::Dropped);
            counts.dropped += 1;
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
        }
    }

    /// Passes on the outputs of one input of a stage that emits many, each with its own part
    /// of the input's ticket. A ticket that cannot be split is handed back with the error
    /// that fails the item.
    fn pass_on_many(&mut self, ticket: K, counts: &mut Counts) -> Result<(), (K, StageError)> {
        let mut outputs = std::mem::take(&mut self.outputs);
        match outputs.len() {
            0 | 1 => self.pass_on(ticket, outputs.pop(), counts),
            k => match ticket.split(k) {
                Ok(parts) => {
                    counts.expanded += (k - 1) as u64;
                    for (part, output) in parts.into_iter().zip(outputs.drain(..)) {
                        self.pass_on(part, Some(output), counts);
                    }
                }
                Err(ticket) => {
                    outputs.clear();
                    self.outputs = outputs;
                    let error = StageError::msg(format!(
                        "the transport gave {k} outputs for one item, and this source's \
                         completion tickets cannot be split"
                    ));
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

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.stage.setup(ctx)?;
        self.many = self.stage.emits_many();
        Ok(())
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        self.stage.cleanup(ctx);
    }

    #[inline]
    fn consume(
        &mut self,
        item: S::Input,
        current: &mut Option<K>,
        ctx: &StageContext,
        counts: &mut Counts,
    ) -> Result<(), StageError> {
        if self.many {
            self.outputs.clear();
            self.stage.transport_each(item, ctx, &mut self.outputs)?;
            let ticket = current.take().expect("the current item's ticket is set");
            return self
                .pass_on_many(ticket, counts)
                .map_err(|(ticket, error)| {
                    *current = Some(ticket);
                    error
                });
        }
        let output = self.stage.transport(item, ctx)?;
        let ticket = current.take().expect("the current item's ticket is set");
        self.pass_on(ticket, output, counts);
        Ok(())
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
                        counts.failed += 1;
                        at.shared.item_failed(at.ctx, error, Some(ticket))
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
                complete(ticket, Outcome::Processed);
                counts.output += 1;
            }
            (None, _) => {
                complete(ticket, Outcome::Filtered);
                counts.filtered += 1;
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
        match guarded(|| self.stage.flush(at.ctx)) {
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

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.stage.setup(ctx)
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        self.stage.cleanup(ctx);
    }

    #[inline]
    fn consume(
        &mut self,
        item: S::Input,
        current: &mut Option<K>,
        ctx: &StageContext,
        counts: &mut Counts,
    ) -> Result<(), StageError> {
        self.stage.process(item, ctx)?;
        let ticket = current.take().expect("the current item's ticket is set");
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
                complete(ticket, Outcome::Processed);
                counts.output += 1;
                Flow::Continue
            }
            other => settle_not_done(ticket, other, at, counts),
        }
    }
}

/// How a batch ended.
enum BatchEnd {
    Done,
    Failed(StageError),
    Aborted,
}

/// A transport or backend thread: make the stage, consume batches until the input ends or the
/// run aborts.
pub(crate) fn run_consumer<K, S>(
    make: impl FnOnce(&StageContext) -> S,
    ctx: StageContext,
    mut input: Input<K, S::Input>,
    stats: Arc<ThreadStats>,
    shared: Arc<Shared>,
) -> ThreadResult
where
    K: Ticket,
    S: Consume<K>,
{
    let mut counts = Counts::default();
    let mut busy = Duration::ZERO;
    let t = Instant::now();
    let setup = guarded(|| {
        let mut stage = make(&ctx);
        stage.setup(&ctx).map(|()| stage)
    });
    busy += t.elapsed();
    let mut stage = match setup {
        Ok(stage) => stage,
        Err(error) => {
            shared.fail(&ctx, error, true);
            shared.done();
            return ThreadResult { counts, busy };
        }
    };

    let at = Here {
        ctx: &ctx,
        shared: &shared,
    };
    let clean_end = if stage.offload().is_some() {
        crate::offloaded::run(&mut stage, &mut input, at, &stats, &mut counts, &mut busy)
    } else {
        run_items(&mut stage, &mut input, at, &stats, &mut counts, &mut busy)
    };
    if clean_end && !shared.abort.is_fired() {
        stage.finish(at, &mut counts);
    } else {
        counts.dropped += stage.discard(at, &mut counts);
    }
    let pending = input.discard_pending();
    counts.input += pending;
    counts.dropped += pending;
    stats.publish(&counts, busy, stage.blocked());

    let t = Instant::now();
    cleanup(&ctx, || stage.cleanup(&ctx));
    busy += t.elapsed();
    shared.done();
    ThreadResult { counts, busy }
}

/// The consumer loop of a stage that runs its items on this thread; returns whether the input
/// ended without an abort.
fn run_items<K, S>(
    stage: &mut S,
    input: &mut Input<K, S::Input>,
    at: Here<'_>,
    stats: &ThreadStats,
    counts: &mut Counts,
    busy: &mut Duration,
) -> bool
where
    K: Ticket,
    S: Consume<K>,
{
    let mut clean_end = true;
    while let Some(batch) = input.recv() {
        let len = batch.items.len();
        counts.input += len as u64;
        if at.shared.abort.is_fired() {
            counts.dropped += batch.drop_all();
            clean_end = false;
            break;
        }
        let started = Instant::now();
        let blocked_before = stage.blocked();
        let seq = batch.seq;
        let mut items = batch.items.into_iter();
        let mut current: Option<K> = None;
        let end = loop {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                for (ticket, item) in &mut items {
                    if at.shared.abort.is_fired() {
                        drop(item);
                        complete(ticket, Outcome::Dropped);
                        counts.dropped += 1;
                        return BatchEnd::Aborted;
                    }
                    current = Some(ticket);
                    if let Err(error) = stage.consume(item, &mut current, at.ctx, counts) {
                        return BatchEnd::Failed(error);
                    }
                }
                BatchEnd::Done
            }));
            let error = match outcome {
                Ok(BatchEnd::Done) => break BatchEnd::Done,
                Ok(BatchEnd::Aborted) => break BatchEnd::Aborted,
                Ok(BatchEnd::Failed(error)) => error,
                Err(payload) => StageError::from_panic(payload),
            };
            counts.failed += 1;
            if at.shared.item_failed(at.ctx, error, current.take()) == Flow::Stop {
                break BatchEnd::Aborted;
            }
        };
        let took = started.elapsed();
        // Time spent waiting for room downstream is backpressure, not work.
        *busy += took.saturating_sub(stage.blocked().saturating_sub(blocked_before));
        input.link.state().observe(len, took);
        let go_on = match end {
            BatchEnd::Done => stage.end_batch(seq, input.link.is_empty(), at, counts),
            _ => false,
        };
        if !go_on {
            counts.dropped += drop_items(items);
            clean_end = false;
            break;
        }
        stats.publish(counts, *busy, stage.blocked());
    }
    clean_end
}
