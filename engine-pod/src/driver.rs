//! The pod's driver: starts ended beans again on request, and on a stop waits for the beans
//! until the stop deadline, then cancels what is left. One method per event.
//!
//! Each bean's end is recorded by its own supervisor in its slot at once (the status shows
//! it, restarts follow the policy); the driver only hears when the last supervisor ended, so
//! 10,000 beans ending wake it once, not 10,000 times.

use std::sync::Arc;

use engine_core::StopSubscription;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shared::{Command, PodShared, index};
use crate::spec::BeanSpec;
use crate::state::{BeanId, BeanState, PodReport};
use crate::supervise::supervise;

/// The driver's state; [`run`](Self::run) is its loop.
pub(crate) struct Driver {
    shared: Arc<PodShared>,
    /// Every bean's spec, by bean index: each supervisor runs a clone.
    specs: Vec<BeanSpec>,
    /// The latest supervisor of each bean, by bean index, to cancel it at the deadline.
    tasks: Vec<Option<JoinHandle<()>>>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// When the stop started: beans still running then are cancelled at the deadline.
    deadline: Option<Instant>,
    stopping: bool,
    forced: bool,
    /// Keeps the pod's "stop" signal and wake-up registered on its stop handle.
    _subscription: StopSubscription,
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<PodShared>,
        commands: mpsc::UnboundedReceiver<Command>,
        subscription: StopSubscription,
        specs: Vec<BeanSpec>,
    ) -> Self {
        Self {
            shared,
            tasks: std::iter::repeat_with(|| None).take(specs.len()).collect(),
            specs,
            commands,
            deadline: None,
            stopping: false,
            forced: false,
            _subscription: subscription,
        }
    }

    /// Starts every bean's supervisor, in id order.
    pub(crate) fn spawn_all(&mut self) {
        for id in (1..=self.specs.len() as u64).map(BeanId) {
            self.spawn(id);
        }
    }

    /// Starts the supervisor of bean `id`.
    fn spawn(&mut self, id: BeanId) {
        let Some(i) = index(id).filter(|i| *i < self.specs.len()) else {
            return;
        };
        let spec = self.specs[i].clone();
        self.tasks[i] = Some(tokio::spawn(supervise(Arc::clone(&self.shared), id, spec)));
    }

    /// Runs until every bean has ended, and reports.
    pub(crate) async fn run(mut self) -> PodReport {
        let shared = Arc::clone(&self.shared);
        while shared.supervisors_live() {
            if shared.stop.is_stopped_now() && !self.forced {
                self.on_stop_request();
                self.force().await;
                break;
            }
            if shared.stop.is_stopping() && !self.stopping {
                self.on_stop_request();
            }
            let deadline = self.deadline;
            tokio::select! {
                // The pod holds a sender as long as the driver runs: never closed here.
                Some(command) = self.commands.recv() => self.on_command(command).await,
                // The stop level rose, or the last supervisor ended (a permit is kept if it
                // happens between two waits).
                () = shared.wake.notified() => {}
                () = sleep_until(deadline), if deadline.is_some() => {
                    tracing::warn!("the stop wait time is over; cancelling the beans left");
                    self.force().await;
                }
            }
        }
        PodReport {
            beans: shared.status(),
            stopped: shared.stop.is_stopping(),
            forced: self.forced,
        }
    }

    /// A request from a context or the control API.
    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Respawn(id) if !self.stopping => self.on_respawn(id).await,
            Command::Respawn(id) => {
                tracing::info!(bean = %id, "not restarting a bean: the pod is stopping");
            }
        }
    }

    /// Starts bean `id` again if it (still) ended for good.
    async fn on_respawn(&mut self, id: BeanId) {
        let ended = self.shared.update(id, |s| s.state.is_final());
        let Some(i) = index(id).filter(|_| ended == Some(true)) else {
            // Started again by an earlier request, or no such bean.
            return;
        };
        if let Some(task) = self.tasks[i].take() {
            // Its state is final: the supervisor is returning, if it has not returned yet.
            let _ = task.await;
        }
        self.respawn(id);
    }

    /// The pod's stop handle was stopped: the stop reaches every bean; wait for them until
    /// the deadline.
    fn on_stop_request(&mut self) {
        self.stopping = true;
        // Sent by the handle's callback already, unless the pod started stopped.
        self.shared.send_stop_signal();
        self.shared.reach_beans();
        self.shared.update_all(|s| {
            if !s.state.is_final() {
                s.state = BeanState::Stopping;
            }
        });
        self.deadline = self
            .shared
            .config
            .stop_wait_time
            .and_then(|wait| Instant::now().checked_add(wait));
    }

    /// Cancels every bean left: each bean's handle is stopped now first (a blocking bean or
    /// a sub-task may watch it), then the supervisors are aborted, each marking its bean
    /// cancelled as it is dropped. A blocking bean's thread is abandoned: it cannot keep the
    /// pod (or the process) alive past the deadline.
    async fn force(&mut self) {
        self.forced = true;
        self.deadline = None;
        for handle in self.shared.collect_slots(|s| s.stop.clone()) {
            handle.stop_now();
        }
        for task in self.tasks.iter().flatten() {
            task.abort();
        }
        for task in self.tasks.iter_mut().filter_map(Option::take) {
            // Cancelled, or ended just before: either way it is gone.
            let _ = task.await;
        }
    }

    /// Starts an ended bean again, with a new stop handle (its last one may be stopped).
    fn respawn(&mut self, id: BeanId) {
        tracing::info!(bean = %id, "starting an ended bean again on request");
        self.shared.update(id, |s| {
            s.stop = None;
            s.stop_requested = false;
            s.restarts += 1;
            s.last_error = None;
            s.state = BeanState::Pending;
        });
        self.spawn(id);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
