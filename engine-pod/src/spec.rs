//! A bean ready to be added to a pod: the bean with its name, label, parameters and restart
//! policy.

use std::fmt;
use std::sync::Arc;

use engine_core::RestartPolicy;

use crate::bean::Bean;

/// A bean with its label, parameters and restart policy, ready to be added to a pod.
///
/// Cloning it is cheap: the bean and its names and parameters are shared.
#[derive(Clone)]
pub struct BeanSpec {
    pub(crate) bean: Arc<dyn Bean>,
    pub(crate) core: Arc<str>,
    pub(crate) label: Option<Arc<str>>,
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
    pub fn new(core: impl Into<Arc<str>>, bean: impl Bean) -> Self {
        Self::from_arc(core, Arc::new(bean))
    }

    /// A bean already shared.
    pub fn from_arc(core: impl Into<Arc<str>>, bean: Arc<dyn Bean>) -> Self {
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
        self.label = Some(Arc::from(label.into()));
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

    /// Whether the bean declares readiness, by its spec or by its type.
    pub(crate) fn readiness_declared(&self) -> bool {
        self.declares_readiness || self.bean.declares_readiness()
    }
}

/// The parameters of a bean given none: one table for every such bean, so that a pod of
/// 10,000 beans makes none.
fn no_params() -> Arc<toml::Table> {
    static EMPTY: std::sync::LazyLock<Arc<toml::Table>> =
        std::sync::LazyLock::new(|| Arc::new(toml::Table::new()));
    Arc::clone(&EMPTY)
}
