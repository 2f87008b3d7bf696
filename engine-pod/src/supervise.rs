//! One bean's supervisor: runs the bean under its restart policy until it ends for good,
//! each run with a stop handle of its own (a child of the bean's).
//!
//! A run is driven in the supervisor's own task, a panic caught at each poll (`guarded`):
//! one task per bean, not two, which halves what starting and stopping 10,000 beans costs
//! the scheduler. Aborting the supervisor (at the stop deadline) drops the run with it.

use std::sync::Arc;
use std::time::Instant;

use engine_core::{RestartDecision, RestartTracker, StageError};

use crate::context::BeanContext;
use crate::pod::BeanSpec;
use crate::shared::PodShared;
use crate::state::{BeanId, BeanState};
use crate::stop::RunStop;

/// What comes after a run, decided as its end is recorded.
enum Next {
    /// A restart was asked for (`ctl restart`): start again at once.
    Now,
    /// The policy restarts it after a delay.
    After(std::time::Duration),
    /// It ended for good (its final state is recorded).
    Done,
}

/// Runs bean `id` until it ends for good; gives its spec back, so that the pod can start it
/// again on request.
pub(crate) async fn supervise(shared: Arc<PodShared>, id: BeanId, spec: BeanSpec) -> BeanSpec {
    let params = Arc::clone(&spec.params);
    let declares = spec.declares_readiness || spec.bean.declares_readiness();
    let mut restarts = spec.restart.tracker();
    loop {
        let ctx = begin_run(&shared, id, declares, &params);
        let core = Arc::clone(&ctx.core);
        restarts.started(Instant::now());
        let bean = Arc::clone(&spec.bean);
        let result = crate::builtin::guarded(move || bean.start(ctx)).await;
        if let Err(error) = &result {
            tracing::error!(bean = %id, core = %core, error = %format!("{error:#}"), "bean failed");
        }
        match end_run(&shared, id, &result, &mut restarts) {
            Next::Now => {
                tracing::info!(bean = %id, core = %core, "restarting bean on request");
            }
            Next::After(delay) => {
                tracing::warn!(bean = %id, core = %core, delay = ?delay, "restarting bean");
                // Boxed: the timer is only needed on this path, and kept out of the
                // supervisor's own future it keeps every bean's task small.
                if !Box::pin(backoff(&shared, id, delay)).await {
                    let state = if result.is_err() {
                        BeanState::Failed
                    } else {
                        BeanState::Finished
                    };
                    shared.update(id, |s| finish(s, state));
                    return spec;
                }
            }
            Next::Done => return spec,
        }
    }
}

/// Waits `delay` before a restart; false if the bean was asked to stop meanwhile.
async fn backoff(shared: &PodShared, id: BeanId, delay: std::time::Duration) -> bool {
    let bean_stop = shared
        .update(id, |s| s.stop.clone())
        .expect("the bean's slot");
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = crate::stop::stopping(&bean_stop) => false,
    }
}

/// Records that the bean ended for good in `state`.
fn finish(slot: &mut crate::shared::Slot, state: BeanState) {
    slot.state = state;
    slot.started = None;
    slot.run = None;
}

/// Sets the slot up for a new run and makes the run's context.
fn begin_run(
    shared: &Arc<PodShared>,
    id: BeanId,
    declares: bool,
    params: &Arc<toml::Table>,
) -> BeanContext {
    let (label, core, run, run_no) = shared
        .update(id, |s| {
            let run = s.stop.child();
            s.run = Some(run.clone());
            s.run_no += 1;
            s.restart_requested = false;
            s.address = None;
            s.declares_readiness = declares;
            s.state = if declares {
                BeanState::Starting
            } else {
                BeanState::Running
            };
            s.started = Some(Instant::now());
            (s.label.clone(), Arc::clone(&s.core), run, s.run_no)
        })
        .expect("the bean's slot");
    if run_no > 1 {
        // Handlers of an earlier run must not pile up: each run registers its own.
        shared.clear_handlers(id);
    }
    BeanContext {
        id,
        label,
        core,
        params: Arc::clone(params),
        pod: Arc::clone(shared),
        stop: RunStop::new(run),
        run_no,
    }
}

/// Records the end of a run in the slot and decides, in the same step, what comes next: a
/// bean that ends for good is marked so at once (one lock per run's end).
fn end_run(
    shared: &PodShared,
    id: BeanId,
    result: &Result<(), StageError>,
    restarts: &mut RestartTracker,
) -> Next {
    let failed = result.is_err();
    shared
        .update(id, |s| {
            if let Err(error) = result {
                s.last_error = Some(format!("{error:#}"));
            }
            s.run = None;
            s.address = None;
            let restart_requested = std::mem::take(&mut s.restart_requested);
            // The pod's level is set before any child hears of it: a bean that ended on the
            // pod's "stop" signal is not restarted even if its own handle lags.
            let stopping = shared.stop.is_stopping() || s.stop.is_stopping();
            if restart_requested && !stopping {
                s.restarts += 1;
                return Next::Now;
            }
            match restarts.ended(failed, stopping, Instant::now()) {
                RestartDecision::Restart { after } => {
                    s.state = BeanState::Restarting;
                    s.restarts += 1;
                    Next::After(after)
                }
                decision => {
                    if let RestartDecision::LimitReached { restarts } = decision {
                        tracing::error!(bean = %id, core = %s.core, restarts, "restart limit reached; the bean stays down");
                    }
                    let state = if failed {
                        BeanState::Failed
                    } else {
                        BeanState::Finished
                    };
                    finish(s, state);
                    Next::Done
                }
            }
        })
        .expect("the bean's slot")
}
