//! The engine builder: the stages, threads per stage, queue sizes, and the run's options.
//!
//! The builder's type records which stages are present, so a pipeline without a transport and
//! without a backend, or whose item types do not fit together, does not compile.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_core::plumbing::{TrackedFrontend, lock};
use engine_core::{
    AppConfig, ErrorPolicy, IntoBackend, IntoFrontend, IntoTransport, RunReport, StageContext,
    StopHandle, Transport,
};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::factory::{Absent, Factory, Present, Upstream, cloner};
use crate::handle::EngineHandle;
use crate::plan::{Options, Plan};
use crate::stages::Stages;

mod inline;

/// Builds an [`Engine`]: a frontend (required), then a transport, a backend or both.
///
/// Start with [`Engine::builder`] (one frontend thread owning the given frontend) or
/// [`Engine::builder_with`] (several frontend threads, each with its own instance from a
/// factory). Stages given by value are cloned once per thread; stages given through a
/// `*_with` factory are made on their own thread, so they need not be `Send` or `Sync`.
///
/// # Examples
///
/// ```
/// use engine::threads::Engine;
///
/// let report = Engine::builder(1..=1000_u64)
///     .transport(|n: u64| n * 2)
///     .transport_threads(2)
///     .backend(|_n: u64| {})
///     .queue_capacity(256)
///     .run()?;
/// assert_eq!(report.processed(), 1000);
/// # Ok::<(), engine::threads::EngineError>(())
/// ```
///
/// A pipeline needs a transport or a backend: without either, `run` does not exist.
///
/// ```compile_fail
/// engine::threads::Engine::builder(0..10_u32).run();
/// ```
pub struct EngineBuilder<F, T = Absent, B = Absent> {
    plan: Plan<F, T, B>,
}

impl<F, T: fmt::Debug, B: fmt::Debug> fmt::Debug for EngineBuilder<F, T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("plan", &self.plan)
            .finish()
    }
}

impl<F: TrackedFrontend> EngineBuilder<F, Absent, Absent> {
    fn new(frontend: Factory<F>, frontend_threads: usize) -> Self {
        Self {
            plan: Plan {
                frontend,
                frontend_threads,
                stages: (Absent, Absent),
                options: Options::new(),
            },
        }
    }
}

impl<F, T, B> EngineBuilder<F, T, B> {
    /// The same builder with other stages, made from these.
    fn map_stages<T2, B2>(self, f: impl FnOnce((T, B)) -> (T2, B2)) -> EngineBuilder<F, T2, B2> {
        EngineBuilder {
            plan: self.plan.map_stages(f),
        }
    }
}

impl<F: TrackedFrontend, B> EngineBuilder<F, Absent, B> {
    /// Adds a transport, cloned once per transport thread: shorthand for
    /// [`transport_with`](Self::transport_with) with a factory that clones it. Closures
    /// `FnMut(A) -> B` are transports; [`filter_map`](Self::filter_map),
    /// [`try_map`](Self::try_map) and [`flat_map`](Self::flat_map) are the filtering,
    /// fallible and expanding forms.
    ///
    /// A stage that is not `Clone` (a boxed [`BoxTransport`](engine_core::BoxTransport)
    /// chosen at run time, a stage holding a connection) goes through
    /// [`transport_with`](Self::transport_with); given here, it is a compile error that says
    /// so:
    ///
    /// ```compile_fail,E0277
    /// use engine::core::{BoxTransport, IntoTransport};
    /// use engine::threads::Engine;
    ///
    /// let stage: BoxTransport<u64, u64> = Box::new((|n: u64| n + 1).into_transport());
    /// // error: `Box<dyn Transport<..>>` is not `Clone` ...: give a factory to
    /// // `.transport_with(move |ctx| ...)` instead
    /// Engine::builder(0..10_u64).transport(stage).run();
    /// ```
    ///
    /// ```
    /// # use engine::core::{BoxTransport, IntoTransport, StageContext};
    /// # use engine::threads::Engine;
    /// // The same stage, made on each transport thread:
    /// let report = Engine::builder(0..10_u64)
    ///     .transport_with(|_: &StageContext| -> BoxTransport<u64, u64> {
    ///         Box::new((|n: u64| n + 1).into_transport())
    ///     })
    ///     .run()?;
    /// assert_eq!(report.processed(), 10);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::threads::Engine;
    ///
    /// let report = Engine::builder(1..=10_u64)
    ///     .transport(|n: u64| n * 10)
    ///     .transport_threads(2)
    ///     .run()?;
    /// assert_eq!(report.processed(), 10);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn transport<M, X, K>(self, transport: X) -> EngineBuilder<F, Present<X::Transport>, B>
    where
        X: IntoTransport<M> + CloneTransport<K> + Send + 'static,
        X::Transport: Transport<Input = F::Item> + 'static,
    {
        let factory = cloner(transport, X::into_transport);
        self.with_transport(factory)
    }

