//! Driving user code that makes and runs bean futures with its panics caught: the
//! supervisor's runs and the built-in beans' callbacks.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use engine_core::StageError;

use crate::bean::{BeanFuture, BeanResult};

/// Calls user code that returns a bean future and drives that future, turning a panic in the
/// call or in any poll into an error, so that an adapter can go on (run `cleanup`, count a
/// failed item) instead of losing its task.
pub(crate) fn guarded(call: impl FnOnce() -> BeanFuture) -> Guarded {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(fut) => Guarded(Some(fut)),
        Err(payload) => {
            let err = StageError::from_panic(payload);
            Guarded(Some(Box::pin(std::future::ready(Err(err)))))
        }
    }
}

/// The future of [`guarded`].
pub(crate) struct Guarded(Option<BeanFuture>);

impl Future for Guarded {
    type Output = BeanResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BeanResult> {
        let Some(fut) = self.0.as_mut() else {
            // Polled again after it was ready: a caller bug, answered without a panic.
            return Poll::Ready(Err(StageError::msg(
                "a bean future was polled after it ended",
            )));
        };
        // Unwind safety is the user's contract, as with `std::thread::spawn`: after a panic
        // the future is dropped and never polled again.
        let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => {
                self.0 = None;
                Poll::Ready(result)
            }
            Err(payload) => {
                self.0 = None;
                Poll::Ready(Err(StageError::from_panic(payload)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_errors() {
        let err = guarded(|| panic!("in the call")).await.unwrap_err();
        assert_eq!(err.to_string(), "panicked: in the call");
        let err = guarded(|| Box::pin(async { panic!("in the future") }))
            .await
            .unwrap_err();
        assert!(err.is_panic());
        assert!(guarded(|| Box::pin(async { Ok(()) })).await.is_ok());
    }
}
