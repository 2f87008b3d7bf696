//! Live statistics of a running engine: items per stage, items per second and queue depths.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::{Counts, StageKind};

use crate::counters::ThreadStats;
use crate::link::LinkView;
use crate::wait::{ThreadWait, Wait};

/// A snapshot of a running engine, from [`EngineHandle::stats`](crate::EngineHandle::stats).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Time since the engine started.
    pub elapsed: Duration,
    /// One entry per stage, frontend first.
    pub stages: Vec<StageStats>,
    /// Whether the run has ended: the counts are final.
    pub finished: bool,
}

/// One stage in a [`Stats`] snapshot.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StageStats {
    /// The stage's name.
    pub name: String,
    /// The stage's kind.
    pub kind: StageKind,
    /// Counts so far (consumer threads publish theirs after each batch).
    pub counts: Counts,
    /// Items waiting in the stage's input queue (for a frontend: items produced but not yet
    /// handed to the queue).
    pub queued: u64,
    /// The most items the stage's input queue holds (0 for a frontend).
    pub capacity: u64,
    /// Items handled per second since the start.
    pub items_per_second: f64,
    /// Items the stage runs at once now (an async stage's futures; 0 for others).
    pub in_flight: u64,
    /// The most items the stage runs at once now (an async stage's fixed or adaptive limit;
    /// 0 for others).
    pub concurrency_limit: u64,
    /// Each thread of the stage: its counts, the time it worked, and the time it waited for
    /// room in the next queue (backpressure).
    pub threads: Vec<ThreadSnapshot>,
}

/// One thread of a stage in a [`Stats`] snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadSnapshot {
    /// The thread's counts so far.
    pub counts: Counts,
    /// Time spent in stage code and the engine's own work, so far.
    pub busy: Duration,
    /// Time spent waiting for room in a full next queue: backpressure, so far.
    pub blocked: Duration,
    /// Time spent waiting for input, so far: on an empty input queue, or (a frontend) in a
    /// read of its source marked with [`waiting_for_input`](engine_core::waiting_for_input).
    /// Not counted in `busy`.
    pub waiting_for_input: Duration,
}

impl StageStats {
    /// Items the stage has finished with: passed on, filtered or failed.
    pub fn handled(&self) -> u64 {
        self.counts.output + self.counts.filtered + self.counts.failed
    }
}

impl Stats {
    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&StageStats> {
        self.stages.iter().find(|s| s.name == name)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "after {:.1?}:", self.elapsed)?;
        for stage in &self.stages {
            write!(
                f,
                " {} {} handled ({:.0}/s, {} queued);",
                stage.name,
                stage.handled(),
                stage.items_per_second,
                stage.queued
            )?;
        }
        Ok(())
    }
}

/// Reads a run's [`Stats`] from any thread, during the run and after it (then the counts are
/// final); from [`EngineHandle::stats_reader`](crate::EngineHandle::stats_reader). Cloning is
/// cheap.
#[derive(Debug, Clone)]
pub struct StatsReader(pub(crate) Arc<StatsSource>);

impl StatsReader {
    /// A snapshot of the run's counts, rates, queue depths and thread times.
    pub fn read(&self) -> Stats {
        self.0.snapshot()
    }
}

