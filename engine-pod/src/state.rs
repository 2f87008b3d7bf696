//! What the pod says about its beans: ids, states, the status view, named signals and their
//! targets, and the errors of waiting for and controlling beans.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A bean's id: 1, 2, 3... in start order, unique in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BeanId(pub u64);

impl fmt::Display for BeanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a bean is in its life.
///
/// A running bean is in one of three states: [`Starting`](Self::Starting) when it declares
/// readiness ([`Bean::declares_readiness`](crate::Bean::declares_readiness) or
/// [`BeanSpec::declares_readiness`](crate::BeanSpec::declares_readiness)) and has not marked
/// itself ready yet, [`Ready`](Self::Ready) once it has
/// ([`BeanContext::mark_ready`](crate::BeanContext::mark_ready)), and
/// [`Running`](Self::Running) when it declares nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BeanState {
    /// Added, not started yet.
    Pending,
    /// Running, not ready yet (it declares readiness).
    Starting,
    /// Running and ready.
    Ready,
    /// Running (it declares no readiness).
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

    /// Whether a run of the bean is going on (starting, ready or running).
    pub fn is_up(self) -> bool {
        matches!(self, Self::Starting | Self::Ready | Self::Running)
    }

    /// Whether the bean is up and ready: [`Ready`](Self::Ready), or
    /// [`Running`](Self::Running) for a bean that declares no readiness.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Ready | Self::Running)
    }

    /// The name the status view shows (`"starting"`, `"ready"`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopping => "stopping",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for BeanState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
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
    /// The registered name it was made from (or the name given in code), shared with the
    /// bean's slot, so that a status costs no copy of it; compare it as `&*status.core`.
    #[serde(with = "arc_str")]
    pub core: Arc<str>,
    /// Where it is in its life.
    pub state: BeanState,
    /// Whether it declares readiness (then `/ready` waits for it).
    #[serde(default)]
    pub declares_readiness: bool,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Time since its current run started (zero when not running), in the human form.
    #[serde(with = "humantime_serde")]
    pub uptime: Duration,
    /// The same, in seconds, for programs.
    #[serde(default)]
    pub uptime_secs: f64,
    /// The address it listens on, for a server bean that said so
    /// ([`BeanContext::mark_listening`](crate::BeanContext::mark_listening)).
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// The last error, if it failed.
    pub last_error: Option<String>,
}

/// An `Arc<str>` in serde as a plain string (serde's own impl needs its `rc` feature, which
/// would change the serde build of every crate in the workspace).
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

/// A named signal, as a handler receives it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SignalEvent {
    /// The signal's name.
    pub name: String,
    /// The bean that sent it (`None` when the pod or the control API sent it).
    pub from: Option<BeanId>,
    /// What came with it.
    pub payload: serde_json::Value,
}

/// Which beans a signal goes to, or a wait is for.
///
/// A [`BeanId`] converts into [`Target::Id`], a string into [`Target::Label`].
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

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("every bean"),
            Self::Label(label) => write!(f, "label {label:?}"),
            Self::Id(id) => write!(f, "bean {id}"),
        }
    }
}

impl From<BeanId> for Target {
    fn from(id: BeanId) -> Self {
        Self::Id(id)
    }
}

impl From<&str> for Target {
    fn from(label: &str) -> Self {
        Self::Label(label.to_owned())
    }
}

impl From<String> for Target {
    fn from(label: String) -> Self {
        Self::Label(label)
    }
}

/// Why [`BeanContext::wait_ready`](crate::BeanContext::wait_ready) gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadyError {
    /// No bean matches the target.
    #[error("no bean matches {0}")]
    NoSuchBean(Target),
    /// A bean of the target ended for good before it was ready.
    #[error("bean {id} ended ({state}) before it was ready")]
    Ended {
        /// The bean.
        id: BeanId,
        /// Its final state.
        state: BeanState,
    },
}

/// Why a bean could not be stopped or restarted on request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// There is no such bean.
    #[error("no bean {0}")]
    NoSuchBean(BeanId),
    /// The bean is not in a state where this can be done (stopping a bean that ended).
    #[error("bean {id} is {state}")]
    NotRunning {
        /// The bean.
        id: BeanId,
        /// Its state.
        state: BeanState,
    },
    /// The pod is stopping: nothing is started again.
    #[error("the pod is stopping")]
    PodStopping,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bean_status_serialises_its_core_as_a_plain_string() {
        let status = BeanStatus {
            id: BeanId(1),
            label: Some("workers".to_owned()),
            core: Arc::from("worker"),
            state: BeanState::Running,
            declares_readiness: false,
            restarts: 0,
            uptime: Duration::from_secs(2),
            uptime_secs: 2.0,
            address: None,
            last_error: None,
        };
        let json = serde_json::to_value(&status).expect("a status serialises");
        assert_eq!(json["core"], "worker");
        let back: BeanStatus = serde_json::from_value(json).expect("and deserialises");
        assert_eq!(back, status);
        // A copy of a status shares the name instead of copying it.
        assert!(Arc::ptr_eq(&status.clone().core, &status.core));
    }
}
