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

use engine_core::StageError;
use engine_core::plumbing::{Finished, ItemOutcome, Ticket};

use super::{Consume, Consumer};
use crate::link::Batch;
use crate::shared::Flow;

/// A batch in flight: its tag, its place in frontend order, and its items' tickets.
struct InFlight<K> {
    tag: u64,
    seq: u64,
    tickets: Vec<K>,
}

/// What an offloading consumer keeps between batches.
struct Flights<K> {
    in_flight: Vec<InFlight<K>>,
    capacity: usize,
    next_tag: u64,
    /// Time spent waiting for input or for batches to come back: not work.
    waited: Duration,
}

impl<K: Ticket, S: Consume<K>> Consumer<'_, K, S> {
    /// Runs an offloading stage until its input ends or the run aborts; returns whether the
    /// input ended without an abort. Every ticket received is completed before it returns.
    pub(super) fn run_offloaded(&mut self) -> bool {
        let started = Instant::now();
        let capacity = self.stage.offload().map_or(1, |o| o.capacity().max(1));
        let mut flights = Flights {
            in_flight: Vec::with_capacity(capacity),
            capacity,
            next_tag: 0,
            waited: Duration::ZERO,
        };
        let clean = self.offload_all(&mut flights, started);
        // Whatever is still out comes back (a forced stop returns it at once, dropped).
        let mut drained = true;
        while !flights.in_flight.is_empty() {
            drained &= self.settle_next(&mut flights);
        }
        self.busy += started.elapsed().saturating_sub(flights.waited);
        self.publish();
        clean && drained && !self.at.shared.abort.is_fired()
    }

    /// Submits input batches and settles what comes back until the input ends; false if the
    /// run should stop taking input.
    fn offload_all(&mut self, flights: &mut Flights<K>, started: Instant) -> bool {
        loop {
            while let Some(done) = self.finished(false) {
                if !self.settle(flights, done) {
                    return false;
                }
            }
            let full = flights.in_flight.len() >= flights.capacity;
            if full || (!flights.in_flight.is_empty() && !self.input.has_ready()) {
                if !self.settle_next(flights) {
                    return false;
                }
            } else {
                let t = Instant::now();
                let batch = self.input.recv();
                flights.waited += t.elapsed();
                let Some(batch) = batch else {
                    return true;
                };
                if !self.submit(flights, batch) {
                    return false;
                }
            }
            let busy = self.busy + started.elapsed().saturating_sub(flights.waited);
            self.stats.publish(&self.counts, busy, self.stage.blocked());
        }
    }

    /// Sends a batch out, keeping its tickets; false (the batch dropped) after an abort.
    fn submit(&mut self, flights: &mut Flights<K>, batch: Batch<K, S::Input>) -> bool {
        self.counts.input += batch.items.len() as u64;
        if self.at.shared.abort.is_fired() {
            self.counts.dropped += batch.drop_all();
            return false;
        }
        let (tickets, items): (Vec<K>, Vec<S::Input>) = batch.items.into_iter().unzip();
        let tag = flights.next_tag;
        flights.next_tag += 1;
        flights.in_flight.push(InFlight {
            tag,
            seq: batch.seq,
            tickets,
        });
        if let Some(offload) = self.stage.offload() {
            offload.submit(tag, items);
        }
        true
    }

    /// Waits for the next batch to come back and settles it; false if the run should stop
    /// taking input.
    fn settle_next(&mut self, flights: &mut Flights<K>) -> bool {
        let t = Instant::now();
        let done = self.finished(true);
        flights.waited += t.elapsed();
        match done {
            Some(done) => self.settle(flights, done),
            None => {
                self.lost(flights);
                true
            }
        }
    }

    fn finished(&mut self, wait: bool) -> Option<Finished<S::Done>> {
        self.stage
            .offload()
            .and_then(|offload| offload.finished(wait))
    }

    /// Settles a batch that came back; false if the run should stop taking input.
    fn settle(&mut self, flights: &mut Flights<K>, (tag, outcomes): Finished<S::Done>) -> bool {
        let Some(at_index) = flights.in_flight.iter().position(|f| f.tag == tag) else {
            tracing::error!(
                stage = self.at.ctx.stage(),
                tag,
                "an offloaded batch came back that was not in flight; ignored"
            );
            return true;
        };
        let batch = flights.in_flight.swap_remove(at_index);
        let mut go_on = true;
        let mut outcomes = outcomes.into_iter();
        for ticket in batch.tickets {
            let outcome = outcomes.next().unwrap_or_else(|| {
                ItemOutcome::Failed(StageError::msg(
                    "the offloaded batch came back without this item's outcome",
                ))
            });
            let flow = self
                .stage
                .settle_item(ticket, outcome, self.at, &mut self.counts);
            go_on &= flow == Flow::Continue;
        }
        let idle = !self.input.has_ready();
        go_on
            && self
                .stage
                .end_batch(batch.seq, idle, self.at, &mut self.counts)
    }

    /// The stage says nothing is in flight while the engine holds tickets: a bug in the
    /// stage. The items fail rather than hang the run.
    fn lost(&mut self, flights: &mut Flights<K>) {
        let tickets: Vec<K> = flights
            .in_flight
            .drain(..)
            .flat_map(|f| f.tickets)
            .collect();
        let n = tickets.len();
        self.counts.failed += n as u64;
        let error = StageError::msg("the offloading stage lost these items");
        let _ = self.at.shared.items_failed(self.at.ctx, error, n, tickets);
    }
}
