//! The engine: starting the stage threads, watching them, stopping them, and the report.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use engine_core::plumbing::{StopDeadline, Ticket, TrackedFrontend, lock};
use engine_core::{
    Backend, Counts, RunEnd, RunReport, StageContext, StageKind, StageReport, StopHandle,
    StopLevel, StopSubscription, ThreadReport, Transport,
};

use crate::builder::{Absent, EngineBuilder, Factory, Options, Present};
use crate::error::EngineError;
use crate::link::{AbortTrigger, Link, Sizing, abort_pair};
use crate::stats::{ConsumerProbe, StageProbe, Stats, StatsReader, StatsSource, ThreadSnapshot};
use crate::worker::{
    BackendStage, Consume, Event, Input, Shared, ThreadResult, ThreadStats, TransportStage, Window,
    last_resort, run_consumer, run_frontend,
};

/// A built engine, ready to [`run`](Self::run) or [`spawn`](Self::spawn).
///
/// Made by [`Engine::builder`] or [`Engine::builder_with`] and
/// [`EngineBuilder::build`].
pub struct Engine<F, T = Absent, B = Absent> {
    builder: EngineBuilder<F, T, B>,
    stop: StopHandle,
}

impl<F, T: fmt::Debug, B: fmt::Debug> fmt::Debug for Engine<F, T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("builder", &self.builder)
            .field("stop", &self.stop)
            .finish()
    }
}

mod sealed {
    //! The stage combinations an engine can run, sealed so that only this crate names them.
    #![allow(unreachable_pub, reason = "sealed-trait plumbing, not part of the API")]

    use super::*;

    /// Thread counts of the consumer stages: `(transport, backend)`.
    pub type ConsumerThreads = (Option<usize>, Option<usize>);

    #[diagnostic::on_unimplemented(
        message = "a pipeline needs a transport or a backend after its frontend",
        label = "add `.transport(...)` or `.backend(...)` to the builder"
    )]
    pub trait Sealed<F: TrackedFrontend> {
        fn threads(&self) -> ConsumerThreads;

        fn launch(self, launcher: &mut Launcher<F::Ticket, F::Item>) -> Result<(), EngineError>;
    }
}

/// The stage combinations an engine runs: a transport, a backend, or both, after the
/// frontend `F`. Implemented for the builder's type states; nothing to implement.
#[diagnostic::on_unimplemented(
    message = "a pipeline needs a transport or a backend after its frontend",
    label = "add `.transport(...)` or `.backend(...)` to the builder"
)]
pub trait Stages<F: TrackedFrontend>: sealed::Sealed<F> {}

impl<F: TrackedFrontend, S: sealed::Sealed<F>> Stages<F> for S {}

/// A link as the coordinator sees it, whatever its item type.
pub(crate) trait LinkView: Send + Sync {
    /// Items in the channel.
    fn queued(&self) -> u64;
    /// The most items the channel holds.
    fn capacity(&self) -> u64;
    /// Items in the frontend slots.
    fn buffered(&self) -> u64;
    fn abandoned(&self) -> u64;
    /// After an abort: waits until no producer is left and counts what remains as abandoned.
    fn drain_abandoned(&self);
    fn close_slots(&self);
    fn slot_counts(&self) -> Vec<Counts>;
}

impl<K: Ticket, T: Send + 'static> LinkView for Link<K, T> {
    fn queued(&self) -> u64 {
        self.state().queued()
    }

    fn capacity(&self) -> u64 {
        self.state().capacity()
    }

    fn buffered(&self) -> u64 {
        self.slots().iter().map(|s| s.buffered() as u64).sum()
    }

    fn abandoned(&self) -> u64 {
        self.state().abandoned()
    }

    fn drain_abandoned(&self) {
        Link::drain_abandoned(self);
    }

    fn close_slots(&self) {
        for slot in self.slots() {
            slot.close();
        }
    }

    fn slot_counts(&self) -> Vec<Counts> {
        self.slots().iter().map(|s| s.counts()).collect()
    }
}

