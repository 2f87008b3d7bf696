//! The run report every engine returns: per-stage item counts, per-thread busy time, elapsed
//! time, and a check that the counts add up.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kind::StageKind;

pub use counts::Counts;

mod counts;

/// What one thread (or worker process) of a stage did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ThreadReport {
    /// The 0-based index of the thread or worker within its stage.
    pub index: usize,
    /// Items this thread handled (all buckets but `dropped`).
    pub items: u64,
    /// Time spent inside stage code (setup, items, cleanup), as opposed to waiting on queues.
    pub busy: Duration,
}

impl ThreadReport {
    /// A report for thread `index`.
    pub fn new(index: usize, items: u64, busy: Duration) -> Self {
        Self { index, items, busy }
    }
}

/// What one stage did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StageReport {
    /// The stage's name.
    pub name: String,
    /// Frontend, transport or backend.
    pub kind: StageKind,
    /// Item counts over all threads of the stage, including items dropped from its input
    /// queue.
    pub counts: Counts,
    /// One entry per thread or worker.
    pub threads: Vec<ThreadReport>,
}

impl StageReport {
    /// An empty report for a stage.
    pub fn new(name: impl Into<String>, kind: StageKind) -> Self {
        Self {
            name: name.into(),
            kind,
            counts: Counts::default(),
            threads: Vec::new(),
        }
    }

    /// Sets the counts.
    #[must_use]
    pub fn with_counts(mut self, counts: Counts) -> Self {
        self.counts = counts;
        self
    }

    /// Adds a thread's report.
    #[must_use]
    pub fn with_thread(mut self, thread: ThreadReport) -> Self {
        self.threads.push(thread);
        self
    }

    /// Total busy time of all threads.
    pub fn busy(&self) -> Duration {
        self.threads.iter().map(|t| t.busy).sum()
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RunEnd {
    /// The frontend ran out of items and everything drained.
    Completed,
    /// A graceful stop was requested; everything accepted drained.
    Stopped,
    /// A forced stop (or an expired stop deadline) abandoned queued items; see the dropped
    /// counts.
    Aborted,
    /// A stage failed under [`ErrorPolicy::Stop`](crate::ErrorPolicy::Stop), or a setup
    /// failed.
    Failed {
        /// The stage that failed.
        stage: String,
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for RunEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Completed => f.write_str("completed"),
            Self::Stopped => f.write_str("stopped (drained)"),
            Self::Aborted => f.write_str("aborted (queued items dropped)"),
            Self::Failed { stage, reason } => write!(f, "failed in stage {stage:?}: {reason}"),
        }
    }
}

/// The counts of a report do not add up: an item was lost or counted twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CountMismatch {
    /// A stage's buckets do not add up to its input.
    #[error(
        "stage {stage:?}: {input} items in, but {accounted} accounted for (out + filtered + failed + dropped)"
    )]
    Stage {
        /// The stage's name.
        stage: String,
        /// Items that reached the stage.
        input: u64,
        /// Items in its buckets.
        accounted: u128,
    },
    /// Items were dropped in a run that neither aborted nor failed: a graceful stop or a
    /// completed run must drain everything.
    #[error("{dropped} items were dropped, but the run ended as {end:?}, which drops nothing")]
    DroppedWithoutAbort {
        /// Items dropped over all stages.
        dropped: u64,
        /// How the run ended.
        end: RunEnd,
    },
    /// A stage received a different number of items than the previous stage passed on.
    #[error("stage {from:?} passed on {sent} items, but stage {to:?} received {received}")]
    Link {
        /// The upstream stage.
        from: String,
        /// The downstream stage.
        to: String,
        /// Items the upstream stage passed on.
        sent: u64,
        /// Items that reached the downstream stage.
        received: u64,
    },
}

/// The result of a run: what each stage did, how long it took and how it ended.
///
/// Stages are listed in pipeline order. [`check`](Self::check) proves that no item was lost:
/// each stage's counts balance, and each stage received exactly what the one before passed on.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine::core::{Counts, RunEnd, RunReport, StageKind, StageReport, ThreadReport};
///
/// let mut produced = Counts::default();
/// (produced.input, produced.output) = (10, 10);
/// let mut summed = Counts::default();
/// (summed.input, summed.output, summed.failed) = (10, 9, 1);
///
/// let report = RunReport::new(
///     vec![
///         StageReport::new("numbers", StageKind::Frontend)
///             .with_counts(produced)
///             .with_thread(ThreadReport::new(0, 10, Duration::from_millis(2))),
///         StageReport::new("sum", StageKind::Backend)
///             .with_counts(summed)
///             .with_thread(ThreadReport::new(0, 10, Duration::from_millis(5))),
///     ],
///     Duration::from_millis(8),
///     RunEnd::Completed,
/// );
/// report.check()?;
/// assert_eq!(report.processed(), 9);
/// assert_eq!(report.failed(), 1);
/// println!("{report}");
/// # Ok::<(), engine::core::CountMismatch>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunReport {
    /// One entry per stage, in pipeline order.
    pub stages: Vec<StageReport>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// How the run ended.
    pub end: RunEnd,
}

