//! A stage placed in worker processes: one set of workers shared by the engine threads of the
//! stage, one lane of results per thread, and the batches of each thread in flight at once.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_core::plumbing::{Finished, ItemOutcome, Offload, lock};
use engine_core::protocol::TaskId;
use engine_core::{StageContext, StageError, StopLevel};

use crate::config::{Config, WATCH_POLL, WATCH_SPIN, WATCH_WAIT};
use crate::error::{Completion, TaskError, TaskResult};
use crate::program::Program;
use crate::shared::{Results, Shared, State, Watch};
use crate::workers::Workers;

/// The workers of one placed stage in one run, shared by the stage's engine threads.
struct Placement<W: Program> {
    workers: Workers<W>,
    /// Each engine thread's receiver of results, taken when the thread joins.
    lanes: Vec<Option<Results<W::Output>>>,
    /// Threads that joined and have not left.
    users: usize,
}

/// Where the clones of one placed stage (one per engine thread) find their workers.
pub(crate) struct Slot<W: Program> {
    state: Arc<Mutex<SlotState<W>>>,
}

enum SlotState<W: Program> {
    /// No run uses the stage.
    Idle,
    Running(Placement<W>),
    /// The workers could not be started; every other thread of the run gets the same error.
    Failed(String),
}

impl<W: Program> Clone for Slot<W> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

impl<W: Program> Default for Slot<W> {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(SlotState::Idle)),
        }
    }
}

impl<W: Program> fmt::Debug for Slot<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*lock(&self.state) {
            SlotState::Idle => "idle".to_owned(),
            SlotState::Running(p) => format!("running, pids {:?}", p.workers.shared.pids()),
            SlotState::Failed(e) => format!("failed: {e}"),
        };
        f.debug_struct("Slot").field("state", &state).finish()
    }
}

/// A stop of the run reaches the workers' stage code; only a stop now kills them. A graceful
/// stop drains through them, and they are stopped when the last thread leaves.
fn on_stop<W: Program>(shared: &Shared<W>, level: StopLevel) {
    shared.forward_stop(level);
    if level >= StopLevel::Now {
        shared.close(State::Killing);
    }
}

impl<W: Program> Slot<W> {
    /// Joins the stage's workers as engine thread `ctx.index()`, starting them if this is the
    /// first thread of the run; `inits` gives each worker's arguments.
    pub(crate) fn join(
        &self,
        ctx: &StageContext,
        workers: usize,
        config: Config,
        inits: impl FnOnce(usize) -> Result<Vec<W::Init>, StageError>,
    ) -> Result<Lane<W>, StageError> {
        let mut state = lock(&self.state);
        if matches!(*state, SlotState::Idle) {
            let inits = inits(workers)?;
            let threads = ctx.instances().max(1);
            *state = match Workers::start_with(inits, config, threads, ctx.stop().clone(), on_stop)
            {
                Ok((workers, lanes)) => SlotState::Running(Placement {
                    workers,
                    lanes: lanes.into_iter().map(Some).collect(),
                    users: 0,
                }),
                Err(error) => SlotState::Failed(error.to_string()),
            };
        }
        let placement = match &mut *state {
            SlotState::Running(placement) => placement,
            SlotState::Failed(error) => {
                return Err(
                    StageError::msg(format!("cannot start the worker processes: {error}")).fatal(),
                );
            }
            SlotState::Idle => unreachable!("the workers were just started"),
        };
        let index = ctx.index();
        let rx = placement
            .lanes
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| {
                StageError::msg(
                    "this placed stage already runs in another engine: give each engine its own",
                )
                .fatal()
            })?;
        placement.users += 1;
        let workers = placement.workers.len();
        let threads = placement.lanes.len();
        Ok(Lane {
            slot: self.clone(),
            shared: Arc::clone(&placement.workers.shared),
            lane: u32::try_from(index).unwrap_or(u32::MAX),
            rx,
            watch: None,
            ready: VecDeque::new(),
            sizes: HashMap::new(),
            // Enough batches in the system that every worker has one running and one waiting,
            // and one more queued for it.
            capacity: (3 * workers).div_ceil(threads).max(2),
        })
    }

    /// The stage's workers' metrics (none while no run uses it).
    #[cfg(feature = "metrics")]
    pub(crate) fn metrics(&self) -> crate::WorkerMetrics {
        crate::WorkerMetrics::new(std::sync::Arc::new(self.clone()))
    }

    /// The pids of the live workers (none when no run uses the stage).
    pub(crate) fn pids(&self) -> Vec<u32> {
        match &*lock(&self.state) {
            SlotState::Running(placement) => placement.workers.shared.pids(),
            _ => Vec::new(),
        }
    }
}

