//! What every bean's context shares: the slots of the beans (state, stop handles), the signal
//! handlers, and the pod's stop handle, with the operations on them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use engine_core::StopHandle;
use engine_core::plumbing::lock;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::PodConfig;
use crate::run::{BeansStop, Run};
use crate::state::{BeanId, BeanState, BeanStatus, ControlError, SignalEvent, Target};

pub(crate) type Handler = Arc<dyn Fn(&SignalEvent) + Send + Sync>;

/// What the pod's driver is asked to do from outside its loop.
#[derive(Debug)]
pub(crate) enum Command {
    /// Start again a bean that ended for good.
    Respawn(BeanId),
}

/// One bean's entry in the pod.
pub(crate) struct Slot {
    pub(crate) id: BeanId,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) core: Arc<str>,
    pub(crate) state: BeanState,
    pub(crate) declares_readiness: bool,
    pub(crate) restarts: u32,
    pub(crate) started: Option<Instant>,
    pub(crate) address: Option<SocketAddr>,
    pub(crate) last_error: Option<String>,
    /// The bean's stop handle, a child of the pod's, made when first asked for (by a run's
    /// handle, a stop of the bean, a restart's wait): most beans never need one.
    pub(crate) stop: Option<StopHandle>,
    /// Set when the bean alone was asked to stop.
    pub(crate) stop_requested: bool,
    /// The current run, while one goes on.
    pub(crate) run: Weak<Run>,
    /// Counts the runs, so that a context of an ended run cannot mark a later one ready.
    pub(crate) run_no: u64,
    /// Set by a restart request: the run's end starts the next run at once.
    pub(crate) restart_requested: bool,
}

impl Slot {
    /// A bean not started yet.
    pub(crate) fn new(
        id: BeanId,
        label: Option<Arc<str>>,
        core: Arc<str>,
        declares_readiness: bool,
    ) -> Self {
        Self {
            id,
            label,
            core,
            state: BeanState::Pending,
            declares_readiness,
            restarts: 0,
            started: None,
            address: None,
            last_error: None,
            stop: None,
            stop_requested: false,
            run: Weak::new(),
            run_no: 0,
            restart_requested: false,
        }
    }

    /// Whether the bean alone was asked to stop (the pod's stop is asked separately).
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop_requested || self.stop.as_ref().is_some_and(StopHandle::is_stopping)
    }

    /// The bean's stop handle, made a child of `pod` if it has none yet.
    pub(crate) fn stop_handle(&mut self, pod: &StopHandle) -> &StopHandle {
        let requested = self.stop_requested;
        self.stop.get_or_insert_with(|| {
            let stop = pod.child();
            if requested {
                // A new handle has no callbacks yet: stopping it under the lock calls none.
                stop.stop();
            }
            stop
        })
    }

    pub(crate) fn status(&self) -> BeanStatus {
        let uptime = match (
            self.state.is_up() || self.state == BeanState::Stopping,
            self.started,
        ) {
            (true, Some(t)) => t.elapsed(),
            _ => Duration::ZERO,
        };
        BeanStatus {
            id: self.id,
            label: self.label.as_deref().map(str::to_owned),
            core: Arc::clone(&self.core),
            state: self.state,
            declares_readiness: self.declares_readiness,
            restarts: self.restarts,
            uptime,
            uptime_secs: uptime.as_secs_f64(),
            address: self.address,
            last_error: self.last_error.clone(),
        }
    }

    fn matches(&self, target: &Target) -> bool {
        match target {
            Target::All => true,
            Target::Label(label) => self.label.as_deref() == Some(label.as_str()),
            Target::Id(id) => self.id == *id,
        }
    }
}

/// What every bean's context shares.
pub(crate) struct PodShared {
    /// The pod's stop handle: the root of every bean's, and a child of the handle given to
    /// `Pod::with_stop_handle`. Declared first so that it is dropped before the beans'
    /// handles: a child whose parent is gone leaves at once, instead of scanning the
    /// parent's list of children (10,000 beans would make that quadratic).
    pub(crate) stop: StopHandle,
    pub(crate) config: PodConfig,
    pub(crate) slots: Mutex<Vec<Slot>>,
    handlers: Mutex<HashMap<BeanId, Vec<(String, Handler)>>>,
    /// Bumped after a change of a slot while someone waits in `wait_until`.
    changed: watch::Sender<u64>,
    /// How many wait in `wait_until`: without waiters, a change tells nobody (a watch
    /// notification takes eight locks, which 10,000 beans starting and stopping feel).
    waiting: AtomicUsize,
    /// Wakes the driver when the pod's stop level rises, or the last supervisor ended.
    pub(crate) wake: Notify,
    /// How many supervisors have not ended yet. Each counts itself down as it ends, and
    /// only the last one wakes the driver: 10,000 beans ending wake it once.
    live: AtomicUsize,
    /// Whether the `"stop"` signal went out.
    stop_sent: AtomicBool,
    /// The pod's stop as the beans' runs hear it: one flag for the pod, not one stop handle
    /// per bean.
    pub(crate) beans: BeansStop,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// The runtime the pod was started on (none only in unit tests that make this by hand).
    pub(crate) runtime: Option<tokio::runtime::Handle>,
}