/// The frontend's probe for live stats: its slots.
struct FrontendProbe(Arc<dyn LinkView>, Vec<Arc<ThreadStats>>);

impl StageProbe for FrontendProbe {
    fn counts(&self) -> Counts {
        self.0.slot_counts().into_iter().sum()
    }

    fn queued(&self) -> u64 {
        self.0.buffered()
    }

    fn capacity(&self) -> u64 {
        0
    }

    fn threads(&self) -> Vec<ThreadSnapshot> {
        self.0
            .slot_counts()
            .into_iter()
            .zip(&self.1)
            .map(|(counts, stats)| {
                let (busy, blocked) = stats.times();
                ThreadSnapshot {
                    counts,
                    busy,
                    blocked,
                }
            })
            .collect()
    }
}

/// A consumer stage being started or run.
struct ConsumerStage {
    name: Arc<str>,
    kind: StageKind,
    input: Arc<dyn LinkView>,
    handles: Vec<JoinHandle<ThreadResult>>,
    stats: Vec<Arc<ThreadStats>>,
}

/// Starts stage threads.
#[allow(unreachable_pub, reason = "sealed-trait plumbing, not part of the API")]
pub struct Launcher<K, I> {
    options: Options,
    shared: Arc<Shared>,
    consumers: Vec<ConsumerStage>,
    /// The queue after the frontend.
    first: Arc<Link<K, I>>,
    /// Ordered mode's window.
    window: Option<Arc<Window>>,
}

impl<K, I> fmt::Debug for Launcher<K, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launcher").finish_non_exhaustive()
    }
}

impl<K0, I0> Launcher<K0, I0> {
    fn context(&self, kind: StageKind, index: usize, instances: usize) -> StageContext {
        let name = match kind {
            StageKind::Frontend => &self.options.names[0],
            StageKind::Transport => &self.options.names[1],
            StageKind::Backend => &self.options.names[2],
        };
        StageContext::new(
            Arc::clone(name),
            kind,
            index,
            instances,
            self.shared.stop.clone(),
        )
        .with_config(self.options.config.clone())
    }

    /// Starts `threads` consumer threads; `make(index, ctx)` runs on each thread.
    fn consumers<K, I, R>(
        &mut self,
        kind: StageKind,
        threads: usize,
        input: &Arc<Link<K, I>>,
        make: impl Fn(Input<K, I>, StageContext, Arc<ThreadStats>, Arc<Shared>) -> R,
    ) -> Result<(), EngineError>
    where
        K: Ticket,
        I: Send + 'static,
        R: FnOnce() -> ThreadResult + Send + 'static,
    {
        let mut stage = ConsumerStage {
            name: Arc::clone(self.context(kind, 0, threads).stage_name()),
            kind,
            input: Arc::clone(input) as Arc<dyn LinkView>,
            handles: Vec::new(),
            stats: Vec::new(),
        };
        let result = (0..threads).try_for_each(|index| {
            let stats = Arc::new(ThreadStats::default());
            let ctx = self.context(kind, index, threads);
            let body = make(
                Input::new(Arc::clone(input)),
                ctx,
                Arc::clone(&stats),
                Arc::clone(&self.shared),
            );
            stage
                .handles
                .push(spawn(format!("{}-{index}", stage.name), body)?);
            stage.stats.push(stats);
            Ok(())
        });
        self.consumers.push(stage);
        result
    }
}

fn spawn<R: Send + 'static>(
    name: String,
    body: impl FnOnce() -> R + Send + 'static,
) -> Result<JoinHandle<R>, EngineError> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .map_err(|source| EngineError::Spawn {
            thread: name,
            source,
        })
}

