//! An async stage's settings, the runtime it runs on, and what can be wrong with them.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use engine_core::plumbing::lock;
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

/// The concurrency of an async stage unless set.
pub(crate) const DEFAULT_CONCURRENCY: usize = 256;
/// The threads of the engine's own runtime unless set.
pub(crate) const DEFAULT_RUNTIME_THREADS: usize = 2;

/// What is wrong with an async stage's settings; the run fails at once with it, before any
/// item is taken.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncError {
    /// `concurrency(0)`: no item could ever run.
    #[error("an async stage needs a concurrency of at least 1")]
    ZeroConcurrency,
    /// `timeout(Duration::ZERO)`: every item would time out.
    #[error("an async stage's per-item timeout must be longer than zero")]
    ZeroTimeout,
    /// `runtime_threads(0)`.
    #[error("the engine's own runtime needs at least one thread")]
    ZeroRuntimeThreads,
    /// The handle given to `runtime` belongs to a runtime that has shut down.
    #[error("the runtime given to the async stage has shut down")]
    RuntimeShutDown,
    /// The handle given to `runtime` is a current-thread runtime's, which runs futures only
    /// while its own thread blocks on it: the engine's threads cannot drive it.
    #[error(
        "the runtime given to the async stage is a current-thread runtime; give a multi-thread \
         runtime's handle, or none to let the engine make its own"
    )]
    CurrentThreadRuntime,
    /// The engine could not build its own runtime.
    #[error("cannot build the async stage's runtime: {0}")]
    Build(String),
}

/// Where an async stage's futures run.
pub(crate) enum RuntimeChoice {
    /// The engine's own, made at the first run with this many threads, kept for the next.
    Own {
        threads: usize,
        runtime: Mutex<Option<OwnRuntime>>,
    },
    /// The program's.
    Given(Handle),
}

impl fmt::Debug for RuntimeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Own { threads, .. } => write!(f, "own runtime ({threads} threads)"),
            Self::Given(_) => f.write_str("given runtime"),
        }
    }
}

impl RuntimeChoice {
    pub(crate) fn own(threads: usize) -> Self {
        Self::Own {
            threads,
            runtime: Mutex::new(None),
        }
    }

    /// The handle to spawn on, making the engine's own runtime the first time; checks that a
    /// given runtime can run the stage.
    pub(crate) fn handle(&self) -> Result<Handle, AsyncError> {
        match self {
            Self::Given(handle) => {
                if handle.runtime_flavor() == RuntimeFlavor::CurrentThread {
                    return Err(AsyncError::CurrentThreadRuntime);
                }
                // A runtime that has shut down cancels what is spawned on it at once.
                if handle.block_on(handle.spawn(async {})).is_err() {
                    return Err(AsyncError::RuntimeShutDown);
                }
                Ok(handle.clone())
            }
            Self::Own { threads, runtime } => {
                if *threads == 0 {
                    return Err(AsyncError::ZeroRuntimeThreads);
                }
                let mut runtime = lock(runtime);
                if let Some(own) = &*runtime {
                    return Ok(own.handle());
                }
                let built = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(*threads)
                    .thread_name("engine-async")
                    .enable_all()
                    .build()
                    .map_err(|e| AsyncError::Build(e.to_string()))?;
                let handle = built.handle().clone();
                *runtime = Some(OwnRuntime(Some(built)));
                Ok(handle)
            }
        }
    }
}

/// The engine's own runtime, shut down in the background when dropped, so that dropping the
/// stage inside async code does not panic.
pub(crate) struct OwnRuntime(Option<Runtime>);

impl OwnRuntime {
    fn handle(&self) -> Handle {
        self.0
            .as_ref()
            .expect("the runtime is only taken when dropped")
            .handle()
            .clone()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// An async stage's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) concurrency: usize,
    /// Whether the limit is found between 1 and `concurrency` (AIMD).
    pub(crate) adaptive: bool,
    pub(crate) timeout: Option<Duration>,
}

impl Limits {
    pub(crate) fn check(&self) -> Result<(), AsyncError> {
        if self.concurrency == 0 {
            return Err(AsyncError::ZeroConcurrency);
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(AsyncError::ZeroTimeout);
        }
        Ok(())
    }
}
