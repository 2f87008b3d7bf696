//! A bean's view of the pod: its id, label and parameters, the pod config, the other beans,
//! named signals, and its stop token.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, PodConfig};

/// A bean's id: 1, 2, 3... in start order, unique in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BeanId(pub u64);

impl fmt::Display for BeanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a bean is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BeanState {
    /// Added, not started yet.
    Pending,
    /// Running.
    Running,
    /// Waiting to be started again after it ended.
    Restarting,
    /// Asked to stop; not ended yet.
    Stopping,
    /// Ended well.
    Finished,
    /// Ended with an error or a panic, with no restart left.
    Failed,
    /// Cancelled by the pod at its stop deadline.
    Cancelled,
}

impl BeanState {
    /// Whether the bean has ended for good.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Cancelled)
    }
}

/// A bean as the status view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BeanStatus {
    /// The bean's id.
    pub id: BeanId,
    /// Its label, if any.
    pub label: Option<String>,
    /// The registered name it was made from (or the name given in code).
    pub core: String,
    /// Where it is in its life.
    pub state: BeanState,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Time since its current run started (zero when not running).
    #[serde(with = "humantime_serde")]
    pub uptime: Duration,
    /// The last error, if it failed.
    pub last_error: Option<String>,
}

/// A named signal, as a handler receives it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SignalEvent {
    /// The signal's name.
    pub name: String,
    /// The bean that sent it (`None` when the pod sent it, as for `"stop"`).
    pub from: Option<BeanId>,
    /// What came with it.
    pub payload: serde_json::Value,
}

/// Which beans a signal goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every bean.
    All,
    /// The beans with this label.
    Label(String),
    /// One bean.
    Id(BeanId),
}

type Handler = Arc<dyn Fn(&SignalEvent) + Send + Sync>;

/// One bean's entry in the pod.
pub(crate) struct Slot {
    pub(crate) id: BeanId,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) core: Arc<str>,
    pub(crate) state: BeanState,
    pub(crate) restarts: u32,
    pub(crate) started: Option<Instant>,
    pub(crate) last_error: Option<String>,
    pub(crate) stop: CancellationToken,
    pub(crate) done: watch::Sender<Option<BeanState>>,
}

/// What every bean's context shares.
pub(crate) struct PodShared {
    pub(crate) config: PodConfig,
    pub(crate) slots: Mutex<Vec<Slot>>,
    pub(crate) handlers: Mutex<HashMap<BeanId, Vec<(String, Handler)>>>,
    pub(crate) stop: engine_core::StopHandle,
    /// Cancelled when the pod starts stopping: no bean is restarted after that.
    pub(crate) stopping: CancellationToken,
}

impl PodShared {
    pub(crate) fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handlers(&self) -> MutexGuard<'_, HashMap<BeanId, Vec<(String, Handler)>>> {
        self.handlers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn clear_handlers(&self, id: BeanId) {
        self.handlers().remove(&id);
    }

    pub(crate) fn status(&self) -> Vec<BeanStatus> {
        self.slots().iter().map(Slot::status).collect()
    }

    /// Slots are stored in id order, id 1 first.
    pub(crate) fn update(&self, id: BeanId, f: impl FnOnce(&mut Slot)) {
        let mut slots = self.slots();
        if let Some(slot) = index(id).and_then(|i| slots.get_mut(i)) {
            f(slot);
        }
    }

    /// Calls the handlers of `name` registered by the beans `target` names; returns how many
    /// handlers ran. A panicking handler is logged and does not stop the others.
    pub(crate) fn dispatch(&self, target: &Target, event: &SignalEvent) -> usize {
        let ids: Vec<BeanId> = self
            .slots()
            .iter()
            .filter(|s| match target {
                Target::All => true,
                Target::Label(label) => s.label.as_deref() == Some(label.as_str()),
                Target::Id(id) => s.id == *id,
            })
            .map(|s| s.id)
            .collect();
        let handlers: Vec<(BeanId, Handler)> = {
            let all = self.handlers();
            ids.iter()
                .flat_map(|id| {
                    all.get(id)
                        .into_iter()
                        .flatten()
                        .filter(|(n, _)| *n == event.name)
                        .map(|(_, h)| (*id, Arc::clone(h)))
                })
                .collect()
        };
        for (id, handler) in &handlers {
            let call = std::panic::AssertUnwindSafe(|| handler(event));
            if let Err(payload) = std::panic::catch_unwind(call) {
                tracing::error!(
                    bean = %id,
                    signal = %event.name,
                    error = %engine_core::StageError::from_panic(payload),
                    "a signal handler panicked"
                );
            }
        }
        handlers.len()
    }
}

