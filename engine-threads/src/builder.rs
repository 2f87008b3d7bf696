//! The engine builder: the stages, threads per stage, queue sizes, and the run's options.
//!
//! The builder's type records which stages are present, so a pipeline without a transport and
//! without a backend, or whose item types do not fit together, does not compile.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_core::{
    AppConfig, ErrorPolicy, IntoBackend, IntoFrontend, IntoTransport, RunReport, StopHandle,
    Transport,
};

use engine_core::plumbing::TrackedFrontend;

use crate::engine::{Engine, EngineHandle};
use crate::error::EngineError;
use crate::link::lock;

/// Makes one stage instance per thread, on that thread, from the thread's index.
pub(crate) type Factory<S> = Arc<dyn Fn(usize) -> S + Send + Sync>;

/// The default capacity of each queue, in items.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Marks a builder without a transport or without a backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct Absent;

/// A transport or backend given to the builder, with its thread count.
pub struct Present<S> {
    pub(crate) factory: Factory<S>,
    pub(crate) threads: usize,
}

impl<S> fmt::Debug for Present<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Present")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// What the item type is after the transport slot: the transport's output, or the frontend's
/// item when there is no transport.
pub trait Upstream<Item> {
    /// The type of the items the backend receives.
    type Output;
}

impl<Item> Upstream<Item> for Absent {
    type Output = Item;
}

impl<Item, T: Transport> Upstream<Item> for Present<T> {
    type Output = T::Output;
}

/// The options every engine has, whatever its stages.
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) names: [Arc<str>; 3],
    pub(crate) transport_queue: usize,
    pub(crate) backend_queue: usize,
    pub(crate) config: AppConfig,
    pub(crate) policy: ErrorPolicy,
    pub(crate) ordered: bool,
    pub(crate) stop: StopHandle,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) stats_interval: Option<Duration>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("names", &self.names)
            .field("transport_queue", &self.transport_queue)
            .field("backend_queue", &self.backend_queue)
            .field("policy", &self.policy)
            .field("ordered", &self.ordered)
            .field("stop_timeout", &self.stop_timeout)
            .field("stats_interval", &self.stats_interval)
            .finish_non_exhaustive()
    }
}

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
/// use engine_threads::Engine;
///
/// let report = Engine::builder(1..=1000_u64)
///     .transport(|n: u64| n * 2)
///     .transport_threads(2)
///     .backend(|_n: u64| {})
///     .queue_capacity(256)
///     .run()?;
/// assert_eq!(report.processed(), 1000);
/// # Ok::<(), engine_threads::EngineError>(())
/// ```
///
/// A pipeline needs a transport or a backend: without either, `run` does not exist.
///
/// ```compile_fail
/// engine_threads::Engine::builder(0..10_u32).run();
/// ```
pub struct EngineBuilder<F, T = Absent, B = Absent> {
    pub(crate) frontend: Factory<F>,
    pub(crate) frontend_threads: usize,
    /// The transport and the backend, each [`Absent`] or [`Present`].
    pub(crate) stages: (T, B),
    pub(crate) options: Options,
}

impl<F, T: fmt::Debug, B: fmt::Debug> fmt::Debug for EngineBuilder<F, T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("frontend_threads", &self.frontend_threads)
            .field("transport", &self.stages.0)
            .field("backend", &self.stages.1)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<F: TrackedFrontend> EngineBuilder<F, Absent, Absent> {
    pub(crate) fn new(frontend: Factory<F>, frontend_threads: usize) -> Self {
        Self {
            frontend,
            frontend_threads,
            stages: (Absent, Absent),
            options: Options {
                names: ["frontend".into(), "transport".into(), "backend".into()],
                transport_queue: DEFAULT_QUEUE_CAPACITY,
                backend_queue: DEFAULT_QUEUE_CAPACITY,
                config: AppConfig::none(),
                policy: ErrorPolicy::default(),
                ordered: false,
                stop: StopHandle::new(),
                stop_timeout: None,
                stats_interval: None,
            },
        }
    }
}