/// A consumer thread's body, with the last-resort guard.
fn consumer_body<K, S>(
    make: impl FnOnce(&StageContext) -> S + Send + 'static,
    ctx: StageContext,
    input: Input<K, S::Input>,
    stats: Arc<ThreadStats>,
    shared: Arc<Shared>,
) -> impl FnOnce() -> ThreadResult + Send + 'static
where
    K: Ticket,
    S: Consume<K> + 'static,
    S::Input: 'static,
{
    move || {
        let _span = stage_span(&ctx).entered();
        let (guard_ctx, guard_shared, guard_stats) =
            (ctx.clone(), Arc::clone(&shared), Arc::clone(&stats));
        last_resort(
            &guard_ctx,
            &guard_shared,
            || run_consumer(make, ctx, input, stats, shared),
            || {
                guard_shared.done();
                ThreadResult {
                    counts: guard_stats.read(),
                    busy: Duration::ZERO,
                }
            },
        )
    }
}

/// The span a stage thread runs in: what it logs (a failed item, say) names its stage, kind
/// and index, so `RUST_LOG` filters and any subscriber see where it happened.
fn stage_span(ctx: &StageContext) -> tracing::Span {
    tracing::info_span!(
        "stage",
        stage = ctx.stage(),
        kind = ctx.kind().as_str(),
        index = ctx.index()
    )
}

/// The input of the last stage: reordered in ordered mode.
fn last_input<K: Ticket, I: Send>(input: Input<K, I>, window: &Option<Arc<Window>>) -> Input<K, I> {
    match window {
        Some(window) => input.ordered(Arc::clone(window)),
        None => input,
    }
}

impl<K: Ticket, I> Launcher<K, I> {
    /// Starts the backend threads; the backend is always the last stage.
    fn backends<Y>(
        &mut self,
        backend: Present<Y>,
        input: &Arc<Link<K, Y::Input>>,
    ) -> Result<(), EngineError>
    where
        Y: Backend + 'static,
        Y::Input: Send + 'static,
    {
        let window = self.window.clone();
        let factory: Factory<Y> = backend.factory;
        self.consumers(
            StageKind::Backend,
            backend.threads,
            input,
            |input, ctx, stats, shared| {
                let factory = Arc::clone(&factory);
                let input = last_input(input, &window);
                consumer_body(
                    move |ctx: &StageContext| BackendStage::new(factory(ctx)),
                    ctx,
                    input,
                    stats,
                    shared,
                )
            },
        )
    }

    /// Starts the transport threads, sending to `out`, or as the last stage without it.
    fn transports<X>(
        &mut self,
        transport: Present<X>,
        input: &Arc<Link<K, X::Input>>,
        out: Option<&Arc<Link<K, X::Output>>>,
    ) -> Result<(), EngineError>
    where
        X: Transport + 'static,
        X::Input: Send + 'static,
        X::Output: Send + 'static,
    {
        let window = self.window.clone();
        // Ordered, a transport before the backend keeps one output batch per input batch.
        let ordered = window.is_some() && out.is_some();
        let factory: Factory<X> = transport.factory;
        self.consumers(
            StageKind::Transport,
            transport.threads,
            input,
            |input, ctx, stats, shared| {
                let factory = Arc::clone(&factory);
                let out = out.map(|link| link.producer());
                let input = match out {
                    Some(_) => input,
                    None => last_input(input, &window),
                };
                let make =
                    move |ctx: &StageContext| TransportStage::new(factory(ctx), out, ordered);
                consumer_body(make, ctx, input, stats, shared)
            },
        )
    }
}

impl<F, X> sealed::Sealed<F> for (Present<X>, Absent)
where
    F: TrackedFrontend,
    F::Item: Send + 'static,
    X: Transport<Input = F::Item> + 'static,
    X::Output: Send + 'static,
{
    fn threads(&self) -> sealed::ConsumerThreads {
        (Some(self.0.threads), None)
    }

    fn launch(self, launcher: &mut Launcher<F::Ticket, F::Item>) -> Result<(), EngineError> {
        let first = Arc::clone(&launcher.first);
        launcher.transports(self.0, &first, None)
    }
}

