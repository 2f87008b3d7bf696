//! The pod: starts beans in order, supervises them (restart policies), and stops them in
//! reverse order on a stop request, cancelling what is left at the stop deadline.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use engine_core::{StageError, StopHandle, StopLevel};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use engine_core::RestartDecision;

use crate::bean::{Bean, RestartPolicy};
use crate::config::PodConfig;
use crate::context::{
    BeanContext, BeanId, BeanState, BeanStatus, PodShared, SignalEvent, Slot, Target,
};

/// A bean with its label, parameters and restart policy, ready to be added to a pod.
pub struct BeanSpec {
    bean: Arc<dyn Bean>,
    core: String,
    label: Option<String>,
    params: toml::Table,
    restart: RestartPolicy,
}

impl fmt::Debug for BeanSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BeanSpec")
            .field("core", &self.core)
            .field("label", &self.label)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

impl BeanSpec {
    /// A bean named `core` (the name the status view shows).
    pub fn new(core: impl Into<String>, bean: impl Bean) -> Self {
        Self::from_arc(core, Arc::new(bean))
    }

    /// A bean already shared.
    pub fn from_arc(core: impl Into<String>, bean: Arc<dyn Bean>) -> Self {
        Self {
            bean,
            core: core.into(),
            label: None,
            params: toml::Table::new(),
            restart: RestartPolicy::default(),
        }
    }

    /// Sets the label.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Sets the parameters, read with [`BeanContext::params`].
    #[must_use]
    pub fn params(mut self, params: toml::Table) -> Self {
        self.params = params;
        self
    }

    /// Sets the restart policy.
    #[must_use]
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }
}

/// A pod of beans, built in code or from a config file through a
/// [`Registry`](crate::Registry).
///
/// ```
/// use engine_pod::{BeanContext, BeanSpec, Pod, PodConfig, bean_fn};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("hello", bean_fn(|ctx: BeanContext| async move {
///     tracing::info!(id = %ctx.id(), "hello world!");
/// })));
/// let report = pod.start().wait().await;
/// assert!(report.is_success());
/// # });
/// ```
#[derive(Debug, Default)]
pub struct Pod {
    config: PodConfig,
    beans: Vec<BeanSpec>,
    stop: Option<StopHandle>,
}

/// How a pod ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PodReport {
    /// Every bean's final status.
    pub beans: Vec<BeanStatus>,
    /// Whether a stop was requested.
    pub stopped: bool,
    /// Whether beans had to be cancelled (stop deadline or second stop).
    pub forced: bool,
}

impl PodReport {
    /// Whether no bean failed.
    pub fn is_success(&self) -> bool {
        self.beans.iter().all(|b| b.state != BeanState::Failed)
    }
}

impl Pod {
    /// An empty pod.
    pub fn new(config: PodConfig) -> Self {
        Self {
            config,
            beans: Vec::new(),
            stop: None,
        }
    }

    /// Adds a bean; beans start in the order they are added and get ids 1, 2, 3...
    pub fn add(&mut self, bean: BeanSpec) -> &mut Self {
        self.beans.push(bean);
        self
    }

    /// Runs under `stop`: a graceful stop of it stops the pod (beans' `"stop"` handlers, then
    /// their stop tokens, in reverse order), `stop_now` cancels every bean at once. Pass the
    /// same handle to [`engine_core::install_signal_handler`] for SIGINT/SIGTERM.
    #[must_use]
    pub fn with_stop_handle(mut self, stop: &StopHandle) -> Self {
        self.stop = Some(stop.clone());
        self
    }

    /// Starts every bean and waits until they all ended: [`start`](Self::start) then
    /// [`PodHandle::wait`].
    pub async fn run(self) -> PodReport {
        self.start().wait().await
    }

    /// Starts every bean (on the current tokio runtime) and returns a handle.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn start(self) -> PodHandle {
        let stop = self.stop.unwrap_or_default();
        let mut slots = Vec::with_capacity(self.beans.len());
        for (i, spec) in self.beans.iter().enumerate() {
            let (done, _) = watch::channel(None);
            slots.push(Slot {
                id: BeanId(i as u64 + 1),
                label: spec.label.as_deref().map(Arc::from),
                core: Arc::from(spec.core.as_str()),
                state: BeanState::Pending,
                restarts: 0,
                started: None,
                last_error: None,
                stop: CancellationToken::new(),
                done,
            });
        }
        let shared = Arc::new(PodShared {
            config: self.config,
            slots: Mutex::new(slots),
            handlers: Mutex::new(HashMap::new()),
            stop: stop.clone(),
            stopping: CancellationToken::new(),
        });
        let changed = Arc::new(Notify::new());
        let subscription = {
            let changed = Arc::clone(&changed);
            stop.on_stop(move |_| changed.notify_one())
        };
        let mut tasks = Vec::with_capacity(self.beans.len());
        for (i, spec) in self.beans.into_iter().enumerate() {
            let id = BeanId(i as u64 + 1);
            tasks.push((id, tokio::spawn(supervise(Arc::clone(&shared), id, spec))));
        }
        let driver = tokio::spawn(drive(Arc::clone(&shared), tasks, changed, subscription));
        PodHandle { shared, driver }
    }
}

