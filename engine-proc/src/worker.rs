//! DumbPipelineBox's form of a pool's code: a [`Worker`] built from init arguments that runs
//! tasks, and [`WorkerStage`], which makes it a [`Transport`] for the pool.

use std::fmt;

use engine_core::{StageContext, StageError, Transport};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The code of a pool's identical workers in DumbPipelineBox's form (its `Worker` subclass):
/// init arguments, then `run` per task.
///
/// Each worker process builds one value with [`init`](Self::init) from serialisable
/// arguments (the expensive set-up happens once per process, not per task), then runs tasks
/// with [`run`](Self::run). A task that returns an error or panics comes back as
/// [`TaskError::Failed`](crate::TaskError::Failed) with its message; the worker goes on.
///
/// A pool runs [`Transport`]s; [`WorkerStage::new`] turns a worker's init arguments into one
/// (its `setup` calls `init`), so the two forms share every part of the pool. Code that is
/// also a stage of the threaded engine is better written as a `Transport` directly.
///
/// ```
/// use engine::core::StageError;
/// use engine::proc::Worker;
///
/// /// Adds its configured offset to every task.
/// struct Adder { offset: u64 }
///
/// impl Worker for Adder {
///     type Init = u64;
///     type Task = u64;
///     type Output = u64;
///
///     fn init(offset: u64) -> Result<Self, StageError> {
///         Ok(Adder { offset })
///     }
///
///     fn run(&mut self, task: u64) -> Result<u64, StageError> {
///         task.checked_add(self.offset).ok_or_else(|| StageError::msg("overflow"))
///     }
/// }
/// ```
pub trait Worker: Sized + 'static {
    /// The arguments each worker process is initialised from.
    type Init: Serialize + DeserializeOwned + 'static;
    /// A task.
    type Task: Serialize + DeserializeOwned + Send + 'static;
    /// A task's result.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Builds the worker, once per process.
    ///
    /// # Errors
    ///
    /// Whatever keeps it from starting: the pool's `start` returns it.
    fn init(init: Self::Init) -> Result<Self, StageError>;

    /// Runs one task.
    ///
    /// # Errors
    ///
    /// The task's failure, returned to the master as its result.
    fn run(&mut self, task: Self::Task) -> Result<Self::Output, StageError>;

    /// Called once when the worker is told to stop (not when it is killed).
    fn cleanup(&mut self) {}
}

/// A [`Worker`] as a [`Transport`]: it travels as its init arguments, and its `setup` (once
/// per worker process) builds the worker with [`Worker::init`].
///
/// ```
/// # use engine::core::StageError;
/// # use engine::proc::{Pool, Worker, WorkerStage};
/// # struct Adder(u64);
/// # impl Worker for Adder {
/// #     type Init = u64; type Task = u64; type Output = u64;
/// #     fn init(offset: u64) -> Result<Self, StageError> { Ok(Adder(offset)) }
/// #     fn run(&mut self, task: u64) -> Result<u64, StageError> { Ok(task + self.0) }
/// # }
/// let builder = Pool::builder().workers(2, WorkerStage::<Adder>::new(1));
/// # drop(builder);
/// ```
pub struct WorkerStage<W: Worker> {
    state: State<W>,
}

enum State<W: Worker> {
    /// Not set up yet: the arguments.
    Args(W::Init),
    /// Set up: the worker.
    Running(W),
    /// Its `init` failed, or it was cleaned up.
    Gone,
}

impl<W: Worker> WorkerStage<W> {
    /// The worker that `init` will build from these arguments in each process.
    pub fn new(init: W::Init) -> Self {
        Self {
            state: State::Args(init),
        }
    }
}

impl<W: Worker> fmt::Debug for WorkerStage<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Args(_) => "not set up",
            State::Running(_) => "running",
            State::Gone => "gone",
        };
        f.debug_struct("WorkerStage")
            .field("worker", &std::any::type_name::<W>())
            .field("state", &state)
            .finish()
    }
}

impl<W: Worker> Serialize for WorkerStage<W> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.state {
            State::Args(init) => init.serialize(serializer),
            _ => Err(serde::ser::Error::custom(
                "a worker that was set up cannot be sent to another process",
            )),
        }
    }
}

impl<'de, W: Worker> Deserialize<'de> for WorkerStage<W> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        W::Init::deserialize(deserializer).map(Self::new)
    }
}

impl<W: Worker> Transport for WorkerStage<W> {
    type Input = W::Task;
    type Output = W::Output;

    fn setup(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Args(init) => {
                self.state = State::Running(W::init(init)?);
                Ok(())
            }
            _ => Err(StageError::msg("the worker was set up twice").fatal()),
        }
    }

    fn transport(
        &mut self,
        task: W::Task,
        _ctx: &StageContext,
    ) -> Result<Option<W::Output>, StageError> {
        match &mut self.state {
            State::Running(worker) => worker.run(task).map(Some),
            _ => Err(StageError::msg("the worker is not set up").fatal()),
        }
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        if let State::Running(worker) = &mut self.state {
            worker.cleanup();
        }
        self.state = State::Gone;
    }
}
