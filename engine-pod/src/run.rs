//! One run of a bean: what every clone of its context shares (one allocation per run), and
//! the run's stop.
//!
//! A run is asked to stop in three ways: the pod stops (one pod-wide wake-up reaches every
//! run), its bean is stopped or restarted (the pod tells the run directly), or someone stops
//! the run's [`StopHandle`]. That handle, a child of the bean's, itself a child of the pod's,
//! is made the first time the run asks for it ([`Run::stop_handle`]): a bean that never
//! hands it on costs no stop handle, and a pod stop does not walk 10,000 of them.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use engine_core::{StopHandle, StopSubscription};
use tokio::sync::Notify;

use crate::shared::PodShared;
use crate::state::BeanId;

/// What the contexts of one run share.
pub(crate) struct Run {
    pub(crate) id: BeanId,
    /// Counts the runs, so that a context of an ended run cannot mark a later one ready.
    pub(crate) run_no: u64,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) core: Arc<str>,
    pub(crate) params: Arc<toml::Table>,
    pub(crate) pod: Arc<PodShared>,
    /// Set when this run alone is asked to end: its bean was stopped or restarted.
    ended: AtomicBool,
    /// Wakes this run's waiters when it alone is asked to end.
    wake: Notify,
    /// The run's stop handle, made when first asked for.
    handle: OnceLock<StopHandle>,
    /// Wakes the waiters when someone stops the handle itself.
    subscription: OnceLock<StopSubscription>,
}

impl Run {
    /// A run of bean `id`; `ended` for a bean already asked to stop.
    pub(crate) fn new(
        pod: Arc<PodShared>,
        id: BeanId,
        run_no: u64,
        names: (Option<Arc<str>>, Arc<str>),
        params: Arc<toml::Table>,
        ended: bool,
    ) -> Self {
        let (label, core) = names;
        Self {
            id,
            run_no,
            label,
            core,
            params,
            pod,
            ended: AtomicBool::new(ended),
            wake: Notify::new(),
            handle: OnceLock::new(),
            subscription: OnceLock::new(),
        }
    }

    /// Whether this run is asked to stop: the stop reached the pod's beans, this run was
    /// asked to end, or its handle was stopped.
    pub(crate) fn is_stopping(&self) -> bool {
        self.pod.stop_reached_beans()
            || self.ended.load(Ordering::Acquire)
            || self.handle.get().is_some_and(StopHandle::is_stopping)
    }

    /// Resolves when this run is asked to stop.
    pub(crate) async fn stopping(&self) {
        loop {
            // Made before the check: a wake-up after the check reaches them.
            let mut pod = pin!(self.pod.beans_stopping.notified());
            let mut own = pin!(self.wake.notified());
            if self.is_stopping() {
                return;
            }
            std::future::poll_fn(|cx| {
                if pod.as_mut().poll(cx).is_ready() || own.as_mut().poll(cx).is_ready() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// Asks this run alone to end (its bean is stopped or restarted).
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        if let Some(handle) = self.handle.get() {
            handle.stop();
        }
        self.wake.notify_waiters();
    }

    /// The run's stop handle, a child of the bean's; made on the first call.
    pub(crate) fn stop_handle(self: &Arc<Self>) -> &StopHandle {
        let handle = self
            .handle
            .get_or_init(|| self.pod.bean_stop_handle(self.id).child());
        self.subscription.get_or_init(|| {
            let run = Arc::downgrade(self);
            handle.on_stop(move |_| {
                if let Some(run) = run.upgrade() {
                    run.wake.notify_waiters();
                }
            })
        });
        // Checked after the handle is in place: `end` either saw it or set the flag first.
        if self.ended.load(Ordering::Acquire) {
            handle.stop();
        }
        handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PodConfig;

    fn pod() -> Arc<PodShared> {
        let (commands, _) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(PodShared::new(
            PodConfig::default(),
            Vec::new(),
            StopHandle::new(),
            commands,
        ))
    }

    fn run(pod: &Arc<PodShared>, ended: bool) -> Arc<Run> {
        let names = (None, Arc::from("test"));
        let params = Arc::new(toml::Table::new());
        Arc::new(Run::new(
            Arc::clone(pod),
            BeanId(1),
            1,
            names,
            params,
            ended,
        ))
    }

    #[tokio::test]
    async fn a_run_hears_its_own_end_and_the_pods_stop() {
        let pod = pod();
        let one = run(&pod, false);
        let waiter = tokio::spawn({
            let one = Arc::clone(&one);
            async move { one.stopping().await }
        });
        one.end();
        waiter.await.unwrap();
        assert!(one.is_stopping());
        // A run made for a bean already stopped starts stopping.
        run(&pod, true).stopping().await;

        let two = run(&pod, false);
        let waiter = tokio::spawn({
            let two = Arc::clone(&two);
            async move { two.stopping().await }
        });
        pod.reach_beans();
        waiter.await.unwrap();
        assert!(two.is_stopping());
    }
}