/// A running pod.
#[derive(Debug)]
pub struct PodHandle {
    shared: Arc<PodShared>,
    driver: JoinHandle<PodReport>,
}

impl fmt::Debug for PodShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodShared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PodHandle {
    /// Asks the pod to stop gracefully (as a first SIGTERM).
    pub fn stop(&self) {
        self.shared.stop.stop();
    }

    /// Cancels every bean at once (as a second SIGTERM).
    pub fn stop_now(&self) {
        self.shared.stop.stop_now();
    }

    /// The pod's stop handle.
    pub fn stop_handle(&self) -> &StopHandle {
        &self.shared.stop
    }

    /// The status of every bean: id, label, core, state, restarts, uptime.
    pub fn status(&self) -> Vec<BeanStatus> {
        self.shared.status()
    }

    /// Sends a named signal from outside the pod; returns how many handlers ran.
    pub fn send_signal(&self, name: &str, target: Target, payload: serde_json::Value) -> usize {
        let event = SignalEvent {
            name: name.to_owned(),
            from: None,
            payload,
        };
        self.shared.dispatch(&target, &event)
    }

    /// Waits until every bean has ended, and returns the report.
    ///
    /// # Panics
    ///
    /// Only if the pod's own driver task panicked, which is a bug.
    pub async fn wait(self) -> PodReport {
        match self.driver.await {
            Ok(report) => report,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }
}

/// Runs one bean under its restart policy until it ends for good.
async fn supervise(shared: Arc<PodShared>, id: BeanId, spec: BeanSpec) -> BeanState {
    let (label, core, stop) = {
        let slots = shared.slots();
        let slot = &slots[id.0 as usize - 1];
        (
            slot.label.clone(),
            Arc::clone(&slot.core),
            slot.stop.clone(),
        )
    };
    let params = Arc::new(spec.params);
    let mut restarts = spec.restart.tracker();
    let final_state = loop {
        // Handlers of an earlier run must not pile up: each run registers its own.
        shared.clear_handlers(id);
        shared.update(id, |s| {
            s.state = BeanState::Running;
            s.started = Some(Instant::now());
        });
        let ctx = BeanContext {
            id,
            label: label.clone(),
            core: Arc::clone(&core),
            params: Arc::clone(&params),
            pod: Arc::clone(&shared),
            stop: stop.clone(),
        };
        restarts.started(Instant::now());
        // The run is a task of its own, so that a panic is caught as a `JoinError`.
        // `start` itself runs in the task too, so that a panic before its future exists is
        // caught like any other.
        let bean = Arc::clone(&spec.bean);
        let run = tokio::spawn(async move { bean.start(ctx).await });
        // Cancelling the supervisor (at the stop deadline) cancels the run with it.
        let _cancel_with_supervisor = AbortOnDrop(run.abort_handle());
        let result = match run.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => Err(StageError::from_panic(err.into_panic())),
            Err(_) => Err(StageError::msg("the bean's task was cancelled")),
        };
        let failed = result.is_err();
        if let Err(error) = &result {
            tracing::error!(bean = %id, label = label.as_deref().unwrap_or(""), core = %core, error = %format!("{error:#}"), "bean failed");
            shared.update(id, |s| s.last_error = Some(format!("{error:#}")));
        }
        let stopping = stop.is_cancelled() || shared.stopping.is_cancelled();
        let delay = match restarts.ended(failed, stopping, Instant::now()) {
            RestartDecision::Restart { after } => after,
            RestartDecision::LimitReached { restarts } => {
                tracing::error!(bean = %id, core = %core, restarts, "restart limit reached; the bean stays down");
                break if failed {
                    BeanState::Failed
                } else {
                    BeanState::Finished
                };
            }
            _ => {
                break if failed {
                    BeanState::Failed
                } else {
                    BeanState::Finished
                };
            }
        };
        shared.update(id, |s| {
            s.state = BeanState::Restarting;
            s.restarts += 1;
        });
        tracing::warn!(bean = %id, core = %core, delay = ?delay, "restarting bean");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => break if failed { BeanState::Failed } else { BeanState::Finished },
            () = shared.stopping.cancelled() => break if failed { BeanState::Failed } else { BeanState::Finished },
        }
    };
    finish(&shared, id, final_state);
    final_state
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn finish(shared: &PodShared, id: BeanId, state: BeanState) {
    shared.update(id, |s| {
        s.state = state;
        s.started = None;
        s.done.send_replace(Some(state));
    });
}

