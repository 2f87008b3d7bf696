//! The async bridge to a threaded engine: a frontend fed from async code ([`feed`]) and a
//! backend that hands items to async code ([`deliver`]), over bounded `flume` channels that
//! block on the engine's side and are awaited on the bean's side. [`Call`] carries a reply
//! with an item, for request and response (an HTTP handler awaiting its item's result).
//!
//! Backpressure reaches the async side: when the engine is slower than the senders, the
//! channel fills, [`Feed::send`] waits, and what is in flight stays within the channel's
//! capacity plus the engine's queues. When every [`Feed`] is dropped, the frontend ends once
//! it has taken what was sent, and the run ends (drains) as with any finite source.
//!
//! With a trace hook installed ([`engine_core::trace`]), an item sent carries the trace
//! context current where it was sent (an HTTP handler's span), and the engine's batch span
//! for it is that span's child. The frontend's wait for an empty feed is waiting for input
//! ([`engine_core::waiting_for_input`]), not work.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use engine_core::plumbing::{Inject, TrackedFrontend, TrackedItem, lock};
use engine_core::trace::{self, TraceParent};
use engine_core::{Backend, StageContext, StageError};
use flume::{RecvTimeoutError, SendTimeoutError};
use tokio::sync::{oneshot, watch};

/// `Clone` (without `T: Clone`: clones share the channel) and `Debug` (how many items are
/// queued) for the bridge's channel ends, each a newtype of one `flume` end.
macro_rules! channel_end {
    ($($name:ident),*) => {$(
        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                Self(self.0.clone())
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("queued", &self.0.len())
                    .finish_non_exhaustive()
            }
        }
    )*};
}

channel_end!(Deliveries);

impl<T> Clone for Feed<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            way_in: Arc::clone(&self.way_in),
        }
    }
}

impl<T> fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("queued", &self.tx.len())
            .finish_non_exhaustive()
    }
}

impl<T> Clone for FeedFrontend<T> {
    fn clone(&self) -> Self {
        self.way_in.frontends.fetch_add(1, Ordering::Relaxed);
        Self {
            rx: self.rx.clone(),
            way_in: Arc::clone(&self.way_in),
        }
    }
}

impl<T> fmt::Debug for FeedFrontend<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedFrontend")
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

/// What a feed's two sides share besides the channel: the way into the running engine that
/// its frontend was given, if its run opted in (`inline_when_idle`), which calls try before
/// the channel; and whether every frontend is gone.
struct WayIn<T> {
    inject: Mutex<Option<Weak<dyn Inject<(), T>>>>,
    /// Set once the last [`FeedFrontend`] is dropped: a call whose item is still in the
    /// channel then gets no answer, and stops waiting for one.
    ended: watch::Sender<bool>,
    /// How many [`FeedFrontend`]s there are.
    frontends: AtomicUsize,
}

impl<T> WayIn<T> {
    fn new() -> Self {
        Self {
            inject: Mutex::new(None),
            ended: watch::Sender::new(false),
            frontends: AtomicUsize::new(1),
        }
    }

    fn get(&self) -> Option<Arc<dyn Inject<(), T>>> {
        lock(&self.inject).as_ref().and_then(Weak::upgrade)
    }
}

impl<T> Drop for FeedFrontend<T> {
    fn drop(&mut self) {
        if self.way_in.frontends.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The channel keeps what it holds while a sender lives: nobody takes it now.
            self.way_in.ended.send_replace(true);
        }
    }
}

/// How often a blocked engine thread looks at its stop handle.
const STOP_POLL: Duration = Duration::from_millis(20);

/// A bounded channel from async code into an engine: the [`Feed`] is the async sending side,
/// the [`FeedFrontend`] the engine's frontend. `capacity` is how many items wait in the
/// channel at most (0: each send waits for the frontend to take its item).
///
/// ```
/// use engine::pod::feed;
/// use engine::threads::Engine;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let (tx, frontend) = feed::<u64>(16);
/// let engine = std::thread::spawn(move || {
///     Engine::builder(frontend).transport(|x: u64| x * 2).backend(|_: u64| {}).run()
/// });
/// for i in 0..100 {
///     tx.send(i).await.expect("the engine takes items");
/// }
/// drop(tx); // The end of the senders ends the run.
/// let report = engine.join().unwrap().expect("the run");
/// assert_eq!(report.processed(), 100);
/// # });
/// ```
pub fn feed<T>(capacity: usize) -> (Feed<T>, FeedFrontend<T>) {
    // The channel carries each item with the trace context of its sender (`None` without a
    // trace hook).
    let (tx, rx) = flume::bounded(capacity);
    let way_in = Arc::new(WayIn::new());
    (
        Feed {
            tx,
            way_in: Arc::clone(&way_in),
        },
        FeedFrontend { rx, way_in },
    )
}

