//! The stall report: the coordinator's check that logs what each stage thread waits on when
//! admitted items stop settling.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::stats::Stats;
use crate::wait::ThreadWait;

/// How long a run may make no progress, with items admitted and not settled, before the
/// engine logs what its threads wait on.
pub(crate) const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30);

/// The most often a stall is reported.
const REPEAT_AFTER: Duration = Duration::from_secs(60);

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
