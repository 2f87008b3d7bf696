//! Which app config a placed stage's workers receive: none, or the run's of a named type.

use std::any::{Any, type_name};
use std::fmt;
use std::marker::PhantomData;

use engine_core::protocol::{from_bytes, to_bytes};
use engine_core::{AppConfig, StageError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Which app config a placed stage's workers receive: [`NoConfig`], or [`WithConfig<T>`]
/// (set with [`ProcTransport::config`](crate::ProcTransport::config)).
pub trait PortableConfig: 'static {
    /// Encodes the run's config for the workers.
    ///
    /// # Errors
    ///
    /// The run's config is not of the named type, or does not encode.
    fn encode(config: &AppConfig) -> Result<Option<Vec<u8>>, StageError>;

    /// Decodes it in a worker.
    ///
    /// # Errors
    ///
    /// The bytes do not decode.
    fn decode(bytes: Option<&[u8]>) -> Result<AppConfig, StageError>;
}

/// The workers of a placed stage get no app config (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoConfig;

/// The workers of a placed stage get the run's app config, of type `T`.
pub struct WithConfig<T>(PhantomData<fn() -> T>);

impl<T> fmt::Debug for WithConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WithConfig<{}>", type_name::<T>())
    }
}

impl PortableConfig for NoConfig {
    fn encode(config: &AppConfig) -> Result<Option<Vec<u8>>, StageError> {
        if config.is_set() {
            tracing::debug!(
                "the app config is not sent to the worker processes: name its type with \
                 `.config::<T>()` on the placed stage to send it"
            );
        }
        Ok(None)
    }

    fn decode(_: Option<&[u8]>) -> Result<AppConfig, StageError> {
        Ok(AppConfig::none())
    }
}

impl<T: Serialize + DeserializeOwned + Any + Send + Sync> PortableConfig for WithConfig<T> {
    fn encode(config: &AppConfig) -> Result<Option<Vec<u8>>, StageError> {
        let value = config.get::<T>().map_err(|e| {
            StageError::msg(format!(
                "the placed stage needs the app config for its workers: {e}"
            ))
            .fatal()
        })?;
        Ok(Some(to_bytes(value).map_err(StageError::new)?))
    }

    fn decode(bytes: Option<&[u8]>) -> Result<AppConfig, StageError> {
        let bytes = bytes.ok_or_else(|| StageError::msg("the app config did not arrive"))?;
        Ok(AppConfig::new(
            from_bytes::<T>(bytes).map_err(StageError::new)?,
        ))
    }
}