impl RunReport {
    /// A report from its parts.
    pub fn new(stages: Vec<StageReport>, elapsed: Duration, end: RunEnd) -> Self {
        Self {
            stages,
            elapsed,
            end,
        }
    }

    /// The stage with this name.
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The first stage of this kind.
    pub fn stage_of_kind(&self, kind: StageKind) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.kind == kind)
    }

    /// Items produced by the first stage (passed on to the rest of the pipeline).
    pub fn produced(&self) -> u64 {
        self.stages.first().map_or(0, |s| s.counts.output)
    }

    /// Items the last stage processed successfully.
    pub fn processed(&self) -> u64 {
        self.stages.last().map_or(0, |s| s.counts.output)
    }

    /// Items filtered out, over all stages.
    pub fn filtered(&self) -> u64 {
        self.stages.iter().map(|s| s.counts.filtered).sum()
    }

    /// Failed items, over all stages.
    pub fn failed(&self) -> u64 {
        self.stages.iter().map(|s| s.counts.failed).sum()
    }

    /// Items abandoned by a forced stop, over all stages.
    pub fn dropped(&self) -> u64 {
        self.stages.iter().map(|s| s.counts.dropped).sum()
    }

    /// Items processed per second of wall-clock time.
    pub fn items_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.processed() as f64 / secs
        } else {
            0.0
        }
    }

    /// Checks that the counts add up: every stage balances, every link between stages
    /// carries the same number of items on both sides, and items were dropped only if the run
    /// was aborted or failed.
    ///
    /// # Errors
    ///
    /// The first [`CountMismatch`] found.
    pub fn check(&self) -> Result<(), CountMismatch> {
        for stage in &self.stages {
            if !stage.counts.is_balanced() {
                return Err(CountMismatch::Stage {
                    stage: stage.name.clone(),
                    input: stage.counts.input,
                    accounted: stage.counts.accounted(),
                });
            }
        }
        for pair in self.stages.windows(2) {
            let (from, to) = (&pair[0], &pair[1]);
            if from.counts.output != to.counts.input {
                return Err(CountMismatch::Link {
                    from: from.name.clone(),
                    to: to.name.clone(),
                    sent: from.counts.output,
                    received: to.counts.input,
                });
            }
        }
        let dropped = self.dropped();
        if dropped > 0 && matches!(self.end, RunEnd::Completed | RunEnd::Stopped) {
            return Err(CountMismatch::DroppedWithoutAbort {
                dropped,
                end: self.end.clone(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_width = self
            .stages
            .iter()
            .map(|s| s.name.chars().count())
            .chain([5])
            .max()
            .unwrap_or(5);
        writeln!(
            f,
            "{:<name_width$}  {:<9}  {:>7}  {:>10}  {:>10}  {:>8}  {:>8}  {:>8}  {:>10}",
            "stage", "kind", "threads", "in", "out", "filtered", "failed", "dropped", "busy"
        )?;
        for stage in &self.stages {
            let c = &stage.counts;
            writeln!(
                f,
                "{:<name_width$}  {:<9}  {:>7}  {:>10}  {:>10}  {:>8}  {:>8}  {:>8}  {:>10}",
                stage.name,
                stage.kind,
                stage.threads.len(),
                c.input,
                c.output,
                c.filtered,
                c.failed,
                c.dropped,
                format!("{:.3?}", stage.busy()),
            )?;
        }
        write!(
            f,
            "{}: {} processed in {:.3?} ({:.0} items/s)",
            self.end,
            self.processed(),
            self.elapsed,
            self.items_per_second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(input: u64, output: u64, filtered: u64, failed: u64, dropped: u64) -> Counts {
        let mut counts = Counts::default();
        (
            counts.input,
            counts.output,
            counts.filtered,
            counts.failed,
            counts.dropped,
        ) = (input, output, filtered, failed, dropped);
        counts
    }

    fn three_stages(front: Counts, mid: Counts, back: Counts) -> RunReport {
        RunReport::new(
            vec![
                StageReport::new("stdin", StageKind::Frontend).with_counts(front),
                StageReport::new("parse", StageKind::Transport).with_counts(mid),
                StageReport::new("store", StageKind::Backend).with_counts(back),
            ],
            Duration::from_secs(2),
            RunEnd::Aborted,
        )
    }

    #[test]
    fn counts_add_and_sum() {
        let a = counts(3, 1, 1, 1, 0);
        let b = counts(2, 0, 0, 0, 2);
        assert_eq!(a + b, counts(5, 1, 1, 1, 2));
        assert_eq!([a, b].into_iter().sum::<Counts>(), counts(5, 1, 1, 1, 2));
        let max = counts(u64::MAX, u64::MAX, 0, 0, 0);
        assert!(max.is_balanced());
        assert!(!counts(u64::MAX, u64::MAX, 1, 0, 0).is_balanced());
    }

    #[test]
    fn a_balanced_pipeline_checks_and_totals() {
        let report = three_stages(
            counts(101, 100, 0, 1, 0),
            counts(100, 90, 5, 3, 2),
            counts(90, 80, 0, 4, 6),
        );
        assert_eq!(report.check(), Ok(()));
        assert_eq!(report.produced(), 100);
        assert_eq!(report.processed(), 80);
        assert_eq!(report.filtered(), 5);
        assert_eq!(report.failed(), 8);
        assert_eq!(report.dropped(), 8);
        assert_eq!(report.items_per_second(), 40.0);
        assert_eq!(report.stage("parse").unwrap().counts.filtered, 5);
        assert_eq!(
            report.stage_of_kind(StageKind::Backend).unwrap().name,
            "store"
        );
    }

    #[test]
    fn an_unbalanced_stage_is_named() {
        let report = three_stages(
            counts(100, 100, 0, 0, 0),
            counts(100, 99, 0, 0, 0),
            counts(99, 99, 0, 0, 0),
        );
        let err = report.check().unwrap_err();
        assert_eq!(
            err,
            CountMismatch::Stage {
                stage: "parse".into(),
                input: 100,
                accounted: 99
            }
        );
        assert!(err.to_string().contains("\"parse\""));
    }

    #[test]
    fn drops_are_allowed_only_after_an_abort_or_a_failure() {
        let mut report = three_stages(
            counts(10, 10, 0, 0, 0),
            counts(10, 8, 0, 0, 2),
            counts(8, 8, 0, 0, 0),
        );
        assert_eq!(report.check(), Ok(()));
        report.end = RunEnd::Stopped;
        assert_eq!(
            report.check(),
            Err(CountMismatch::DroppedWithoutAbort {
                dropped: 2,
                end: RunEnd::Stopped
            })
        );
        report.end = RunEnd::Failed {
            stage: "parse".into(),
            reason: "setup failed".into(),
        };
        assert_eq!(report.check(), Ok(()));
    }

    #[test]
    fn sums_saturate() {
        let big = counts(u64::MAX, u64::MAX, 0, 0, 0);
        assert_eq!(big + big, big);
    }

    #[test]
    fn a_lost_item_between_stages_is_found() {
        let report = three_stages(
            counts(100, 100, 0, 0, 0),
            counts(100, 100, 0, 0, 0),
            counts(99, 99, 0, 0, 0),
        );
        assert_eq!(
            report.check(),
            Err(CountMismatch::Link {
                from: "parse".into(),
                to: "store".into(),
                sent: 100,
                received: 99
            })
        );
    }

    #[test]
    fn display_is_a_table_with_a_summary_line() {
        let mut report = three_stages(
            counts(3, 3, 0, 0, 0),
            counts(3, 2, 1, 0, 0),
            counts(2, 2, 0, 0, 0),
        );
        report.stages[1].threads = vec![
            ThreadReport::new(0, 2, Duration::from_millis(1)),
            ThreadReport::new(1, 1, Duration::from_millis(2)),
        ];
        report.end = RunEnd::Completed;
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("stage "));
        let parse: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            parse,
            [
                "parse",
                "transport",
                "2",
                "3",
                "2",
                "1",
                "0",
                "0",
                "3.000ms"
            ]
        );
        assert_eq!(lines[4], "completed: 2 processed in 2.000s (1 items/s)");
        assert_eq!(report.stages[1].busy(), Duration::from_millis(3));
    }

    #[test]
    fn failed_run_end_names_the_stage() {
        let end = RunEnd::Failed {
            stage: "parse".into(),
            reason: "setup failed: no such file".into(),
        };
        assert_eq!(
            end.to_string(),
            "failed in stage \"parse\": setup failed: no such file"
        );
    }

    #[test]
    fn report_round_trips_through_postcard() {
        let report = three_stages(
            counts(1, 1, 0, 0, 0),
            counts(1, 1, 0, 0, 0),
            counts(1, 1, 0, 0, 0),
        );
        let bytes = postcard::to_stdvec(&report).unwrap();
        let back: RunReport = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, report);
    }
}
