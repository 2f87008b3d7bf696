//! One engine thread's side of an async stage: it spawns each batch as one task that drives
//! the batch's futures at once (within the stage's permits), and receives the batches back.
//!
//! The futures are the stage's own types, never boxed: an item whose future is ready at its
//! first poll reuses the allocation of the one before, so a light async stage costs little
//! more than a blocking one; only futures that wait get a slot among the running ones.

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use engine_core::plumbing::{Finished, InFlight, ItemOutcome, Offload};
use engine_core::{StageContext, StageError, StopLevel, StopSubscription};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, SemaphorePermit};
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
    permits: Semaphore,
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
            permits: Semaphore::new(start),
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

/// One engine thread's side of an async stage.
pub(crate) struct Lane<W: Work> {
    work: Arc<W>,
    ctx: Arc<StageContext>,
    handle: Handle,
    gate: Arc<Gate>,
    timeout: Option<Duration>,
    tx: Sender<Finished<W::Output>>,
    rx: Receiver<Finished<W::Output>>,
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
            work: Arc::new(work),
            ctx: Arc::new(ctx.clone()),
            handle,
            gate,
            timeout,
            tx,
            rx,
            out: 0,
            cancel,
            _stop_now,
        }
    }

    /// The stage's value.
    pub(crate) fn work(&self) -> &W {
        &self.work
    }

    /// Runs one item and waits for it: for an engine that calls the stage per item.
    pub(crate) fn call_one(&self, item: W::Input) -> Result<Option<W::Output>, StageError> {
        if Handle::try_current().is_ok() {
            return Err(StageError::msg(
                "an async stage called item by item from inside a runtime; run it in the \
                 threaded engine, which hands it batches",
            ));
        }
        let future = self.work.call(item, &self.ctx);
        let (outcome, _permit) =
            self.handle
                .block_on(run_item(future, &self.gate, self.timeout, None));
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
        self.gate.limit().max(1)
    }

    fn has_room(&self) -> bool {
        // Two batches out keep the thread's pipeline full (one runs while the other comes
        // back), whatever the limit; beyond them, the items held stay within the limit.
        self.out < 2 || self.gate.held.load(Ordering::Relaxed) < self.gate.limit()
    }

    fn in_flight(&self) -> Option<Arc<dyn InFlight>> {
        Some(Arc::clone(&self.gate) as Arc<dyn InFlight>)
    }

    fn submit(&mut self, tag: u64, items: Vec<W::Input>) {
        self.out += 1;
        self.gate.held.fetch_add(items.len(), Ordering::Relaxed);
        let reply = Reply {
            tx: self.tx.clone(),
            tag,
            n: items.len(),
            gate: Arc::clone(&self.gate),
            sent: false,
        };
        let batch = drive(
            Arc::clone(&self.work),
            Arc::clone(&self.ctx),
            items,
            Arc::clone(&self.gate),
            self.timeout,
            self.cancel.clone(),
        );
        self.handle.spawn(async move {
            let mut reply = reply;
            let outcomes = batch.await;
            reply.send(outcomes);
        });
    }

    fn finished(&mut self, wait: bool) -> Option<Finished<W::Output>> {
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
}

/// Sends a batch's outcomes back once; a task dropped before it finished (its runtime shut
/// down) sends its items as failed.
struct Reply<O> {
    tx: Sender<Finished<O>>,
    tag: u64,
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

/// Drives a batch's futures at once; a stop now abandons those still running (dropped).
///
/// Each item is polled once as it comes, in a box that the item before left free if its
/// future was ready at once; only a future that waits keeps its box and joins the running
/// ones. A fixed-limit stage takes the permits for the batch's items in one go where it can,
/// and an item ready at once hands its permit to the next: the stage's semaphore is touched
/// per batch, not per item, unless futures wait.
async fn drive<W: Work>(
    work: Arc<W>,
    ctx: Arc<StageContext>,
    items: Vec<W::Input>,
    gate: Arc<Gate>,
    timeout: Option<Duration>,
    cancel: CancellationToken,
) -> Vec<ItemOutcome<W::Output>> {
    let (work, ctx, gate) = (&*work, &*ctx, &*gate);
    let mut outcomes: Vec<Option<ItemOutcome<W::Output>>> = Vec::with_capacity(items.len());
    let mut running = FuturesUnordered::new();
    let mut spare = None;
    let mut bulk = if gate.adaptive.is_none() {
        let free = gate.permits.available_permits().min(items.len());
        (free > 0)
            .then(|| gate.permits.try_acquire_many(free as u32).ok())
            .flatten()
    } else {
        None
    };
    for (i, item) in items.into_iter().enumerate() {
        let given = bulk.as_mut().and_then(|bulk| bulk.split(1));
        let future = run_item(work.call(item, ctx), gate, timeout, given);
        let mut boxed = match spare.take() {
            Some(mut boxed) => {
                Pin::set(&mut boxed, future);
                boxed
            }
            None => Box::pin(future),
        };
        match poll_fn(|cx| Poll::Ready(boxed.as_mut().poll(cx))).await {
            Poll::Ready((outcome, permit)) => {
                outcomes.push(Some(outcome));
                if let (Some(bulk), Some(permit)) = (bulk.as_mut(), permit) {
                    bulk.merge(permit);
                }
                spare = Some(boxed);
            }
            Poll::Pending => {
                outcomes.push(None);
                running.push(boxed.map(move |(outcome, _permit)| (i, outcome)));
            }
        }
    }
    drop((spare, bulk));
    if !running.is_empty() {
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                biased;
                () = &mut cancelled => break,
                next = running.next() => match next {
                    Some((i, outcome)) => outcomes[i] = Some(outcome),
                    None => break,
                },
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(ItemOutcome::Dropped))
        .collect()
}

/// Runs one item's future within a permit (the one `given`, or one of the stage's), catching
/// its panic and bounding its time. Gives the permit back with the outcome, for the next item
/// (an adaptive stage's goes back to the stage, which may remove it).
async fn run_item<'g, O>(
    future: impl Future<Output = Result<Option<O>, StageError>>,
    gate: &'g Gate,
    timeout: Option<Duration>,
    given: Option<SemaphorePermit<'g>>,
) -> (ItemOutcome<O>, Option<SemaphorePermit<'g>>) {
    // A free permit is taken at once, without spending the task's cooperative budget (which
    // would make every item after the 128th of a batch wait for the task's next turn).
    let permit = match given {
        Some(permit) => permit,
        None => match gate.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => gate
                .permits
                .acquire()
                .await
                .expect("the stage's semaphore is never closed"),
        },
    };
    let mut held = Held(gate, Some(permit));
    let started = gate
        .adaptive
        .as_ref()
        .map(|_| (Instant::now(), gate.running()));
    let guarded = AssertUnwindSafe(future).catch_unwind();
    let result = match timeout {
        None => Ok(guarded.await),
        Some(limit) => tokio::time::timeout(limit, guarded)
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
    match (&gate.adaptive, started) {
        (Some(aimd), Some((started, running))) => {
            let failed = matches!(outcome, ItemOutcome::Failed(_));
            aimd.record(
                started.elapsed(),
                failed,
                running,
                &gate.limit,
                &gate.permits,
            );
            (outcome, None)
        }
        _ => (outcome, held.1.take()),
    }
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
