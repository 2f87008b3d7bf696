//! A frontend thread: make the stage, produce into its slot until the source ends or the run
//! stops, hand the last partial batch on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::plumbing::{Outcome, TrackedFrontend};
use engine_core::{StageContext, StageError};

use crate::counters::ThreadStats;
use crate::input::Window;
use crate::link::{FrontSlot, Link, Offer, complete};
use crate::shared::{Flow, Shared, cleanup, guarded};

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