/// The position of bean `id` in the slots.
fn index(id: BeanId) -> Option<usize> {
    usize::try_from(id.0).ok()?.checked_sub(1)
}

impl Slot {
    pub(crate) fn status(&self) -> BeanStatus {
        BeanStatus {
            id: self.id,
            label: self.label.as_deref().map(str::to_owned),
            core: self.core.to_string(),
            state: self.state,
            restarts: self.restarts,
            uptime: match (self.state, self.started) {
                (BeanState::Running | BeanState::Stopping, Some(t)) => t.elapsed(),
                _ => Duration::ZERO,
            },
            last_error: self.last_error.clone(),
        }
    }
}

/// A bean's handle on the pod, given to each run of the bean.
#[derive(Clone)]
pub struct BeanContext {
    pub(crate) id: BeanId,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) core: Arc<str>,
    pub(crate) params: Arc<toml::Table>,
    pub(crate) pod: Arc<PodShared>,
    pub(crate) stop: CancellationToken,
}

impl fmt::Debug for BeanContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BeanContext")
            .field("id", &self.id)
            .field("label", &self.label)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl BeanContext {
    /// This bean's id.
    pub fn id(&self) -> BeanId {
        self.id
    }

    /// This bean's label, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The name this bean was made from.
    pub fn core(&self) -> &str {
        &self.core
    }

    /// The pod's config.
    pub fn pod_config(&self) -> &PodConfig {
        &self.pod.config
    }

    /// This bean's parameters (every key of its `[[beans]]` table but `core`, `label` and
    /// `restart`), as a typed struct.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Params`] naming the bean and the key that did not fit.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        crate::config::params(&self.core, &self.params)
    }

    /// This bean's parameters as written.
    pub fn raw_params(&self) -> &toml::Table {
        &self.params
    }

    /// The status of every bean, in id order.
    pub fn beans(&self) -> Vec<BeanStatus> {
        self.pod.status()
    }

    /// The status of bean `id`.
    pub fn bean(&self, id: BeanId) -> Option<BeanStatus> {
        self.pod
            .slots()
            .iter()
            .find(|s| s.id == id)
            .map(Slot::status)
    }

    /// The ids of the beans labelled `label`.
    pub fn beans_labelled(&self, label: &str) -> Vec<BeanId> {
        self.pod
            .slots()
            .iter()
            .filter(|s| s.label.as_deref() == Some(label))
            .map(|s| s.id)
            .collect()
    }

    /// Waits until bean `id` has ended for good and returns its final state (`None` if there
    /// is no such bean).
    pub async fn wait_for(&self, id: BeanId) -> Option<BeanState> {
        let mut done = {
            let slots = self.pod.slots();
            slots.get(index(id)?)?.done.subscribe()
        };
        let state = done.wait_for(Option::is_some).await.ok()?;
        *state
    }

    /// Registers `handler` for the named signal `name`. Handlers run on the sender's task:
    /// keep them short (set a flag, send on a channel). The pod sends `"stop"` to every bean
    /// on SIGINT/SIGTERM, before asking beans to stop.
    pub fn on_signal(&self, name: &str, handler: impl Fn(&SignalEvent) + Send + Sync + 'static) {
        self.pod
            .handlers()
            .entry(self.id)
            .or_default()
            .push((name.to_owned(), Arc::new(handler)));
    }

    /// Sends the named signal to the beans `target` names; returns how many handlers ran.
    pub fn send_signal(&self, name: &str, target: Target, payload: serde_json::Value) -> usize {
        let event = SignalEvent {
            name: name.to_owned(),
            from: Some(self.id),
            payload,
        };
        self.pod.dispatch(&target, &event)
    }

    /// Resolves when the pod asks this bean to stop.
    pub async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// Whether the pod asked this bean to stop.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The token cancelled when the pod asks this bean to stop, to hand to sub-tasks.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Asks the whole pod to stop gracefully, as SIGTERM would.
    pub fn stop_pod(&self) {
        self.pod.stop.stop();
    }
}
