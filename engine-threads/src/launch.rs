//! Starting a run: the shared state and the signals, the first link, the consumer threads
//! (last stage first), the frontend threads, and the probes for the live statistics.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use engine_core::plumbing::{Ticket, TrackedFrontend};
use engine_core::{
    Backend, StageContext, StageKind, StopHandle, StopLevel, StopSubscription, Transport,
};

use crate::consumer::{BackendStage, Consume, TransportStage, run_consumer};
use crate::counters::ThreadStats;
use crate::error::EngineError;
use crate::factory::{Factory, Present};
use crate::frontend::FrontendThread;
use crate::input::{Input, Window};
use crate::link::{Abort, AbortTrigger, Link, LinkView, Sizing, abort_pair};
use crate::plan::Options;
use crate::run::{ConsumerStage, Run};
use crate::shared::{Event, Shared};
use crate::stats::{ConsumerProbe, FrontendProbe, StageProbe, StatsSource};

/// How the run hears of a stop: the abort signal that wakes blocked threads, and the
/// coordinator's events.
pub(crate) struct Signals {
    trigger: Arc<AbortTrigger>,
    abort: Abort,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    subscription: StopSubscription,
}

impl Signals {
    /// Subscribes to `stop`: an abort fires the signal, and any stop tells the coordinator.
    pub(crate) fn new(stop: &StopHandle) -> Self {
        let (trigger, abort) = abort_pair(stop);
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
        Self {
            trigger,
            abort,
            events_tx,
            events,
            subscription,
        }
    }

    /// What every stage thread shares.
    pub(crate) fn shared(&self, stop: &StopHandle, options: &Options) -> Arc<Shared> {
        Arc::new(Shared {
            stop: stop.clone(),
            abort: self.abort.clone(),
            policy: options.policy,
            failure: Mutex::new(None),
            events: self.events_tx.clone(),
            stop_grace: AtomicU64::new(0),
        })
    }
}

/// Starts stage threads.
#[allow(unreachable_pub, reason = "sealed-trait plumbing, not part of the API")]
pub struct Launcher<K, I> {
    options: Options,
    shared: Arc<Shared>,
    consumers: Vec<ConsumerStage>,
    /// The queue after the frontend.
    first: Arc<Link<K, I>>,
    frontend_threads: usize,
    /// The frontend threads' times, once they are started.
    frontend_stats: Vec<Arc<ThreadStats>>,
    /// Ordered mode's window.
    window: Option<Arc<Window>>,
}

impl<K, I> fmt::Debug for Launcher<K, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launcher").finish_non_exhaustive()
    }
}