impl<F, Y> sealed::Sealed<F> for (Absent, Present<Y>)
where
    F: TrackedFrontend,
    F::Item: Send + 'static,
    Y: Backend<Input = F::Item> + 'static,
{
    fn threads(&self) -> sealed::ConsumerThreads {
        (None, Some(self.1.threads))
    }

    fn launch(self, launcher: &mut Launcher<F::Ticket, F::Item>) -> Result<(), EngineError> {
        let first = Arc::clone(&launcher.first);
        launcher.backends(self.1, &first)
    }
}

impl<F, X, Y> sealed::Sealed<F> for (Present<X>, Present<Y>)
where
    F: TrackedFrontend,
    F::Item: Send + 'static,
    X: Transport<Input = F::Item> + 'static,
    X::Output: Send + 'static,
    Y: Backend<Input = X::Output> + 'static,
{
    fn threads(&self) -> sealed::ConsumerThreads {
        (Some(self.0.threads), Some(self.1.threads))
    }

    fn launch(self, launcher: &mut Launcher<F::Ticket, F::Item>) -> Result<(), EngineError> {
        let first = Arc::clone(&launcher.first);
        let (transport, backend) = self;
        let second = Link::<F::Ticket, X::Output>::new(
            Sizing::new(launcher.options.backend_queue, backend.threads),
            0,
            launcher.shared.abort.clone(),
        );
        launcher.backends(backend, &second)?;
        let result = launcher.transports(transport, &first, Some(&second));
        second.seal();
        // The transport stage was pushed last; keep the stages in pipeline order.
        let n = launcher.consumers.len();
        launcher.consumers.swap(n - 2, n - 1);
        result
    }
}

