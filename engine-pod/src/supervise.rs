//! One bean's supervisor: runs the bean under its restart policy until it ends for good,
//! recording each end in the bean's slot at once (a cancelled supervisor too, from its drop),
//! and counts itself out of the pod's live supervisors.
//!
//! A run is driven in the supervisor's own task, a panic caught at each poll (`guarded`):
//! one task per bean, not two, which halves what starting and stopping 10,000 beans costs
//! the scheduler. Aborting the supervisor (at the stop deadline) drops the run with it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use engine_core::{Restart, RestartDecision, RestartTracker};

use crate::bean::BeanResult;
use crate::context::BeanContext;
use crate::run::Run;
use crate::shared::{PodShared, Slot};
use crate::spec::BeanSpec;
use crate::state::{BeanId, BeanState};

/// What comes after a run, decided as its end is recorded.
enum Next {
    /// A restart was asked for (`ctl restart`): start again at once.
    Now,
    /// The policy restarts it after a delay.
    After(Duration),
    /// It ended for good (its final state is recorded).
    Done,
}

/// Runs bean `id` until it ends for good.
pub(crate) fn supervise(
    shared: Arc<PodShared>,
    id: BeanId,
    spec: BeanSpec,
) -> impl Future<Output = ()> + Send + 'static {
    // Counted before the task exists, so that the count cannot reach zero early.
    shared.supervisor_started();
    // Not an `async fn` itself: that would hold the supervisor twice.
    Supervisor {
        shared,
        id,
        declares: spec.readiness_declared(),
        spec,
        restarts: None,
        done: false,
    }
    .run()
}

/// One bean's supervisor; [`run`](Self::run) is its loop. Dropped before the bean ended (at
/// the stop deadline), it marks the bean cancelled; dropped at all, it counts itself out.
///
/// Its future is what every bean's task holds, so it is kept small: the restart history is
/// made (and boxed) only when a policy may restart the bean.
struct Supervisor {
    shared: Arc<PodShared>,
    id: BeanId,
    spec: BeanSpec,
    declares: bool,
    restarts: Option<Box<RestartTracker>>,
    /// Set once the bean ended for good.
    done: bool,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if !self.done {
            let id = self.id;
            self.shared.update(id, |s| {
                if !s.state.is_final() {
                    tracing::warn!(bean = %id, "bean cancelled at the stop deadline");
                    s.state = BeanState::Cancelled;
                    s.started = None;
                    s.run = Weak::new();
                }
            });
        }
        self.shared.supervisor_ended();
    }
}

impl Supervisor {
    async fn run(mut self) {
        loop {
            let result = self.run_once().await;
            match self.end_run(&result) {
                Next::Now => {
                    let core = &self.spec.core;
                    tracing::info!(bean = %self.id, %core, "restarting bean on request");
                }
                Next::After(delay) => {
                    let core = &self.spec.core;
                    tracing::warn!(bean = %self.id, %core, ?delay, "restarting bean");
                    // Boxed: the timer is only needed on this path, and kept out of the
                    // supervisor's own future it keeps every bean's task small.
                    if !Box::pin(self.backoff(delay)).await {
                        let state = final_state(&result);
                        self.shared.update(self.id, |s| finish(s, state));
                        break;
                    }
                }
                Next::Done => break,
            }
        }
        self.done = true;
    }

    /// One run of the bean, from its start to its end.
    async fn run_once(&mut self) -> BeanResult {
        let ctx = self.begin_run();
        // Held while the run goes on, so that the pod can tell it to end even after the
        // bean let go of its context.
        let _run = Arc::clone(&ctx.run);
        let spec = &self.spec;
        let result = crate::guard::guarded(|| spec.bean.start(ctx)).await;
        if let Err(error) = &result {
            tracing::error!(bean = %self.id, core = %spec.core, error = %format!("{error:#}"), "bean failed");
        }
        result
    }