/// A bounded channel from an engine to async code: the [`DeliverBackend`] is the engine's
/// backend, [`Deliveries`] the async receiving side. A full channel blocks the backend, and
/// so the engine.
///
/// ```
/// use engine::pod::deliver;
/// use engine::threads::Engine;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let (backend, results) = deliver::<u64>(16);
/// let engine = std::thread::spawn(move || {
///     Engine::builder(0..100_u64).transport(|x: u64| x + 1).backend(backend).run()
/// });
/// let mut sum = 0;
/// // Ends when the engine's backends are gone: the run ended.
/// while let Some(x) = results.recv().await {
///     sum += x;
/// }
/// assert_eq!(sum, (1..=100).sum::<u64>());
/// engine.join().unwrap().expect("the run");
/// # });
/// ```
pub fn deliver<T>(capacity: usize) -> (DeliverBackend<T>, Deliveries<T>) {
    let (tx, rx) = flume::bounded(capacity);
    (DeliverBackend(Some(tx)), Deliveries(rx))
}

/// The async side of a [`feed`]: sends items into the engine. Cloneable; the run's source
/// ends when every clone is dropped.
pub struct Feed<T> {
    tx: flume::Sender<Fed<T>>,
    way_in: Arc<WayIn<T>>,
}

/// An item in a feed's channel, with the trace context current where it was sent.
struct Fed<T> {
    item: T,
    parent: Option<TraceParent>,
    /// For a call: set when the frontend takes the item, so that its caller knows whether
    /// the item is in the engine or was left in the channel.
    taken: Option<Arc<AtomicBool>>,
}

impl<T> Fed<T> {
    /// `item`, with the context current here if a trace hook is installed: one relaxed load
    /// otherwise.
    #[inline]
    fn here(item: T) -> Self {
        let parent = if trace::enabled() {
            trace::current()
        } else {
            None
        };
        Self {
            item,
            parent,
            taken: None,
        }
    }
}

/// An item the engine no longer takes (its frontend is gone: the run ended), handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine takes no more items")]
pub struct FeedClosed<T>(pub T);

impl<T> Feed<T> {
    /// Sends `item`, waiting while the channel is full (the engine's backpressure).
    ///
    /// With a trace hook installed, the item carries the trace context current where the
    /// send is first polled ([`trace::current`]): the span of the handler awaiting it, or of
    /// the future it is instrumented with ([`tracing::Instrument`]). The engine's span for
    /// the item is that span's child.
    ///
    /// # Errors
    ///
    /// [`FeedClosed`] with the item when the engine's frontend is gone.
    pub async fn send(&self, item: T) -> Result<(), FeedClosed<T>> {
        self.tx
            .send_async(Fed::here(item))
            .await
            .map_err(|e| FeedClosed(e.0.item))
    }

    /// Sends `item` if there is room now.
    ///
    /// # Errors
    ///
    /// [`FeedError::Full`] or [`FeedError::Closed`], with the item.
    pub fn try_send(&self, item: T) -> Result<(), FeedError<T>> {
        self.tx.try_send(Fed::here(item)).map_err(|e| match e {
            flume::TrySendError::Full(fed) => FeedError::Full(fed.item),
            flume::TrySendError::Disconnected(fed) => FeedError::Closed(fed.item),
        })
    }

    /// Items waiting in the channel now.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Whether no item waits in the channel.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Runs `item` through the engine on this thread if its run opted in
    /// (`inline_when_idle`) and it is idle, with nothing queued in the channel before it.
    fn run_here(&self, item: T) -> Result<(), T> {
        if !self.tx.is_empty() {
            return Err(item);
        }
        let Some(way_in) = self.way_in.get() else {
            return Err(item);
        };
        let parent = if trace::enabled() {
            trace::current()
        } else {
            None
        };
        way_in.inject((), item, parent).map_err(|((), item)| item)
    }
}

/// Why [`Feed::try_send`] did not send; the item comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError<T> {
    /// The channel is full.
    #[error("the engine's feed is full")]
    Full(T),
    /// The engine's frontend is gone.
    #[error("the engine takes no more items")]
    Closed(T),
}