impl fmt::Debug for PodShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodShared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PodShared {
    pub(crate) fn new(
        config: PodConfig,
        slots: Vec<Slot>,
        stop: StopHandle,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Self {
            stop,
            config,
            slots: Mutex::new(slots),
            handlers: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            live: AtomicUsize::new(0),
            stop_sent: AtomicBool::new(false),
            beans: BeansStop::new(),
            commands,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    pub(crate) fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        lock(&self.slots)
    }

    fn handlers(&self) -> MutexGuard<'_, HashMap<BeanId, Vec<(String, Handler)>>> {
        lock(&self.handlers)
    }

    /// Lets the pod's stop reach every bean's run, once: after the `"stop"` signal, so that
    /// the handlers hear it while their bean still runs.
    pub(crate) fn reach_beans(&self) {
        if !self.beans.reach() {
            return;
        }
        // Woken outside the lock: the woken runs' ends take it.
        for run in self.collect_slots(|s| s.run.upgrade()) {
            run.wake();
        }
    }

    /// Bean `id`'s stop handle (made now if it has none): a child of the pod's.
    pub(crate) fn bean_stop_handle(&self, id: BeanId) -> StopHandle {
        self.update(id, |s| s.stop_handle(&self.stop).clone())
            .unwrap_or_else(|| self.stop.child())
    }

    pub(crate) fn add_handler(&self, id: BeanId, name: &str, handler: Handler) {
        self.handlers()
            .entry(id)
            .or_default()
            .push((name.to_owned(), handler));
    }

    pub(crate) fn clear_handlers(&self, id: BeanId) {
        self.handlers().remove(&id);
    }

    pub(crate) fn status(&self) -> Vec<BeanStatus> {
        self.slots().iter().map(Slot::status).collect()
    }

    pub(crate) fn bean(&self, id: BeanId) -> Option<BeanStatus> {
        let slots = self.slots();
        index(id).and_then(|i| slots.get(i)).map(Slot::status)
    }

    /// Changes bean `id` (slots are stored in id order, id 1 first) and tells the waiters.
    pub(crate) fn update<T>(&self, id: BeanId, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        let (out, waiters) = {
            let mut slots = self.slots();
            let out = index(id).and_then(|i| slots.get_mut(i)).map(f);
            (out, self.waiters())
        };
        self.tell(waiters);
        out
    }

    /// Changes every bean and tells the waiters.
    pub(crate) fn update_all(&self, mut f: impl FnMut(&mut Slot)) {
        let waiters = {
            let mut slots = self.slots();
            slots.iter_mut().for_each(&mut f);
            self.waiters()
        };
        self.tell(waiters);
    }

