//! A frontend thread: make the stage, produce into its slot until the source ends or the run
//! stops, hand the last partial batch on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::plumbing::{Inject, Outcome, Ticket, TrackedFrontend, catch_panic};
use engine_core::trace::{self, TraceParent};
use engine_core::{StageContext, StageError};

use crate::counters::ThreadStats;
use crate::factory::Factory;
use crate::input::Window;
use crate::link::{Batch, FrontSlot, Link, Offer, complete};
use crate::shared::{Event, Flow, Shared, cleanup, last_resort, stage_span};

/// What a frontend thread needs, moved to it.
pub(crate) struct FrontendThread<F: TrackedFrontend> {
    pub(crate) index: usize,
    pub(crate) factory: Factory<F>,
    pub(crate) link: Arc<Link<F::Ticket, F::Item>>,
    pub(crate) window: Option<Arc<Window>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<ThreadStats>,
    /// `inline_when_idle` (unordered): the frontend gets a way in for other threads.
    pub(crate) inline: bool,
}

impl<F> FrontendThread<F>
where
    F: TrackedFrontend,
    F::Item: Send + 'static,
{
    /// The thread's body, with the last-resort guard; tells the coordinator when it ends.
    pub(crate) fn run(self, ctx: StageContext) {
        let _span = stage_span(&ctx).entered();
        let (index, shared) = (self.index, Arc::clone(&self.shared));
        let slot = Arc::clone(&self.link.slots()[index]);
        crate::stall::enter(&self.stats);
        let busy = last_resort(
            &ctx,
            &shared,
            || self.work(&ctx),
            || {
                slot.close();
                Duration::ZERO
            },
        );
        crate::stall::leave();
        let _ = shared.events.send(Event::FrontendDone { index, busy });
    }

    /// What the thread does, inside its guard: make the stage, produce until the source ends
    /// or the run stops, hand the last batch on, clean up. Returns the time spent outside
    /// blocking sends.
    fn work(self, ctx: &StageContext) -> Duration {
        let started = Instant::now();
        let slot = Arc::clone(&self.link.slots()[self.index]);
        let stage = catch_panic(|| {
            let mut stage = (self.factory)(ctx);
            stage.setup(ctx).map(|()| stage)
        });
        let mut stage = match stage {
            Ok(stage) => stage,
            Err(error) => {
                self.shared.fail(ctx, error, true);
                slot.close();
                return started.elapsed();
            }
        };
        self.shared.note_stop_grace(stage.stop_grace());
        // The way in lives as long as this thread's run; the frontend holds it weakly.
        let injector = self.inline.then(|| {
            Arc::new(Injector {
                slot: Arc::clone(&slot),
                link: Arc::clone(&self.link),
                shared: Arc::clone(&self.shared),
            }) as Arc<dyn Inject<F::Ticket, F::Item>>
        });
        if let Some(injector) = &injector {
            stage.attach_inject(Arc::downgrade(injector));
        }
        // Read once: a hook installed later is not seen by this run.
        let traced = trace::enabled();
        let stage_gives_parents = stage.gives_trace_parents();
        if traced {
            slot.sample_batches(Arc::clone(ctx.stage_name()));
        }
        let mut producing = Producing {
            stage,
            ctx,
            slot: &slot,
            link: &self.link,
            window: self.window.as_deref(),
            shared: &self.shared,
            stats: &self.stats,
            started,
            blocked: Duration::ZERO,
            item_parents: traced && stage_gives_parents,
            inline: self.inline,
        };
        producing.produce_all();
        let busy = producing.finish();
        drop(injector);
        busy
    }
}

/// A frontend's way in for other threads (`inline_when_idle`): an item taken while the
/// frontend's slot and the next queue are empty counts as the frontend's, and runs on the
/// caller's thread through the idle stages ([`Link::try_run_here`]), or else is queued as the
/// frontend thread would queue it.
struct Injector<K, T> {
    slot: Arc<FrontSlot<K, T>>,
    link: Arc<Link<K, T>>,
    shared: Arc<Shared>,
}

impl<K: Ticket, T: Send> Inject<K, T> for Injector<K, T> {
    fn inject(&self, ticket: K, item: T, parent: Option<TraceParent>) -> Result<(), (K, T)> {
        if self.shared.stop.is_stopping() || !self.link.is_empty() {
            return Err((ticket, item));
        }
        let (tx, batch) = self.slot.offer_alone(ticket, item, parent)?;
        if let Err(batch) = self.link.try_run_here(batch) {
            // Accepted: it goes on as the frontend thread's batch would.
            let mut blocked = Duration::ZERO;
            self.link.send_from_slot(&tx, batch, &mut blocked);
        }
        Ok(())
    }
}

