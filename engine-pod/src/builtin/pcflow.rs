//! The producer / consumers flow: one producer feeding a bounded queue that several consumers
//! share, each item consumed exactly once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::bean::{Bean, BeanFuture};
use crate::config::ConfigError;
use crate::context::BeanContext;
use crate::guard::guarded;
use crate::state::BeanId;
use crate::stop::RunStop;

/// The most consumers a flow may have: more would only be a typo (and tasks, and memory).
const MAX_CONSUMERS: usize = 65_536;

/// A producer and its consumer, run by the [`PcFlow`] bean.
///
/// As in [`SimpleServer`](crate::SimpleServer), the methods take `self: Arc<Self>` and
/// return `'static` futures; state lives in the flow behind atomics or mutexes.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use engine::pod::{BeanContext, BeanFuture, BeanSpec, Flow, PcFlow, Pod, PodConfig, Producer};
///
/// #[derive(Default)]
/// struct Sum(AtomicU64);
///
/// impl Flow for Sum {
///     type Item = u64;
///
///     fn produce(self: Arc<Self>, _ctx: BeanContext, out: Producer<u64>) -> BeanFuture {
///         Box::pin(async move {
///             for n in 1..=100 {
///                 if out.send(n).await.is_err() {
///                     break; // The flow is stopping.
///                 }
///             }
///             Ok(())
///         })
///     }
///
///     fn consume(self: Arc<Self>, item: u64, _ctx: BeanContext) -> BeanFuture {
///         Box::pin(async move {
///             self.0.fetch_add(item, Ordering::Relaxed);
///             Ok(())
///         })
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let flow = PcFlow::new(Sum::default());
/// let (sum, stats) = (Arc::clone(flow.flow()), flow.stats());
/// let mut params = toml::Table::new();
/// params.insert("consumer_num".into(), 4.into());
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("sum", flow).params(params));
/// assert!(pod.start().wait().await.is_success());
/// assert_eq!(sum.0.load(Ordering::Relaxed), 5050);
/// assert_eq!(stats.consumed(), 100);
/// # });
/// ```
pub trait Flow: Send + Sync + 'static {
    /// What the producer makes and the consumers take.
    type Item: Send + 'static;

    /// Produces items with [`Producer::send`], and ends when there are no more or when a
    /// send fails (the flow is stopping). An error fails the bean (after the consumers have
    /// taken what is queued).
    fn produce(self: Arc<Self>, ctx: BeanContext, out: Producer<Self::Item>) -> BeanFuture;

    /// Consumes one item. An error (or a panic) is logged and counted in
    /// [`FlowStats::failed`]; the flow goes on.
    fn consume(self: Arc<Self>, item: Self::Item, ctx: BeanContext) -> BeanFuture;
}

/// The parameters of a [`PcFlow`], read from the bean's config at each start.
///
/// ```toml
/// [[beans]]
/// core = "my_flow"
/// consumer_num = 10   # default 1
/// queue_size = 100    # default 16
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PcFlowParams {
    /// How many consumers take items at once: from 1 to 65536.
    pub consumer_num: usize,
    /// How many produced items may wait for a consumer (at least 1); a send waits while the
    /// queue is full.
    pub queue_size: usize,
}

impl Default for PcFlowParams {
    fn default() -> Self {
        Self {
            consumer_num: 1,
            queue_size: 16,
        }
    }
}

impl PcFlowParams {
    /// Checks the bounds, naming the bad key.
    fn check(&self, core: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Params {
            core: core.to_owned(),
            key: key.to_owned(),
            message,
        };
        if !(1..=MAX_CONSUMERS).contains(&self.consumer_num) {
            return Err(bad(
                "consumer_num",
                format!(
                    "must be from 1 to {MAX_CONSUMERS}, not {}",
                    self.consumer_num
                ),
            ));
        }
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.queue_size) {
            return Err(bad(
                "queue_size",
                format!(
                    "must be from 1 to {}, not {}",
                    Semaphore::MAX_PERMITS,
                    self.queue_size
                ),
            ));
        }
        Ok(())
    }
}

/// The counters of a flow.
#[derive(Debug, Default)]
struct Counters {
    produced: AtomicU64,
    consumed: AtomicU64,
    failed: AtomicU64,
}

/// A live view of a flow's counters, kept across the bean's runs.
#[derive(Clone, Default)]
pub struct FlowStats {
    counters: Arc<Counters>,
}

impl fmt::Debug for FlowStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowStats")
            .field("produced", &self.produced())
            .field("consumed", &self.consumed())
            .field("failed", &self.failed())
            .finish()
    }
}

impl FlowStats {
    /// Items the producer sent into the queue.
    pub fn produced(&self) -> u64 {
        self.counters.produced.load(Ordering::Relaxed)
    }

    /// Items consumed successfully.
    pub fn consumed(&self) -> u64 {
        self.counters.consumed.load(Ordering::Relaxed)
    }

    /// Items whose consume returned an error or panicked.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }
}

/// A send into a flow that is stopping, or whose producer has ended; it hands the item back.
#[derive(PartialEq, Eq, Clone, Copy, thiserror::Error)]
#[error("the flow is closed")]
pub struct FlowSendError<T>(pub T);

