//! The stall report: what each stage thread waits on, marked only where a thread blocks, and
//! the coordinator's check that logs it when admitted items stop settling.
//!
//! A thread marks its wait in its own [`ThreadStats`] just before it blocks and clears it
//! after, so the mark costs a thread-local lookup and an atomic store on paths that are
//! about to sleep anyway, and nothing on the hot path. The coordinator reads the marks only
//! when the run has made no progress for a while.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::StageKind;

use crate::counters::ThreadStats;
use crate::stats::Stats;

/// How long a run may make no progress, with items admitted and not settled, before the
/// engine logs what its threads wait on.
pub(crate) const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30);

/// The most often a stall is reported.
const REPEAT_AFTER: Duration = Duration::from_secs(60);

/// What a stage thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Wait {
    /// In stage code or the engine's own work (for a frontend: in `produce`).
    Working = 0,
    /// Waiting for its input queue.
    Input = 1,
    /// Waiting for room in the next queue.
    Room = 2,
    /// A frontend in ordered mode, waiting for the sink to deliver (the ordered window).
    Window = 3,
    /// Waiting for a batch to come back from where its items run (a worker's batch).
    Worker = 4,
    /// The thread has left its loop.
    Ended = 5,
}

impl Wait {
    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Input,
            2 => Self::Room,
            3 => Self::Window,
            4 => Self::Worker,
            5 => Self::Ended,
            _ => Self::Working,
        }
    }

    /// Whether a thread in this state holds up items it admitted (a thread waiting for input,
    /// or done, holds nothing).
    fn holds_items(self, kind: StageKind) -> bool {
        match self {
            Self::Input | Self::Ended => false,
            // A frontend in `produce` is waiting for its source, not holding items.
            Self::Working => kind != StageKind::Frontend,
            Self::Room | Self::Window | Self::Worker => true,
        }
    }

    fn describe(self, kind: StageKind) -> &'static str {
        match (self, kind) {
            (Self::Working, StageKind::Frontend) => "in produce (its source)",
            (Self::Working, _) => "working (in the stage's code)",
            (Self::Input, _) => "waiting for its input",
            (Self::Room, _) => "waiting for room downstream",
            (Self::Window, _) => "waiting for the ordered window",
            (Self::Worker, _) => "waiting for a batch to come back from its workers",
            (Self::Ended, _) => "ended",
        }
    }
}

thread_local! {
    /// The stats of the stage thread running here, if any.
    static CURRENT: RefCell<Option<Arc<ThreadStats>>> = const { RefCell::new(None) };
}

/// Makes `stats` the current thread's, for the marks of [`waiting`] and of the stage's own
/// [`waiting_for_input`](engine_core::waiting_for_input).
pub(crate) fn enter(stats: &Arc<ThreadStats>) {
    CURRENT.with(|current| *current.borrow_mut() = Some(Arc::clone(stats)));
    engine_core::plumbing::set_wait_sink(Some(Arc::clone(stats) as _));
}

/// Marks the current thread as ended and forgets its stats.
pub(crate) fn leave() {
    engine_core::plumbing::set_wait_sink(None);
    if let Some(stats) = CURRENT.with(|current| current.borrow_mut().take()) {
        stats.set_wait(Wait::Ended);
    }
}

/// Marks the current stage thread as waiting until the guard is dropped; a wait for input
/// also counts its time.
pub(crate) fn waiting(wait: Wait) -> Waiting {
    let stats = CURRENT.with(|current| current.borrow().clone());
    if let Some(stats) = &stats {
        stats.set_wait(wait);
    }
    let since = (wait == Wait::Input && stats.is_some()).then(Instant::now);
    Waiting(stats, since)
}

/// Clears a wait mark when dropped (and counts a wait for input).
pub(crate) struct Waiting(Option<Arc<ThreadStats>>, Option<Instant>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(stats) = &self.0 {
            if let Some(since) = self.1 {
                stats.add_input_wait(since.elapsed());
            }
            stats.set_wait(Wait::Working);
        }
    }
}

/// The coordinator's watch: when the run's counts stop moving while some thread holds items,
/// one warning, at most once a minute.
#[derive(Debug)]
pub(crate) struct StallWatch {
    every: Duration,
    next: Instant,
    last_progress: Option<u64>,
    since: Instant,
    reported: Option<Instant>,
}

/// One thread's wait, by stage.
pub(crate) struct ThreadWait {
    pub(crate) stage: Arc<str>,
    pub(crate) kind: StageKind,
    pub(crate) index: usize,
    pub(crate) wait: Wait,
}

impl StallWatch {
    pub(crate) fn new(every: Duration) -> Self {
        let now = Instant::now();
        Self {
            every,
            next: now + every,
            last_progress: None,
            since: now,
            reported: None,
        }
    }

    /// When the next check is due.
    pub(crate) fn due(&self) -> Instant {
        self.next
    }

    /// Checks for a stall and logs it; returns whether it logged. `next_seq` is the batch the
    /// sink of an ordered run waits for.
    pub(crate) fn check(
        &mut self,
        stats: &Stats,
        waits: &[ThreadWait],
        next_seq: Option<u64>,
    ) -> bool {
        let now = Instant::now();
        self.next = now + self.every;
        let progress = fingerprint(stats);
        if self.last_progress != Some(progress) {
            self.last_progress = Some(progress);
            self.since = now;
            return false;
        }
        let holding = waits.iter().any(|t| t.wait.holds_items(t.kind));
        if !holding || self.reported.is_some_and(|at| now < at + REPEAT_AFTER) {
            return false;
        }
        self.reported = Some(now);
        let report = describe(waits);
        let still = now.duration_since(self.since);
        match next_seq {
            Some(seq) => tracing::warn!(
                still = ?still,
                oldest_unsettled_batch = seq,
                threads = %report,
                "the engine makes no progress: items were admitted and are not settled \
                 (ordered: the sink waits for batch {seq})"
            ),
            None => tracing::warn!(
                still = ?still,
                threads = %report,
                "the engine makes no progress: items were admitted and are not settled"
            ),
        }
        true
    }
}

/// A number that changes whenever any count or queue of the run does.
fn fingerprint(stats: &Stats) -> u64 {
    stats.stages.iter().fold(0_u64, |acc, stage| {
        let c = stage.counts;
        [
            c.input,
            c.output,
            c.filtered,
            c.failed,
            c.dropped,
            c.expanded,
            stage.queued,
        ]
        .iter()
        .fold(acc, |acc, n| acc.wrapping_mul(31).wrapping_add(*n))
    })
}

/// "numbers (frontend) thread 0: waiting for the ordered window; ..."
fn describe(waits: &[ThreadWait]) -> String {
    let mut out = String::new();
    for (i, t) in waits.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = write!(
            out,
            "{} ({}) thread {}: {}",
            t.stage,
            t.kind.as_str(),
            t.index,
            t.wait.describe(t.kind)
        );
    }
    out
}