    /// Adds a transport made by `factory(ctx)` on each transport thread, with that thread's
    /// [`StageContext`] (`ctx.index()` is the thread's index, `ctx.instances()` the number of
    /// threads).
    ///
    /// This is THE way to give each thread its own state (a connection, a buffer, a
    /// counter), as rayon's `map_init` does: the stage is made on its own thread, before its
    /// `setup`, so it needs neither `Send` nor `Clone`. It is also how a stage chosen at run
    /// time is given: the factory returns a [`BoxTransport`](engine_core::BoxTransport).
    ///
    /// # Examples
    ///
    /// Each thread tags its outputs with its own index:
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use engine::core::StageContext;
    /// use engine::threads::Engine;
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&seen);
    /// let report = Engine::builder(0..100_u64)
    ///     .transport_with(|ctx: &StageContext| {
    ///         let thread = ctx.index();
    ///         move |n: u64| (thread, n)
    ///     })
    ///     .transport_threads(2)
    ///     .backend(move |(thread, _n): (usize, u64)| sink.lock().unwrap().push(thread))
    ///     .run()?;
    /// assert_eq!(report.processed(), 100);
    /// assert!(seen.lock().unwrap().iter().all(|&thread| thread < 2));
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    ///
    /// A transport chosen at run time, boxed:
    ///
    /// ```
    /// use engine::core::{BoxTransport, filter_map};
    /// use engine::threads::Engine;
    ///
    /// let keep_odd = std::env::args().count() > 0; // A flag, say.
    /// let report = Engine::builder(1..=10_u64)
    ///     .transport_with(move |_| -> BoxTransport<u64, u64> {
    ///         if keep_odd {
    ///             Box::new(filter_map(|n: u64| (n % 2 == 1).then_some(n)))
    ///         } else {
    ///             Box::new(filter_map(Some))
    ///         }
    ///     })
    ///     .backend(|_n: u64| {})
    ///     .run()?;
    /// assert_eq!(report.processed(), 5);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn transport_with<M, X, G>(self, factory: G) -> EngineBuilder<F, Present<X::Transport>, B>
    where
        G: Fn(&StageContext) -> X + Send + Sync + 'static,
        X: IntoTransport<M>,
        X::Transport: Transport<Input = F::Item> + 'static,
    {
        self.with_transport(Arc::new(move |ctx: &StageContext| {
            factory(ctx).into_transport()
        }))
    }

    fn with_transport<S>(self, factory: Factory<S>) -> EngineBuilder<F, Present<S>, B> {
        self.map_stages(|(_, backend)| (Present::new(factory), backend))
    }
}

impl<F: TrackedFrontend, T: Upstream<F::Item>> EngineBuilder<F, T, Absent> {
    /// Adds a backend, cloned once per backend thread: shorthand for
    /// [`backend_with`](Self::backend_with) with a factory that clones it. Closures
    /// `FnMut(A)` and `FnMut(A) -> Result<(), E>` are backends;
    /// [`for_each`](Self::for_each) and [`try_for_each`](Self::try_for_each) name the two
    /// forms.
    ///
    /// A backend that is not `Clone` (a boxed [`BoxBackend`](engine_core::BoxBackend), a
    /// backend holding a connection) goes through [`backend_with`](Self::backend_with); given
    /// here, it is a compile error that says so:
    ///
    /// ```compile_fail,E0277
    /// use engine::core::{BoxBackend, IntoBackend};
    /// use engine::threads::Engine;
    ///
    /// let sink: BoxBackend<u64> = Box::new((|_: u64| {}).into_backend());
    /// // error: `Box<dyn Backend<..>>` is not `Clone` ...: give a factory to
    /// // `.backend_with(move |ctx| ...)` instead
    /// Engine::builder(0..10_u64).backend(sink).run();
    /// ```
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::threads::Engine;
    ///
    /// let report = Engine::builder(1..=10_u64).backend(|_n: u64| {}).run()?;
    /// assert_eq!(report.processed(), 10);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn backend<M, X, K>(self, backend: X) -> EngineBuilder<F, T, Present<X::Backend>>
    where
        X: IntoBackend<M> + CloneBackend<K> + Send + 'static,
        X::Backend: engine_core::Backend<Input = T::Output> + 'static,
    {
        let factory = cloner(backend, X::into_backend);
        self.with_backend(factory)
    }