/// Reads the live counts of one stage.
pub(crate) trait StageProbe: Send + Sync {
    fn counts(&self) -> Counts;
    fn queued(&self) -> u64;
    fn capacity(&self) -> u64;
    fn threads(&self) -> Vec<ThreadSnapshot>;
    /// What each thread waits on now.
    fn waits(&self) -> Vec<Wait>;
    /// Items the stage runs at once and its limit, if its threads say.
    fn in_flight(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// The consumer threads of a stage and its input queue.
pub(crate) struct ConsumerProbe {
    pub(crate) threads: Vec<Arc<ThreadStats>>,
    pub(crate) input: Arc<dyn LinkView>,
}

impl StageProbe for ConsumerProbe {
    fn counts(&self) -> Counts {
        self.threads.iter().map(|t| t.read()).sum()
    }

    fn queued(&self) -> u64 {
        self.input.queued()
    }

    fn capacity(&self) -> u64 {
        self.input.capacity()
    }

    fn threads(&self) -> Vec<ThreadSnapshot> {
        self.threads.iter().map(|t| snapshot(t, t.read())).collect()
    }

    fn waits(&self) -> Vec<Wait> {
        self.threads.iter().map(|t| t.wait()).collect()
    }

    fn in_flight(&self) -> (u64, u64) {
        // The threads of a stage share one limit: any of them tells.
        self.threads
            .iter()
            .find_map(|t| t.in_flight())
            .unwrap_or((0, 0))
    }
}

/// A snapshot of a thread with these counts (a frontend thread's live in its slot).
fn snapshot(thread: &ThreadStats, counts: Counts) -> ThreadSnapshot {
    let (busy, blocked) = thread.times();
    ThreadSnapshot {
        counts,
        busy,
        blocked,
        waiting_for_input: thread.waited_input(),
    }
}

/// The frontend threads of a run, whose counts live in their slots of the first link.
pub(crate) struct FrontendProbe {
    pub(crate) slots: Arc<dyn LinkView>,
    pub(crate) threads: Vec<Arc<ThreadStats>>,
}

impl StageProbe for FrontendProbe {
    fn counts(&self) -> Counts {
        self.slots.slot_counts().into_iter().sum()
    }

    fn queued(&self) -> u64 {
        self.slots.buffered()
    }

    fn capacity(&self) -> u64 {
        0
    }

    fn threads(&self) -> Vec<ThreadSnapshot> {
        self.slots
            .slot_counts()
            .into_iter()
            .zip(&self.threads)
            .map(|(counts, stats)| {
                // A frontend publishes its time outside sends; its marked reads of its source
                // are waiting, not work.
                let mut thread = snapshot(stats, counts);
                thread.busy = thread.busy.saturating_sub(thread.waiting_for_input);
                thread
            })
            .collect()
    }

    fn waits(&self) -> Vec<Wait> {
        self.threads.iter().map(|t| t.wait()).collect()
    }
}

/// What the handle and the stats logger read.
pub(crate) struct StatsSource {
    pub(crate) started: Instant,
    pub(crate) stages: Vec<(Arc<str>, StageKind, Box<dyn StageProbe>)>,
    /// How long the run took, once it has ended.
    pub(crate) ended: std::sync::OnceLock<Duration>,
}

impl fmt::Debug for StatsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsSource")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl StatsSource {
    /// Notes that the run has ended: its counts are final.
    pub(crate) fn finish(&self) {
        let _ = self.ended.set(self.started.elapsed());
    }

    /// What every thread of the run waits on now, frontend first.
    pub(crate) fn waits(&self) -> Vec<ThreadWait> {
        self.stages
            .iter()
            .flat_map(|(name, kind, probe)| {
                probe
                    .waits()
                    .into_iter()
                    .enumerate()
                    .map(|(index, wait)| ThreadWait {
                        stage: Arc::clone(name),
                        kind: *kind,
                        index,
                        wait,
                    })
            })
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let finished = self.ended.get().copied();
        let elapsed = finished.unwrap_or_else(|| self.started.elapsed());
        let secs = elapsed.as_secs_f64().max(1e-9);
        let stages = self
            .stages
            .iter()
            .map(|(name, kind, probe)| {
                let counts = probe.counts();
                let handled = counts.output + counts.filtered + counts.failed;
                let (in_flight, concurrency_limit) = probe.in_flight();
                StageStats {
                    name: name.to_string(),
                    kind: *kind,
                    counts,
                    queued: probe.queued(),
                    capacity: probe.capacity(),
                    items_per_second: handled as f64 / secs,
                    in_flight,
                    concurrency_limit,
                    threads: probe.threads(),
                }
            })
            .collect();
        Stats {
            elapsed,
            stages,
            finished: finished.is_some(),
        }
    }
}

/// Logs a snapshot, with rates over the interval since the previous one.
pub(crate) fn log(now: &Stats, before: Option<&Stats>) {
    for stage in &now.stages {
        let rate = match before.and_then(|b| b.stage(&stage.name).map(|s| (b.elapsed, s))) {
            Some((then, old)) => {
                let secs = now.elapsed.saturating_sub(then).as_secs_f64().max(1e-9);
                stage.handled().saturating_sub(old.handled()) as f64 / secs
            }
            None => stage.items_per_second,
        };
        tracing::info!(
            target: "engine_threads::stats",
            stage = %stage.name,
            kind = stage.kind.as_str(),
            handled = stage.handled(),
            failed = stage.counts.failed,
            items_per_second = rate.round(),
            queued = stage.queued,
            "stats"
        );
    }
}
