//! The async stage values a builder takes: [`AsyncStage`] (a transport) and [`AsyncSink`] (a
//! backend), made by the constructors of [`Async`].

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engine_core::plumbing::Offload;
use engine_core::{Backend, StageContext, StageError, Transport};
use tokio::runtime::Handle;

use super::closures::{AsyncFilterMap, AsyncForEach, AsyncMap, AsyncTryForEach, AsyncTryMap};
use super::lane::{Consuming, Gate, Lane, Transporting, Work};
use super::settings::{DEFAULT_CONCURRENCY, DEFAULT_RUNTIME_THREADS, Limits, RuntimeChoice};
use super::{AsyncBackend, AsyncTransport};

/// Makes async stages: `Async::map(|x| async move { ... }).concurrency(1024)` is a transport
/// for [`EngineBuilder::transport`](crate::EngineBuilder::transport), and
/// `Async::for_each(...)` a backend for
/// [`EngineBuilder::backend`](crate::EngineBuilder::backend). See the
/// [module docs](crate::async_stage) for what they promise.
#[derive(Debug, Clone, Copy)]
pub struct Async;

impl Async {
    /// An async transport from a closure returning a future of the output.
    pub fn map<A, B, F, Fut>(f: F) -> AsyncStage<AsyncMap<F, A>>
    where
        F: Fn(A) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = B> + Send + 'static,
        A: Send + 'static,
        B: Send + 'static,
    {
        Self::transport(AsyncMap::new(f))
    }

    /// An async transport from a closure returning a future of `Option<B>` (`None` filters).
    pub fn filter_map<A, B, F, Fut>(f: F) -> AsyncStage<AsyncFilterMap<F, A>>
    where
        F: Fn(A) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Option<B>> + Send + 'static,
        A: Send + 'static,
        B: Send + 'static,
    {
        Self::transport(AsyncFilterMap::new(f))
    }

    /// An async transport from a closure returning a future of `Result<B, E>` (`Err` fails
    /// the item).
    pub fn try_map<A, B, E, F, Fut>(f: F) -> AsyncStage<AsyncTryMap<F, A>>
    where
        F: Fn(A) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<B, E>> + Send + 'static,
        E: Into<engine_core::BoxError>,
        A: Send + 'static,
        B: Send + 'static,
    {
        Self::transport(AsyncTryMap::new(f))
    }

    /// An async transport from a stage value, cloned for each engine thread.
    pub fn transport<S: AsyncTransport + Clone>(stage: S) -> AsyncStage<S> {
        Self::transport_with(move |_| stage.clone())
    }

    /// An async transport made by `factory(ctx)` on each engine thread: per-thread state with
    /// the thread's context.
    pub fn transport_with<S: AsyncTransport>(
        factory: impl Fn(&StageContext) -> S + Send + Sync + 'static,
    ) -> AsyncStage<S> {
        AsyncStage {
            make: Arc::new(factory),
            shared: Arc::new(Shared::default()),
            running: None,
        }
    }

    /// An async backend from a closure returning a future.
    pub fn for_each<A, F, Fut>(f: F) -> AsyncSink<AsyncForEach<F, A>>
    where
        F: Fn(A) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        A: Send + 'static,
    {
        Self::backend(AsyncForEach::new(f))
    }

    /// An async backend from a closure returning a future of `Result<(), E>`.
    pub fn try_for_each<A, E, F, Fut>(f: F) -> AsyncSink<AsyncTryForEach<F, A>>
    where
        F: Fn(A) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<engine_core::BoxError>,
        A: Send + 'static,
    {
        Self::backend(AsyncTryForEach::new(f))
    }

    /// An async backend from a stage value, cloned for each engine thread.
    pub fn backend<S: AsyncBackend + Clone>(stage: S) -> AsyncSink<S> {
        Self::backend_with(move |_| stage.clone())
    }