/// The engine's side of a [`feed`]: a frontend producing what the async side sends. It ends
/// when every [`Feed`] is dropped and the channel is empty, or at a stop. Cloneable (the
/// channel is multi-consumer), for several frontend threads or a bean's runs.
///
/// It is a [`TrackedFrontend`] (with the empty ticket `()`), so that it can hand each item's
/// trace context to the engine; engines take it as they take any frontend.
pub struct FeedFrontend<T> {
    rx: flume::Receiver<Fed<T>>,
    way_in: Arc<WayIn<T>>,
}

impl<T> TrackedFrontend for FeedFrontend<T> {
    type Item = T;
    type Ticket = ();

    fn produce(&mut self, ctx: &StageContext) -> Result<Option<TrackedItem<Self>>, StageError> {
        loop {
            if ctx.is_stopping() {
                return Ok(None);
            }
            // Blocks, looking at the stop handle now and then: a stop ends the source even
            // while no item comes.
            // Only an empty feed is waited on, and that wait is waiting for input, not work.
            let received = match self.rx.try_recv() {
                Ok(fed) => Ok(fed),
                Err(_) => engine_core::waiting_for_input(|| self.rx.recv_timeout(STOP_POLL)),
            };
            match received {
                Ok(Fed {
                    item,
                    parent,
                    taken,
                }) => {
                    if let Some(taken) = taken {
                        taken.store(true, Ordering::Release);
                    }
                    // The item is handed out next: the engine's frontend takes its context.
                    if trace::enabled() {
                        trace::set_item_parent(parent);
                    }
                    return Ok(Some(((), item)));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    fn stop_grace(&self) -> Duration {
        // A blocked `produce` looks at the stop within this time.
        STOP_POLL * 3
    }

    /// Items carry their sender's context, which the engine continues.
    fn gives_trace_parents(&self) -> bool {
        true
    }

    /// Calls ([`Feed::call`]) try the way in before the channel.
    fn attach_inject(&mut self, inject: Weak<dyn Inject<(), T>>) {
        *lock(&self.way_in.inject) = Some(inject);
    }
}

/// The engine's side of a [`deliver`]: a backend that sends each item to the async side,
/// blocking while the channel is full. An item finds no receiver only when [`Deliveries`] is
/// dropped: then the backend fails (fatally: nobody takes anything any more).
pub struct DeliverBackend<T>(Option<flume::Sender<T>>);

impl<T> Clone for DeliverBackend<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> fmt::Debug for DeliverBackend<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliverBackend").finish_non_exhaustive()
    }
}

/// Why a [`DeliverBackend`] could not hand an item over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    /// The async receiving side is gone.
    #[error("the async receiver of the engine's items is gone")]
    Closed,
    /// The engine was stopped at once while the backend waited for room.
    #[error("stopped while waiting for room in the async channel")]
    Stopped,
}

impl<T> Backend for DeliverBackend<T> {
    type Input = T;

    fn process(&mut self, item: T, ctx: &StageContext) -> Result<(), StageError> {
        let tx = self
            .0
            .as_ref()
            .ok_or_else(|| StageError::new(DeliverError::Closed).fatal())?;
        let mut item = item;
        loop {
            match tx.send_timeout(item, STOP_POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(back)) if !ctx.stop().is_stopped_now() => item = back,
                Err(SendTimeoutError::Timeout(_)) => {
                    return Err(StageError::new(DeliverError::Stopped));
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    return Err(StageError::new(DeliverError::Closed).fatal());
                }
            }
        }
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        // This instance's run is over: let the receivers see the end once every backend is.
        self.0 = None;
    }
}

/// The async side of a [`deliver`]: receives what the engine's backends hand over.
pub struct Deliveries<T>(flume::Receiver<T>);

impl<T> Deliveries<T> {
    /// The next item; `None` once every [`DeliverBackend`] (and clone) is gone or cleaned up
    /// and the channel is empty. A bean whose build closure keeps a backend to clone for each
    /// run keeps the channel open: count what comes instead.
    pub async fn recv(&self) -> Option<T> {
        self.0.recv_async().await.ok()
    }

    /// Items waiting in the channel now.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no item waits in the channel.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An item with the way back to whoever waits for its result: what a [`Feed`] of calls
/// carries ([`Feed::call`]). A transport maps the item ([`map`](Self::map)), a backend sends
/// the result back ([`answer`](Self::answer), [`reply`](Self::reply)). A call dropped on the
/// way (a failed or filtered item, a forced stop) tells its caller so
/// ([`CallError::Dropped`]).
pub struct Call<T, R> {
    item: T,
    reply: oneshot::Sender<R>,
}

impl<T: fmt::Debug, R> fmt::Debug for Call<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("item", &self.item)
            .finish_non_exhaustive()
    }
}

