//! One engine thread's side of an async stage: it spawns each batch as one task that drives
//! the batch's futures at once (within the stage's permits), and receives the batches back.

use std::future::Future;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use engine_core::plumbing::{Finished, InFlight, ItemOutcome, Offload};
use engine_core::{StageError, StopLevel, StopSubscription};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::adaptive::Aimd;
use tokio_util::sync::CancellationToken;

/// The work on one item, as a future that owns what it needs.
pub(crate) type ItemFuture<O> =
    Pin<Box<dyn Future<Output = Result<Option<O>, StageError>> + Send + 'static>>;

/// Makes an item's future.
pub(crate) type Call<I, O> = Arc<dyn Fn(I) -> ItemFuture<O> + Send + Sync>;

/// What the threads of one async stage share: the permits that bound its items in flight,
/// the items its threads hold, and, when adaptive, how the limit moves.
#[derive(Debug)]
pub(crate) struct Gate {
    permits: Semaphore,
    /// The most futures of the stage at once: fixed, or moved by `adaptive`.
    limit: AtomicUsize,
    /// Items submitted by the stage's threads and not yet back.
    held: AtomicUsize,
    /// Futures running now (holding a permit).
    running: AtomicUsize,
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
            running: AtomicUsize::new(0),
            adaptive: adaptive.then(|| Aimd::new(concurrency)),
        }
    }

    /// Futures running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
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
pub(crate) struct Lane<I, O> {
    call: Call<I, O>,
    handle: Handle,
    gate: Arc<Gate>,
    timeout: Option<Duration>,
    tx: Sender<Finished<O>>,
    rx: Receiver<Finished<O>>,
    /// Batches out.
    out: usize,
    cancel: CancellationToken,
    _stop_now: StopSubscription,
}

impl<I: Send + 'static, O: Send + 'static> Lane<I, O> {
    pub(crate) fn new(
        call: Call<I, O>,
        handle: Handle,
        gate: Arc<Gate>,
        timeout: Option<Duration>,
        stop: &engine_core::StopHandle,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let cancel = CancellationToken::new();
        let on_stop = cancel.clone();
        let _stop_now = stop.on_stop(move |level| {
            if level >= StopLevel::Now {
                on_stop.cancel();
            }
        });
        Self {
            call,
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

    /// Runs one item and waits for it: for an engine that calls the stage per item.
    pub(crate) fn call_one(&self, item: I) -> Result<Option<O>, StageError> {
        if Handle::try_current().is_ok() {
            return Err(StageError::msg(
                "an async stage called item by item from inside a runtime; run it in the \
                 threaded engine, which hands it batches",
            ));
        }
        let outcome = self
            .handle
            .block_on(run_item((self.call)(item), &self.gate, self.timeout));
        match outcome {
            ItemOutcome::Done(output) => Ok(Some(output)),
            ItemOutcome::Failed(error) => Err(error),
            _ => Ok(None),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Offload for Lane<I, O> {
    type Input = I;
    type Output = O;

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

    fn submit(&mut self, tag: u64, items: Vec<I>) {
        self.out += 1;
        self.gate.held.fetch_add(items.len(), Ordering::Relaxed);
        let reply = Reply {
            tx: self.tx.clone(),
            tag,
            n: items.len(),
            gate: Arc::clone(&self.gate),
            sent: false,
        };
        let futures: Vec<ItemFuture<O>> = items.into_iter().map(|item| (self.call)(item)).collect();
        let batch = drive(
            futures,
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

    fn finished(&mut self, wait: bool) -> Option<Finished<O>> {
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
/// Each item is polled once as it comes: one that is ready at once (a permit free, its
/// future done at its first poll) costs no slot among the running ones.
async fn drive<O: Send + 'static>(
    futures: Vec<ItemFuture<O>>,
    gate: Arc<Gate>,
    timeout: Option<Duration>,
    cancel: CancellationToken,
) -> Vec<ItemOutcome<O>> {
    let gate = &*gate;
    let mut outcomes: Vec<Option<ItemOutcome<O>>> = Vec::with_capacity(futures.len());
    let mut running = FuturesUnordered::new();
    for (i, future) in futures.into_iter().enumerate() {
        let mut item = Box::pin(run_item(future, gate, timeout));
        match poll_fn(|cx| Poll::Ready(item.as_mut().poll(cx))).await {
            Poll::Ready(outcome) => outcomes.push(Some(outcome)),
            Poll::Pending => {
                outcomes.push(None);
                running.push(item.map(move |outcome| (i, outcome)));
            }
        }
    }
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

/// Runs one item's future within a permit, catching its panic and bounding its time.
async fn run_item<O>(
    future: ItemFuture<O>,
    gate: &Gate,
    timeout: Option<Duration>,
) -> ItemOutcome<O> {
    let permit = gate
        .permits
        .acquire()
        .await
        .expect("the stage's semaphore is never closed");
    let running = gate.running.fetch_add(1, Ordering::Relaxed) + 1;
    let _running = Running(gate, Some(permit));
    let started = gate.adaptive.as_ref().map(|_| Instant::now());
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
    if let (Some(aimd), Some(started)) = (&gate.adaptive, started) {
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

/// Counts a future out of the running ones, however it ends, and gives its permit back (or,
/// after an adaptive cut, removes it).
struct Running<'a>(&'a Gate, Option<SemaphorePermit<'a>>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        if let Some(permit) = self.1.take()
            && self.0.adaptive.as_ref().is_some_and(Aimd::take_back)
        {
            permit.forget();
        }
    }
}