    /// An async backend made by `factory(ctx)` on each engine thread.
    pub fn backend_with<S: AsyncBackend>(
        factory: impl Fn(&StageContext) -> S + Send + Sync + 'static,
    ) -> AsyncSink<S> {
        AsyncSink {
            make: Arc::new(factory),
            shared: Arc::new(Shared::default()),
            running: None,
        }
    }
}

/// What the clones of one async stage share: its settings, its runtime and its permits.
#[derive(Debug)]
struct Shared {
    limits: Limits,
    runtime: RuntimeChoice,
    gate: OnceLock<Arc<Gate>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            limits: Limits {
                concurrency: DEFAULT_CONCURRENCY,
                adaptive: false,
                timeout: None,
            },
            runtime: RuntimeChoice::own(DEFAULT_RUNTIME_THREADS),
            gate: OnceLock::new(),
        }
    }
}

impl Shared {
    /// Starts one engine thread's side: checks the settings, finds the runtime, makes and
    /// sets up the thread's stage value.
    fn start<W: Work>(
        &self,
        ctx: &StageContext,
        make: impl FnOnce(&StageContext) -> Result<W, StageError>,
    ) -> Result<Lane<W>, StageError> {
        self.limits
            .check()
            .map_err(|e| StageError::new(e).fatal())?;
        let handle = self
            .runtime
            .handle()
            .map_err(|e| StageError::new(e).fatal())?;
        let gate =
            Arc::clone(self.gate.get_or_init(|| {
                Arc::new(Gate::new(self.limits.concurrency, self.limits.adaptive))
            }));
        let work = make(ctx)?;
        Ok(Lane::new(work, ctx, handle, gate, self.limits.timeout))
    }
}

/// The settings both kinds of async stage share.
macro_rules! settings {
    () => {
        /// At most `k` items of the stage in flight at once, over all its engine threads
        /// (default 256). Zero fails the run at once with [`AsyncError::ZeroConcurrency`](super::AsyncError).
        #[must_use]
        pub fn concurrency(self, k: usize) -> Self {
            self.with(|s| {
                s.limits.concurrency = k;
                s.limits.adaptive = false;
            })
        }

        /// Lets the stage find its own limit, between 1 and `max`: it starts low, raises the
        /// limit by one while the latency of its items holds, and cuts it by a tenth when the
        /// latency rises or items fail (AIMD). [`concurrency_limit`](Self::concurrency_limit)
        /// reads where it stands. Zero fails the run at once with
        /// [`AsyncError::ZeroConcurrency`](super::AsyncError).
        #[must_use]
        pub fn adaptive(self, max: usize) -> Self {
            self.with(|s| {
                s.limits.concurrency = max;
                s.limits.adaptive = true;
            })
        }

        /// The stage's limit of futures at once now: the fixed concurrency, or where an
        /// adaptive stage stands (0 before the first run).
        pub fn concurrency_limit(&self) -> usize {
            self.shared.gate.get().map_or(0, |gate| gate.limit())
        }

        /// Fails an item whose future has not finished after `limit` (default: no limit).
        /// Zero fails the run at once with [`AsyncError::ZeroTimeout`](super::AsyncError).
        #[must_use]
        pub fn timeout(self, limit: Duration) -> Self {
            self.with(|s| s.limits.timeout = Some(limit))
        }

        /// Runs the futures on the program's runtime instead of the engine's own. It must be
        /// a multi-thread runtime that is still running, or the run fails at once with an
        /// [`AsyncError`](super::AsyncError).
        #[must_use]
        pub fn runtime(self, handle: Handle) -> Self {
            self.with(|s| s.runtime = RuntimeChoice::Given(handle))
        }

        /// The threads of the engine's own runtime (default 2), made at the first run and
        /// kept for the next ones.
        #[must_use]
        pub fn runtime_threads(self, threads: usize) -> Self {
            self.with(|s| s.runtime = RuntimeChoice::own(threads))
        }

        /// Futures of the stage running now (0 between runs).
        pub fn in_flight(&self) -> usize {
            self.shared.gate.get().map_or(0, |gate| gate.running())
        }

        /// The same stage with other settings; its clones made before keep the old ones.
        fn with(mut self, change: impl FnOnce(&mut Shared)) -> Self {
            let old = std::mem::take(&mut self.shared);
            let mut shared = Arc::try_unwrap(old).unwrap_or_default();
            shared.gate = OnceLock::new();
            change(&mut shared);
            self.shared = Arc::new(shared);
            self
        }
    };
}

