//! What every stage thread shares: the stop handle, the abort signal, the error policy, the
//! run's first failure and the coordinator's events; and the guards that keep a panic in
//! stage code from escaping a thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use engine_core::plumbing::{Outcome, Ticket, lock};
use engine_core::{ErrorPolicy, StageContext, StageError, StageKind, StopHandle};

use crate::link::{Abort, complete};

/// What went wrong in a stage, for the error the run returns.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) stage: Arc<str>,
    pub(crate) kind: StageKind,
    pub(crate) thread: usize,
    pub(crate) error: StageError,
    pub(crate) during_setup: bool,
}

/// Messages from stage threads (and the stop handle) to the coordinator.
#[derive(Debug)]
pub(crate) enum Event {
    /// A consumer thread left its loop (and ran its cleanup).
    ThreadDone,
    /// A frontend thread left its loop (and ran its cleanup), with its busy time.
    FrontendDone { index: usize, busy: Duration },
    /// The run's stop handle was raised.
    Stop,
}

/// What every stage thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stop: StopHandle,
    pub(crate) abort: Abort,
    pub(crate) policy: ErrorPolicy,
    pub(crate) failure: Mutex<Option<Failure>>,
    pub(crate) events: Sender<Event>,
    /// The longest [`stop_grace`](TrackedFrontend::stop_grace) of the frontends, in
    /// nanoseconds (saturated).
    pub(crate) stop_grace: AtomicU64,
}

/// Whether a loop goes on after a failed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

impl Shared {
    /// How long the run waits, after a graceful stop drained the pipeline, for its frontends.
    pub(crate) fn stop_grace(&self) -> Duration {
        Duration::from_nanos(self.stop_grace.load(Ordering::SeqCst))
    }

    /// Notes a frontend's grace: the run waits for the longest.
    pub(crate) fn note_stop_grace(&self, grace: Duration) {
        let nanos = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self.stop_grace.fetch_max(nanos, Ordering::SeqCst);
    }

    /// Handles an item that failed: logs it, completes its ticket, and under the stop policy
    /// (or for a fatal error) records the failure and aborts the run.
    pub(crate) fn item_failed<K: Ticket>(
        &self,
        ctx: &StageContext,
        error: StageError,
        ticket: Option<K>,
    ) -> Flow {
        self.items_failed(ctx, error, 1, ticket)
    }

    /// Handles `n` items that failed together (a backend's flush): logs once, completes every
    /// ticket, and applies the policy as [`item_failed`](Self::item_failed) does.
    pub(crate) fn items_failed<K: Ticket>(
        &self,
        ctx: &StageContext,
        error: StageError,
        n: usize,
        tickets: impl IntoIterator<Item = K>,
    ) -> Flow {
        let stop = self.policy == ErrorPolicy::Stop || error.is_fatal();
        tracing::warn!(
            stage = ctx.stage(),
            kind = ctx.kind().as_str(),
            thread = ctx.index(),
            items = n,
            error = format_args!("{error:#}"),
            "{}",
            match (stop, n) {
                (true, 1) => "item failed; stopping the run",
                (false, 1) => "item failed; skipped",
                (true, _) => "these items failed together; stopping the run",
                (false, _) => "these items failed together; skipped",
            }
        );
        for ticket in tickets {
            complete(
                ticket,
                Outcome::Failed {
                    stage: ctx.stage(),
                    error: &error,
                    policy: if stop {
                        ErrorPolicy::Stop
                    } else {
                        ErrorPolicy::Skip
                    },
                },
            );
        }
        if stop {
            self.fail(ctx, error, false);
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// Records the run's first failure and aborts the run.
    pub(crate) fn fail(&self, ctx: &StageContext, error: StageError, during_setup: bool) {
        if during_setup {
            tracing::error!(
                stage = ctx.stage(),
                kind = ctx.kind().as_str(),
                thread = ctx.index(),
                error = format_args!("{error:#}"),
                "setup failed; stopping the run"
            );
        }
        {
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                *failure = Some(Failure {
                    stage: Arc::clone(ctx.stage_name()),
                    kind: ctx.kind(),
                    thread: ctx.index(),
                    error,
                    during_setup,
                });
            }
        }
        self.stop.stop_now();
    }

    pub(crate) fn done(&self) {
        let _ = self.events.send(Event::ThreadDone);
    }
}

/// Runs a stage thread's body; should anything escape it (a panic in an item's `Drop`, say),
/// fails the run and still reports the thread as done, so that the run cannot hang.
pub(crate) fn last_resort<R>(
    ctx: &StageContext,
    shared: &Shared,
    body: impl FnOnce() -> R,
    fallback: impl FnOnce() -> R,
) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            tracing::error!(
                stage = ctx.stage(),
                thread = ctx.index(),
                "a stage thread panicked outside stage code"
            );
            shared.fail(ctx, StageError::from_panic(payload), false);
            fallback()
        }
    }
}

/// Runs a stage's cleanup, logging a panic instead of spreading it.
pub(crate) fn cleanup(ctx: &StageContext, f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        let error = StageError::from_panic(payload);
        tracing::error!(
            stage = ctx.stage(),
            kind = ctx.kind().as_str(),
            thread = ctx.index(),
            error = %error,
            "cleanup panicked"
        );
    }
}

/// The span a stage thread runs in: what it logs (a failed item, say) names its stage, kind
/// and index, so `RUST_LOG` filters and any subscriber see where it happened.
pub(crate) fn stage_span(ctx: &StageContext) -> tracing::Span {
    tracing::info_span!(
        "stage",
        stage = ctx.stage(),
        kind = ctx.kind().as_str(),
        index = ctx.index()
    )
}