impl<F, T, B> Engine<F, T, B>
where
    F: TrackedFrontend + 'static,
    F::Item: Send + 'static,
    (T, B): Stages<F>,
{
    pub(crate) fn new(builder: EngineBuilder<F, T, B>) -> Result<Self, EngineError> {
        let options = &builder.options;
        let (transport, backend) = sealed_threads::<F, T, B>(&builder);
        if builder.frontend_threads == 0 {
            return Err(EngineError::invalid(
                "builder_with",
                "a frontend needs at least one thread",
            ));
        }
        if transport == Some(0) {
            return Err(EngineError::invalid(
                "transport_threads",
                "a transport needs at least one thread",
            ));
        }
        if backend == Some(0) {
            return Err(EngineError::invalid(
                "backend_threads",
                "a backend needs at least one thread",
            ));
        }
        if options.transport_queue == 0 || options.backend_queue == 0 {
            return Err(EngineError::invalid(
                "queue_capacity",
                "a queue needs room for at least one item",
            ));
        }
        if options.ordered {
            if builder.frontend_threads != 1 {
                return Err(EngineError::invalid(
                    "ordered",
                    "ordered mode needs exactly one frontend thread",
                ));
            }
            let last = backend.or(transport).unwrap_or(1);
            if last != 1 {
                return Err(EngineError::invalid(
                    "ordered",
                    "ordered mode needs exactly one thread in the last stage",
                ));
            }
        }
        if let Some(interval) = options.stats_interval
            && (interval.is_zero() || Instant::now().checked_add(interval).is_none())
        {
            return Err(EngineError::invalid(
                "stats_interval",
                format!("{interval:?} is not a usable interval"),
            ));
        }
        let stop = builder.options.stop.child();
        Ok(Self { builder, stop })
    }

    /// The engine's stop handle (a child of the one given to
    /// [`EngineBuilder::stop_handle`], if any): [`stop`](StopHandle::stop) drains and ends
    /// the run, [`stop_now`](StopHandle::stop_now) aborts it. Pass it to
    /// [`engine_core::install_signal_handler`] to stop on Ctrl-C.
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
        let run = self.launch()?;
        let stats = Arc::clone(&run.stats);
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
        let run = self.launch()?;
        let stats = Arc::clone(&run.stats);
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

    fn launch(self) -> Result<Run, EngineError> {
        let Self { builder, stop } = self;
        let (transport_threads, backend_threads) = sealed_threads::<F, T, B>(&builder);
        let EngineBuilder {
            frontend,
            frontend_threads,
            stages,
            options,
        } = builder;
        let (trigger, abort) = abort_pair(&stop);
        let trigger = Arc::new(trigger);
        let (events_tx, events) = crossbeam_channel::unbounded();
        let subscription = {
            let trigger = Arc::clone(&trigger);
            let events = events_tx.clone();
            stop.on_stop(move |level| {
                if level == StopLevel::Now {
                    trigger.fire();
                }
                let _ = events.send(Event::Stop);
            })
        };
        let shared = Arc::new(Shared {
            stop: stop.clone(),
            abort: abort.clone(),
            policy: options.policy,
            failure: Mutex::new(None),
            events: events_tx,
            stop_grace: AtomicU64::new(0),
        });
        let consumers = transport_threads.or(backend_threads).unwrap_or(1);
        let queue = if transport_threads.is_some() {
            options.transport_queue
        } else {
            options.backend_queue
        };
        let sizing = Sizing::new(queue, consumers);
        let first = Link::<F::Ticket, F::Item>::new(sizing, frontend_threads, abort);
        first.seal();
        let window = options
            .ordered
            .then(|| Window::new((sizing.slots + 2 * consumers + 2) as u64));

        let mut launcher = Launcher {
            options,
            shared: Arc::clone(&shared),
            consumers: Vec::new(),
            first: Arc::clone(&first),
            window: window.clone(),
        };
        let started = Instant::now();
        let launched = sealed::Sealed::launch(stages, &mut launcher);
        let frontend_stats: Vec<Arc<ThreadStats>> = (0..frontend_threads)
            .map(|_| Arc::new(ThreadStats::default()))
            .collect();
        let launched = launched.and_then(|()| {
            (0..frontend_threads).try_for_each(|index| {
                let ctx = launcher.context(StageKind::Frontend, index, frontend_threads);
                let name = format!("{}-{index}", ctx.stage());
                let (factory, slot, link, window, shared, stats) = (
                    Arc::clone(&frontend),
                    Arc::clone(&first.slots()[index]),
                    Arc::clone(&first),
                    window.clone(),
                    Arc::clone(&shared),
                    Arc::clone(&frontend_stats[index]),
                );
                let events = shared.events.clone();
                spawn(name, move || {
                    let _span = stage_span(&ctx).entered();
                    let (guard_ctx, guard_shared, guard_slot) =
                        (ctx.clone(), Arc::clone(&shared), Arc::clone(&slot));
                    let busy = last_resort(
                        &guard_ctx,
                        &guard_shared,
                        || run_frontend(|ctx| factory(ctx), ctx, slot, link, window, shared, stats),
                        || {
                            guard_slot.close();
                            Duration::ZERO
                        },
                    );
                    let _ = events.send(Event::FrontendDone { index, busy });
                })
                .map(drop)
            })
        });
        if let Err(err) = launched {
            // Threads already started end on the abort; none has run stage code for long.
            stop.stop_now();
            LinkView::close_slots(&*first);
            return Err(err);
        }

        let first_view = Arc::clone(&first) as Arc<dyn LinkView>;
        let mut probes: Vec<(Arc<str>, StageKind, Box<dyn StageProbe>)> = vec![(
            Arc::clone(&launcher.options.names[0]),
            StageKind::Frontend,
            Box::new(FrontendProbe(Arc::clone(&first_view), frontend_stats)),
        )];
        for stage in &launcher.consumers {
            probes.push((
                Arc::clone(&stage.name),
                stage.kind,
                Box::new(ConsumerProbe {
                    threads: stage.stats.clone(),
                    input: Arc::clone(&stage.input),
                }),
            ));
        }
        Ok(Run {
            shared,
            events,
            _trigger: trigger,
            _subscription: subscription,
            started,
            options: launcher.options,
            frontend_threads,
            first: first_view,
            consumers: launcher.consumers,
            stats: Arc::new(StatsSource {
                started,
                stages: probes,
                ended: std::sync::OnceLock::new(),
            }),
        })
    }
}