/// An async transport: many items in flight at once on a tokio runtime. Made by
/// [`Async::map`], [`Async::transport`] and their kin.
pub struct AsyncStage<S: AsyncTransport> {
    make: Arc<dyn Fn(&StageContext) -> S + Send + Sync>,
    shared: Arc<Shared>,
    running: Option<Lane<Transporting<S>>>,
}

impl<S: AsyncTransport> AsyncStage<S> {
    settings!();
}

impl<S: AsyncTransport> Clone for AsyncStage<S> {
    fn clone(&self) -> Self {
        Self {
            make: Arc::clone(&self.make),
            shared: Arc::clone(&self.shared),
            running: None,
        }
    }
}

impl<S: AsyncTransport> fmt::Debug for AsyncStage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncStage")
            .field("limits", &self.shared.limits)
            .field("runtime", &self.shared.runtime)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncTransport> Transport for AsyncStage<S> {
    type Input = S::Input;
    type Output = S::Output;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let lane = self.shared.start(ctx, |ctx| {
            let mut stage = (self.make)(ctx);
            stage.setup(ctx)?;
            Ok(Transporting(stage))
        })?;
        self.running = Some(lane);
        Ok(())
    }

    fn transport(
        &mut self,
        item: S::Input,
        _ctx: &StageContext,
    ) -> Result<Option<S::Output>, StageError> {
        self.running
            .as_ref()
            .ok_or_else(|| StageError::msg("the async stage was not set up").fatal())?
            .call_one(item)
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        if let Some(lane) = self.running.take() {
            lane.work().0.cleanup(ctx);
        }
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = S::Input, Output = S::Output>> {
        self.running
            .as_mut()
            .map(|lane| lane as &mut dyn Offload<Input = S::Input, Output = S::Output>)
    }
}

/// An async backend: many items in flight at once on a tokio runtime. Made by
/// [`Async::for_each`], [`Async::backend`] and their kin.
pub struct AsyncSink<S: AsyncBackend> {
    make: Arc<dyn Fn(&StageContext) -> S + Send + Sync>,
    shared: Arc<Shared>,
    running: Option<Lane<Consuming<S>>>,
}

impl<S: AsyncBackend> AsyncSink<S> {
    settings!();
}

impl<S: AsyncBackend> Clone for AsyncSink<S> {
    fn clone(&self) -> Self {
        Self {
            make: Arc::clone(&self.make),
            shared: Arc::clone(&self.shared),
            running: None,
        }
    }
}

impl<S: AsyncBackend> fmt::Debug for AsyncSink<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSink")
            .field("limits", &self.shared.limits)
            .field("runtime", &self.shared.runtime)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncBackend> Backend for AsyncSink<S> {
    type Input = S::Input;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let lane = self.shared.start(ctx, |ctx| {
            let mut stage = (self.make)(ctx);
            stage.setup(ctx)?;
            Ok(Consuming(stage))
        })?;
        self.running = Some(lane);
        Ok(())
    }

    fn process(&mut self, item: S::Input, _ctx: &StageContext) -> Result<(), StageError> {
        self.running
            .as_ref()
            .ok_or_else(|| StageError::msg("the async stage was not set up").fatal())?
            .call_one(item)
            .map(drop)
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        if let Some(lane) = self.running.take() {
            lane.work().0.cleanup(ctx);
        }
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = S::Input, Output = ()>> {
        self.running
            .as_mut()
            .map(|lane| lane as &mut dyn Offload<Input = S::Input, Output = ()>)
    }
}
