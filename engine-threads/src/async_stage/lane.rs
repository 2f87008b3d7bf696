//! One engine thread's side of an async stage: it spawns each batch as one task that drives
//! the batch's futures at once (within the stage's permits), and receives the batches back.
//!
//! The futures are the stage's own types, never boxed: an item whose future is ready at its
//! first poll reuses the allocation of the one before, so a light async stage costs little
//! more than a blocking one; only futures that wait get a slot among the running ones.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};
use engine_core::plumbing::{Finished, InFlight, ItemOutcome, Offload};
use engine_core::{StageContext, StageError, StopLevel, StopSubscription};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::adaptive::Aimd;
use super::{AsyncBackend, AsyncTransport};

/// The work of an async stage on one item, whichever kind the stage is.
pub(crate) trait Work: Send + Sync + 'static {
    type Input: Send + 'static;
    type Output: Send + 'static;

    fn call(
        &self,
        item: Self::Input,
        ctx: &StageContext,
    ) -> impl Future<Output = Result<Option<Self::Output>, StageError>> + Send;
}

/// An async transport as [`Work`].
#[derive(Debug)]
pub(crate) struct Transporting<S>(pub(crate) S);

impl<S: AsyncTransport> Work for Transporting<S> {
    type Input = S::Input;
    type Output = S::Output;

    fn call(
        &self,
        item: S::Input,
        ctx: &StageContext,
    ) -> impl Future<Output = Result<Option<S::Output>, StageError>> + Send {
        self.0.transport(item, ctx)
    }
}

/// An async backend as [`Work`].
#[derive(Debug)]
pub(crate) struct Consuming<S>(pub(crate) S);

impl<S: AsyncBackend> Work for Consuming<S> {
    type Input = S::Input;
    type Output = ();

    fn call(
        &self,
        item: S::Input,
        ctx: &StageContext,
    ) -> impl Future<Output = Result<Option<()>, StageError>> + Send {
        let consumed = self.0.consume(item, ctx);
        async move { consumed.await.map(Some) }
    }
}

/// What the threads of one async stage share: the permits that bound its items in flight,
/// the items its threads hold, and, when adaptive, how the limit moves.
#[derive(Debug)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    /// The most futures of the stage at once: fixed, or moved by `adaptive`.
    limit: AtomicUsize,
    /// Items submitted by the stage's threads and not yet back.
    held: AtomicUsize,
    adaptive: Option<Aimd>,
}

impl Gate {
    /// A gate for at most `concurrency` futures at once; if `adaptive`, the limit starts low
    /// and is found between 1 and `concurrency`.
    pub(crate) fn new(concurrency: usize, adaptive: bool) -> Self {
        let start = if adaptive {
            Aimd::start(concurrency)
        } else {
            concurrency
        };
        Self {
            permits: Arc::new(Semaphore::new(start)),
            limit: AtomicUsize::new(start),
            held: AtomicUsize::new(0),
            adaptive: adaptive.then(|| Aimd::new(concurrency)),
        }
    }

    /// Futures running now: the permits out.
    pub(crate) fn running(&self) -> usize {
        self.limit()
            .saturating_sub(self.permits.available_permits())
    }

    /// The most futures allowed at once now.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }
}

impl InFlight for Gate {
    fn running(&self) -> usize {
        Gate::running(self)
    }

    fn limit(&self) -> usize {
        Gate::limit(self)
    }
}

/// What an engine thread's item futures own: the thread's stage value and context, and the
/// stage's gate (one reference count per item).
#[derive(Debug)]
struct Own<W> {
    work: W,
    ctx: StageContext,
    gate: Arc<Gate>,
    timeout: Option<Duration>,
}

/// One engine thread's side of an async stage.
pub(crate) struct Lane<W: Work> {
    own: Arc<Own<W>>,
    handle: Handle,
    tx: Sender<Finished<W::Output>>,
    rx: Receiver<Finished<W::Output>>,
    /// Batches whose items were all done at their first poll, on this thread.
    done: VecDeque<Finished<W::Output>>,
    /// Batches out.
    out: usize,
    cancel: CancellationToken,
    _stop_now: StopSubscription,
}

impl<W: Work> Lane<W> {
    pub(crate) fn new(
        work: W,
        ctx: &StageContext,
        handle: Handle,
        gate: Arc<Gate>,
        timeout: Option<Duration>,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let cancel = CancellationToken::new();
        let on_stop = cancel.clone();
        let _stop_now = ctx.stop().on_stop(move |level| {
            if level >= StopLevel::Now {
                on_stop.cancel();
            }
        });
        Self {
            own: Arc::new(Own {
                work,
                ctx: ctx.clone(),
                gate,
                timeout,
            }),
            handle,
            tx,
            rx,
            done: VecDeque::new(),
            out: 0,
            cancel,
            _stop_now,
        }
    }

    /// The stage's value.
    pub(crate) fn work(&self) -> &W {
        &self.own.work
    }

