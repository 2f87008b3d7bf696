//! The pod: starts beans in order, supervises them (restart policies), and stops them all on
//! a stop request, cancelling what is left at the stop deadline.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use engine_core::StopHandle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::bean::{Bean, RestartPolicy};
use crate::config::PodConfig;
use crate::driver::Driver;
use crate::shared::{PodShared, Slot};
use crate::state::{BeanId, BeanState, BeanStatus, ControlError, SignalEvent, Target};

/// A bean with its label, parameters and restart policy, ready to be added to a pod.
pub struct BeanSpec {
    pub(crate) bean: Arc<dyn Bean>,
    pub(crate) core: String,
    pub(crate) label: Option<String>,
    /// Shared with every run's context; beans without parameters share one empty table.
    pub(crate) params: Arc<toml::Table>,
    pub(crate) restart: RestartPolicy,
    pub(crate) declares_readiness: bool,
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
            params: no_params(),
            restart: RestartPolicy::default(),
            declares_readiness: false,
        }
    }

    /// Sets the label.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Sets the parameters, read with [`BeanContext::params`](crate::BeanContext::params).
    #[must_use]
    pub fn params(mut self, params: toml::Table) -> Self {
        self.params = Arc::new(params);
        self
    }

    /// Sets the restart policy.
    #[must_use]
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Declares that the bean marks itself ready
    /// ([`BeanContext::mark_ready`](crate::BeanContext::mark_ready)): it shows as
    /// `starting` until it does, and `/ready` waits for it. For beans made of closures;
    /// a type says so with [`Bean::declares_readiness`].
    #[must_use]
    pub fn declares_readiness(mut self) -> Self {
        self.declares_readiness = true;
        self
    }
}

/// The parameters of a bean given none: one table for every such bean, so that a pod of
/// 10,000 beans makes none.
fn no_params() -> Arc<toml::Table> {
    static EMPTY: std::sync::LazyLock<Arc<toml::Table>> =
        std::sync::LazyLock::new(|| Arc::new(toml::Table::new()));
    Arc::clone(&EMPTY)
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

    /// Runs under `stop`: the pod's own handle, the root of every bean's, is a child of it.
    /// A graceful stop of it sends the `"stop"` signal to the beans' handlers, then reaches
    /// every bean's handle; `stop_now` cancels every bean at once. Pass the same handle to
    /// [`engine_core::install_signal_handler`] for SIGINT/SIGTERM.
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
        // The pod's own handle, a child of the given one: only the pod holds it, so that it
        // is gone before the beans' handles are (see `PodShared::stop`).
        let stop = self.stop.unwrap_or_default().child();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let mut subscription = None;
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<PodShared>| {
            // Registered before any bean's handle exists, so that it runs before the stop
            // reaches them: handlers hear "stop" while their bean's handle still runs.
            let weak = weak.clone();
            subscription = Some(stop.on_stop(move |_| {
                if let Some(shared) = weak.upgrade() {
                    shared.send_stop_signal();
                    shared.wake.notify_one();
                }
            }));
            let slots = self
                .beans
                .iter()
                .enumerate()
                .map(|(i, spec)| Slot {
                    id: BeanId(i as u64 + 1),
                    label: spec.label.as_deref().map(Arc::from),
                    core: Arc::from(spec.core.as_str()),
                    state: BeanState::Pending,
                    declares_readiness: spec.declares_readiness || spec.bean.declares_readiness(),
                    restarts: 0,
                    started: None,
                    address: None,
                    last_error: None,
                    stop: stop.child(),
                    run: None,
                    run_no: 0,
                    restart_requested: false,
                })
                .collect();
            PodShared::new(self.config, slots, stop.clone(), commands_tx)
        });
        let subscription = subscription.expect("set while the pod was made");
        let mut driver = Driver::new(
            Arc::clone(&shared),
            commands,
            subscription,
            self.beans.len(),
        );
        for (i, spec) in self.beans.into_iter().enumerate() {
            driver.spawn(BeanId(i as u64 + 1), spec);
        }
        let driver = tokio::spawn(driver.run());
        PodHandle { shared, driver }
    }
}

/// A running pod.
#[derive(Debug)]
pub struct PodHandle {
    shared: Arc<PodShared>,
    driver: JoinHandle<PodReport>,
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

    /// The pod's stop handle: the root of every bean's, a child of the one given to
    /// [`Pod::with_stop_handle`].
    pub fn stop_handle(&self) -> &StopHandle {
        &self.shared.stop
    }

    /// The beans' metrics (state, restarts, uptime), as a `prometheus_client` collector to
    /// register into a program's own registry; the status bean serves the same at
    /// `GET /metrics`. See [`PodMetrics`](crate::PodMetrics).
    pub fn metrics(&self) -> crate::metrics::PodMetrics {
        crate::metrics::PodMetrics::new(Arc::clone(&self.shared))
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

    /// Asks bean `id` to stop for good; see
    /// [`BeanContext::stop_bean`](crate::BeanContext::stop_bean).
    ///
    /// # Errors
    ///
    /// As [`BeanContext::stop_bean`](crate::BeanContext::stop_bean).
    pub fn stop_bean(&self, id: BeanId) -> Result<(), ControlError> {
        self.shared.stop_bean(id)
    }

    /// Restarts bean `id`; see [`BeanContext::restart_bean`](crate::BeanContext::restart_bean).
    ///
    /// # Errors
    ///
    /// As [`BeanContext::restart_bean`](crate::BeanContext::restart_bean).
    pub fn restart_bean(&self, id: BeanId) -> Result<(), ControlError> {
        self.shared.restart_bean(id)
    }

    /// Waits until `check` holds for the beans' status, or `deadline` passes; returns
    /// whether it holds. For tests and tools that watch a pod from outside.
    pub async fn wait_status(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&[BeanStatus]) -> bool,
    ) -> bool {
        let wait = self.shared.wait_until(|slots| {
            let status: Vec<BeanStatus> = slots.iter().map(Slot::status).collect();
            check(&status).then_some(())
        });
        tokio::time::timeout_at(deadline.into(), wait).await.is_ok()
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
