//! A started run, coordinated to its end: the coordinator waits for the threads, starts the
//! stop (and its deadline), logs the statistics, and writes the report.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use engine_core::plumbing::{StopDeadline, lock};
use engine_core::{RunEnd, RunReport, StageKind, StageReport, StopSubscription, ThreadReport};

use crate::counters::{ThreadResult, ThreadStats};
use crate::error::EngineError;
use crate::input::Window;
use crate::link::{AbortTrigger, LinkView};
use crate::plan::Options;
use crate::shared::{Event, Shared};
use crate::stall_watch::StallWatch;
use crate::stats::{Stats, StatsSource};

/// A consumer stage being started or run.
pub(crate) struct ConsumerStage {
    pub(crate) name: Arc<str>,
    pub(crate) kind: StageKind,
    pub(crate) input: Arc<dyn LinkView>,
    pub(crate) handles: Vec<JoinHandle<ThreadResult>>,
    pub(crate) stats: Vec<Arc<ThreadStats>>,
}

/// A started engine, to run to its end.
pub(crate) struct Run {
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: Receiver<Event>,
    pub(crate) _trigger: Arc<AbortTrigger>,
    pub(crate) _subscription: StopSubscription,
    pub(crate) started: Instant,
    pub(crate) options: Options,
    pub(crate) frontend_threads: usize,
    /// The frontend threads' live statistics (their marked waits for input).
    pub(crate) frontend_stats: Vec<Arc<ThreadStats>>,
    /// Ordered mode's window, for the stall report.
    pub(crate) window: Option<Arc<Window>>,
    pub(crate) first: Arc<dyn LinkView>,
    pub(crate) consumers: Vec<ConsumerStage>,
    pub(crate) stats: Arc<StatsSource>,
}

/// What the coordinator knows while the run lasts.
struct Coordinator {
    run: Run,
    consumer_threads: usize,
    consumers_done: usize,
    /// Each frontend thread's busy time, once it has ended.
    frontend_busy: Vec<Option<Duration>>,
    stopping: bool,
    deadline: Option<StopDeadline>,
    next_stats: Option<Instant>,
    last_stats: Option<Stats>,
    stall: Option<StallWatch>,
    /// After a graceful stop has drained the pipeline: until when the frontends' cleanups
    /// are waited for (their longest `stop_grace`).
    grace_until: Option<Instant>,
}

impl Run {
    /// The engine's statistics, for the handle.
    pub(crate) fn stats(&self) -> &Arc<StatsSource> {
        &self.stats
    }

    /// Waits for the run to end and returns its report.
    pub(crate) fn coordinate(self) -> Result<RunReport, EngineError> {
        let mut coordinator = Coordinator::new(self);
        while !coordinator.is_over() {
            match coordinator.next_event() {
                Ok(Event::ThreadDone) => coordinator.consumers_done += 1,
                Ok(Event::FrontendDone { index, busy }) => {
                    coordinator.frontend_busy[index] = Some(busy);
                }
                Ok(Event::Stop) => coordinator.on_stop(),
                Err(RecvTimeoutError::Timeout) => coordinator.on_timeout(),
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("the run holds a sender of its own events")
                }
            }
        }
        coordinator.finish()
    }
}

impl Coordinator {
    fn new(run: Run) -> Self {
        Self {
            consumer_threads: run.consumers.iter().map(|s| s.handles.len()).sum(),
            consumers_done: 0,
            frontend_busy: vec![None; run.frontend_threads],
            stopping: false,
            deadline: None,
            next_stats: next_stats(&run.options),
            last_stats: None,
            stall: run.options.stall_after.map(StallWatch::new),
            grace_until: None,
            run,
        }
    }

    /// Whether the run is over: every consumer thread is done, and every frontend too, or
    /// after a stop the frontends' grace is over (an abort ends it at once).
    fn is_over(&mut self) -> bool {
        if self.consumers_done < self.consumer_threads {
            return false;
        }
        if self.frontend_busy.iter().all(Option::is_some) {
            return true;
        }
        if !self.stopping {
            return false;
        }
        if self.run.shared.abort.is_fired() {
            return true;
        }
        let now = Instant::now();
        let grace = self.run.shared.stop_grace();
        let until = *self.grace_until.get_or_insert_with(|| {
            now.checked_add(grace)
                .unwrap_or(now + Duration::from_secs(86_400 * 365))
        });
        now >= until
    }

    /// The next event, or a timeout when the statistics are due or the grace ends.
    fn next_event(&self) -> Result<Event, RecvTimeoutError> {
        let stall = self.stall.as_ref().map(StallWatch::due);
        match self
            .next_stats
            .into_iter()
            .chain(self.grace_until)
            .chain(stall)
            .min()
        {
            None => self
                .run
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => self.run.events.recv_deadline(at),
        }
    }

