//! The closure forms of the builder: `filter_map`, `try_map`, `flat_map` and `map_batch`
//! transports, and `for_each` and `try_for_each` backends, each cloned once per thread.
//!
//! They wrap engine-core's [`filter_map`](engine_core::filter_map),
//! [`try_map`](engine_core::try_map) and [`flat_map`](engine_core::flat_map) and the closure
//! backends, with the item type taken from the stage before, so closures need no type
//! annotations.

use engine_core::plumbing::TrackedFrontend;
use engine_core::plumbing::markers::Closure;
use engine_core::{
    BoxError, FilterMapFn, FlatMapFn, ForEachFn, MapBatchFn, TryForEachFn, TryMapFn,
};

use crate::builder::EngineBuilder;
use crate::factory::{Absent, Present, Upstream};

impl<F: TrackedFrontend, B> EngineBuilder<F, Absent, B>
where
    F::Item: 'static,
{
    /// Adds a transport that passes `Some` results on and counts `None` as filtered, cloned
    /// once per transport thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::threads::Engine;
    ///
    /// let report = Engine::builder(1..=10_u64)
    ///     .filter_map(|n| (n % 2 == 0).then_some(n * 10))
    ///     .backend(|_n: u64| {})
    ///     .run()?;
    /// let transport = report.stage("transport").expect("a transport stage").counts;
    /// assert_eq!((transport.input, transport.output, transport.filtered), (10, 5, 5));
    /// assert_eq!(report.processed(), 5);
    /// report.check().expect("the counts add up");
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn filter_map<O, G>(self, f: G) -> EngineBuilder<F, Present<FilterMapFn<G, F::Item>>, B>
    where
        G: FnMut(F::Item) -> Option<O> + Clone + Send + 'static,
    {
        self.transport(engine_core::filter_map(f))
    }

    /// Adds a transport whose `Err` results count as failed items (handled by the
    /// [error policy](EngineBuilder::error_policy)), cloned once per transport thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::threads::Engine;
    ///
    /// let report = Engine::builder(["1", "2", "x", "4"])
    ///     .try_map(|s| s.parse::<u32>())
    ///     .backend(|_n: u32| {})
    ///     .run()?;
    /// let transport = report.stage("transport").expect("a transport stage").counts;
    /// assert_eq!((transport.input, transport.output, transport.failed), (4, 3, 1));
    /// report.check().expect("the counts add up");
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn try_map<O, E, G>(self, f: G) -> EngineBuilder<F, Present<TryMapFn<G, F::Item>>, B>
    where
        G: FnMut(F::Item) -> Result<O, E> + Clone + Send + 'static,
        E: Into<BoxError>,
    {
        self.transport(engine_core::try_map(f))
    }

    /// Adds a transport that passes on every item of what the closure returns: an input
    /// that gives `k` outputs counts one input, `k` outputs and `k - 1`
    /// [`expanded`](engine_core::Counts::expanded); one that gives none counts as filtered.
    /// Cloned once per transport thread.
    ///
    /// Each output carries its own part of the input's completion
    /// [ticket](engine_core::plumbing::Ticket::split): a tracked source hears of the input
    /// once all its outputs are done. A source whose tickets cannot split gets the inputs
    /// that give several outputs failed, with an error that says so.
    ///
    /// # Examples
    ///
    /// Three inputs giving 0, 1 and 4 outputs:
    ///
    /// ```
    /// use engine::threads::Engine;
    ///
    /// let report = Engine::builder([0_usize, 1, 4])
    ///     .flat_map(|n| vec![n; n])
    ///     .backend(|_n: usize| {})
    ///     .run()?;
    /// let transport = report.stage("transport").expect("a transport stage").counts;
    /// assert_eq!(transport.input, 3);
    /// assert_eq!(transport.output, 5);
    /// assert_eq!(transport.filtered, 1);
    /// assert_eq!(transport.expanded, 3);
    /// assert_eq!(report.processed(), 5);
    /// report.check().expect("the counts add up");
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn flat_map<I, G>(self, f: G) -> EngineBuilder<F, Present<FlatMapFn<G, F::Item>>, B>
    where
        G: FnMut(F::Item) -> I + Clone + Send + 'static,
        I: IntoIterator,
    {
        self.transport(engine_core::flat_map(f))
    }

    /// Adds a batch-native transport: the closure maps a whole batch, as the engine moves
    /// it, and returns one output per input, in order. Cloned once per transport thread.
    ///
    /// A light stage pays per batch what it would pay per item, and the items need not be
    /// touched one by one: with a plain source (an iterator, whose items carry no completion
    /// ticket), the batch's `Vec` goes to the closure and on to the next stage without a copy.
    /// Batches are what is queued, so a lone item comes as a batch of one, at once.
    ///
    /// Counts stay per item: a batch of `n` counts `n` inputs and `n` outputs. If the closure
    /// returns a different number of outputs than it was given inputs, or panics, every item
    /// of that batch counts as failed (handled by the [error
    /// policy](EngineBuilder::error_policy)). To filter or fail single items of a batch,
    /// implement [`Transport::transport_batch`](engine_core::Transport::transport_batch).
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::threads::Engine;
    ///
    /// let report = Engine::builder(0..10_000_u64)
    ///     .map_batch(|mut batch| {
    ///         batch.iter_mut().for_each(|x| *x += 1);
    ///         batch
    ///     })
    ///     .transport_threads(2)
    ///     .backend(|_x: u64| {})
    ///     .run()?;
    /// let transport = report.stage("transport").expect("a transport stage").counts;
    /// assert_eq!((transport.input, transport.output), (10_000, 10_000));
    /// report.check().expect("the counts add up");
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn map_batch<O, G>(self, f: G) -> EngineBuilder<F, Present<MapBatchFn<G, F::Item>>, B>
    where
        G: FnMut(Vec<F::Item>) -> Vec<O> + Clone + Send + 'static,
    {
        self.transport(engine_core::map_batch(f))
    }
}