/// One instance of a stage given by value, cloned for each thread.
fn cloner<S: 'static, X>(stage: X, convert: fn(X) -> S) -> Factory<S>
where
    X: Clone + Send + 'static,
{
    // The prototype sits behind a mutex so that a `Send` stage needs not be `Sync`.
    let prototype = Mutex::new(stage);
    Arc::new(move |_| convert(lock(&prototype).clone()))
}

impl<F: TrackedFrontend, B> EngineBuilder<F, Absent, B> {
    /// Adds a transport, cloned once per transport thread. Closures `FnMut(A) -> B` are
    /// transports; see [`engine_core::filter_map`] and [`engine_core::try_map`] for the
    /// filtering and fallible forms.
    pub fn transport<M, X>(self, transport: X) -> EngineBuilder<F, Present<X::Transport>, B>
    where
        X: IntoTransport<M> + Clone + Send + 'static,
        X::Transport: Transport<Input = F::Item> + 'static,
    {
        let factory = cloner(transport, X::into_transport);
        self.with_transport(factory)
    }

    /// Adds a transport made by `factory(thread_index)` on each transport thread.
    pub fn transport_with<M, X, G>(self, factory: G) -> EngineBuilder<F, Present<X::Transport>, B>
    where
        G: Fn(usize) -> X + Send + Sync + 'static,
        X: IntoTransport<M>,
        X::Transport: Transport<Input = F::Item> + 'static,
    {
        self.with_transport(Arc::new(move |index| factory(index).into_transport()))
    }

    fn with_transport<S>(self, factory: Factory<S>) -> EngineBuilder<F, Present<S>, B> {
        EngineBuilder {
            frontend: self.frontend,
            frontend_threads: self.frontend_threads,
            stages: (
                Present {
                    factory,
                    threads: 1,
                },
                self.stages.1,
            ),
            options: self.options,
        }
    }
}

impl<F: TrackedFrontend, T: Upstream<F::Item>> EngineBuilder<F, T, Absent> {
    /// Adds a backend, cloned once per backend thread. Closures `FnMut(A)` and
    /// `FnMut(A) -> Result<(), E>` are backends.
    pub fn backend<M, X>(self, backend: X) -> EngineBuilder<F, T, Present<X::Backend>>
    where
        X: IntoBackend<M> + Clone + Send + 'static,
        X::Backend: engine_core::Backend<Input = T::Output> + 'static,
    {
        let factory = cloner(backend, X::into_backend);
        self.with_backend(factory)
    }

    /// Adds a backend made by `factory(thread_index)` on each backend thread.
    pub fn backend_with<M, X, G>(self, factory: G) -> EngineBuilder<F, T, Present<X::Backend>>
    where
        G: Fn(usize) -> X + Send + Sync + 'static,
        X: IntoBackend<M>,
        X::Backend: engine_core::Backend<Input = T::Output> + 'static,
    {
        self.with_backend(Arc::new(move |index| factory(index).into_backend()))
    }

    fn with_backend<S>(self, factory: Factory<S>) -> EngineBuilder<F, T, Present<S>> {
        EngineBuilder {
            frontend: self.frontend,
            frontend_threads: self.frontend_threads,
            stages: (
                self.stages.0,
                Present {
                    factory,
                    threads: 1,
                },
            ),
            options: self.options,
        }
    }
}

impl<F, X: Transport, B> EngineBuilder<F, Present<X>, B> {
    /// The number of transport threads (default 1).
    #[must_use]
    pub fn transport_threads(mut self, threads: usize) -> Self {
        self.stages.0.threads = threads;
        self
    }
}

impl<F, T, X: engine_core::Backend> EngineBuilder<F, T, Present<X>> {
    /// The number of backend threads (default 1).
    #[must_use]
    pub fn backend_threads(mut self, threads: usize) -> Self {
        self.stages.1.threads = threads;
        self
    }
}

