//! Closures returning futures, as async stages: made by [`Async::map`](super::Async::map) and
//! its kin.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use engine_core::{BoxError, StageContext, StageError};

use super::{AsyncBackend, AsyncTransport};

macro_rules! async_closure {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<F, A>(F, PhantomData<fn(A)>);

        impl<F, A> $name<F, A> {
            pub(crate) fn new(f: F) -> Self {
                Self(f, PhantomData)
            }
        }

        impl<F: Clone, A> Clone for $name<F, A> {
            fn clone(&self) -> Self {
                Self(self.0.clone(), PhantomData)
            }
        }

        impl<F, A> fmt::Debug for $name<F, A> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}

async_closure!(
    /// An async transport from a closure `Fn(A) -> impl Future<Output = B>`.
    AsyncMap
);
async_closure!(
    /// An async transport from a closure `Fn(A) -> impl Future<Output = Option<B>>`.
    AsyncFilterMap
);
async_closure!(
    /// An async transport from a closure `Fn(A) -> impl Future<Output = Result<B, E>>`.
    AsyncTryMap
);
async_closure!(
    /// An async backend from a closure `Fn(A) -> impl Future<Output = ()>`.
    AsyncForEach
);
async_closure!(
    /// An async backend from a closure `Fn(A) -> impl Future<Output = Result<(), E>>`.
    AsyncTryForEach
);

impl<A, B, F, Fut> AsyncTransport for AsyncMap<F, A>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = B> + Send + 'static,
    A: Send + 'static,
    B: Send + 'static,
{
    type Input = A;
    type Output = B;

    fn transport(
        &self,
        item: A,
        _: &StageContext,
    ) -> impl Future<Output = Result<Option<B>, StageError>> + Send {
        let future = (self.0)(item);
        async move { Ok(Some(future.await)) }
    }
}

impl<A, B, F, Fut> AsyncTransport for AsyncFilterMap<F, A>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<B>> + Send + 'static,
    A: Send + 'static,
    B: Send + 'static,
{
    type Input = A;
    type Output = B;

    fn transport(
        &self,
        item: A,
        _: &StageContext,
    ) -> impl Future<Output = Result<Option<B>, StageError>> + Send {
        let future = (self.0)(item);
        async move { Ok(future.await) }
    }
}

impl<A, B, E, F, Fut> AsyncTransport for AsyncTryMap<F, A>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<B, E>> + Send + 'static,
    E: Into<BoxError>,
    A: Send + 'static,
    B: Send + 'static,
{
    type Input = A;
    type Output = B;

    fn transport(
        &self,
        item: A,
        _: &StageContext,
    ) -> impl Future<Output = Result<Option<B>, StageError>> + Send {
        let future = (self.0)(item);
        async move { future.await.map(Some).map_err(StageError::from_boxed) }
    }
}

impl<A, F, Fut> AsyncBackend for AsyncForEach<F, A>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
    A: Send + 'static,
{
    type Input = A;

    fn consume(
        &self,
        item: A,
        _: &StageContext,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        let future = (self.0)(item);
        async move {
            future.await;
            Ok(())
        }
    }
}

impl<A, E, F, Fut> AsyncBackend for AsyncTryForEach<F, A>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
    A: Send + 'static,
{
    type Input = A;

    fn consume(
        &self,
        item: A,
        _: &StageContext,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        let future = (self.0)(item);
        async move { future.await.map_err(StageError::from_boxed) }
    }
}