impl<T> fmt::Debug for FlowSendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlowSendError { .. }")
    }
}

/// The producer's end of a flow's queue.
pub struct Producer<T> {
    tx: mpsc::Sender<T>,
    closed: Arc<RunStop>,
    counters: Arc<Counters>,
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            closed: self.closed.clone(),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<T: Send> Producer<T> {
    /// Queues an item for the consumers, waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// [`FlowSendError`] with the item, once the bean is asked to stop or the flow's
    /// [`produce`](Flow::produce) has returned (a clone of the producer kept beyond it can
    /// send no more). An item sent successfully is consumed.
    pub async fn send(&self, item: T) -> Result<(), FlowSendError<T>> {
        if self.closed.is_stopping() {
            return Err(FlowSendError(item));
        }
        tokio::select! {
            biased;
            () = self.closed.stopping() => Err(FlowSendError(item)),
            permit = self.tx.reserve() => match permit {
                Ok(permit) => {
                    permit.send(item);
                    self.counters.produced.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(_) => Err(FlowSendError(item)),
            },
        }
    }
}

impl<T> Producer<T> {
    /// Whether sends fail now (the flow is stopping or its producer has ended).
    pub fn is_closed(&self) -> bool {
        self.closed.is_stopping()
    }

    /// Resolves when sends start failing.
    pub async fn closed(&self) {
        self.closed.stopping().await;
    }
}

/// The bean running a [`Flow`] with [`PcFlowParams`]: one producer, `consumer_num` consumers
/// sharing a queue of `queue_size` items.
///
/// The bean ends when the producer has ended and the consumers have taken every queued item.
/// On a stop, the producer's sends fail (and [`BeanContext::stopping`] resolves for it), the
/// consumers take what is already queued, and the bean ends. Its result is the producer's;
/// consume errors are logged and counted in [`stats`](Self::stats).
pub struct PcFlow<F> {
    flow: Arc<F>,
    stats: FlowStats,
}

impl<F> fmt::Debug for PcFlow<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcFlow")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: Flow> PcFlow<F> {
    /// The bean running `flow`.
    pub fn new(flow: F) -> Self {
        Self::from_arc(Arc::new(flow))
    }

    /// The bean running a flow that is shared with other code.
    pub fn from_arc(flow: Arc<F>) -> Self {
        Self {
            flow,
            stats: FlowStats::default(),
        }
    }

    /// The flow.
    pub fn flow(&self) -> &Arc<F> {
        &self.flow
    }

    /// A live view of the counters (produced, consumed, failed items, over every run).
    pub fn stats(&self) -> FlowStats {
        self.stats.clone()
    }
}

impl<F: Flow> Bean for PcFlow<F> {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let flow = Arc::clone(&self.flow);
        let counters = Arc::clone(&self.stats.counters);
        Box::pin(async move {
            let params: PcFlowParams = ctx.params()?;
            params.check(ctx.core())?;
            let (tx, rx) = mpsc::channel(params.queue_size);
            let queue = Arc::new(Mutex::new(rx));
            // Stopped with the bean or when the producer ends (a child of the run's stop
            // handle): sends fail from then on, and the consumers close the queue and drain it.
            let closed = RunStop::new(ctx.stop_handle().child());
            let mut consumers = JoinSet::new();
            for _ in 0..params.consumer_num {
                consumers.spawn(consume_all(
                    Arc::clone(&flow),
                    Arc::clone(&queue),
                    closed.clone(),
                    Arc::clone(&counters),
                    ctx.clone(),
                ));
            }
            let producer = Producer {
                tx,
                closed: closed.clone(),
                counters,
            };
            let produced = guarded(|| flow.produce(ctx.clone(), producer)).await;
            closed.handle().stop();
            while let Some(joined) = consumers.join_next().await {
                if let Err(error) = joined {
                    // Consume panics are caught, so this is a cancellation or a bug.
                    tracing::error!(bean = %ctx.id(), %error, "a consumer task ended abnormally");
                }
            }
            produced
        })
    }
}

/// One consumer: takes items until the queue is closed and empty.
async fn consume_all<F: Flow>(
    flow: Arc<F>,
    queue: Arc<Mutex<mpsc::Receiver<F::Item>>>,
    closed: Arc<RunStop>,
    counters: Arc<Counters>,
    ctx: BeanContext,
) {
    let id = ctx.id();
    loop {
        let next = {
            let mut rx = queue.lock().await;
            tokio::select! {
                biased;
                item = rx.recv() => item,
                () = closed.stopping() => {
                    // Closing refuses new sends but keeps what is queued; `recv` then returns
                    // the queued items (and those of sends already under way), then `None`.
                    rx.close();
                    rx.recv().await
                }
            }
        };
        let Some(item) = next else { break };
        match guarded(|| Arc::clone(&flow).consume(item, ctx.clone())).await {
            Ok(()) => {
                counters.consumed.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                log_failure(id, &error);
            }
        }
    }
}

fn log_failure(id: BeanId, error: &engine_core::StageError) {
    tracing::warn!(bean = %id, error = %format!("{error:#}"), "consume failed");
}
