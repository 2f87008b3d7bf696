//! Beans: the components a pod runs. An async bean is a tokio task; a blocking bean runs on a
//! thread of its own. Plain async functions and closures are beans, and so is any type
//! implementing [`Bean`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use engine_core::StageError;

use crate::context::BeanContext;

/// What a bean's run returns: `Ok` when it finished its work, an error when it failed.
pub type BeanResult = Result<(), StageError>;

/// The future of one run of a bean.
pub type BeanFuture = Pin<Box<dyn Future<Output = BeanResult> + Send + 'static>>;

/// A component of the pod.
///
/// [`start`](Self::start) is called once per run (again after a restart) with the bean's
/// context, and returns the future the pod drives. A bean should end when
/// [`BeanContext::stopping`] resolves.
///
/// Closures and `async fn`s taking a [`BeanContext`] are beans (see [`bean_fn`]); a blocking
/// body goes through [`blocking`].
pub trait Bean: Send + Sync + 'static {
    /// Starts one run of the bean.
    fn start(&self, ctx: BeanContext) -> BeanFuture;

    /// Whether the bean marks itself ready ([`BeanContext::mark_ready`]): then it shows as
    /// `starting` until it does, [`BeanContext::wait_ready`] waits for that, and `/ready`
    /// answers 503 meanwhile. The built-in servers do, once they have bound their address.
    /// The default is no: the bean counts as ready while it runs.
    fn declares_readiness(&self) -> bool {
        false
    }
}

impl<B: Bean + ?Sized> Bean for Box<B> {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        (**self).start(ctx)
    }

    fn declares_readiness(&self) -> bool {
        (**self).declares_readiness()
    }
}

impl<B: Bean + ?Sized> Bean for Arc<B> {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        (**self).start(ctx)
    }

    fn declares_readiness(&self) -> bool {
        (**self).declares_readiness()
    }
}

/// Turns what a bean function returns into a [`BeanResult`]: `()` or `Result<(), E>` for any
/// error that converts into a [`StageError`].
pub trait IntoBeanResult {
    /// The conversion.
    fn into_bean_result(self) -> BeanResult;
}

impl IntoBeanResult for () {
    fn into_bean_result(self) -> BeanResult {
        Ok(())
    }
}

impl<E: Into<StageError>> IntoBeanResult for Result<(), E> {
    fn into_bean_result(self) -> BeanResult {
        self.map_err(Into::into)
    }
}

/// An async function or closure of the context, as a bean.
pub struct FnBean<F>(F);

impl<F> fmt::Debug for FnBean<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnBean")
    }
}

/// Makes a bean of an async function of its context.
///
/// ```
/// use engine::pod::{BeanContext, bean_fn};
///
/// async fn hello(ctx: BeanContext) {
///     tracing::info!(id = %ctx.id(), "hello world!");
/// }
/// let _bean = bean_fn(hello);
/// ```
pub fn bean_fn<F, Fut>(f: F) -> FnBean<F>
where
    F: Fn(BeanContext) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoBeanResult,
{
    FnBean(f)
}

impl<F, Fut> Bean for FnBean<F>
where
    F: Fn(BeanContext) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoBeanResult,
{
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let fut = (self.0)(ctx);
        Box::pin(async move { fut.await.into_bean_result() })
    }
}

/// A blocking function of the context, run on a thread of its own.
pub struct BlockingBean<F>(Arc<F>);

impl<F> fmt::Debug for BlockingBean<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockingBean")
    }
}

/// Makes a bean of a blocking function, run on its own thread (not on tokio's pool, so it
/// cannot starve async beans). It should return when
/// [`BeanContext::is_stopping`] turns true (or block on
/// [`BeanContext::stop_handle`]`().wait()`); if it does not return by the pod's stop
/// deadline, the pod abandons the thread and ends anyway.
///
/// ```
/// use engine::pod::{BeanContext, blocking};
///
/// let _bean = blocking(|ctx: BeanContext| {
///     while !ctx.is_stopping() {
///         // Work in small steps.
/// #       break;
///     }
/// });
/// ```
pub fn blocking<F, R>(f: F) -> BlockingBean<F>
where
    F: Fn(BeanContext) -> R + Send + Sync + 'static,
    R: IntoBeanResult,
{
    BlockingBean(Arc::new(f))
}

impl<F, R> Bean for BlockingBean<F>
where
    F: Fn(BeanContext) -> R + Send + Sync + 'static,
    R: IntoBeanResult,
{
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let f = Arc::clone(&self.0);
        let name = format!("bean-{}", ctx.id());
        Box::pin(on_thread(name, move || f(ctx).into_bean_result()))
    }
}

/// Runs `f` on a new thread named `name`, its panic caught; resolves to what it returned.
/// Dropping the future abandons the thread, which is then left to end on its own.
pub(crate) fn on_thread<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> impl Future<Output = Result<T, StageError>> + Send + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let _ = tx.send(engine_core::plumbing::catch_panic(f));
    });
    async move {
        spawned.map_err(StageError::new)?;
        rx.await
            .unwrap_or_else(|_| Err(StageError::msg("the thread ended without a result")))
    }
}