    /// Runs one item and waits for it: for an engine that calls the stage per item.
    pub(crate) fn call_one(&self, item: W::Input) -> Result<Option<W::Output>, StageError> {
        if Handle::try_current().is_ok() {
            return Err(StageError::msg(
                "an async stage called item by item from inside a runtime; run it in the \
                 threaded engine, which hands it batches",
            ));
        }
        let outcome = self
            .handle
            .block_on(run_item(Arc::clone(&self.own), item, true));
        match outcome {
            ItemOutcome::Done(output) => Ok(Some(output)),
            ItemOutcome::Failed(error) => Err(error),
            _ => Ok(None),
        }
    }
}

impl<W: Work> Offload for Lane<W> {
    type Input = W::Input;
    type Output = W::Output;

    fn capacity(&self) -> usize {
        // The bound is in items (see `has_room`): a batch per item at most.
        self.own.gate.limit().max(1)
    }

    fn has_room(&self) -> bool {
        // Two batches out keep the thread's pipeline full (one runs while the other comes
        // back), whatever the limit; beyond them, the items held stay within the limit.
        self.out < 2 || self.own.gate.held.load(Ordering::Relaxed) < self.own.gate.limit()
    }

    fn in_flight(&self) -> Option<Arc<dyn InFlight>> {
        Some(Arc::clone(&self.own.gate) as Arc<dyn InFlight>)
    }

    /// Polls each item's future once, here, in the runtime's context: an item ready at once
    /// is done without leaving this thread. The futures that wait go to the runtime in one
    /// task, each with a permit.
    fn submit(&mut self, tag: u64, items: Vec<W::Input>) {
        self.out += 1;
        let gate = Arc::clone(&self.own.gate);
        let _context = self.handle.enter();
        let mut cx = Context::from_waker(Waker::noop());
        // A fixed-limit stage takes the permits for the batch in one go where it can, and
        // an item ready at once hands its own to the next: the semaphore is touched once a
        // batch, not once an item, unless futures wait.
        let mut bulk = if gate.adaptive.is_none() {
            let free = gate.permits.available_permits().min(items.len());
            (free > 0)
                .then(|| {
                    Arc::clone(&gate.permits)
                        .try_acquire_many_owned(u32::try_from(free).unwrap_or(u32::MAX))
                        .ok()
                })
                .flatten()
        } else {
            None
        };
        let mut free = bulk.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        let mut outcomes = Vec::with_capacity(items.len());
        let mut waiting = Vec::new();
        let mut spare = None;
        for (i, item) in items.into_iter().enumerate() {
            let covered = free > 0;
            let future = run_item(Arc::clone(&self.own), item, !covered);
            let mut boxed = match spare.take() {
                Some(mut boxed) => {
                    Pin::set(&mut boxed, future);
                    boxed
                }
                None => Box::pin(future),
            };
            match boxed.as_mut().poll(&mut cx) {
                Poll::Ready(outcome) => {
                    outcomes.push(outcome);
                    spare = Some(boxed);
                }
                Poll::Pending => {
                    // Its place, until its future is done (or dropped by a stop now).
                    outcomes.push(ItemOutcome::Dropped);
                    // A covered future that waits takes one of the batch's permits along.
                    let permit = if covered {
                        free -= 1;
                        bulk.as_mut().and_then(|bulk| bulk.split(1))
                    } else {
                        None
                    };
                    waiting.push((i, boxed, permit));
                }
            }
        }
        drop((spare, bulk));
        if waiting.is_empty() {
            self.done.push_back((tag, outcomes));
            return;
        }
        let n = waiting.len();
        gate.held.fetch_add(n, Ordering::Relaxed);
        let reply = Reply {
            tx: self.tx.clone(),
            tag,
            n,
            gate,
            sent: false,
        };
        let cancel = self.cancel.clone();
        let task = async move {
            let mut reply = reply;
            let outcomes = drive(outcomes, waiting, cancel).await;
            reply.send(outcomes);
        };
        // A batch whose items carry trace contexts runs in the span the consumer opened for
        // it (see `engine_core::trace`): the futures' first polls above ran inside it on this
        // thread, and the rest of their work runs inside it on the runtime's, so that the
        // spans they open are its children and what they send on carries its context. An
        // untraced batch pays one load for this (a thread-local read with a hook installed).
        if engine_core::trace::current_batch().is_some() {
            self.handle.spawn(tracing::Instrument::instrument(
                task,
                tracing::Span::current(),
            ));
        } else {
            self.handle.spawn(task);
        }
    }

    fn finished(&mut self, wait: bool) -> Option<Finished<W::Output>> {
        if let Some(done) = self.done.pop_front() {
            self.out -= 1;
            return Some(done);
        }
        if self.out == 0 {
            return None;
        }
        let done = if wait {
            self.rx.recv().ok()
        } else {
            self.rx.try_recv().ok()
        };
        if done.is_some() {
            self.out -= 1;
        }
        done
    }

    fn watch_finished<'a>(&'a self, select: &mut Select<'a>) -> Option<usize> {
        Some(select.recv(&self.rx))
    }
}

/// Sends a batch's outcomes back once; a task dropped before it finished (its runtime shut
/// down) sends its items as failed.
struct Reply<O> {
    tx: Sender<Finished<O>>,
    tag: u64,
    /// The batch's futures that waited.
    n: usize,
    gate: Arc<Gate>,
    sent: bool,
}

