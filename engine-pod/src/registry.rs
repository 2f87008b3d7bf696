//! The registry of named bean factories. Rust cannot import a bean by its path as the origin
//! does, so a config's `core = "name"` is looked up here; built-in beans are pre-registered
//! and a program adds its own.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::bean::Bean;
use crate::config::{BeanConfig, ConfigError, PodConfig, PodFile};
use crate::pod::Pod;
use crate::spec::BeanSpec;

/// Makes a bean from its config (checking its parameters early, so that a bad config fails
/// before anything starts).
pub type BeanFactory = Arc<dyn Fn(&BeanConfig) -> Result<Arc<dyn Bean>, ConfigError> + Send + Sync>;

/// Checks a bean's config against the pod's settings before anything starts (a status bean
/// beyond loopback needs the pod's token); the error says what to change.
pub(crate) type PodCheck = Arc<dyn Fn(&BeanConfig, &PodConfig) -> Result<(), String> + Send + Sync>;

/// Named bean factories.
///
/// ```
/// use engine::pod::{BeanContext, PodFile, Registry, bean_fn};
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Hello { name: String }
///
/// let mut registry = Registry::with_builtins();
/// registry.register_typed("hello", |params: Hello| {
///     bean_fn(move |_ctx: BeanContext| {
///         let name = params.name.clone();
///         async move { tracing::info!("hello {name}!") }
///     })
/// });
/// let file = PodFile::parse("[[beans]]\ncore = \"hello\"\nname = \"Ozzy\"")?;
/// let _pod = registry.build(file)?;
///
/// let bad = PodFile::parse("[[beans]]\ncore = \"hello\"\nnmae = \"Ozzy\"")?;
/// assert!(registry.build(bad).unwrap_err().to_string().contains("unknown field `nmae`"));
/// # Ok::<(), engine::pod::ConfigError>(())
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, BeanFactory>,
    /// Checks of built-in beans that need the pod's settings, by name.
    checks: BTreeMap<String, PodCheck>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a factory under `name` (replacing any previous one).
    pub fn register<B: Bean>(
        &mut self,
        name: &str,
        factory: impl Fn(&BeanConfig) -> Result<B, ConfigError> + Send + Sync + 'static,
    ) -> &mut Self {
        let factory: BeanFactory =
            Arc::new(move |config| factory(config).map(|bean| Arc::new(bean) as Arc<dyn Bean>));
        self.factories.insert(name.to_owned(), factory);
        // A bean registered in place of a built-in one brings its own rules.
        self.checks.remove(name);
        self
    }

    /// Adds a check of the beans registered as `name` against the pod's settings, run by
    /// [`build`](Self::build) before anything starts.
    pub(crate) fn check_with_pod(
        &mut self,
        name: &str,
        check: impl Fn(&BeanConfig, &PodConfig) -> Result<(), String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.checks.insert(name.to_owned(), Arc::new(check));
        self
    }

    /// Registers a bean whose parameters deserialise into `P` (use
    /// `#[serde(deny_unknown_fields)]` to reject unknown keys); bad parameters are a config
    /// error naming the key.
    pub fn register_typed<P, B>(
        &mut self,
        name: &str,
        make: impl Fn(P) -> B + Send + Sync + 'static,
    ) -> &mut Self
    where
        P: DeserializeOwned,
        B: Bean,
    {
        self.register(name, move |config| {
            Ok(make(crate::config::params(&config.core, &config.params)?))
        })
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// Makes the bean of one config table.
    ///
    /// # Errors
    ///
    /// [`ConfigError::UnknownCore`] listing the registered names, or the factory's error.
    pub fn make(&self, index: usize, config: &BeanConfig) -> Result<BeanSpec, ConfigError> {
        let factory = self
            .factories
            .get(&config.core)
            .ok_or_else(|| ConfigError::UnknownCore {
                index,
                core: config.core.clone(),
                known: self.names(),
            })?;
        let mut spec = BeanSpec::from_arc(config.core.clone(), factory(config)?)
            .params(config.params.clone())
            .restart(config.restart);
        if let Some(label) = &config.label {
            spec = spec.label(label.clone());
        }
        Ok(spec)
    }

    /// Makes a pod of a whole config, checking every bean before anything starts: its
    /// parameters, and for a built-in bean that needs them, the pod's settings (a status
    /// bean beyond loopback needs a `control_token`).
    ///
    /// # Errors
    ///
    /// The first bean's error, as [`make`](Self::make), or [`ConfigError::Bean`] saying what
    /// to change.
    pub fn build(&self, file: PodFile) -> Result<Pod, ConfigError> {
        let mut specs = Vec::with_capacity(file.beans.len());
        for (i, config) in file.beans.iter().enumerate() {
            specs.push(self.make(i + 1, config)?);
            if let Some(check) = self.checks.get(&config.core) {
                check(config, &file.pod).map_err(|message| ConfigError::Bean {
                    index: i + 1,
                    core: config.core.clone(),
                    message,
                })?;
            }
        }
        let mut pod = Pod::new(file.pod);
        for spec in specs {
            pod.add(spec);
        }
        Ok(pod)
    }
}
