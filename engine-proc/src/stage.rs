//! Process-backed stages: a transport or backend of the threaded engine that runs in worker
//! processes, with the same stage code.

use std::fmt;
use std::time::Duration;

use engine_core::{Backend, StageContext, StageError, StageKind, StopHandle, Transport};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::TaskError;
use crate::pool::Pool;
use crate::worker::Worker;

/// Runs a [`Transport`] in a worker process: the engine's transport thread hands each item to
/// its own worker process and waits for the output.
///
/// The stage value is serialised and sent to the worker, which calls `setup`, `transport`
/// for every item and `cleanup` there; give the engine `transport_threads(n)` for `n` worker
/// processes (each engine thread owns one). Everything the engine promises holds: counts add
/// up, an error or a panic in the stage fails that item only, a graceful stop drains. A
/// worker that dies is replaced and the item tried again (see [`retries`](Self::retries));
/// after that the item fails with the reason.
///
/// Each item is one round trip between processes (tens of microseconds), so this suits
/// stages whose work per item is heavier than that, or that must be isolated (a crashing
/// native library, a memory leak). For many small tasks, a [`Pool`] batches.
///
/// ```no_run
/// use engine_core::{StageContext, StageError, Transport};
/// use engine_proc::ProcTransport;
/// use engine_threads::Engine;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Square;
///
/// impl Transport for Square {
///     type Input = u64;
///     type Output = u64;
///     fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
///         Ok(Some(x * x))
///     }
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     engine_proc::init();
///     let report = Engine::builder(0..1000_u64)
///         .transport(ProcTransport::new(Square))
///         .transport_threads(2)
///         .backend(|_: u64| {})
///         .run()?;
///     assert_eq!(report.processed(), 1000);
///     Ok(())
/// }
/// ```
pub struct ProcTransport<S: RemoteTransport> {
    stage: S,
    retries: u32,
    pool: Option<Pool<InTransport<S>>>,
}

/// Runs a [`Backend`] in a worker process, as [`ProcTransport`] does for a transport.
pub struct ProcBackend<S: RemoteBackend> {
    stage: S,
    retries: u32,
    pool: Option<Pool<InBackend<S>>>,
}

/// A [`Transport`] that can run in another process: it and its items are serialisable.
pub trait RemoteTransport:
    Transport<
        Input: Serialize + DeserializeOwned + Send + 'static,
        Output: Serialize + DeserializeOwned + Send + 'static,
    > + Serialize
    + DeserializeOwned
    + 'static
{
}

impl<S> RemoteTransport for S where
    S: Transport<
            Input: Serialize + DeserializeOwned + Send + 'static,
            Output: Serialize + DeserializeOwned + Send + 'static,
        > + Serialize
        + DeserializeOwned
        + 'static
{
}

/// A [`Backend`] that can run in another process: it and its items are serialisable.
pub trait RemoteBackend:
    Backend<Input: Serialize + DeserializeOwned + Send + 'static>
    + Serialize
    + DeserializeOwned
    + 'static
{
}

impl<S> RemoteBackend for S where
    S: Backend<Input: Serialize + DeserializeOwned + Send + 'static>
        + Serialize
        + DeserializeOwned
        + 'static
{
}

