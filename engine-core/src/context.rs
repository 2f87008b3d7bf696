//! What a stage knows about where it runs: its name, kind, thread or worker index, the shared
//! application config and the stop state.

use std::any::{Any, type_name};
use std::fmt;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::kind::StageKind;
use crate::stop::StopHandle;

/// The shared application config: one value of any user type, shared by every stage of a run.
///
/// The origin library let stages read `self.config`, an object of any type. Here the config is
/// stored type-erased and read back with [`get`](Self::get), which checks the type at run time
/// and names both types in the error if they differ. Stages usually read it once in `setup`
/// and keep what they need.
///
/// Cloning is cheap (an `Arc`).
///
/// # Examples
///
/// ```
/// use engine::core::AppConfig;
///
/// struct Settings { greeting: String }
///
/// let config = AppConfig::new(Settings { greeting: "hi".into() });
/// assert_eq!(config.get::<Settings>().unwrap().greeting, "hi");
/// assert!(config.get::<u32>().is_err());
/// assert!(AppConfig::none().get::<Settings>().is_err());
/// ```
#[derive(Clone, Default)]
pub struct AppConfig {
    value: Option<(Arc<dyn Any + Send + Sync>, &'static str)>,
}

impl AppConfig {
    /// Wraps a config value.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self::from_arc(Arc::new(value))
    }

    /// Wraps a config value the caller already shares.
    pub fn from_arc<T: Any + Send + Sync>(value: Arc<T>) -> Self {
        Self {
            value: Some((value, type_name::<T>())),
        }
    }

    /// No config.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether a config value is present.
    pub fn is_set(&self) -> bool {
        self.value.is_some()
    }

    /// Borrows the config as a `T`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Missing`] if no config was given, [`ConfigError::WrongType`] if it is not
    /// a `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Result<&T, ConfigError> {
        let (value, found) = self.value.as_ref().ok_or(ConfigError::Missing {
            expected: type_name::<T>(),
        })?;
        value.downcast_ref::<T>().ok_or(ConfigError::WrongType {
            expected: type_name::<T>(),
            found,
        })
    }

    /// Shares the config as an `Arc<T>`, for a stage that keeps it past `setup`.
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    pub fn get_arc<T: Any + Send + Sync>(&self) -> Result<Arc<T>, ConfigError> {
        let (value, found) = self.value.as_ref().ok_or(ConfigError::Missing {
            expected: type_name::<T>(),
        })?;
        Arc::clone(value)
            .downcast::<T>()
            .map_err(|_| ConfigError::WrongType {
                expected: type_name::<T>(),
                found,
            })
    }
}

impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some((_, name)) => write!(f, "AppConfig({name})"),
            None => f.write_str("AppConfig(none)"),
        }
    }
}

/// The context every stage call receives.
///
/// Engines build one per stage instance (per thread or per worker process) and pass it to
/// `setup`, every item call and `cleanup`.
///
/// # Examples
///
/// ```
/// use engine::core::{AppConfig, StageContext, StageKind, StopHandle};
///
/// let stop = StopHandle::new();
/// let ctx = StageContext::new("parse", StageKind::Transport, 1, 4, stop.clone())
///     .with_config(AppConfig::new(42_u32));
/// assert_eq!(ctx.stage(), "parse");
/// assert_eq!((ctx.index(), ctx.instances()), (1, 4));
/// assert_eq!(*ctx.config::<u32>().unwrap(), 42);
/// stop.stop();
/// assert!(ctx.is_stopping());
/// ```
#[derive(Debug, Clone)]
pub struct StageContext {
    stage: Arc<str>,
    kind: StageKind,
    index: usize,
    instances: usize,
    config: AppConfig,
    stop: StopHandle,
}

impl StageContext {
    /// A context for instance `index` (0-based) of `instances` of the stage named `stage`,
    /// observing the run's `stop` handle, with no config (see [`with_config`]).
    ///
    /// [`with_config`]: Self::with_config
    pub fn new(
        stage: impl Into<Arc<str>>,
        kind: StageKind,
        index: usize,
        instances: usize,
        stop: StopHandle,
    ) -> Self {
        Self {
            stage: stage.into(),
            kind,
            index,
            instances,
            config: AppConfig::none(),
            stop,
        }
    }

    /// A context for calling a stage by hand, outside any engine (in tests, or to try a stage
    /// out): instance 0 of 1, no config, and a stop handle of its own that nothing else stops.
    ///
    /// ```
    /// # use engine::core::{StageContext, StageKind};
    /// let ctx = StageContext::standalone("probe", StageKind::Backend);
    /// assert_eq!((ctx.index(), ctx.instances(), ctx.is_stopping()), (0, 1, false));
    /// ```
    pub fn standalone(stage: impl Into<Arc<str>>, kind: StageKind) -> Self {
        Self::new(stage, kind, 0, 1, StopHandle::new())
    }

    /// Sets the shared application config.
    #[must_use]
    pub fn with_config(mut self, config: AppConfig) -> Self {
        self.config = config;
        self
    }

    /// The stage's name, as given to the engine.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// The stage's name as a shared string, cheap to clone into logs or reports.
    pub fn stage_name(&self) -> &Arc<str> {
        &self.stage
    }

    /// Whether this is a frontend, transport or backend.
    pub fn kind(&self) -> StageKind {
        self.kind
    }

    /// The 0-based index of this instance: its thread or worker number within the stage.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many instances (threads or workers) the stage has.
    pub fn instances(&self) -> usize {
        self.instances
    }

    /// The shared application config.
    pub fn app_config(&self) -> &AppConfig {
        &self.config
    }

    /// Borrows the shared application config as a `T`.
    ///
    /// # Errors
    ///
    /// As for [`AppConfig::get`].
    pub fn config<T: Any + Send + Sync>(&self) -> Result<&T, ConfigError> {
        self.config.get()
    }

    /// The run's stop handle.
    pub fn stop(&self) -> &StopHandle {
        &self.stop
    }

    /// Whether a stop (graceful or not) was requested. A frontend checks this between blocking
    /// reads to end early.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_stopping()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_both_types() {
        let config = AppConfig::new(String::from("x"));
        let err = config.get::<u64>().unwrap_err();
        assert_eq!(
            err,
            ConfigError::WrongType {
                expected: "u64",
                found: "alloc::string::String"
            }
        );
        assert!(err.to_string().contains("u64"));
        let missing = AppConfig::none().get_arc::<u64>().unwrap_err();
        assert_eq!(missing, ConfigError::Missing { expected: "u64" });
    }

    #[test]
    fn get_arc_shares_the_same_value() {
        let shared = Arc::new(5_u8);
        let config = AppConfig::from_arc(Arc::clone(&shared));
        let back = config.get_arc::<u8>().unwrap();
        assert!(Arc::ptr_eq(&shared, &back));
        assert!(format!("{config:?}").contains("u8"));
    }
}
