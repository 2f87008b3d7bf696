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
//!
//! With `inline_when_idle`, a stage that [lends itself](Offload::lends_itself) (a placed
//! stage) is lent out while its thread sleeps with nothing in flight: a thread holding a lone
//! batch for it (a frontend thread, a pod's caller) submits the batch itself and waits for it
//! up to [`LENT_PATIENCE`], sparing the wake-up of this thread. A batch not back by then is
//! left to this thread, which is woken to settle it as its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use engine_core::StageError;
use engine_core::plumbing::{Finished, ItemOutcome, Offload, Ticket};
use engine_core::trace::{BatchScope, TraceParent};

use super::{Consume, Consumer};
use crate::link::{Batch, Polled};
use crate::shared::Flow;
use crate::stall::{self, Wait};

/// How long a run lent out waits for its batch to come back before it leaves the batch to
/// the stage's own thread, so that a slow batch does not hold the lending thread (a frontend
/// that could be reading its next item) for long. A placed stage's engine thread waits as
/// long for a lone batch before it gives it to the worker's driver.
const LENT_PATIENCE: Duration = Duration::from_millis(1);

/// A batch in flight: its tag, its place in frontend order, and its items' tickets.
pub(super) struct InFlight<K> {
    tag: u64,
    seq: u64,
    tickets: Vec<K>,
    /// The context of the span the batch was submitted in, for its outputs.
    trace: Option<TraceParent>,
}

/// What an offloading consumer keeps between batches.
struct Flights<K> {
    in_flight: Vec<InFlight<K>>,
    capacity: usize,
    /// Time spent waiting for input or for batches to come back: not work.
    waited: Duration,
}

impl<K> Flights<K> {
    fn new(capacity: usize) -> Self {
        Self {
            in_flight: Vec::with_capacity(capacity),
            capacity,
            waited: Duration::ZERO,
        }
    }
}

/// What runs lent out left in flight for the consumer's own thread, and the signal that wakes
/// it to take them over.
pub(super) struct Left<K> {
    flights: Vec<InFlight<K>>,
    wake: Sender<()>,
    woken: Receiver<()>,
}