impl<O> Reply<O> {
    fn send(&mut self, outcomes: Vec<ItemOutcome<O>>) {
        self.sent = true;
        self.gate.held.fetch_sub(self.n, Ordering::Relaxed);
        let _ = self.tx.send((self.tag, outcomes));
    }
}

impl<O> Drop for Reply<O> {
    fn drop(&mut self) {
        if !self.sent {
            let outcomes = (0..self.n)
                .map(|_| {
                    ItemOutcome::Failed(
                        StageError::msg("the async stage's runtime shut down before the item ran")
                            .fatal(),
                    )
                })
                .collect();
            self.send(outcomes);
        }
    }
}

/// Drives the futures of a batch that waited at their first poll, until each is done; a stop
/// now abandons those still running (dropped). `outcomes` holds the batch's other items, and
/// `Dropped` in the places of those that wait.
async fn drive<O, F>(
    mut outcomes: Vec<ItemOutcome<O>>,
    waiting: Vec<(usize, Pin<Box<F>>, Option<OwnedSemaphorePermit>)>,
    cancel: CancellationToken,
) -> Vec<ItemOutcome<O>>
where
    F: Future<Output = ItemOutcome<O>> + Send,
{
    let mut running: FuturesUnordered<_> = waiting
        .into_iter()
        .map(|(i, future, permit)| async move {
            let outcome = future.await;
            drop(permit);
            (i, outcome)
        })
        .collect();
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            next = running.next() => match next {
                Some((i, outcome)) => outcomes[i] = outcome,
                None => break,
            },
        }
    }
    outcomes
}

/// Runs one item's future, catching its panic and bounding its time. With `acquire`, it first
/// takes a permit of the stage's own (and, adaptive, records its time); otherwise the caller
/// holds one for it.
///
/// The common case, a permit in hand and no timeout to keep nor latency to record, runs the
/// stage's future alone; the others run boxed, so that the future every item builds stays
/// small (an item ready at once costs a move of it, not of the rare cases' state).
async fn run_item<W: Work>(
    own: Arc<Own<W>>,
    item: W::Input,
    acquire: bool,
) -> ItemOutcome<W::Output> {
    if acquire || own.timeout.is_some() || own.gate.adaptive.is_some() {
        return Box::pin(run_item_fully(own, item, acquire)).await;
    }
    // A closure may panic before it returns its future, as well as inside it.
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| own.work.call(item, &own.ctx)))
    {
        Ok(future) => future,
        Err(payload) => return ItemOutcome::Failed(StageError::from_panic(payload)),
    };
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => ItemOutcome::of(result),
        Err(payload) => ItemOutcome::Failed(StageError::from_panic(payload)),
    }
}

/// [`run_item`] with a permit to take, a timeout or an adaptive limit.
async fn run_item_fully<W: Work>(
    own: Arc<Own<W>>,
    item: W::Input,
    acquire: bool,
) -> ItemOutcome<W::Output> {
    let gate = &*own.gate;
    let _held = if acquire {
        // A free permit is taken at once, without spending the task's cooperative budget.
        let permit = match gate.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => gate
                .permits
                .acquire()
                .await
                .expect("the stage's semaphore is never closed"),
        };
        Some(Held(gate, Some(permit)))
    } else {
        None
    };
    let started = gate
        .adaptive
        .as_ref()
        .filter(|_| acquire)
        .map(|_| (Instant::now(), gate.running()));
    // A closure may panic before it returns its future, as well as inside it.
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| own.work.call(item, &own.ctx)))
    {
        Ok(future) => future,
        Err(payload) => return ItemOutcome::Failed(StageError::from_panic(payload)),
    };
    let guarded = AssertUnwindSafe(future).catch_unwind();
    let result = match own.timeout {
        None => Ok(guarded.await),
        // Boxed: a timer is large, and every item's future would carry its room otherwise.
        Some(limit) => Box::pin(tokio::time::timeout(limit, guarded))
            .await
            .map_err(|_| limit),
    };
    let outcome = match result {
        Ok(Ok(result)) => ItemOutcome::of(result),
        Ok(Err(payload)) => ItemOutcome::Failed(StageError::from_panic(payload)),
        Err(limit) => ItemOutcome::Failed(StageError::msg(format!(
            "the item's future did not finish within its timeout of {limit:?}"
        ))),
    };
    if let (Some(aimd), Some((started, running))) = (&gate.adaptive, started) {
        let failed = matches!(outcome, ItemOutcome::Failed(_));
        aimd.record(
            started.elapsed(),
            failed,
            running,
            &gate.limit,
            &gate.permits,
        );
    }
    outcome
}

/// A future's permit: given back when it ends, however it ends (or, after an adaptive cut,
/// removed).
struct Held<'a>(&'a Gate, Option<SemaphorePermit<'a>>);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.1.take()
            && self.0.adaptive.as_ref().is_some_and(Aimd::take_back)
        {
            permit.forget();
        }
    }
}