/// A frontend thread producing: its stage, its slot, and the time it waited.
struct Producing<'a, F: TrackedFrontend> {
    stage: F,
    ctx: &'a StageContext,
    slot: &'a FrontSlot<F::Ticket, F::Item>,
    link: &'a Link<F::Ticket, F::Item>,
    window: Option<&'a Window>,
    shared: &'a Shared,
    stats: &'a ThreadStats,
    started: Instant,
    /// Time spent waiting for room downstream (or for the ordered window).
    blocked: Duration,
    /// Whether the source gives its items' trace contexts (and a trace hook is installed):
    /// only then does an item carry one of its own. Other items carry nothing: the slot
    /// chooses whole batches to trace.
    item_parents: bool,
    /// `inline_when_idle`: a lone item runs through the idle stages on this thread.
    inline: bool,
}

/// With `inline_when_idle`, an item that `produce` took at least this long to give is a lone
/// one (its source was silent), and runs through the idle stages on the frontend thread. An
/// item that was there at once goes on as usual: under load, this thread keeps producing and
/// the stages' own threads take whole batches.
const LONE_AFTER: Duration = Duration::from_micros(20);

impl<F> Producing<'_, F>
where
    F: TrackedFrontend,
    F::Item: Send,
{
    /// Produces until the source ends or the run stops; a failed or panicking `produce` is
    /// counted and handled by the policy, and producing goes on.
    fn produce_all(&mut self) {
        loop {
            let outcome = catch_unwind(AssertUnwindSafe(|| self.produce()));
            let error = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error,
                Err(payload) => StageError::from_panic(payload),
            };
            if !self.slot.count_failure() {
                return;
            }
            if self.shared.item_failed::<F::Ticket>(self.ctx, error, None) == Flow::Stop {
                return;
            }
        }
    }

    /// The inner loop; returns `Ok` at the end of the source or a stop.
    fn produce(&mut self) -> Result<(), StageError> {
        while !self.shared.stop.is_stopping() {
            let asked = self.inline.then(Instant::now);
            let Some((ticket, item)) = self.stage.produce(self.ctx)? else {
                return Ok(());
            };
            let parent = if self.item_parents {
                trace::take_item_parent()
            } else {
                None
            };
            if !self.offer(ticket, item, parent, asked) || !self.admitted() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Offers an item to the slot, sending the batch when it is full (or running it here, if
    /// the item is a lone one and the next stage idle: see [`LONE_AFTER`]; `asked` is when
    /// `produce` was called for it, with `inline_when_idle`); false if producing should end.
    fn offer(
        &mut self,
        ticket: F::Ticket,
        item: F::Item,
        parent: Option<trace::TraceParent>,
        asked: Option<Instant>,
    ) -> bool {
        let link = self.link;
        match self
            .slot
            .offer(link.state(), ticket, item, parent, || link.wants_items())
        {
            Offer::Kept => true,
            Offer::Send(tx, batch) => {
                let sent = match self.run_if_lone(batch, asked) {
                    Ok(()) => true,
                    Err(batch) => self.link.send_from_slot(&tx, batch, &mut self.blocked),
                };
                let busy = self.started.elapsed().saturating_sub(self.blocked);
                self.stats.publish_times(busy, self.blocked);
                sent
            }
            Offer::Closed(ticket, item) => {
                // The run stopped while `produce` was running: the item came too late to be
                // accepted. Its ticket says so, so a broker-backed source delivers it again.
                drop(item);
                complete(ticket, Outcome::Dropped);
                tracing::debug!(
                    stage = self.ctx.stage(),
                    thread = self.ctx.index(),
                    "an item produced after the stop was not accepted"
                );
                false
            }
        }
    }

    /// Runs a lone item's batch through the idle stages on this thread (`inline_when_idle`);
    /// gives the batch back if the item is not lone or the next stage is not idle. Asked
    /// only when a batch goes, so under load the clock is read once a batch.
    fn run_if_lone(
        &mut self,
        batch: Batch<F::Ticket, F::Item>,
        asked: Option<Instant>,
    ) -> Result<(), Batch<F::Ticket, F::Item>> {
        let Some(asked) = asked else {
            return Err(batch);
        };
        let t = Instant::now();
        if t.duration_since(asked) < LONE_AFTER {
            return Err(batch);
        }
        let ran = self.link.try_run_here(batch);
        // The stages' work, done here while their threads sleep, is not this stage's:
        // counted as time spent on downstream, as a wait for room is.
        self.blocked += t.elapsed();
        ran
    }

    /// Ordered mode: stays within the window of what the sink has delivered, whoever takes
    /// the batches (this thread or an idle consumer), so the reorder buffer stays bounded.
    /// False on abort.
    fn admitted(&mut self) -> bool {
        let Some(window) = self.window else {
            return true;
        };
        let t = Instant::now();
        let admitted = window.admit(self.slot.next_seq(), &self.shared.abort);
        self.blocked += t.elapsed();
        admitted
    }

    /// Hands the last partial batch on (then the channel loses this sender), cleans up, and
    /// returns the busy time.
    fn finish(mut self) -> Duration {
        if let Some((tx, batch)) = self.slot.finish() {
            self.link.send_from_slot(&tx, batch, &mut self.blocked);
        }
        cleanup(self.ctx, || self.stage.cleanup(self.ctx));
        let busy = self.started.elapsed().saturating_sub(self.blocked);
        self.stats.publish_times(busy, self.blocked);
        busy
    }
}