/// One engine thread's connection to the stage's workers.
pub(crate) struct Lane<W: Program> {
    slot: Slot<W>,
    shared: Arc<Shared<W>>,
    lane: u32,
    rx: Results<W::Output>,
    /// A lone batch sent straight to an idle worker, whose reply this thread looks for
    /// itself before it sleeps.
    watch: Option<Watch<W::Task>>,
    ready: VecDeque<Completion<W::Output>>,
    /// The number of items of each batch in flight, by tag.
    sizes: HashMap<u64, usize>,
    capacity: usize,
}

impl<W: Program> fmt::Debug for Lane<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lane")
            .field("lane", &self.lane)
            .field("in_flight", &self.sizes.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<W: Program> Lane<W> {
    /// Gives the watched batch, if any, to its worker's driver: its results come through the
    /// lane.
    fn end_watch(&mut self) {
        if let Some(watch) = self.watch.take() {
            self.shared.end_watch(watch, None);
        }
    }

    /// Looks for the watched batch's reply, waiting up to `wait` for it (not at all if
    /// `None`); true if it came (its results are ready). After a wait in vain, the driver
    /// takes the batch over.
    fn poll_watch(&mut self, wait: Option<Duration>) -> bool {
        let Some(watch) = self.watch.take() else {
            return false;
        };
        match self.shared.poll_watch(watch, wait) {
            Ok(Some(answers)) => {
                self.ready.extend(answers);
                true
            }
            Ok(None) => false,
            Err(watch) if wait.is_some() => {
                self.shared.end_watch(watch, None);
                false
            }
            Err(watch) => {
                self.watch = Some(watch);
                false
            }
        }
    }

    /// Waits for the watched batch's reply, if one is watched, but not past `deadline`; true
    /// if it came.
    ///
    /// A lone item's reply often comes back sooner than a sleeping thread would wake for it,
    /// so this thread first looks for it without sleeping: spinning for [`WATCH_SPIN`], then
    /// yielding between looks until [`WATCH_POLL`] (on two cores the worker may wait for
    /// this very core, and a thread that only spun would keep it from its reply). Then it
    /// sleeps on the worker for up to [`WATCH_WAIT`], so that a later reply wakes it as it
    /// would wake a thread that called the worker itself, and after that gives the batch to
    /// the driver.
    fn wait_for_watched(&mut self, deadline: Option<Instant>) -> bool {
        loop {
            let now = Instant::now();
            let Some(watched) = self.watch.as_ref().map(|w| now.duration_since(w.sent())) else {
                return false;
            };
            if deadline.is_some_and(|deadline| now >= deadline) {
                return false;
            }
            if watched >= WATCH_POLL {
                let wait = deadline.map_or(WATCH_WAIT, |d| (d - now).min(WATCH_WAIT));
                return self.poll_watch(Some(wait));
            }
            if self.poll_watch(None) {
                return true;
            }
            if watched < WATCH_SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// A batch whose results are in, if any.
    fn take_ready<O>(&mut self) -> Option<Finished<O>>
    where
        W: Program<Output = Vec<ItemOutcome<O>>>,
    {
        let (id, result) = self.ready.pop_front()?;
        let n = self.sizes.remove(&id.0).unwrap_or(0);
        Some((id.0, outcomes(result, n)))
    }
}

impl<W: Program> Drop for Lane<W> {
    fn drop(&mut self) {
        // The driver takes the watched batch, so that stopping the workers does not wait
        // for this thread.
        self.end_watch();
        // The last thread to leave stops the workers: they run their cleanup and exit.
        let placement = {
            let mut state = lock(&self.slot.state);
            let last = match &mut *state {
                SlotState::Running(placement) => {
                    placement.users -= 1;
                    placement.users == 0
                }
                _ => false,
            };
            last.then(|| std::mem::replace(&mut *state, SlotState::Idle))
        };
        // Outside the lock: stopping the workers waits for them.
        drop(placement);
    }
}

/// The items of a batch that has no outcome of its own (its worker died every time, the run
/// was stopped): each gets the batch's fate.
fn each<O>(error: &TaskError, n: usize) -> Vec<ItemOutcome<O>> {
    match error {
        TaskError::Cancelled => (0..n).map(|_| ItemOutcome::Dropped).collect(),
        error => {
            let message = error.to_string();
            (0..n)
                .map(|_| ItemOutcome::Failed(StageError::msg(&message)))
                .collect()
        }
    }
}

impl<I, O, W> Offload for Lane<W>
where
    W: Program<Task = Vec<I>, Output = Vec<ItemOutcome<O>>>,
    I: Send + 'static,
{
    type Input = I;
    type Output = O;

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn submit(&mut self, tag: u64, items: Vec<I>) {
        // More than a lone batch out: the driver takes the watched one over, and feeds its
        // worker the batches that follow as it does under load.
        self.end_watch();
        self.sizes.insert(tag, items.len());
        self.watch = self.shared.submit_watched(self.lane, TaskId(tag), items);
    }

    fn finished(&mut self, wait: bool) -> Option<Finished<O>> {
        self.next_finished(if wait { Until::Back } else { Until::Now })
    }

    /// A lone batch submitted by another thread (`inline_when_idle`) is waited for as this
    /// thread would wait for it, up to the patience given (a sleep on the worker lasts whole
    /// milliseconds, as ipc-channel waits: the last may end up to one later).
    fn lends_itself(&self) -> bool {
        true
    }

    fn finished_within(&mut self, patience: Duration) -> Option<Finished<O>> {
        self.next_finished(Until::Deadline(Instant::now() + patience))
    }
}

fn outcomes<O>(result: TaskResult<Vec<ItemOutcome<O>>>, n: usize) -> Vec<ItemOutcome<O>> {
    match result {
        Ok(outcomes) => outcomes,
        Err(error) => each(&error, n),
    }
}

/// How long [`Lane::next_finished`] waits for a batch to come back.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// Not at all.
    Now,
    /// As long as it takes.
    Back,
    /// Until then at most.
    Deadline(Instant),
}

impl<I, O, W> Lane<W>
where
    W: Program<Task = Vec<I>, Output = Vec<ItemOutcome<O>>>,
    I: Send + 'static,
{
    /// The next batch whose results are in: the watched one's, looked for first, or one
    /// from the lane.
    fn next_finished(&mut self, until: Until) -> Option<Finished<O>> {
        loop {
            if let Some(done) = self.take_ready() {
                return Some(done);
            }
            if self.sizes.is_empty() {
                return None;
            }
            let watched = match until {
                Until::Now => self.poll_watch(None),
                Until::Back => self.wait_for_watched(None),
                Until::Deadline(deadline) => self.wait_for_watched(Some(deadline)),
            };
            if watched {
                continue;
            }
            let batch = match until {
                Until::Now => self.rx.try_recv().ok(),
                Until::Back => self.rx.recv().ok(),
                Until::Deadline(deadline) => self.rx.recv_deadline(deadline).ok(),
            };
            self.ready.extend(batch?);
        }
    }

    /// Runs one item through the workers and waits for it: for an engine that calls the
    /// stage per item.
    pub(crate) fn call(&mut self, item: I) -> ItemOutcome<O> {
        // Tags of single calls count down from the top, away from an engine's batch tags.
        let tag = u64::MAX - self.sizes.len() as u64;
        self.submit(tag, vec![item]);
        while let Some((done, mut outcomes)) = self.finished(true) {
            if done == tag {
                return outcomes.pop().unwrap_or_else(|| {
                    ItemOutcome::Failed(StageError::msg("the worker gave no outcome"))
                });
            }
        }
        ItemOutcome::Failed(StageError::msg("the worker processes are gone").fatal())
    }
}

#[cfg(feature = "metrics")]
impl<W: Program> crate::metrics::SlotSource for Slot<W> {
    fn read(&self) -> (String, Vec<crate::counters::SlotSnapshot>) {
        match &*lock(&self.state) {
            SlotState::Running(placement) => {
                let shared = &placement.workers.shared;
                (shared.config().name.clone(), shared.slot_snapshots())
            }
            _ => (String::new(), Vec::new()),
        }
    }
}