impl<K: Ticket, I: Send + 'static> Launcher<K, I> {
    /// A launcher with the first link, sized for the stage after the frontend.
    pub(crate) fn new(
        options: Options,
        shared: Arc<Shared>,
        frontend_threads: usize,
        (transport_threads, backend_threads): (Option<usize>, Option<usize>),
    ) -> Self {
        let consumers = transport_threads.or(backend_threads).unwrap_or(1);
        let queue = if transport_threads.is_some() {
            options.transport_queue
        } else {
            options.backend_queue
        };
        let sizing = Sizing::new(queue, consumers);
        let first = Link::new(sizing, frontend_threads, shared.abort.clone());
        first.seal();
        let window = options
            .ordered
            .then(|| Window::new((sizing.slots + 2 * consumers + 2) as u64));
        Self {
            options,
            shared,
            consumers: Vec::new(),
            first,
            frontend_threads,
            frontend_stats: Vec::new(),
            window,
        }
    }

    /// After a failed start: closes the frontend slots, so that nothing more is accepted.
    pub(crate) fn abandon(&self) {
        self.first.close_slots();
    }

    /// The queue after the frontend.
    pub(crate) fn first(&self) -> Arc<Link<K, I>> {
        Arc::clone(&self.first)
    }

    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    /// The run's abort signal, for a new link.
    pub(crate) fn abort(&self) -> Abort {
        self.shared.abort.clone()
    }

    /// Swaps the last two consumer stages started: a pipeline starts its backend before its
    /// transport, and keeps its stages in pipeline order.
    pub(crate) fn swap_last_two(&mut self) {
        let n = self.consumers.len();
        self.consumers.swap(n - 2, n - 1);
    }

    /// The name of the stage of this kind.
    fn name(&self, kind: StageKind) -> &Arc<str> {
        match kind {
            StageKind::Frontend => &self.options.names[0],
            StageKind::Transport => &self.options.names[1],
            StageKind::Backend => &self.options.names[2],
        }
    }

    fn context(&self, kind: StageKind, index: usize, instances: usize) -> StageContext {
        StageContext::new(
            Arc::clone(self.name(kind)),
            kind,
            index,
            instances,
            self.shared.stop.clone(),
        )
        .with_config(self.options.config.clone())
    }

    /// Starts the backend threads; the backend is always the last stage.
    pub(crate) fn backends<Y>(
        &mut self,
        backend: Present<Y>,
        input: &Arc<Link<K, Y::Input>>,
    ) -> Result<(), EngineError>
    where
        Y: Backend + 'static,
        Y::Input: Send + 'static,
    {
        let factory: Factory<Y> = backend.factory;
        self.consumers(StageKind::Backend, backend.threads, input, true, || {
            let factory = Arc::clone(&factory);
            move |ctx: &StageContext| BackendStage::new(factory(ctx))
        })
    }

    /// Starts the transport threads, sending to `out`, or as the last stage without it.
    pub(crate) fn transports<X>(
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
        // Ordered, a transport before the backend keeps one output batch per input batch.
        let ordered = self.window.is_some() && out.is_some();
        let factory: Factory<X> = transport.factory;
        let last = out.is_none();
        self.consumers(StageKind::Transport, transport.threads, input, last, || {
            let factory = Arc::clone(&factory);
            let out = out.map(|link| link.producer());
            move |ctx: &StageContext| TransportStage::new(factory(ctx), out, ordered)
        })
    }

    /// Starts `threads` consumer threads reading `input` (reordered in ordered mode, when
    /// `last`); `per_thread()` gives what makes each thread's stage on that thread.
    fn consumers<L, S, M>(
        &mut self,
        kind: StageKind,
        threads: usize,
        input: &Arc<Link<K, L>>,
        last: bool,
        mut per_thread: impl FnMut() -> M,
    ) -> Result<(), EngineError>
    where
        L: Send + 'static,
        S: Consume<K, Input = L> + 'static,
        M: FnOnce(&StageContext) -> S + Send + 'static,
    {
        let mut stage = ConsumerStage {
            name: Arc::clone(self.name(kind)),
            kind,
            input: Arc::clone(input) as Arc<dyn LinkView>,
            handles: Vec::new(),
            stats: Vec::new(),
        };
        // Unordered only: a lent consumer takes batches in any order.
        let lent = !self.options.ordered
            && match kind {
                StageKind::Transport => self.options.inline[0],
                _ => self.options.inline[1],
            };
        let result = (0..threads).try_for_each(|index| {
            let stats = Arc::new(ThreadStats::default());
            let lender = lent.then(|| input.lender());
            let ctx = self.context(kind, index, threads);
            let input = match (&self.window, last) {
                (Some(window), true) => Input::new(Arc::clone(input)).ordered(Arc::clone(window)),
                _ => Input::new(Arc::clone(input)),
            };
            let (make, shared) = (per_thread(), Arc::clone(&self.shared));
            let thread_stats = Arc::clone(&stats);
            let body = move || run_consumer(make, ctx, (input, lender), thread_stats, shared);
            stage
                .handles
                .push(spawn(format!("{}-{index}", stage.name), body)?);
            stage.stats.push(stats);
            Ok(())
        });
        self.consumers.push(stage);
        result
    }

    /// Starts the frontend threads, each making its frontend with `factory` on its thread.
    pub(crate) fn frontends<F>(&mut self, factory: &Factory<F>) -> Result<(), EngineError>
    where
        F: TrackedFrontend<Ticket = K, Item = I> + 'static,
    {
        let threads = self.frontend_threads;
        self.frontend_stats = (0..threads)
            .map(|_| Arc::new(ThreadStats::default()))
            .collect();
        (0..threads).try_for_each(|index| {
            let ctx = self.context(StageKind::Frontend, index, threads);
            let name = format!("{}-{index}", ctx.stage());
            let thread = FrontendThread {
                index,
                factory: Arc::clone(factory),
                link: Arc::clone(&self.first),
                window: self.window.clone(),
                shared: Arc::clone(&self.shared),
                stats: Arc::clone(&self.frontend_stats[index]),
                inline: self.options.inline.contains(&true) && !self.options.ordered,
            };
            spawn(name, move || thread.run(ctx)).map(drop)
        })
    }

    /// The started run: the probes for the live statistics, and what the coordinator needs.
    pub(crate) fn into_run(self, signals: Signals, started: Instant) -> Run {
        let first = Arc::clone(&self.first) as Arc<dyn LinkView>;
        let front: Box<dyn StageProbe> = Box::new(FrontendProbe {
            slots: Arc::clone(&first),
            threads: self.frontend_stats.clone(),
        });
        let mut probes = vec![(
            Arc::clone(&self.options.names[0]),
            StageKind::Frontend,
            front,
        )];
        for stage in &self.consumers {
            let probe: Box<dyn StageProbe> = Box::new(ConsumerProbe {
                threads: stage.stats.clone(),
                input: Arc::clone(&stage.input),
            });
            probes.push((Arc::clone(&stage.name), stage.kind, probe));
        }
        Run {
            shared: self.shared,
            events: signals.events,
            _trigger: signals.trigger,
            _subscription: signals.subscription,
            started,
            options: self.options,
            frontend_threads: self.frontend_threads,
            window: self.window,
            frontend_stats: self.frontend_stats,
            first,
            consumers: self.consumers,
            stats: Arc::new(StatsSource {
                started,
                stages: probes,
                ended: std::sync::OnceLock::new(),
            }),
        }
    }
}

/// Starts a named thread.
pub(crate) fn spawn<R: Send + 'static>(
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
