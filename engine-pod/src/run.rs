//! One run of a bean: what every clone of its context holds of it (one allocation per run),
//! and the run's stop.
//!
//! A run is asked to stop in three ways: the pod's stop reaches the beans ([`BeansStop`], one
//! flag for the pod, and the pod wakes each run), its bean is stopped or restarted (the pod
//! tells the run directly, [`Run::end`]), or someone stops the run's [`StopHandle`]. That handle, a
//! child of the bean's, itself a child of the pod's, is made the first time it is asked for
//! ([`Run::stop_handle`]): a bean that never hands it on costs no stop handle, and a pod stop
//! does not walk 10,000 of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use engine_core::{StopHandle, StopSubscription};
use tokio::sync::Notify;

use crate::state::BeanId;

/// The pod's stop as the beans' runs hear it: set (once) after the `"stop"` signal went out,
/// so that the handlers hear it while their bean still runs.
pub(crate) struct BeansStop {
    reached: AtomicBool,
}

impl BeansStop {
    pub(crate) fn new() -> Self {
        Self {
            reached: AtomicBool::new(false),
        }
    }

    /// Whether the pod's stop has reached the beans.
    pub(crate) fn reached(&self) -> bool {
        self.reached.load(Ordering::Acquire)
    }

    /// Lets the pod's stop reach the beans; true for the call that did. The caller then wakes
    /// every run ([`Run::wake`]): a run made later sees the flag.
    pub(crate) fn reach(&self) -> bool {
        !self.reached.swap(true, Ordering::AcqRel)
    }
}

/// What the contexts of one run share.
pub(crate) struct Run {
    pub(crate) id: BeanId,
    /// Counts the runs, so that a context of an ended run cannot mark a later one ready.
    pub(crate) run_no: u64,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) core: Arc<str>,
    pub(crate) params: Arc<toml::Table>,
    /// Set when this run alone is asked to end: its bean was stopped or restarted.
    ended: AtomicBool,
    /// Wakes this run's waiters: one wait list per run, as a cancellation token has, not one
    /// for the pod that 10,000 runs would contend for.
    wake: Notify,
    /// The run's stop handle, made when first asked for.
    handle: OnceLock<StopHandle>,
    /// Wakes the waiters when someone stops the handle itself.
    subscription: OnceLock<StopSubscription>,
}

impl Run {
    /// A run of bean `id`; `ended` for a bean already asked to stop.
    pub(crate) fn new(
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
            ended: AtomicBool::new(ended),
            wake: Notify::new(),
            handle: OnceLock::new(),
            subscription: OnceLock::new(),
        }
    }

    /// Whether this run is asked to stop: the pod's stop reached the beans, this run was
    /// asked to end, or its handle was stopped.
    pub(crate) fn is_stopping(&self, pod: &BeansStop) -> bool {
        pod.reached()
            || self.ended.load(Ordering::Acquire)
            || self.handle.get().is_some_and(StopHandle::is_stopping)
    }

    /// Resolves when this run is asked to stop.
    pub(crate) async fn stopping(&self, pod: &BeansStop) {
        loop {
            // Made before the check: a wake-up after the check reaches it.
            let woken = self.wake.notified();
            if self.is_stopping(pod) {
                return;
            }
            woken.await;
        }
    }

    /// Asks this run alone to end (its bean is stopped or restarted).
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        if let Some(handle) = self.handle.get() {
            handle.stop();
        }
        self.wake();
    }

    /// Wakes whoever waits in [`stopping`](Self::stopping), to look again.
    pub(crate) fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// The run's stop handle, a child of the bean's (`bean` gives that); made on the first
    /// call.
    pub(crate) fn stop_handle(self: &Arc<Self>, bean: impl FnOnce() -> StopHandle) -> &StopHandle {
        let handle = self.handle.get_or_init(|| bean().child());
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

    fn run(ended: bool) -> Arc<Run> {
        let names = (None, Arc::from("test"));
        let params = Arc::new(toml::Table::new());
        Arc::new(Run::new(BeanId(1), 1, names, params, ended))
    }

    /// Waits on `run` in a task; returns it.
    fn waiter(run: &Arc<Run>, pod: &Arc<BeansStop>) -> tokio::task::JoinHandle<()> {
        let (run, pod) = (Arc::clone(run), Arc::clone(pod));
        tokio::spawn(async move { run.stopping(&pod).await })
    }

    #[tokio::test]
    async fn a_run_hears_its_end_the_pods_stop_and_its_handles() {
        let pod = Arc::new(BeansStop::new());
        let one = run(false);
        let waiting = waiter(&one, &pod);
        one.end();
        waiting.await.unwrap();
        assert!(one.is_stopping(&pod));
        // A run made for a bean already stopped starts stopping, and so does its handle.
        let stopped = run(true);
        stopped.stopping(&pod).await;
        assert!(stopped.stop_handle(StopHandle::new).is_stopping());

        // Someone stopping the run's handle itself.
        let bean = StopHandle::new();
        let two = run(false);
        let waiting = waiter(&two, &pod);
        two.stop_handle(|| bean.clone()).stop();
        waiting.await.unwrap();
        assert!(!bean.is_stopping(), "the bean's handle is the parent");

        let three = run(false);
        let handle = three.stop_handle(|| bean.clone()).clone();
        let waiting = waiter(&three, &pod);
        assert!(pod.reach() && !pod.reach(), "once");
        three.wake();
        waiting.await.unwrap();
        assert!(three.is_stopping(&pod) && !handle.is_stopping());
        // Ending a run stops its handle, and only its.
        three.end();
        assert!(handle.is_stopping() && !bean.is_stopping());
    }
}
