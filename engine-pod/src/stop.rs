//! Async views of [`StopHandle`]s, the pod's one stop mechanism: the pod's handle is the
//! root, each bean's handle is a child of it, and each run of a bean has a child of the
//! bean's. Async code waits on a view, which only follows its handle and is never stopped on
//! its own.

use std::sync::{Arc, OnceLock};

use engine_core::{StopHandle, StopSubscription};
use tokio::sync::Notify;

/// A stop handle with an async "stopping" future, for one run of a bean: one subscription to
/// the handle, shared by every clone of the run's context. The waiters wait on a `Notify`
/// inside it (no token of its own to allocate per run).
pub(crate) struct RunStop {
    handle: StopHandle,
    notify: Notify,
    subscription: OnceLock<StopSubscription>,
}

impl RunStop {
    pub(crate) fn new(handle: StopHandle) -> Arc<Self> {
        let run = Arc::new(Self {
            handle,
            notify: Notify::new(),
            subscription: OnceLock::new(),
        });
        let weak = Arc::downgrade(&run);
        // Called at once if the handle is already stopping, which wakes nobody yet: a
        // waiter checks the level after it has enabled its wake-up.
        let subscription = run.handle.on_stop(move |_| {
            if let Some(run) = weak.upgrade() {
                run.notify.notify_waiters();
            }
        });
        let _ = run.subscription.set(subscription);
        run
    }

    pub(crate) fn handle(&self) -> &StopHandle {
        &self.handle
    }

    pub(crate) async fn stopping(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Enabled before the check: a stop after the check wakes this waiter.
            notified.as_mut().enable();
            if self.handle.is_stopping() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.handle.is_stopping()
    }
}

/// Resolves when `handle` is asked to stop (at any level).
pub(crate) async fn stopping(handle: &StopHandle) {
    if handle.is_stopping() {
        return;
    }
    let notify = Arc::new(Notify::new());
    let _subscription = {
        let notify = Arc::clone(&notify);
        handle.on_stop(move |_| notify.notify_one())
    };
    // `notify_one` keeps a permit when nobody waits yet, so no wake-up is lost.
    while !handle.is_stopping() {
        notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn views_follow_their_handle_down_the_tree() {
        let pod = StopHandle::new();
        let bean = pod.child();
        let run = RunStop::new(bean.child());
        assert!(!run.is_stopping());
        let waiter = {
            let run = Arc::clone(&run);
            tokio::spawn(async move { run.stopping().await })
        };
        pod.stop();
        waiter.await.unwrap();
        assert!(run.is_stopping() && bean.is_stopping());
        stopping(&bean).await;
        // A view of a handle stopped before the view existed starts stopped.
        RunStop::new(pod.child()).stopping().await;
    }
}
