//! One bean's supervisor: runs the bean under its restart policy until it ends for good,
//! each run with a stop handle of its own (a child of the bean's).

use std::sync::Arc;
use std::time::Instant;

use engine_core::{RestartDecision, StageError};

use crate::context::BeanContext;
use crate::pod::BeanSpec;
use crate::shared::PodShared;
use crate::state::{BeanId, BeanState};
use crate::stop::RunStop;

/// How one run ended, as the supervisor decides what comes next.
struct Ended {
    failed: bool,
    /// A restart was asked for (`ctl restart`): start again at once.
    restart_requested: bool,
    /// The pod or the bean alone was asked to stop.
    stopping: bool,
}

/// Runs bean `id` until it ends for good; gives its spec back, so that the pod can start it
/// again on request.
pub(crate) async fn supervise(shared: Arc<PodShared>, id: BeanId, spec: BeanSpec) -> BeanSpec {
    let params = Arc::new(spec.params.clone());
    let declares = spec.declares_readiness || spec.bean.declares_readiness();
    let mut restarts = spec.restart.tracker();
    let final_state = loop {
        let ctx = begin_run(&shared, id, declares, &params);
        let core = Arc::clone(&ctx.core);
        restarts.started(Instant::now());
        let result = run_once(&spec, ctx).await;
        if let Err(error) = &result {
            tracing::error!(bean = %id, core = %core, error = %format!("{error:#}"), "bean failed");
        }
        let ended = end_run(&shared, id, &result);
        let failed = ended.failed;
        let final_state = if failed {
            BeanState::Failed
        } else {
            BeanState::Finished
        };
        if ended.restart_requested && !ended.stopping {
            tracing::info!(bean = %id, core = %core, "restarting bean on request");
            shared.update(id, |s| s.restarts += 1);
            continue;
        }
        let delay = match restarts.ended(failed, ended.stopping, Instant::now()) {
            RestartDecision::Restart { after } => after,
            RestartDecision::LimitReached { restarts } => {
                tracing::error!(bean = %id, core = %core, restarts, "restart limit reached; the bean stays down");
                break final_state;
            }
            _ => break final_state,
        };
        shared.update(id, |s| {
            s.state = BeanState::Restarting;
            s.restarts += 1;
        });
        tracing::warn!(bean = %id, core = %core, delay = ?delay, "restarting bean");
        let bean_stop = shared
            .update(id, |s| s.stop.clone())
            .expect("the bean's slot");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::stop::stopping(&bean_stop) => break final_state,
        }
    };
    shared.update(id, |s| {
        s.state = final_state;
        s.started = None;
        s.run = None;
    });
    spec
}

/// Sets the slot up for a new run and makes the run's context.
fn begin_run(
    shared: &Arc<PodShared>,
    id: BeanId,
    declares: bool,
    params: &Arc<toml::Table>,
) -> BeanContext {
    // Handlers of an earlier run must not pile up: each run registers its own.
    shared.clear_handlers(id);
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

/// One run, in a task of its own so that a panic is caught as a `JoinError`. `start` itself
/// runs in the task too, so that a panic before its future exists is caught like any other.
async fn run_once(spec: &BeanSpec, ctx: BeanContext) -> Result<(), StageError> {
    let bean = Arc::clone(&spec.bean);
    let run = tokio::spawn(async move { bean.start(ctx).await });
    // Cancelling the supervisor (at the stop deadline) cancels the run with it.
    let _cancel_with_supervisor = AbortOnDrop(run.abort_handle());
    match run.await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(StageError::from_panic(err.into_panic())),
        Err(_) => Err(StageError::msg("the bean's task was cancelled")),
    }
}

/// Records the end of a run in the slot.
fn end_run(shared: &PodShared, id: BeanId, result: &Result<(), StageError>) -> Ended {
    let failed = result.is_err();
    shared
        .update(id, |s| {
            if let Err(error) = result {
                s.last_error = Some(format!("{error:#}"));
            }
            s.run = None;
            s.address = None;
            Ended {
                failed,
                restart_requested: std::mem::take(&mut s.restart_requested),
                // The pod's level is set before any child hears of it: a bean that ended on
                // the pod's "stop" signal is not restarted even if its own handle lags.
                stopping: shared.stop.is_stopping() || s.stop.is_stopping(),
            }
        })
        .expect("the bean's slot")
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
