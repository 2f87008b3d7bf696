//! A frontend thread: make the stage, produce into its slot until the source ends or the run
//! stops, hand the last partial batch on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::plumbing::{Outcome, TrackedFrontend};
use engine_core::{StageContext, StageError};

use crate::counters::ThreadStats;
use crate::factory::Factory;
use crate::input::Window;
use crate::link::{FrontSlot, Link, Offer, complete};
use crate::shared::{Event, Flow, Shared, cleanup, guarded, last_resort, stage_span};

/// What a frontend thread needs, moved to it.
pub(crate) struct FrontendThread<F: TrackedFrontend> {
    pub(crate) index: usize,
    pub(crate) factory: Factory<F>,
    pub(crate) link: Arc<Link<F::Ticket, F::Item>>,
    pub(crate) window: Option<Arc<Window>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<ThreadStats>,
}

impl<F> FrontendThread<F>
where
    F: TrackedFrontend,
    F::Item: Send + 'static,
{
    /// The thread's body, with the last-resort guard; tells the coordinator when it ends.
    pub(crate) fn run(self, ctx: StageContext) {
        let _span = stage_span(&ctx).entered();
        let Self {
            index,
            factory,
            link,
            window,
            shared,
            stats,
        } = self;
        let slot = Arc::clone(&link.slots()[index]);
        let (guard_ctx, guard_shared, guard_slot) =
            (ctx.clone(), Arc::clone(&shared), Arc::clone(&slot));
        let events = shared.events.clone();
        let busy = last_resort(
            &guard_ctx,
            &guard_shared,
            || work(|ctx| factory(ctx), ctx, slot, link, window, shared, stats),
            || {
                guard_slot.close();
                Duration::ZERO
            },
        );
        let _ = events.send(Event::FrontendDone { index, busy });
    }
}

/// What a frontend thread does, inside its guard: make the stage, produce until the source
/// ends or the run stops. Returns the time spent outside blocking sends.
fn work<F>(
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