    /// Adds a backend made by `factory(ctx)` on each backend thread, with that thread's
    /// [`StageContext`]: THE way to give each backend thread its own state, as for
    /// [`transport_with`](Self::transport_with). The backend needs neither `Send` nor
    /// `Clone`; a backend chosen at run time is a [`BoxBackend`](engine_core::BoxBackend)
    /// returned by the factory.
    ///
    /// # Examples
    ///
    /// Each thread sums its share and adds it to the total at its cleanup:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use engine::core::{Backend, StageContext, StageError};
    /// use engine::threads::Engine;
    ///
    /// struct Sum(u64, Arc<AtomicU64>);
    ///
    /// impl Backend for Sum {
    ///     type Input = u64;
    ///     fn process(&mut self, n: u64, _: &StageContext) -> Result<(), StageError> {
    ///         self.0 += n;
    ///         Ok(())
    ///     }
    ///     fn cleanup(&mut self, _: &StageContext) {
    ///         self.1.fetch_add(self.0, Ordering::SeqCst);
    ///     }
    /// }
    ///
    /// let total = Arc::new(AtomicU64::new(0));
    /// let shared = Arc::clone(&total);
    /// Engine::builder(1..=100_u64)
    ///     .backend_with(move |_: &StageContext| Sum(0, Arc::clone(&shared)))
    ///     .backend_threads(3)
    ///     .run()?;
    /// assert_eq!(total.load(Ordering::SeqCst), 5050);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn backend_with<M, X, G>(self, factory: G) -> EngineBuilder<F, T, Present<X::Backend>>
    where
        G: Fn(&StageContext) -> X + Send + Sync + 'static,
        X: IntoBackend<M>,
        X::Backend: engine_core::Backend<Input = T::Output> + 'static,
    {
        self.with_backend(Arc::new(move |ctx: &StageContext| {
            factory(ctx).into_backend()
        }))
    }

    fn with_backend<S>(self, factory: Factory<S>) -> EngineBuilder<F, T, Present<S>> {
        self.map_stages(|(transport, _)| (transport, Present::new(factory)))
    }
}

impl<F, X: Transport, B> EngineBuilder<F, Present<X>, B> {
    /// The number of transport threads (default 1).
    #[must_use]
    pub fn transport_threads(mut self, threads: usize) -> Self {
        self.plan.stages.0.threads = threads;
        self
    }
}

impl<F, T, X: engine_core::Backend> EngineBuilder<F, T, Present<X>> {
    /// The number of backend threads (default 1).
    #[must_use]
    pub fn backend_threads(mut self, threads: usize) -> Self {
        self.plan.stages.1.threads = threads;
        self
    }
}

impl<F, T, B> EngineBuilder<F, T, B> {
    /// The capacity of every queue, in items (default [`DEFAULT_QUEUE_CAPACITY`](crate::DEFAULT_QUEUE_CAPACITY)). Memory is
    /// bounded by the capacities: a queue holds at most this many items, plus one batch in
    /// the hands of each thread next to it.
    #[must_use]
    pub fn queue_capacity(mut self, items: usize) -> Self {
        self.plan.options.transport_queue = items;
        self.plan.options.backend_queue = items;
        self
    }

    /// The capacity of the queue in front of the transport (or of the backend when there is
    /// no transport).
    #[must_use]
    pub fn transport_queue_capacity(mut self, items: usize) -> Self {
        self.plan.options.transport_queue = items;
        self
    }