impl<K: Ticket, S: Consume<K>> Consumer<'_, K, S> {
    /// Runs an offloading stage until its input ends or the run aborts; returns whether the
    /// input ended without an abort. Every ticket received is completed before it returns.
    pub(super) fn run_offloaded(&mut self) -> bool {
        let started = Instant::now();
        let capacity = self.stage.offload().map_or(1, |o| o.capacity().max(1));
        if let Some(in_flight) = self.stage.offload().and_then(|o| o.in_flight()) {
            self.stats.watch_in_flight(in_flight);
        }
        if self.lender.is_some() && self.stage.offload().is_some_and(|o| o.lends_itself()) {
            let (wake, woken) = crossbeam_channel::bounded(1);
            self.left = Some(Left {
                flights: Vec::new(),
                wake,
                woken,
            });
        }
        let mut flights = Flights::new(capacity);
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
    ///
    /// With batches in flight, the thread only takes input that is already queued, and
    /// otherwise waits for a batch to come back: it never blocks on its input while results of
    /// its own wait to be settled. (A look at the queue followed by a blocking receive could
    /// lose the race for the batch it saw to another thread of the stage, and then wait for
    /// input that, in ordered mode, only its own unsettled results could let in.)
    fn offload_all(&mut self, flights: &mut Flights<K>, started: Instant) -> bool {
        loop {
            while let Some(done) = self.finished(false) {
                if !self.settle(flights, done) {
                    return false;
                }
            }
            let full = flights.in_flight.len() >= flights.capacity
                || self.stage.offload().is_some_and(|o| !o.has_room());
            let next = if full && !flights.in_flight.is_empty() {
                Polled::Empty
            } else if flights.in_flight.is_empty() {
                // Nothing out: hand on what this thread holds before it may sleep on its input.
                if !self.stage.before_wait(&mut self.counts) {
                    return false;
                }
                let t = Instant::now();
                let polled = self.recv_or_lend();
                flights.waited += t.elapsed();
                // What runs lent out meanwhile left in flight is this thread's now.
                if let Some(left) = &mut self.left {
                    flights.in_flight.append(&mut left.flights);
                }
                match polled {
                    Some(Polled::Empty) => continue,
                    Some(polled) => polled,
                    None => return false,
                }
            } else {
                match self.input.try_recv() {
                    Polled::Empty => match self.wait_either(flights) {
                        Some(Polled::Empty) => continue,
                        Some(polled) => polled,
                        None => Polled::Empty,
                    },
                    polled => polled,
                }
            };
            let go_on = match next {
                Polled::Ready(batch) => self.submit(flights, batch),
                Polled::Empty => self.settle_next(flights),
                Polled::Ended => return true,
            };
            if !go_on {
                return false;
            }
            let busy = self.busy + started.elapsed().saturating_sub(flights.waited);
            self.stats.publish(&self.counts, busy, self.stage.blocked());
        }
    }

    /// Waits for input with nothing in flight, lent out meanwhile if the stage lends itself
    /// (`inline_when_idle`). `Empty` if woken to take over what a lent run left in flight;
    /// `None` if a lent run said to stop taking input.
    fn recv_or_lend(&mut self) -> Option<Polled<Batch<K, S::Input>>> {
        let (Some(lender), Some(left)) = (self.lender.clone(), &self.left) else {
            return Some(self.input.recv().map_or(Polled::Ended, Polled::Ready));
        };
        // Lenders exist only in unordered mode, where the input is the link alone.
        let woken = left.woken.clone();
        let link = Arc::clone(self.input.link());
        // SAFETY: this thread does not touch `self` until `lent` is dropped, and `self`
        // outlives it.
        let lent = unsafe { lender.lend(self) };
        let polled = link.recv_or(Some(&woken));
        if lent.reclaim() {
            if let Polled::Ready(batch) = polled {
                self.counts.input += batch.items.len() as u64;
                self.counts.dropped += batch.drop_all();
            }
            self.halted = true;
            return None;
        }
        Some(polled)
    }

    /// A lone batch run lent out, on the thread that holds it (see the module's
    /// documentation): submitted from here, and settled here if it comes back within
    /// [`LENT_PATIENCE`]; otherwise left in flight to the stage's own thread. Then what it
    /// gave goes on. Returns false if the stage should stop taking input.
    pub(super) fn run_lent_offloaded(&mut self, batch: Batch<K, S::Input>) -> bool {
        let started = Instant::now();
        let mut flights = Flights::new(1);
        let mut go_on = self.submit(&mut flights, batch);
        if go_on && let Some(done) = self.wait_finished(&mut flights, Some(LENT_PATIENCE)) {
            go_on = self.settle(&mut flights, done);
        }
        if let Some(left) = &mut self.left
            && !flights.in_flight.is_empty()
        {
            left.flights.append(&mut flights.in_flight);
            // One signal is enough for any number of batches left.
            let _ = left.wake.try_send(());
        }
        self.busy += started.elapsed().saturating_sub(flights.waited);
        let go_on = go_on && self.stage.before_wait(&mut self.counts);
        self.publish();
        go_on
    }

    /// With batches out and nothing queued: hands on what the thread holds, then sleeps
    /// until a batch comes back or input arrives, whichever is first, so that input arriving
    /// meanwhile goes out at once. `Empty` after a wake (the caller looks again), `Ended` if
    /// the run should stop taking input; `None` if the stage cannot be watched, and the
    /// thread must wait for a batch to come back alone.
    fn wait_either(&mut self, flights: &mut Flights<K>) -> Option<Polled<Batch<K, S::Input>>> {
        if !self.stage.before_wait(&mut self.counts) {
            return Some(Polled::Ended);
        }
        let offload = self.stage.offload()?;
        let mut select = Select::new();
        offload.watch_finished(&mut select)?;
        let t = Instant::now();
        let polled = self.input.wait_or(select);
        flights.waited += t.elapsed();
        Some(polled)
    }

    /// Sends a batch out, keeping its tickets; false (the batch dropped) after an abort.
    fn submit(&mut self, flights: &mut Flights<K>, batch: Batch<K, S::Input>) -> bool {
        self.counts.input += batch.items.len() as u64;
        if self.at.shared.abort.is_fired() {
            self.counts.dropped += batch.drop_all();
            return false;
        }
        // The span of a batch with traced items covers its submission: the stage sends its
        // context with the items (see `engine_core::trace::current_batch`), and the outputs
        // carry it onward.
        let len = batch.items.len();
        let scope = super::batch_scope(self.at.ctx, batch.traces.as_slice(), len);
        let (tickets, items): (Vec<K>, Vec<S::Input>) = batch.items.into_iter().unzip();
        let tag = self.next_tag;
        self.next_tag += 1;
        flights.in_flight.push(InFlight {
            tag,
            seq: batch.seq,
            tickets,
            trace: scope.as_ref().and_then(BatchScope::context),
        });
        if let Some(offload) = self.stage.offload() {
            offload.submit(tag, items);
        }
        drop(scope);
        true
    }

    /// Waits for the next batch to come back and settles it; false if the run should stop
    /// taking input.
    fn settle_next(&mut self, flights: &mut Flights<K>) -> bool {
        match self.wait_finished(flights, None) {
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

    /// Waits for the next batch to come back, for as long as it takes or up to `within`
    /// (then `None`), counting the time as waited.
    fn wait_finished(
        &mut self,
        flights: &mut Flights<K>,
        within: Option<Duration>,
    ) -> Option<Finished<S::Done>> {
        let t = Instant::now();
        let done = {
            let _waiting = stall::waiting(Wait::Worker);
            self.stage.offload().and_then(|offload| match within {
                None => offload.finished(true),
                Some(patience) => offload.finished_within(patience),
            })
        };
        flights.waited += t.elapsed();
        done
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
        self.stage.set_trace(batch.trace);
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
    /// stage. The items fail rather than hang the run, and each batch still ends, so that in
    /// ordered mode the sink does not wait for its place in the sequence.
    fn lost(&mut self, flights: &mut Flights<K>) {
        for flight in std::mem::take(&mut flights.in_flight) {
            let n = flight.tickets.len();
            self.counts.failed += n as u64;
            let error = StageError::msg("the offloading stage lost these items");
            let flow = self
                .at
                .shared
                .items_failed(self.at.ctx, error, n, flight.tickets);
            if flow == Flow::Continue {
                let idle = !self.input.has_ready();
                self.stage
                    .end_batch(flight.seq, idle, self.at, &mut self.counts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;
    use std::thread;

    use crossbeam_channel::{Receiver, Sender};
    use engine_core::plumbing::Offload;
    use engine_core::{ErrorPolicy, StageContext, StageKind, StopHandle, Transport};

    use super::*;
    use crate::consumer::{TransportStage, run_consumer};
    use crate::counters::ThreadStats;
    use crate::input::Input;
    use crate::link::{Link, Sizing, abort_pair};
    use crate::shared::Shared;

    /// A transport that runs its items "elsewhere": a batch comes back only when the engine
    /// waits for it, and `submit` holds the engine thread until the test lets it go.
    struct Remote {
        submitted: Sender<u64>,
        gate: Receiver<()>,
        held: VecDeque<(u64, Vec<u64>)>,
    }

    impl Transport for Remote {
        type Input = u64;
        type Output = u64;

        fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
            Ok(Some(x))
        }

        fn offload(&mut self) -> Option<&mut dyn Offload<Input = u64, Output = u64>> {
            Some(self)
        }
    }

    impl Offload for Remote {
        type Input = u64;
        type Output = u64;

        fn capacity(&self) -> usize {
            4
        }

        fn submit(&mut self, tag: u64, items: Vec<u64>) {
            self.held.push_back((tag, items));
            self.submitted
                .send(tag)
                .expect("the test waits for the submit");
            self.gate.recv().expect("the test opens the gate");
        }

        fn finished(&mut self, wait: bool) -> Option<Finished<u64>> {
            if !wait {
                return None;
            }
            let (tag, items) = self.held.pop_front()?;
            Some((tag, items.into_iter().map(ItemOutcome::Done).collect()))
        }
    }

    /// The interleaving behind the ordered-mode hang through worker processes: a thread with a
    /// batch in flight sees its input non-empty, and by the time it receives, another thread
    /// of the stage has taken what it saw. Here the queue holds only a nudge, which makes it
    /// look non-empty as that lost batch did. The thread must settle its batch rather than
    /// sleep on its input: in ordered mode nothing else comes until that batch is settled.
    #[test]
    fn a_thread_with_a_batch_in_flight_settles_it_even_when_the_input_it_saw_is_gone() {
        let stop = StopHandle::new();
        let (_trigger, abort) = abort_pair(&stop);
        let link = Link::new(
            Sizing {
                max_batch: 16,
                slots: 4,
            },
            0,
            abort.clone(),
        );
        let mut producer = link.producer();
        link.seal();
        let (events, _events_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            stop,
            abort,
            policy: ErrorPolicy::Skip,
            failure: Mutex::new(None),
            events,
            stop_grace: AtomicU64::new(0),
        });
        let stats = Arc::new(ThreadStats::default());
        let (submitted_tx, submitted) = crossbeam_channel::unbounded();
        let (gate, gate_rx) = crossbeam_channel::unbounded();
        let remote = Remote {
            submitted: submitted_tx,
            gate: gate_rx,
            held: VecDeque::new(),
        };
        let ctx = StageContext::standalone("remote", StageKind::Transport);
        let input = Input::new(Arc::clone(&link));
        let thread = thread::spawn({
            let (stats, shared) = (Arc::clone(&stats), Arc::clone(&shared));
            move || {
                let make = move |_: &StageContext| TransportStage::new(remote, None, false);
                run_consumer::<(), _>(make, ctx, (input, None), stats, shared)
            }
        });

        for x in 0..3 {
            producer.push((), x);
        }
        assert_eq!(producer.flush(), Ok(3));
        submitted
            .recv_timeout(Duration::from_secs(10))
            .expect("the batch is submitted");
        producer.nudge();
        gate.send(()).expect("the engine thread waits at the gate");

        // Nothing else arrives: the batch in flight must be settled without more input.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.read().output < 3 && Instant::now() < deadline {
            thread::yield_now();
        }
        let settled = stats.read().output;
        drop(producer);
        let result = thread.join().expect("the consumer thread ends");
        assert_eq!(
            settled, 3,
            "the thread slept on its input with its batch in flight"
        );
        assert_eq!(result.counts.input, 3);
        assert_eq!(result.counts.output, 3);
    }
}