    /// Whether anyone waits in `wait_until`; read with the slots locked. A waiter counts
    /// itself before it first locks the slots to check them, so a change made after its
    /// check sees it counted (the lock orders the two), and a change made before is what
    /// its check sees.
    fn waiters(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    fn tell(&self, waiters: bool) {
        if waiters {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Waits until `check` over the slots gives an answer.
    pub(crate) async fn wait_until<T>(&self, mut check: impl FnMut(&[Slot]) -> Option<T>) -> T {
        // Subscribed before the first check: a change told after it is seen.
        let mut changed = self.changed.subscribe();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(&self.waiting);
        loop {
            if let Some(answer) = check(&self.slots()) {
                return answer;
            }
            // The sender lives as long as `self`: this cannot fail while we wait.
            let _ = changed.changed().await;
        }
    }

    /// Counts a supervisor starting.
    pub(crate) fn supervisor_started(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a supervisor ending; the last one wakes the driver.
    pub(crate) fn supervisor_ended(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake.notify_one();
        }
    }

    /// Whether a supervisor has not ended yet.
    pub(crate) fn supervisors_live(&self) -> bool {
        self.live.load(Ordering::Acquire) > 0
    }

    /// What `f` takes from each slot, to act on after the lock is released.
    pub(crate) fn collect_slots<T>(&self, f: impl FnMut(&Slot) -> Option<T>) -> Vec<T> {
        self.slots().iter().filter_map(f).collect()
    }

    /// The ids of the beans `target` names.
    pub(crate) fn ids(&self, target: &Target) -> Vec<BeanId> {
        self.collect_slots(|s| s.matches(target).then_some(s.id))
    }

    /// Calls the handlers of `name` registered by the beans `target` names; returns how many
    /// handlers ran. A panicking handler is logged and does not stop the others.
    pub(crate) fn dispatch(&self, target: &Target, event: &SignalEvent) -> usize {
        if self.handlers().is_empty() {
            // No handler anywhere (a pod of 10,000 plain beans stopping): no list of ids.
            return 0;
        }
        let ids = self.ids(target);
        let handlers: Vec<(BeanId, Handler)> = {
            let all = self.handlers();
            ids.iter()
                .flat_map(|id| {
                    all.get(id)
                        .into_iter()
                        .flatten()
                        .filter(|(n, _)| *n == event.name)
                        .map(|(_, h)| (*id, Arc::clone(h)))
                })
                .collect()
        };
        for (id, handler) in &handlers {
            let call = std::panic::AssertUnwindSafe(|| handler(event));
            if let Err(payload) = std::panic::catch_unwind(call) {
                tracing::error!(
                    bean = %id,
                    signal = %event.name,
                    error = %engine_core::StageError::from_panic(payload),
                    "a signal handler panicked"
                );
            }
        }
        handlers.len()
    }

    /// Sends the pod's `"stop"` signal to every bean, once.
    pub(crate) fn send_stop_signal(&self) {
        if self.stop_sent.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("stopping the pod");
        let event = SignalEvent {
            name: "stop".to_owned(),
            from: None,
            payload: serde_json::Value::Null,
        };
        self.dispatch(&Target::All, &event);
    }

    /// Marks run `run_no` of bean `id` ready (and listening on `address`, if given).
    pub(crate) fn mark_ready(&self, id: BeanId, run_no: u64, address: Option<SocketAddr>) {
        self.update(id, |s| {
            if s.run_no != run_no {
                return;
            }
            if address.is_some() {
                s.address = address;
            }
            if s.state.is_up() {
                s.state = BeanState::Ready;
            }
        });
    }

    /// Asks bean `id` to stop for good: its own stop handle (if it has one) and its run, not
    /// the pod.
    pub(crate) fn stop_bean(&self, id: BeanId) -> Result<(), ControlError> {
        let (stop, run) = self
            .update(id, |s| {
                if s.state.is_final() {
                    return Err(ControlError::NotRunning { id, state: s.state });
                }
                s.restart_requested = false;
                s.stop_requested = true;
                if s.state != BeanState::Pending {
                    s.state = BeanState::Stopping;
                }
                Ok((s.stop.clone(), s.run.upgrade()))
            })
            .unwrap_or(Err(ControlError::NoSuchBean(id)))?;
        // Outside the lock: the handle's callbacks may look at the pod.
        if let Some(stop) = stop {
            stop.stop();
        }
        if let Some(run) = run {
            run.end();
        }
        Ok(())
    }

    /// Ends the current run of bean `id` and starts it again at once; a bean that ended for
    /// good is started again by the driver.
    pub(crate) fn restart_bean(&self, id: BeanId) -> Result<(), ControlError> {
        if self.stop.is_stopping() {
            return Err(ControlError::PodStopping);
        }
        let run = self
            .update(id, |s| {
                if s.stop_requested() && !s.state.is_final() {
                    return Err(ControlError::NotRunning { id, state: s.state });
                }
                if s.state.is_final() {
                    return Ok(None);
                }
                s.restart_requested = true;
                Ok(Some(s.run.upgrade()))
            })
            .unwrap_or(Err(ControlError::NoSuchBean(id)))?;
        match run {
            // Outside the lock: the handle's callbacks may look at the pod.
            Some(Some(run)) => run.end(),
            // Not started yet, or waiting for its restart: it starts soon anyway.
            Some(None) => {}
            // The driver lives as long as a bean does; a pod that ended has no one to start.
            None => self
                .commands
                .send(Command::Respawn(id))
                .map_err(|_| ControlError::PodStopping)?,
        }
        Ok(())
    }
}

/// Counts a waiter of `wait_until` while it lives (also when its future is dropped).
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The position of bean `id` in the slots.
pub(crate) fn index(id: BeanId) -> Option<usize> {
    usize::try_from(id.0).ok()?.checked_sub(1)
}