impl<F, T, B> EngineBuilder<F, T, B> {
    /// The capacity of every queue, in items (default [`DEFAULT_QUEUE_CAPACITY`]). Memory is
    /// bounded by the capacities: a queue holds at most this many items, plus one batch in
    /// the hands of each thread next to it.
    #[must_use]
    pub fn queue_capacity(mut self, items: usize) -> Self {
        self.options.transport_queue = items;
        self.options.backend_queue = items;
        self
    }

    /// The capacity of the queue in front of the transport (or of the backend when there is
    /// no transport).
    #[must_use]
    pub fn transport_queue_capacity(mut self, items: usize) -> Self {
        self.options.transport_queue = items;
        self
    }

    /// The capacity of the queue in front of the backend, after a transport.
    #[must_use]
    pub fn backend_queue_capacity(mut self, items: usize) -> Self {
        self.options.backend_queue = items;
        self
    }

    /// Shares a value with every stage, read with
    /// [`StageContext::config`](engine_core::StageContext::config).
    #[must_use]
    pub fn config<C: Any + Send + Sync>(mut self, config: C) -> Self {
        self.options.config = AppConfig::new(config);
        self
    }

    /// Shares an existing [`AppConfig`] with every stage.
    #[must_use]
    pub fn app_config(mut self, config: AppConfig) -> Self {
        self.options.config = config;
        self
    }

    /// What to do when a stage fails on an item (default [`ErrorPolicy::Skip`]).
    #[must_use]
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.options.policy = policy;
        self
    }

    /// Delivers items to the last stage in the order the frontend produced them, however
    /// many transport threads there are (default: off). Needs one frontend thread and one
    /// thread in the last stage.
    #[must_use]
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.options.ordered = ordered;
        self
    }

    /// Runs under `stop`: stopping it stops the engine. The engine works on a
    /// [child](StopHandle::child) of it, so a failure inside the engine does not stop the
    /// rest of the program.
    #[must_use]
    pub fn stop_handle(mut self, stop: &StopHandle) -> Self {
        self.options.stop = stop.clone();
        self
    }

    /// After a graceful stop, aborts the run if it has not drained within `timeout`.
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.options.stop_timeout = Some(timeout);
        self
    }

    /// Logs the engine's [`Stats`](crate::Stats) through `tracing` (at info level) every
    /// `interval` while it runs.
    #[must_use]
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.options.stats_interval = Some(interval);
        self
    }

    /// Names the stages in logs and the report (default `frontend`, `transport`, `backend`).
    #[must_use]
    pub fn names(mut self, frontend: &str, transport: &str, backend: &str) -> Self {
        self.options.names = [frontend.into(), transport.into(), backend.into()];
        self
    }
}

impl<F, T, B> EngineBuilder<F, T, B>
where
    F: TrackedFrontend + 'static,
    F::Item: Send + 'static,
    (T, B): crate::engine::Stages<F>,
{
    /// Checks the options and builds the engine.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidOption`] for a thread count or queue capacity of zero, or for
    /// ordered mode with several frontend threads or several threads in the last stage.
    pub fn build(self) -> Result<Engine<F, T, B>, EngineError> {
        Engine::new(self)
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
    /// [`TrackedFrontend`], or any `IntoIterator` (whose iterator is the source).
    ///
    /// [`Frontend`]: engine_core::Frontend
    pub fn builder<M, X>(frontend: X) -> EngineBuilder<X::Frontend>
    where
        X: IntoFrontend<M>,
        X::Frontend: Send + 'static,
    {
        let frontend = Mutex::new(Some(frontend.into_frontend()));
        EngineBuilder::new(
            Arc::new(move |_| {
                lock(&frontend)
                    .take()
                    .expect("a builder's single frontend is taken by its one thread")
            }),
            1,
        )
    }

    /// A builder with `threads` frontend threads, each running `factory(thread_index)`, made
    /// on its own thread.
    pub fn builder_with<M, X, G>(threads: usize, factory: G) -> EngineBuilder<X::Frontend>
    where
        G: Fn(usize) -> X + Send + Sync + 'static,
        X: IntoFrontend<M>,
        X::Frontend: 'static,
    {
        EngineBuilder::new(
            Arc::new(move |index| factory(index).into_frontend()),
            threads,
        )
    }
}