    /// The capacity of the queue in front of the backend, after a transport.
    #[must_use]
    pub fn backend_queue_capacity(mut self, items: usize) -> Self {
        self.plan.options.backend_queue = items;
        self
    }

    /// Shares a value with every stage, read with
    /// [`StageContext::config`](engine_core::StageContext::config).
    #[must_use]
    pub fn config<C: Any + Send + Sync>(mut self, config: C) -> Self {
        self.plan.options.config = AppConfig::new(config);
        self
    }

    /// Shares an existing [`AppConfig`] with every stage.
    #[must_use]
    pub fn app_config(mut self, config: AppConfig) -> Self {
        self.plan.options.config = config;
        self
    }

    /// What to do when a stage fails on an item (default [`ErrorPolicy::Skip`]).
    #[must_use]
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.plan.options.policy = policy;
        self
    }

    /// Delivers items to the last stage in the order the frontend produced them, however
    /// many transport threads there are (default: off). Needs one frontend thread and one
    /// thread in the last stage.
    #[must_use]
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.plan.options.ordered = ordered;
        self
    }

    /// Runs under `stop`: stopping it stops the engine. The engine works on a
    /// [child](StopHandle::child) of it, so a failure inside the engine does not stop the
    /// rest of the program.
    #[must_use]
    pub fn stop_handle(mut self, stop: &StopHandle) -> Self {
        self.plan.options.stop = stop.clone();
        self
    }

    /// After a graceful stop, aborts the run if it has not drained within `timeout`.
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.plan.options.stop_timeout = Some(timeout);
        self
    }

    /// Logs the engine's [`Stats`](crate::Stats) through `tracing` (at info level) every
    /// `interval` while it runs.
    #[must_use]
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.plan.options.stats_interval = Some(interval);
        self
    }

    /// Logs one warning when the run makes no progress for `after` while items it admitted
    /// are not settled: what each stage thread waits on (its input, room downstream, the
    /// ordered window, a batch from its workers, or its own code) and, in ordered mode, the
    /// oldest batch the sink still waits for. It repeats at most once a minute. `None` turns
    /// the report off; the default is 30 seconds. The threads mark their waits only where
    /// they block, so the report costs nothing on the hot path.
    ///
    /// # Errors
    ///
    /// A zero interval makes [`run`](Self::run) fail with
    /// [`EngineError::InvalidOption`](crate::EngineError).
    #[must_use]
    pub fn stall_report(mut self, after: Option<Duration>) -> Self {
        self.plan.options.stall_after = after;
        self
    }

    /// Names the stages in logs and the report (default `frontend`, `transport`, `backend`).
    #[must_use]
    pub fn names(mut self, frontend: &str, transport: &str, backend: &str) -> Self {
        self.plan.options.names = [frontend.into(), transport.into(), backend.into()];
        self
    }
}

impl<F, T, B> EngineBuilder<F, T, B>
where
    F: TrackedFrontend + 'static,
    F::Item: Send + 'static,
    (T, B): Stages<F>,
{
    /// Checks the options and builds the engine.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidOption`] for a thread count or queue capacity of zero, or for
    /// ordered mode with several frontend threads or several threads in the last stage.
    pub fn build(self) -> Result<Engine<F, T, B>, EngineError> {
        Engine::new(self.plan)
    }

    /// Builds and runs the engine on this thread until it ends; see [`Engine::run`].
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build) and [`Engine::run`].
    pub fn run(self) -> Result<RunReport, EngineError> {
        self.build()?.run()
    }

    /// Builds the engine and starts it in the background; see [`Engine::spawn`].
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build) and [`Engine::spawn`].
    pub fn spawn(self) -> Result<EngineHandle, EngineError> {
        self.build()?.spawn()
    }
}