impl<T, R> Call<T, R> {
    /// The item.
    pub fn item(&self) -> &T {
        &self.item
    }

    /// Maps the item, keeping the way back.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Call<U, R> {
        Call {
            item: f(self.item),
            reply: self.reply,
        }
    }

    /// Maps the item with a fallible function; on an error the call is dropped (its caller
    /// sees [`CallError::Dropped`]) and the error returned, for [`engine_core::try_map`].
    ///
    /// # Errors
    ///
    /// What `f` returns.
    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Call<U, R>, E> {
        Ok(Call {
            item: f(self.item)?,
            reply: self.reply,
        })
    }

    /// Sends `result` back; false if the caller stopped waiting.
    pub fn reply(self, result: R) -> bool {
        self.reply.send(result).is_ok()
    }

    /// Whether the caller still waits.
    pub fn is_awaited(&self) -> bool {
        !self.reply.is_closed()
    }
}

impl<R> Call<R, R> {
    /// Sends the item back as the result; false if the caller stopped waiting.
    pub fn answer(self) -> bool {
        self.reply.send(self.item).is_ok()
    }
}

/// Why [`Feed::call`] got no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The engine takes no more items (its frontend is gone).
    #[error("the engine takes no more items")]
    Closed,
    /// The engine dropped the call without a result: the item failed or was filtered out, or
    /// the run was stopped before it got there.
    #[error("the engine dropped the item without a result")]
    Dropped,
}

impl<T, R> Feed<Call<T, R>> {
    /// Sends `item` with a way back and waits for its result (waiting first for room in the
    /// channel, as [`send`](Self::send)). With a trace hook installed, the item carries the
    /// trace context current where the call is first polled, as with `send`.
    ///
    /// If the engine's run opted in with
    /// [`inline_when_idle`](engine_threads::EngineBuilder::inline_when_idle) and finds it
    /// idle (nothing queued, the stage threads asleep), the call runs the stages on this
    /// task's thread when it is first polled, and its answer is ready without waking a
    /// thread. Should every frontend of the feed be gone while the item waits in the channel,
    /// the call ends with [`CallError::Dropped`].
    ///
    /// ```
    /// use engine::pod::{Call, feed};
    /// use engine::threads::Engine;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let (calls, frontend) = feed::<Call<u64, u64>>(8);
    /// let engine = std::thread::spawn(move || {
    ///     Engine::builder(frontend)
    ///         .transport(|call: Call<u64, u64>| call.map(|x| x * x))
    ///         .backend(|call: Call<u64, u64>| { call.answer(); })
    ///         // Light stages: a call that finds them idle runs them on its own thread.
    ///         .inline_when_idle()
    ///         .run()
    /// });
    /// assert_eq!(calls.call(12).await, Ok(144));
    /// drop(calls);
    /// engine.join().unwrap().expect("the run");
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// [`CallError::Closed`] when the engine takes no more items, [`CallError::Dropped`] when
    /// it dropped the item without a result.
    pub async fn call(&self, item: T) -> Result<R, CallError> {
        let (reply, mut result) = oneshot::channel();
        // An engine run with `inline_when_idle`, idle now, runs the call here.
        let Err(call) = self.run_here(Call { item, reply }) else {
            return result.await.map_err(|_| CallError::Dropped);
        };
        let mut ended = self.way_in.ended.subscribe();
        let ended = async move {
            // The guard `wait_for` returns is dropped at once.
            let _ = ended.wait_for(|ended| *ended).await;
        };
        let taken = Arc::new(AtomicBool::new(false));
        let mut fed = Fed::here(call);
        fed.taken = Some(Arc::clone(&taken));
        self.tx
            .send_async(fed)
            .await
            .map_err(|_| CallError::Closed)?;
        tokio::select! {
            biased;
            answer = &mut result => answer.map_err(|_| CallError::Dropped),
            // Every frontend is gone: an item they did not take stays in the channel.
            () = ended => {
                if taken.load(Ordering::Acquire) {
                    // In the engine, which answers or drops it.
                    result.await.map_err(|_| CallError::Dropped)
                } else {
                    Err(CallError::Dropped)
                }
            }
        }
    }
}