macro_rules! common {
    ($ty:ident, $bound:ident, $inner:ident) => {
        impl<S: $bound + Clone> Clone for $ty<S> {
            fn clone(&self) -> Self {
                Self {
                    stage: self.stage.clone(),
                    retries: self.retries,
                    pool: None,
                }
            }
        }

        impl<S: $bound> fmt::Debug for $ty<S> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("stage", &std::any::type_name::<S>())
                    .field("worker", &self.pool.as_ref().map(Pool::worker_pids))
                    .finish_non_exhaustive()
            }
        }

        impl<S: $bound> $ty<S> {
            /// The stage, to run in a worker process.
            pub fn new(stage: S) -> Self {
                Self {
                    stage,
                    retries: 1,
                    pool: None,
                }
            }

            /// How many more times an item is tried after its worker died (default 1).
            #[must_use]
            pub fn retries(mut self, retries: u32) -> Self {
                self.retries = retries;
                self
            }

            fn start(&mut self, ctx: &StageContext) -> Result<(), StageError> {
                let init = (
                    // The stage is moved to the worker: this copy only configures it.
                    engine_core::protocol::from_bytes::<S>(
                        &engine_core::protocol::to_bytes(&self.stage).map_err(StageError::new)?,
                    )
                    .map_err(StageError::new)?,
                    ctx.stage().to_owned(),
                    ctx.index(),
                    ctx.instances(),
                );
                let pool = Pool::<$inner<S>>::builder()
                    .worker(init)
                    .retries(self.retries)
                    .max_batch(1)
                    .stop_timeout(Duration::from_secs(30))
                    .start()
                    .map_err(|e| StageError::new(e).fatal())?;
                self.pool = Some(pool);
                Ok(())
            }

            fn call(
                &mut self,
                input: <$inner<S> as Worker>::Task,
            ) -> Result<<$inner<S> as Worker>::Output, StageError> {
                let pool = self
                    .pool
                    .as_mut()
                    .ok_or_else(|| StageError::msg("the stage was not set up").fatal())?;
                pool.submit(input);
                match pool.recv() {
                    Some((_, Ok(output))) => Ok(output),
                    Some((_, Err(TaskError::Failed(error)))) => Err(error),
                    Some((_, Err(error))) => Err(StageError::new(error)),
                    None => Err(StageError::msg("the worker process gave no result").fatal()),
                }
            }

            fn stop(&mut self) {
                if let Some(pool) = self.pool.take() {
                    let _ = pool.shutdown();
                }
            }
        }
    };
}

common!(ProcTransport, RemoteTransport, InTransport);
common!(ProcBackend, RemoteBackend, InBackend);

impl<S: RemoteTransport> Transport for ProcTransport<S> {
    type Input = S::Input;
    type Output = S::Output;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.start(ctx)
    }

    fn transport(
        &mut self,
        item: S::Input,
        _ctx: &StageContext,
    ) -> Result<Option<S::Output>, StageError> {
        self.call(item)
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        self.stop();
    }
}

impl<S: RemoteBackend> Backend for ProcBackend<S> {
    type Input = S::Input;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.start(ctx)
    }

    fn process(&mut self, item: S::Input, _ctx: &StageContext) -> Result<(), StageError> {
        self.call(item)
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        self.stop();
    }
}

/// A transport inside its worker process.
#[doc(hidden)]
pub struct InTransport<S> {
    stage: S,
    ctx: StageContext,
}

/// A backend inside its worker process.
#[doc(hidden)]
pub struct InBackend<S> {
    stage: S,
    ctx: StageContext,
}

impl<S> fmt::Debug for InTransport<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InTransport")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl<S> fmt::Debug for InBackend<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InBackend")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// The stage's context in the worker: its name, index and count as in the engine (the app
/// config does not cross processes).
fn context(name: String, kind: StageKind, index: usize, instances: usize) -> StageContext {
    StageContext::new(name, kind, index, instances, StopHandle::new())
}

impl<S: RemoteTransport> Worker for InTransport<S> {
    type Init = (S, String, usize, usize);
    type Task = S::Input;
    type Output = Option<S::Output>;

    fn init((mut stage, name, index, instances): Self::Init) -> Result<Self, StageError> {
        let ctx = context(name, StageKind::Transport, index, instances);
        stage.setup(&ctx)?;
        Ok(Self { stage, ctx })
    }

    fn run(&mut self, task: S::Input) -> Result<Option<S::Output>, StageError> {
        self.stage.transport(task, &self.ctx)
    }

    fn cleanup(&mut self) {
        self.stage.cleanup(&self.ctx);
    }
}

impl<S: RemoteBackend> Worker for InBackend<S> {
    type Init = (S, String, usize, usize);
    type Task = S::Input;
    type Output = ();

    fn init((mut stage, name, index, instances): Self::Init) -> Result<Self, StageError> {
        let ctx = context(name, StageKind::Backend, index, instances);
        stage.setup(&ctx)?;
        Ok(Self { stage, ctx })
    }

    fn run(&mut self, task: S::Input) -> Result<(), StageError> {
        self.stage.process(task, &self.ctx)
    }

    fn cleanup(&mut self) {
        let _ = self.stage.flush(&self.ctx);
        self.stage.cleanup(&self.ctx);
    }
}