fn sealed_threads<F, T, B>(builder: &EngineBuilder<F, T, B>) -> sealed::ConsumerThreads
where
    F: TrackedFrontend,
    (T, B): Stages<F>,
{
    sealed::Sealed::threads(&builder.stages)
}

/// Runs a started engine to its end.
struct Run {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    _trigger: Arc<AbortTrigger>,
    _subscription: StopSubscription,
    started: Instant,
    options: Options,
    frontend_threads: usize,
    first: Arc<dyn LinkView>,
    consumers: Vec<ConsumerStage>,
    stats: Arc<StatsSource>,
}

impl Run {
    fn coordinate(mut self) -> Result<RunReport, EngineError> {
        let consumer_threads: usize = self.consumers.iter().map(|s| s.handles.len()).sum();
        let mut consumers_done = 0;
        let mut frontend_busy: Vec<Option<Duration>> = vec![None; self.frontend_threads];
        let mut stopping = false;
        let mut deadline: Option<StopDeadline> = None;
        let mut next_stats = self
            .options
            .stats_interval
            .and_then(|i| Instant::now().checked_add(i));
        let mut last_stats: Option<Stats> = None;
        // After a graceful stop has drained the pipeline: until when the frontends' cleanups
        // are waited for (their longest `stop_grace`).
        let mut grace_until: Option<Instant> = None;

        loop {
            if consumers_done == consumer_threads {
                if frontend_busy.iter().all(Option::is_some) {
                    break;
                }
                if stopping {
                    if self.shared.abort.is_fired() {
                        break;
                    }
                    let now = Instant::now();
                    let until = *grace_until.get_or_insert_with(|| {
                        now.checked_add(self.shared.stop_grace())
                            .unwrap_or(now + Duration::from_secs(86_400 * 365))
                    });
                    if now >= until {
                        break;
                    }
                }
            }
            let wake = next_stats.into_iter().chain(grace_until).min();
            let event = match wake {
                None => self
                    .events
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => self.events.recv_deadline(at),
            };
            match event {
                Ok(Event::ThreadDone) => consumers_done += 1,
                Ok(Event::FrontendDone { index, busy }) => frontend_busy[index] = Some(busy),
                Ok(Event::Stop) => {
                    if !stopping {
                        stopping = true;
                        // Frontends stop producing; a frontend blocked in `produce` is left
                        // behind, and what its slot holds drains.
                        self.first.close_slots();
                        if let Some(timeout) = self.options.stop_timeout {
                            deadline = self.shared.stop.stop_now_after(timeout).ok();
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout)
                    if next_stats.is_none_or(|at| Instant::now() < at) =>
                {
                    // The grace ended: checked at the top of the loop.
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = self.stats.snapshot();
                    crate::stats::log(&now, last_stats.as_ref());
                    last_stats = Some(now);
                    next_stats = self
                        .options
                        .stats_interval
                        .and_then(|i| Instant::now().checked_add(i));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("the run holds a sender of its own events")
                }
            }
        }
        drop(deadline);
        let elapsed = self.started.elapsed();
        let aborted = self.shared.abort.is_fired();
        if aborted {
            self.first.drain_abandoned();
            for stage in &self.consumers {
                stage.input.drain_abandoned();
            }
        }
        self.report(elapsed, aborted, &frontend_busy)
    }

    fn report(
        &mut self,
        elapsed: Duration,
        aborted: bool,
        frontend_busy: &[Option<Duration>],
    ) -> Result<RunReport, EngineError> {
        let mut stages = Vec::with_capacity(1 + self.consumers.len());
        let mut front = StageReport::new(&*self.options.names[0], StageKind::Frontend);
        for (index, counts) in self.first.slot_counts().into_iter().enumerate() {
            front.counts += counts;
            let busy = frontend_busy[index].unwrap_or(elapsed);
            front = front.with_thread(ThreadReport::new(index, counts.input, busy));
        }
        stages.push(front);
        for stage in &mut self.consumers {
            let mut report = StageReport::new(&*stage.name, stage.kind);
            for (index, handle) in stage.handles.drain(..).enumerate() {
                let result = handle.join().unwrap_or_else(|_| ThreadResult {
                    counts: stage.stats[index].read(),
                    busy: Duration::ZERO,
                });
                let handled = result.counts.input - result.counts.dropped;
                report.counts += result.counts;
                report = report.with_thread(ThreadReport::new(index, handled, result.busy));
            }
            let abandoned = stage.input.abandoned();
            report.counts.input += abandoned;
            report.counts.dropped += abandoned;
            stages.push(report);
        }
        let failure = lock(&self.shared.failure).take();
        let end = match &failure {
            Some(failure) => RunEnd::Failed {
                stage: failure.stage.to_string(),
                reason: format!("{:#}", failure.error),
            },
            None if aborted => RunEnd::Aborted,
            None if self.shared.stop.is_stopping() => RunEnd::Stopped,
            None => RunEnd::Completed,
        };
        let report = RunReport::new(stages, elapsed, end);
        if let Err(mismatch) = report.check() {
            tracing::error!(%mismatch, "the run's counts do not add up; this is a bug in engine-threads");
        }
        match failure {
            None => Ok(report),
            Some(failure) => Err(EngineError::StageFailed {
                stage: failure.stage.to_string(),
                kind: failure.kind,
                thread: failure.thread,
                during_setup: failure.during_setup,
                error: failure.error,
                report: Box::new(report),
            }),
        }
    }
}

/// A running engine, from [`Engine::spawn`].
#[derive(Debug)]
pub struct EngineHandle {
    stop: StopHandle,
    stats: Arc<StatsSource>,
    coordinator: JoinHandle<Result<RunReport, EngineError>>,
}

impl EngineHandle {
    /// Stops gracefully: the frontend stops producing and what was accepted drains.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Aborts: queued items are dropped and counted as such.
    pub fn stop_now(&self) {
        self.stop.stop_now();
    }

    /// The engine's stop handle.
    pub fn stop_handle(&self) -> &StopHandle {
        &self.stop
    }

    /// A snapshot of the engine's counts, rates and queue depths.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// A reader of the same snapshots for another thread (a progress line, a metrics
    /// server), which stays valid after [`join`](Self::join) with the final counts.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(Arc::clone(&self.stats))
    }

    /// The engine's live statistics as Prometheus metrics, for a `prometheus_client`
    /// registry (feature `metrics`); they stay readable, with the final counts, after the run.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(&self) -> crate::EngineMetrics {
        crate::EngineMetrics::new(Arc::clone(&self.stats))
    }

    /// Whether the run has ended (`join` will not block).
    pub fn is_finished(&self) -> bool {
        self.coordinator.is_finished()
    }

    /// Waits for the run to end and returns its report.
    ///
    /// # Errors
    ///
    /// As [`Engine::run`].
    ///
    /// # Panics
    ///
    /// Only if the engine's own coordinating thread panicked, which is a bug.
    pub fn join(self) -> Result<RunReport, EngineError> {
        match self.coordinator.join() {
            Ok(result) => result,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }
}