    /// Sets the slot up for a new run and makes the run's context.
    fn begin_run(&mut self) -> BeanContext {
        let now = Instant::now();
        let (id, declares) = (self.id, self.declares);
        let (shared, spec) = (&self.shared, &self.spec);
        let run = shared
            .update(id, |s| {
                s.run_no += 1;
                s.restart_requested = false;
                s.address = None;
                s.declares_readiness = declares;
                s.state = if declares {
                    BeanState::Starting
                } else {
                    BeanState::Running
                };
                s.started = Some(now);
                let names = (spec.label.clone(), Arc::clone(&spec.core));
                let params = Arc::clone(&spec.params);
                let ended = s.stop_requested();
                let run = Arc::new(Run::new(id, s.run_no, names, params, ended));
                s.run = Arc::downgrade(&run);
                run
            })
            .expect("the bean's slot");
        if run.run_no > 1 {
            // Handlers of an earlier run must not pile up: each run registers its own.
            shared.clear_handlers(id);
        }
        BeanContext {
            run,
            pod: Arc::clone(shared),
        }
    }

    /// Records the end of a run in the slot and decides, in the same step, what comes next:
    /// a bean that ends for good is marked so at once (one lock per run's end).
    fn end_run(&mut self, result: &BeanResult) -> Next {
        let id = self.id;
        let shared = Arc::clone(&self.shared);
        shared
            .update(id, |s| {
                if let Err(error) = result {
                    s.last_error = Some(format!("{error:#}"));
                }
                s.run = Weak::new();
                s.address = None;
                let restart_requested = std::mem::take(&mut s.restart_requested);
                // The pod's level is set before any bean hears of it: a bean that ended on
                // the pod's "stop" signal is not restarted.
                let stopping = shared.stop.is_stopping() || s.stop_requested();
                if restart_requested && !stopping {
                    s.restarts += 1;
                    return Next::Now;
                }
                match self.decide(result.is_err(), stopping, s.started) {
                    RestartDecision::Restart { after } => {
                        s.state = BeanState::Restarting;
                        s.restarts += 1;
                        Next::After(after)
                    }
                    decision => {
                        if let RestartDecision::LimitReached { restarts } = decision {
                            tracing::error!(bean = %id, core = %s.core, restarts, "restart limit reached; the bean stays down");
                        }
                        finish(s, final_state(result));
                        Next::Done
                    }
                }
            })
            .expect("the bean's slot")
    }

    /// What the restart policy says of a run started at `started` that ended now.
    fn decide(
        &mut self,
        failed: bool,
        stopping: bool,
        started: Option<Instant>,
    ) -> RestartDecision {
        let policy = self.spec.restart;
        if stopping || policy.when == Restart::Never {
            // Nothing restarts then: no history to keep.
            return RestartDecision::Stay;
        }
        let tracker = self
            .restarts
            .get_or_insert_with(|| Box::new(policy.tracker()));
        if let Some(at) = started {
            tracker.started(at);
        }
        tracker.ended(failed, stopping, Instant::now())
    }

    /// Waits `delay` before a restart; false if the bean was asked to stop meanwhile.
    async fn backoff(&self, delay: Duration) -> bool {
        let root = &self.shared.stop;
        let bean_stop = self
            .shared
            .update(self.id, |s| s.stop_handle(root).clone())
            .expect("the bean's slot");
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = crate::stop::stopping(&bean_stop) => false,
        }
    }
}

/// The state of a bean that ended for good after `result`.
fn final_state(result: &BeanResult) -> BeanState {
    if result.is_err() {
        BeanState::Failed
    } else {
        BeanState::Finished
    }
}

/// Records that the bean ended for good in `state`.
fn finish(slot: &mut Slot, state: BeanState) {
    slot.state = state;
    slot.started = None;
    slot.run = Weak::new();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bean's task holds this future: it is kept small (it was 1,000 bytes).
    #[test]
    fn a_supervisors_future_is_small() {
        let (commands, _rx) = tokio::sync::mpsc::unbounded_channel();
        let config = crate::config::PodConfig::default();
        let stop = engine_core::StopHandle::new();
        let shared = Arc::new(PodShared::new(config, Vec::new(), stop, commands));
        let spec = BeanSpec::new("x", crate::bean::bean_fn(|_ctx| async {}));
        let fut = supervise(shared, BeanId(1), spec);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 400, "{size} bytes");
    }
}