impl<F: TrackedFrontend, T: Upstream<F::Item>> EngineBuilder<F, T, Absent>
where
    T::Output: 'static,
{
    /// Adds a backend that calls `f` on every item, cloned once per backend thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use engine::threads::Engine;
    ///
    /// let sum = Arc::new(AtomicU64::new(0));
    /// let total = Arc::clone(&sum);
    /// let report = Engine::builder(1..=100_u64)
    ///     .for_each(move |n| {
    ///         total.fetch_add(n, Ordering::Relaxed);
    ///     })
    ///     .backend_threads(2)
    ///     .run()?;
    /// assert_eq!(sum.load(Ordering::SeqCst), 5050);
    /// let backend = report.stage("backend").expect("a backend stage").counts;
    /// assert_eq!((backend.input, backend.output), (100, 100));
    /// report.check().expect("the counts add up");
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn for_each<G>(self, f: G) -> EngineBuilder<F, T, Present<ForEachFn<G, T::Output>>>
    where
        G: FnMut(T::Output) + Clone + Send + 'static,
    {
        self.backend::<Closure<fn(T::Output)>, G, _>(f)
    }

    /// Adds a backend whose `Err` results count as failed items (handled by the
    /// [error policy](EngineBuilder::error_policy)), cloned once per backend thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use engine::threads::Engine;
    ///
    /// let report = Engine::builder(1..=10_u64)
    ///     .try_for_each(|n| if n == 7 { Err("seven") } else { Ok(()) })
    ///     .run()?;
    /// let backend = report.stage("backend").expect("a backend stage").counts;
    /// assert_eq!((backend.input, backend.output, backend.failed), (10, 9, 1));
    /// report.check().expect("the counts add up");
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn try_for_each<E, G>(
        self,
        f: G,
    ) -> EngineBuilder<F, T, Present<TryForEachFn<G, T::Output>>>
    where
        G: FnMut(T::Output) -> Result<(), E> + Clone + Send + 'static,
        E: Into<BoxError>,
    {
        self.backend::<Closure<fn(T::Output) -> Result<(), E>>, G, _>(f)
    }
}
