//! The simple server scaffold: a bean made of `startup`, `run` and `cleanup`, with a hook for
//! the pod's `"stop"` signal.

use std::fmt;
use std::sync::{Arc, Mutex};

use engine_core::plumbing::lock;

use crate::bean::{Bean, BeanFuture};
use crate::context::BeanContext;
use crate::guard::guarded;

/// A server in three steps, run by the [`Simple`] bean: [`startup`](Self::startup), then
/// [`run`](Self::run), then [`cleanup`](Self::cleanup), which always runs.
///
/// The async steps take `self: Arc<Self>` and the context by value, so that the futures they
/// return own what they use and can be `'static` (clone the `Arc` into the `async move`
/// block). State shared between the steps and [`on_stop`](Self::on_stop) lives in the
/// server behind atomics or a mutex.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// use engine::pod::{BeanContext, BeanFuture, BeanSpec, Pod, PodConfig, Simple, SimpleServer};
///
/// #[derive(Default)]
/// struct Ticker {
///     told_to_stop: AtomicBool,
/// }
///
/// impl SimpleServer for Ticker {
///     fn run(self: Arc<Self>, ctx: BeanContext) -> BeanFuture {
///         Box::pin(async move {
///             tracing::info!(bean = %ctx.id(), "serving until the pod stops");
///             ctx.stopping().await;
///             Ok(())
///         })
///     }
///
///     fn on_stop(&self, _ctx: &BeanContext) {
///         self.told_to_stop.store(true, Ordering::SeqCst);
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("ticker", Simple::new(Ticker::default())));
/// let handle = pod.start();
/// handle.stop();
/// assert!(handle.wait().await.is_success());
/// # });
/// ```
pub trait SimpleServer: Send + Sync + 'static {
    /// Prepares the server; an error skips [`run`](Self::run) (but not
    /// [`cleanup`](Self::cleanup)) and fails the bean. The default does nothing.
    fn startup(self: Arc<Self>, _ctx: BeanContext) -> BeanFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Serves; it should end when [`BeanContext::stopping`] resolves.
    fn run(self: Arc<Self>, ctx: BeanContext) -> BeanFuture;

    /// Releases what the server holds. It runs after every run, whether `startup` or `run`
    /// failed, panicked or ended on a stop, so it must cope with a partial startup. The
    /// default does nothing.
    fn cleanup(self: Arc<Self>, _ctx: BeanContext) -> BeanFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Called when the `"stop"` signal reaches the bean: the pod sends it to every bean on
    /// SIGINT/SIGTERM (or [`PodHandle::stop`](crate::PodHandle::stop)) just before it asks
    /// them to stop. It runs on the sender's task: keep it short (set a flag, send on a
    /// channel). It is only called while the bean runs. The default does nothing.
    fn on_stop(&self, _ctx: &BeanContext) {}
}

/// The bean running a [`SimpleServer`]: startup, run, then cleanup, returning the first error
/// (later errors are logged). A panic in a step counts as that step's error.
pub struct Simple<S> {
    server: Arc<S>,
}

impl<S> fmt::Debug for Simple<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simple").finish_non_exhaustive()
    }
}

impl<S: SimpleServer> Simple<S> {
    /// The bean running `server`.
    pub fn new(server: S) -> Self {
        Self::from_arc(Arc::new(server))
    }

    /// The bean running a server that is shared with other code.
    pub fn from_arc(server: Arc<S>) -> Self {
        Self { server }
    }

    /// The server.
    pub fn server(&self) -> &Arc<S> {
        &self.server
    }
}

/// The context of the current run, shared with the `"stop"` handler. It is emptied when the
/// run ends, which both silences the handler (the pod keeps handlers after a run ends) and
/// breaks the cycle pod -> handler -> context -> pod.
type CurrentRun = Arc<Mutex<Option<BeanContext>>>;

/// Empties the [`CurrentRun`] when the run ends, even when its future is dropped.
struct EndOfRun(CurrentRun);

impl Drop for EndOfRun {
    fn drop(&mut self) {
        lock(&self.0).take();
    }
}

impl<S: SimpleServer> Bean for Simple<S> {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let server = Arc::clone(&self.server);
        Box::pin(async move {
            let current: CurrentRun = Arc::new(Mutex::new(Some(ctx.clone())));
            let _end = EndOfRun(Arc::clone(&current));
            {
                let server = Arc::clone(&server);
                let current = Arc::clone(&current);
                ctx.on_signal("stop", move |_| {
                    let ctx = lock(&current).clone();
                    if let Some(ctx) = ctx {
                        server.on_stop(&ctx);
                    }
                });
            }
            let id = ctx.id();
            let started = guarded(|| Arc::clone(&server).startup(ctx.clone())).await;
            let ran = match &started {
                Ok(()) => guarded(|| Arc::clone(&server).run(ctx.clone())).await,
                Err(_) => Ok(()),
            };
            let cleaned = guarded(|| server.cleanup(ctx)).await;
            let mut first = None;
            for (step, result) in [("startup", started), ("run", ran), ("cleanup", cleaned)] {
                if let Err(error) = result {
                    if first.is_none() {
                        first = Some(error);
                    } else {
                        // The bean reports its first error; later ones would be lost otherwise.
                        let error = format!("{error:#}");
                        tracing::warn!(bean = %id, step, %error, "a later step failed too");
                    }
                }
            }
            first.map_or(Ok(()), Err)
        })
    }
}