/// Entry points, on [`Engine`].
impl Engine<(), Absent, Absent> {
    /// A builder whose one frontend thread runs `frontend`: a [`Frontend`], a
    /// [`TrackedFrontend`], or any `IntoIterator` (whose iterator is the source). The
    /// frontend is moved to its thread, so it must be `Send`, and need not be `Clone`: a
    /// frontend chosen at run time is given here as a
    /// [`BoxFrontend`](engine_core::BoxFrontend).
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::core::{BoxFrontend, box_frontend};
    /// use engine::threads::Engine;
    ///
    /// let from_a_list = std::env::args().count() > 100; // A flag, say.
    /// let numbers: BoxFrontend<u64> = if from_a_list {
    ///     box_frontend(vec![1, 2, 3])
    /// } else {
    ///     box_frontend(1..=10_u64)
    /// };
    /// let report = Engine::builder(numbers).backend(|_n: u64| {}).run()?;
    /// assert_eq!(report.processed(), 10);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    ///
    /// [`Frontend`]: engine_core::Frontend
    pub fn builder<M, X>(frontend: X) -> EngineBuilder<X::Frontend>
    where
        X: IntoFrontend<M>,
        X::Frontend: Send + 'static,
    {
        let frontend = Mutex::new(Some(frontend.into_frontend()));
        EngineBuilder::new(
            Arc::new(move |_: &StageContext| {
                lock(&frontend)
                    .take()
                    .expect("a builder's single frontend is taken by its one thread")
            }),
            1,
        )
    }

    /// A builder with `threads` frontend threads, each running `factory(ctx)`, made on its
    /// own thread with that thread's [`StageContext`] (`ctx.index()` is the thread's index).
    /// As for [`EngineBuilder::transport_with`], this is THE way to give each frontend
    /// thread its own state, or its own share of the source; the frontend needs neither
    /// `Send` nor `Clone`.
    ///
    /// # Examples
    ///
    /// Two threads, each producing its own share:
    ///
    /// ```
    /// use engine::core::StageContext;
    /// use engine::threads::Engine;
    ///
    /// let report = Engine::builder_with(2, |ctx: &StageContext| {
    ///     let from = ctx.index() as u64 * 500;
    ///     from..from + 500
    /// })
    /// .backend(|_n: u64| {})
    /// .run()?;
    /// assert_eq!(report.processed(), 1000);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn builder_with<M, X, G>(threads: usize, factory: G) -> EngineBuilder<X::Frontend>
    where
        G: Fn(&StageContext) -> X + Send + Sync + 'static,
        X: IntoFrontend<M>,
        X::Frontend: 'static,
    {
        EngineBuilder::new(
            Arc::new(move |ctx: &StageContext| factory(ctx).into_frontend()),
            threads,
        )
    }
}

/// What [`EngineBuilder::transport`] needs of a stage given by value: `Clone`, since it is
/// cloned once per transport thread. Implemented for every `Clone` type (the `K` marker is
/// inferred); it exists so that a stage that is not `Clone` gets an error naming
/// [`transport_with`](EngineBuilder::transport_with), where `Clone` alone would not.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `Clone`, and `.transport(..)` clones its stage once per \
               thread: give a factory to `.transport_with(move |ctx| ...)` instead, which \
               makes the stage on each thread"
)]
pub trait CloneTransport<K>: Clone {}

/// What [`EngineBuilder::backend`] needs of a backend given by value: `Clone`, as
/// [`CloneTransport`] is for transports; a backend that is not `Clone` gets an error naming
/// [`backend_with`](EngineBuilder::backend_with).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `Clone`, and `.backend(..)` clones its backend once per \
               thread: give a factory to `.backend_with(move |ctx| ...)` instead, which \
               makes the backend on each thread"
)]
pub trait CloneBackend<K>: Clone {}

/// The marker of the `Clone` impls of [`CloneTransport`] and [`CloneBackend`].
///
/// Each trait has a second impl, for the types of a trait nothing implements, so that the
/// compiler cannot settle on the `Clone` impl and look through it when a type is not
/// `Clone`: it reports the helper trait, with its message, instead of `Clone`.
#[derive(Debug)]
pub enum ByClone {}

/// The marker of the impls that never apply; see [`ByClone`].
#[derive(Debug)]
pub enum Never {}

/// Implemented by no type (sealed: its supertrait is private).
pub trait Unimplemented: sealed::Sealed {}

mod sealed {
    /// Implemented by no type.
    pub trait Sealed {}
}

impl<X: Clone> CloneTransport<ByClone> for X {}
impl<X: Clone + Unimplemented> CloneTransport<Never> for X {}
impl<X: Clone> CloneBackend<ByClone> for X {}
impl<X: Clone + Unimplemented> CloneBackend<Never> for X {}
