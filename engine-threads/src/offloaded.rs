//! The consumer loop of a stage that runs its items elsewhere (worker processes): whole input
//! batches go out, several in flight, and every item is settled from its outcome when its
//! batch comes back.
//!
//! The thread keeps the tickets; only the items cross. A batch is submitted as it came from
//! the queue, so the queue's batching is the wire's batching. The thread waits for a batch to
//! come back only when it has as many in flight as the stage allows, or when nothing is
//! queued (so that a lone item is passed on as soon as it is back, not when the next one
//! comes). A forced stop makes the stage return what is in flight with its items dropped, so
//! the thread never waits on a hung worker.

use std::time::{Duration, Instant};

use engine_core::plumbing::Ticket;
use engine_core::plumbing::{Finished, ItemOutcome};
use engine_core::{Counts, StageError};

use crate::worker::{Consume, Flow, Here, Input, ThreadStats};

/// A batch in flight: its tag, its place in frontend order, and its items' tickets.
struct InFlight<K> {
    tag: u64,
    seq: u64,
    tickets: Vec<K>,
}

/// Runs an offloading stage until its input ends or the run aborts; returns whether the input
/// ended without an abort. Every ticket received is completed before it returns.
pub(crate) fn run<K, S>(
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
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    let capacity = stage.offload().map_or(1, |o| o.capacity().max(1));
    let mut in_flight: Vec<InFlight<K>> = Vec::with_capacity(capacity);
    let mut next_tag = 0_u64;
    let mut clean = true;
    'run: loop {
        while let Some(done) = finished(stage, false) {
            if !settle(stage, &mut in_flight, done, input, at, counts) {
                clean = false;
                break 'run;
            }
        }
        if in_flight.len() >= capacity || (!in_flight.is_empty() && !input.has_ready()) {
            if !settle_next(stage, &mut in_flight, input, at, counts, &mut waited) {
                clean = false;
                break 'run;
            }
            stats.publish(
                counts,
                started.elapsed().saturating_sub(waited),
                stage.blocked(),
            );
            continue;
        }
        let t = Instant::now();
        let batch = input.recv();
        waited += t.elapsed();
        let Some(batch) = batch else {
            break;
        };
        counts.input += batch.items.len() as u64;
        if at.shared.abort.is_fired() {
            counts.dropped += batch.drop_all();
            clean = false;
            break;
        }
        let (tickets, items): (Vec<K>, Vec<S::Input>) = batch.items.into_iter().unzip();
        let tag = next_tag;
        next_tag += 1;
        in_flight.push(InFlight {
            tag,
            seq: batch.seq,
            tickets,
        });
        if let Some(offload) = stage.offload() {
            offload.submit(tag, items);
        }
        stats.publish(
            counts,
            started.elapsed().saturating_sub(waited),
            stage.blocked(),
        );
    }
    // Whatever is still out comes back (a forced stop returns it at once, dropped).
    while !in_flight.is_empty() {
        if !settle_next(stage, &mut in_flight, input, at, counts, &mut waited) {
            clean = false;
        }
    }
    *busy += started.elapsed().saturating_sub(waited);
    stats.publish(counts, *busy, stage.blocked());
    clean && !at.shared.abort.is_fired()
}

/// Waits for the next batch to come back and settles it; false if the run should stop taking
/// input. The wait is added to `waited`.
fn settle_next<K, S>(
    stage: &mut S,
    in_flight: &mut Vec<InFlight<K>>,
    input: &Input<K, S::Input>,
    at: Here<'_>,
    counts: &mut Counts,
    waited: &mut Duration,
) -> bool
where
    K: Ticket,
    S: Consume<K>,
{
    let t = Instant::now();
    let done = finished(stage, true);
    *waited += t.elapsed();
    match done {
        Some(done) => settle(stage, in_flight, done, input, at, counts),
        None => {
            lost(in_flight, at, counts);
            true
        }
    }
}

fn finished<K: Ticket, S: Consume<K>>(stage: &mut S, wait: bool) -> Option<Finished<S::Done>> {
    stage.offload().and_then(|offload| offload.finished(wait))
}

/// Settles a batch that came back; false if the run should stop taking input.
fn settle<K, S>(
    stage: &mut S,
    in_flight: &mut Vec<InFlight<K>>,
    (tag, outcomes): Finished<S::Done>,
    input: &Input<K, S::Input>,
    at: Here<'_>,
    counts: &mut Counts,
) -> bool
where
    K: Ticket,
    S: Consume<K>,
{
    let Some(at_index) = in_flight.iter().position(|f| f.tag == tag) else {
        tracing::error!(
            stage = at.ctx.stage(),
            tag,
            "an offloaded batch came back that was not in flight; ignored"
        );
        return true;
    };
    let batch = in_flight.swap_remove(at_index);
    let mut go_on = true;
    let mut outcomes = outcomes.into_iter();
    for ticket in batch.tickets {
        let outcome = outcomes.next().unwrap_or_else(|| {
            ItemOutcome::Failed(StageError::msg(
                "the offloaded batch came back without this item's outcome",
            ))
        });
        if stage.settle_item(ticket, outcome, at, counts) == Flow::Stop {
            go_on = false;
        }
    }
    go_on && stage.end_batch(batch.seq, !input.has_ready(), at, counts)
}

/// The stage says nothing is in flight while the engine holds tickets: a bug in the stage.
/// The items fail rather than hang the run.
fn lost<K: Ticket>(in_flight: &mut Vec<InFlight<K>>, at: Here<'_>, counts: &mut Counts) {
    let tickets: Vec<K> = in_flight.drain(..).flat_map(|f| f.tickets).collect();
    let n = tickets.len();
    counts.failed += n as u64;
    let error = StageError::msg("the offloading stage lost these items");
    let _ = at.shared.items_failed(at.ctx, error, n, tickets);
}
