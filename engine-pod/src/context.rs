//! A bean's view of the pod: its id, label and parameters, the pod config, the other beans,
//! named signals, readiness, control of other beans, and its stop.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use engine_core::StopHandle;
use serde::de::DeserializeOwned;

use crate::config::{ConfigError, PodConfig};
use crate::run::Run;
use crate::shared::{PodShared, index};
use crate::state::{BeanId, BeanState, BeanStatus, ControlError, ReadyError, SignalEvent, Target};

/// A bean's handle on the pod, given to each run of the bean. Cloning it is cheap (two
/// reference counts).
#[derive(Clone)]
pub struct BeanContext {
    pub(crate) run: Arc<Run>,
    pub(crate) pod: Arc<PodShared>,
}

impl fmt::Debug for BeanContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BeanContext")
            .field("id", &self.run.id)
            .field("label", &self.run.label)
            .field("core", &self.run.core)
            .finish_non_exhaustive()
    }
}

impl BeanContext {
    /// The pod this bean runs in.
    fn pod(&self) -> &PodShared {
        &self.pod
    }

    /// The pod's tokio runtime, for code of the bean that runs on threads of its own and wants
    /// its futures on the pod's runtime rather than a second one: an async stage of an
    /// [`engine_bean`](crate::engine_bean), say (`Async::map(f).runtime(ctx.runtime())`).
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.pod
            .runtime
            .clone()
            .expect("a pod is started inside a tokio runtime")
    }

    /// This bean's id.
    pub fn id(&self) -> BeanId {
        self.run.id
    }

    /// This bean's label, if any.
    pub fn label(&self) -> Option<&str> {
        self.run.label.as_deref()
    }

    /// The name this bean was made from.
    pub fn core(&self) -> &str {
        &self.run.core
    }

    /// The pod's config.
    pub fn pod_config(&self) -> &PodConfig {
        &self.pod().config
    }

    /// This bean's parameters (every key of its `[[beans]]` table but `core`, `label` and
    /// `restart`), as a typed struct.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Params`] naming the bean and the key that did not fit.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        crate::config::params(&self.run.core, &self.run.params)
    }

    /// This bean's parameters as written.
    pub fn raw_params(&self) -> &toml::Table {
        &self.run.params
    }

    /// The status of every bean, in id order.
    pub fn beans(&self) -> Vec<BeanStatus> {
        self.pod().status()
    }

    /// The status of bean `id`.
    pub fn bean(&self, id: BeanId) -> Option<BeanStatus> {
        self.pod().bean(id)
    }

    /// The ids of the beans labelled `label`.
    pub fn beans_labelled(&self, label: &str) -> Vec<BeanId> {
        self.pod().ids(&Target::Label(label.to_owned()))
    }

    /// Waits until bean `id` has ended for good and returns its final state (`None` if there
    /// is no such bean).
    pub async fn wait_for(&self, id: BeanId) -> Option<BeanState> {
        let i = index(id)?;
        self.pod()
            .wait_until(|slots| match slots.get(i) {
                None => Some(None),
                Some(slot) if slot.state.is_final() => Some(Some(slot.state)),
                Some(_) => None,
            })
            .await
    }

    /// Marks this run of the bean ready: its state goes from `starting` (or `running`) to
    /// `ready`, and whoever waits in [`wait_ready`](Self::wait_ready) goes on. A restarted
    /// bean starts again as `starting`.
    pub fn mark_ready(&self) {
        self.pod().mark_ready(self.run.id, self.run.run_no, None);
    }

    /// Marks this run ready and listening on `addr`, which the status view shows: what a
    /// server bean calls once it has bound its address.
    pub fn mark_listening(&self, addr: SocketAddr) {
        self.pod()
            .mark_ready(self.run.id, self.run.run_no, Some(addr));
    }

    /// Waits until every bean `target` names is ready: [`BeanState::Ready`], or running for
    /// a bean that declares no readiness. The beans are those `target` names when called.
    ///
    /// ```
    /// use engine::pod::{BeanContext, BeanSpec, Pod, PodConfig, TcpServer, bean_fn};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let mut pod = Pod::new(PodConfig::default());
    /// pod.add(BeanSpec::new("tcp_server", TcpServer::echo()).label("echo"));
    /// pod.add(BeanSpec::new("client", bean_fn(|ctx: BeanContext| async move {
    ///     ctx.wait_ready("echo").await?;
    ///     let server = ctx.bean(ctx.beans_labelled("echo")[0]).expect("the server");
    ///     let addr = server.address.expect("a bound server shows its address");
    ///     // Bound: the first try connects.
    ///     tokio::net::TcpStream::connect(addr).await.map_err(engine::core::StageError::new)?;
    ///     ctx.stop_pod();
    ///     Ok::<_, engine::core::StageError>(())
    /// })));
    /// assert!(pod.run().await.is_success());
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// [`ReadyError::NoSuchBean`] when `target` names no bean, [`ReadyError::Ended`] when one
    /// of them ended for good before it was ready.
    pub async fn wait_ready(&self, target: impl Into<Target>) -> Result<(), ReadyError> {
        let target = target.into();
        let ids = self.pod().ids(&target);
        if ids.is_empty() {
            return Err(ReadyError::NoSuchBean(target));
        }
        self.pod()
            .wait_until(|slots| {
                let mut all_ready = true;
                for slot in ids.iter().filter_map(|id| slots.get(index(*id)?)) {
                    if slot.state.is_final() {
                        return Some(Err(ReadyError::Ended {
                            id: slot.id,
                            state: slot.state,
                        }));
                    }
                    all_ready &= slot.state.is_ready();
                }
                all_ready.then_some(Ok(()))
            })
            .await
    }

    /// Registers `handler` for the named signal `name`. Handlers run on the sender's thread:
    /// keep them short (set a flag, send on a channel). The pod sends `"stop"` to every bean
    /// when it is asked to stop, before any bean sees its stop handle stopping; that handler
    /// runs on the thread that stopped the pod (the signal thread for SIGTERM), which may be
    /// outside the tokio runtime.
    pub fn on_signal(&self, name: &str, handler: impl Fn(&SignalEvent) + Send + Sync + 'static) {
        self.pod().add_handler(self.run.id, name, Arc::new(handler));
    }

    /// Sends the named signal to the beans `target` names; returns how many handlers ran.
    pub fn send_signal(&self, name: &str, target: Target, payload: serde_json::Value) -> usize {
        let event = SignalEvent {
            name: name.to_owned(),
            from: Some(self.run.id),
            payload,
        };
        self.pod().dispatch(&target, &event)
    }

    /// Resolves when this bean is asked to stop: the pod stops, or the bean alone is stopped
    /// or restarted.
    pub async fn stopping(&self) {
        self.run.stopping(&self.pod.beans).await;
    }

    /// Whether this bean is asked to stop.
    pub fn is_stopping(&self) -> bool {
        self.run.is_stopping(&self.pod.beans)
    }

    /// This run's stop handle, a child of the bean's, itself a child of the pod's (made on
    /// the first call; [`stopping`](Self::stopping) needs none). Hand it
    /// to an engine ([`engine_threads::EngineBuilder::stop_handle`]) or take a
    /// [`child`](StopHandle::child) of it for a sub-task; a blocking bean can
    /// [`wait`](StopHandle::wait) on it.
    pub fn stop_handle(&self) -> &StopHandle {
        self.run
            .stop_handle(|| self.pod.bean_stop_handle(self.run.id))
    }

    /// Asks the whole pod to stop gracefully, as SIGTERM would.
    pub fn stop_pod(&self) {
        self.pod().stop.stop();
    }

    /// Asks bean `id` to stop for good, as `engine pod ctl stop ID` does; the other beans go
    /// on.
    ///
    /// # Errors
    ///
    /// [`ControlError::NoSuchBean`], or [`ControlError::NotRunning`] for a bean that ended.
    pub fn stop_bean(&self, id: BeanId) -> Result<(), ControlError> {
        self.pod().stop_bean(id)
    }

    /// Ends the current run of bean `id` (through its stop handle) and starts it again at
    /// once, whatever its restart policy; a bean that ended for good is started again. The
    /// restart counts in its status.
    ///
    /// # Errors
    ///
    /// [`ControlError::NoSuchBean`], [`ControlError::NotRunning`] for a bean being stopped,
    /// or [`ControlError::PodStopping`].
    pub fn restart_bean(&self, id: BeanId) -> Result<(), ControlError> {
        self.pod().restart_bean(id)
    }
}
