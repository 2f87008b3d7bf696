//! The pod: starts beans in order, supervises them (restart policies), and stops them all on
//! a stop request, cancelling what is left at the stop deadline.

use std::sync::Arc;
use std::time::Instant;

use engine_core::StopHandle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::PodConfig;
use crate::driver::Driver;
use crate::shared::{PodShared, Slot};
use crate::spec::BeanSpec;
use crate::state::{BeanId, BeanStatus, ControlError, PodReport, SignalEvent, Target};

/// A pod of beans, built in code or from a config file through a
/// [`Registry`](crate::Registry).
///
/// ```
/// use engine::pod::{BeanContext, BeanSpec, Pod, PodConfig, bean_fn};
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
                    shared.reach_beans();
                    shared.wake.notify_one();
                }
            }));
            let slots = (1..)
                .zip(&self.beans)
                .map(|(id, spec)| {
                    let (label, core) = (spec.label.clone(), Arc::clone(&spec.core));
                    Slot::new(BeanId(id), label, core, spec.readiness_declared())
                })
                .collect();
            PodShared::new(self.config, slots, stop.clone(), commands_tx)
        });
        let subscription = subscription.expect("set while the pod was made");
        let mut driver = Driver::new(Arc::clone(&shared), commands, subscription, self.beans);
        driver.spawn_all();
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