    /// The first stop: the frontends stop producing (one blocked in `produce` is left
    /// behind, and what its slot holds drains), and the stop deadline starts.
    fn on_stop(&mut self) {
        if std::mem::replace(&mut self.stopping, true) {
            return;
        }
        self.run.first.close_slots();
        if let Some(timeout) = self.run.options.stop_timeout {
            self.deadline = self.run.shared.stop.stop_now_after(timeout).ok();
        }
    }

    /// Logs the statistics and checks for a stall when they are due; otherwise the grace
    /// ended, which `is_over` sees.
    fn on_timeout(&mut self) {
        if let Some(stall) = &mut self.stall
            && stall.due() <= Instant::now()
        {
            let next_seq = self.run.window.as_ref().map(|w| w.delivered());
            stall.check(
                &self.run.stats.snapshot(),
                &self.run.stats.waits(),
                next_seq,
            );
        }
        if self.next_stats.is_none_or(|at| Instant::now() < at) {
            return;
        }
        let now = self.run.stats.snapshot();
        crate::stats::log(&now, self.last_stats.as_ref());
        self.last_stats = Some(now);
        self.next_stats = next_stats(&self.run.options);
    }

    /// After the loop: counts what an abort left behind, and writes the report.
    fn finish(mut self) -> Result<RunReport, EngineError> {
        drop(self.deadline.take());
        let elapsed = self.run.started.elapsed();
        let aborted = self.run.shared.abort.is_fired();
        if aborted {
            self.run.first.drain_abandoned();
            for stage in &self.run.consumers {
                stage.input.drain_abandoned();
            }
        }
        self.run.report(elapsed, aborted, &self.frontend_busy)
    }
}

/// When the statistics are next due, if they are logged.
fn next_stats(options: &Options) -> Option<Instant> {
    options
        .stats_interval
        .and_then(|interval| Instant::now().checked_add(interval))
}

impl Run {
    fn report(
        &mut self,
        elapsed: Duration,
        aborted: bool,
        frontend_busy: &[Option<Duration>],
    ) -> Result<RunReport, EngineError> {
        let mut stages = Vec::with_capacity(1 + self.consumers.len());
        stages.push(self.frontend_report(elapsed, frontend_busy));
        for stage in &mut self.consumers {
            stages.push(stage.report());
        }
        let failure = lock(&self.shared.failure).take();
        let end = match &failure {
            Some(failure) => RunEnd::Failed {
                stage: failure.stage.to_string(),
                reason: format!("{:#}", failure.error),
            },
            None if aborted => RunEnd::Aborted,
            None if self.shared.stop.is_stopping() => RunEnd::Stopped,
            None => RunEnd::Completed,
        };
        let report = RunReport::new(stages, elapsed, end);
        if let Err(mismatch) = report.check() {
            tracing::error!(%mismatch, "the run's counts do not add up; this is a bug in engine-threads");
        }
        match failure {
            None => Ok(report),
            Some(failure) => Err(EngineError::StageFailed {
                stage: failure.stage.to_string(),
                kind: failure.kind,
                thread: failure.thread,
                during_setup: failure.during_setup,
                error: failure.error,
                report: Box::new(report),
            }),
        }
    }

    /// The frontend's report, from its slots; a frontend still stuck in `produce` counts as
    /// busy for the whole run.
    fn frontend_report(&self, elapsed: Duration, busy: &[Option<Duration>]) -> StageReport {
        let mut front = StageReport::new(&*self.options.names[0], StageKind::Frontend);
        for (index, counts) in self.first.slot_counts().into_iter().enumerate() {
            front.counts += counts;
            // Time in marked reads of the source is waiting, not work.
            let waited = self
                .frontend_stats
                .get(index)
                .map_or(Duration::ZERO, |s| s.waited_input());
            let busy = busy[index].unwrap_or(elapsed).saturating_sub(waited);
            front = front.with_thread(ThreadReport::new(index, counts.input, busy));
        }
        front
    }
}

impl ConsumerStage {
    /// Joins the stage's threads and adds up their counts, with what its input abandoned.
    fn report(&mut self) -> StageReport {
        let mut report = StageReport::new(&*self.name, self.kind);
        for (index, handle) in self.handles.drain(..).enumerate() {
            let result = handle.join().unwrap_or_else(|_| ThreadResult {
                counts: self.stats[index].read(),
                busy: Duration::ZERO,
            });
            let handled = result.counts.input - result.counts.dropped;
            report.counts += result.counts;
            report = report.with_thread(ThreadReport::new(index, handled, result.busy));
        }
        let abandoned = self.input.abandoned();
        report.counts.input += abandoned;
        report.counts.dropped += abandoned;
        report
    }
}
