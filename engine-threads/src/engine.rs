//! The engine: a checked plan with its stop handle, run on this thread or spawned.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use engine_core::plumbing::TrackedFrontend;
use engine_core::{RunReport, StopHandle};

use crate::error::EngineError;
use crate::factory::Absent;
use crate::handle::EngineHandle;
use crate::launch::{Launcher, Signals, spawn};
use crate::plan::Plan;
use crate::run::Run;
use crate::stages::{self, Stages};

/// A built engine, ready to [`run`](Self::run) or [`spawn`](Self::spawn).
///
/// Made by [`Engine::builder`] or [`Engine::builder_with`] and
/// [`EngineBuilder::build`](crate::EngineBuilder::build).
///
/// # Examples
///
/// ```
/// use engine::threads::Engine;
///
/// let engine = Engine::builder(0..100_u64).backend(|_n: u64| {}).build()?;
/// let handle = engine.spawn()?;
/// assert_eq!(handle.join()?.processed(), 100);
/// # Ok::<(), engine::threads::EngineError>(())
/// ```
pub struct Engine<F, T = Absent, B = Absent> {
    plan: Plan<F, T, B>,
    stop: StopHandle,
}

impl<F, T: fmt::Debug, B: fmt::Debug> fmt::Debug for Engine<F, T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("plan", &self.plan)
            .field("stop", &self.stop)
            .finish()
    }
}

impl<F, T, B> Engine<F, T, B>
where
    F: TrackedFrontend + 'static,
    F::Item: Send + 'static,
    (T, B): Stages<F>,
{
    /// Checks the plan; the engine works on a child of the plan's stop handle.
    pub(crate) fn new(plan: Plan<F, T, B>) -> Result<Self, EngineError> {
        plan.check(stages::threads::<F, _>(&plan.stages))?;
        let stop = plan.options.stop.child();
        Ok(Self { plan, stop })
    }

    /// The engine's stop handle (a child of the one given to
    /// [`EngineBuilder::stop_handle`](crate::EngineBuilder::stop_handle), if any):
    /// [`stop`](StopHandle::stop) drains and ends the run, [`stop_now`](StopHandle::stop_now)
    /// aborts it. Pass it to [`engine_core::install_signal_handler`] to stop on Ctrl-C.
    pub fn stop_handle(&self) -> &StopHandle {
        &self.stop
    }

    /// Runs the engine on this thread until the frontend ends and everything drained, or
    /// until a stop.
    ///
    /// # Errors
    ///
    /// [`EngineError::Spawn`] if a thread cannot be started, [`EngineError::StageFailed`]
    /// if a stage's setup failed or an item failed under
    /// [`ErrorPolicy::Stop`](engine_core::ErrorPolicy::Stop) (the error holds the report).
    pub fn run(self) -> Result<RunReport, EngineError> {
        let run = self.start()?;
        let stats = Arc::clone(run.stats());
        let result = run.coordinate();
        stats.finish();
        result
    }

    /// Starts the engine in the background and returns a handle to stop it, watch it and
    /// join it.
    ///
    /// # Errors
    ///
    /// [`EngineError::Spawn`] if a thread cannot be started.
    pub fn spawn(self) -> Result<EngineHandle, EngineError> {
        let stop = self.stop.clone();
        let run = self.start()?;
        let stats = Arc::clone(run.stats());
        let source = Arc::clone(&stats);
        let coordinator = spawn("engine".to_owned(), move || {
            let result = run.coordinate();
            source.finish();
            result
        });
        match coordinator {
            Ok(coordinator) => Ok(EngineHandle {
                stop,
                stats,
                coordinator,
            }),
            Err(err) => {
                stop.stop_now();
                Err(err)
            }
        }
    }

    /// Starts every thread of the run, the last stage first; the [`Run`] it returns
    /// coordinates the run to its end.
    fn start(self) -> Result<Run, EngineError> {
        let threads = stages::threads::<F, _>(&self.plan.stages);
        let Plan {
            frontend,
            frontend_threads,
            stages,
            options,
        } = self.plan;
        let signals = Signals::new(&self.stop);
        let shared = signals.shared(&self.stop, &options);
        let mut launcher = Launcher::new(options, shared, frontend_threads, threads);
        let started = Instant::now();
        let launched =
            stages::launch(stages, &mut launcher).and_then(|()| launcher.frontends(&frontend));
        if let Err(err) = launched {
            // Threads already started end on the abort; none has run stage code for long.
            self.stop.stop_now();
            launcher.abandon();
            return Err(err);
        }
        Ok(launcher.into_run(signals, started))
    }
}