/// Waits for the beans, handles a stop request, and builds the report.
async fn drive(
    shared: Arc<PodShared>,
    tasks: Vec<(BeanId, JoinHandle<BeanState>)>,
    changed: Arc<Notify>,
    _subscription: engine_core::StopSubscription,
) -> PodReport {
    let mut tasks: Vec<(BeanId, Option<JoinHandle<BeanState>>)> =
        tasks.into_iter().map(|(id, t)| (id, Some(t))).collect();
    // Phase 1: until every bean ends or a stop is requested.
    loop {
        if tasks
            .iter()
            .all(|(_, t)| t.as_ref().is_none_or(JoinHandle::is_finished))
        {
            return report(&shared, false);
        }
        if shared.stop.is_stopping() {
            break;
        }
        tokio::select! {
            () = changed.notified() => {}
            () = any_finished(&mut tasks) => {}
        }
    }
    // Phase 2: the origin's stop: signal handlers first, then each bean's stop token, in
    // reverse start order, each waited for until the shared deadline.
    tracing::info!("stopping the pod");
    shared.stopping.cancel();
    let event = SignalEvent {
        name: "stop".to_owned(),
        from: None,
        payload: serde_json::Value::Null,
    };
    shared.dispatch(&Target::All, &event);
    let deadline = shared
        .config
        .stop_wait_time
        .and_then(|wait| tokio::time::Instant::now().checked_add(wait));
    let mut forced = false;
    for (id, task) in tasks.iter_mut().rev() {
        let Some(handle) = task.as_mut() else {
            continue;
        };
        let token = {
            let slots = shared.slots();
            slots[id.0 as usize - 1].stop.clone()
        };
        shared.update(*id, |s| {
            if !s.state.is_final() {
                s.state = BeanState::Stopping;
            }
        });
        token.cancel();
        if shared.stop.is_stopped_now() {
            forced = true;
            break;
        }
        let ended = tokio::select! {
            _ = &mut *handle => true,
            () = sleep_until(deadline) => false,
            () = stopped_now(&shared.stop, &changed) => false,
        };
        if ended {
            *task = None;
        } else {
            forced = true;
            break;
        }
    }
    if forced {
        // Phase 3: cancel what is left. Every bean is asked to stop first (a blocking bean or a
        // sub-task may watch its token); then the tasks are aborted. A blocking bean's thread
        // is abandoned: it cannot keep the pod (or the process) alive past the deadline.
        for slot in shared.slots().iter() {
            slot.stop.cancel();
        }
        for (id, task) in &mut tasks {
            if let Some(handle) = task.take()
                && !handle.is_finished()
            {
                handle.abort();
                // The task may have finished meanwhile; aborting it then does nothing.
                let _ = handle.await;
                shared.update(*id, |s| {
                    if !s.state.is_final() {
                        tracing::warn!(bean = %id, "bean cancelled at the stop deadline");
                        s.state = BeanState::Cancelled;
                        s.started = None;
                        s.done.send_replace(Some(BeanState::Cancelled));
                    }
                });
            }
        }
    }
    report(&shared, forced)
}

async fn any_finished(tasks: &mut [(BeanId, Option<JoinHandle<BeanState>>)]) {
    // Bean ends are rare; waiting on each in turn keeps this simple.
    for (_, task) in tasks.iter_mut() {
        if let Some(handle) = task
            && !handle.is_finished()
        {
            let _ = handle.await;
            *task = None;
            return;
        }
    }
    std::future::pending::<()>().await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn stopped_now(stop: &StopHandle, changed: &Notify) {
    while stop.level() != StopLevel::Now {
        changed.notified().await;
    }
}

fn report(shared: &PodShared, forced: bool) -> PodReport {
    PodReport {
        beans: shared.status(),
        stopped: shared.stop.is_stopping(),
        forced,
    }
}
