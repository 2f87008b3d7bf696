//! Any `tower::Service` as an async transport, so that `tower::ServiceBuilder` layers
//! (timeout, retry, rate limit, concurrency limit, load shedding) compose with the engine.

use std::fmt;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;

use engine_core::{BoxError, StageContext, StageError};
use tower_service::Service;

use super::{AsyncStage, AsyncTransport};

/// A `tower::Service<A>` as an async transport: each item is a request, its response the
/// output. The service is cloned for each item (as `tower::ServiceExt::oneshot` callers do),
/// waits until it is ready, then is called. Made by [`Async::service`](super::Async::service).
pub struct ServiceStage<S, A>(S, PhantomData<fn(A)>);

impl<S: Clone, A> Clone for ServiceStage<S, A> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), PhantomData)
    }
}

impl<S, A> fmt::Debug for ServiceStage<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceStage")
    }
}

impl<S, A> AsyncTransport for ServiceStage<S, A>
where
    S: Service<A> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    A: Send + 'static,
{
    type Input = A;
    type Output = S::Response;

    fn transport(
        &self,
        item: A,
        _: &StageContext,
    ) -> impl Future<Output = Result<Option<S::Response>, StageError>> + Send {
        let mut service = self.0.clone();
        async move {
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(StageError::from_boxed)?;
            service
                .call(item)
                .await
                .map(Some)
                .map_err(StageError::from_boxed)
        }
    }
}

impl super::Async {
    /// Any `tower::Service<A>` as an async transport (feature `tower`).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::future::{Ready, ready};
    /// use std::task::{Context, Poll};
    /// use engine::threads::{Async, Engine};
    ///
    /// #[derive(Clone)]
    /// struct Double;
    ///
    /// impl tower_service::Service<u64> for Double {
    ///     type Response = u64;
    ///     type Error = Infallible;
    ///     type Future = Ready<Result<u64, Infallible>>;
    ///
    ///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///
    ///     fn call(&mut self, x: u64) -> Self::Future {
    ///         ready(Ok(x * 2))
    ///     }
    /// }
    ///
    /// let report = Engine::builder(0..100_u64)
    ///     .transport(Async::service(Double))
    ///     .backend(|_: u64| {})
    ///     .run()?;
    /// assert_eq!(report.processed(), 100);
    /// # Ok::<(), engine::threads::EngineError>(())
    /// ```
    pub fn service<S, A>(service: S) -> AsyncStage<ServiceStage<S, A>>
    where
        S: Service<A> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
        S::Error: Into<BoxError>,
        A: Send + 'static,
    {
        Self::transport(ServiceStage(service, PhantomData))
    }
}
