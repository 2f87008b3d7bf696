//! The pod's driver: notices each bean's end as it happens (each supervisor reports its own
//! end on the pod's command channel, also when it is cancelled), starts ended beans again on
//! request, and on a stop waits for the beans until the stop deadline, then cancels what is
//! left. One method per event.

use std::collections::HashSet;
use std::sync::Arc;

use engine_core::StopSubscription;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
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
    /// The running supervisors, by bean index, to cancel them at the deadline.
    tasks: Vec<Option<AbortHandle>>,
    /// How many supervisors have not reported their end yet.
    live: usize,
    /// Beans asked to start again before their end was noticed.
    respawn_wanted: HashSet<BeanId>,
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
            live: 0,
            respawn_wanted: HashSet::new(),
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
        let task = tokio::spawn(supervise(Arc::clone(&self.shared), id, spec));
        self.tasks[i] = Some(task.abort_handle());
        self.live += 1;
    }

    /// Runs until every bean has ended, and reports.
    pub(crate) async fn run(mut self) -> PodReport {
        // Beans often end together (a pod stop): each wake-up takes every end there is.
        let mut commands = Vec::with_capacity(64);
        while self.live > 0 {
            if self.shared.stop.is_stopped_now() && !self.forced {
                self.on_stop_request();
                self.force().await;
                break;
            }
            if self.shared.stop.is_stopping() && !self.stopping {
                self.on_stop_request();
            }
            let deadline = self.deadline;
            tokio::select! {
                // The pod holds a sender as long as the driver runs: never closed here.
                _ = self.commands.recv_many(&mut commands, 1024) => {
                    for command in commands.drain(..) {
                        self.on_command(command);
                    }
                }
                () = self.shared.wake.notified() => {}
                () = sleep_until(deadline), if deadline.is_some() => {
                    tracing::warn!("the stop wait time is over; cancelling the beans left");
                    self.force().await;
                }
            }
        }
        PodReport {
            beans: self.shared.status(),
            stopped: self.shared.stop.is_stopping(),
            forced: self.forced,
        }
    }

    /// A request from a context or the control API, or a supervisor's end.
    fn on_command(&mut self, command: Command) {
        match command {
            Command::Ended { id, cancelled } => self.on_end(id, cancelled),
            Command::Respawn(id) if !self.stopping => {
                let running = index(id).and_then(|i| self.tasks.get(i)?.as_ref());
                if running.is_some() {
                    // Its end is not noticed yet: started again once it is.
                    self.respawn_wanted.insert(id);
                } else {
                    self.respawn(id);
                }
            }
            Command::Respawn(id) => {
                tracing::info!(bean = %id, "not restarting a bean: the pod is stopping");
            }
        }
    }

    /// A supervisor ended: its bean ended for good, or it was cancelled.
    fn on_end(&mut self, id: BeanId, cancelled: bool) {
        self.live -= 1;
        if let Some(task) = index(id).and_then(|i| self.tasks.get_mut(i)) {
            *task = None;
        }
        if cancelled {
            self.cancelled(id);
            return;
        }
        tracing::debug!(bean = %id, "bean ended for good");
        // Checked for emptiness first: no hashing for each of 10,000 ends.
        let wanted = !self.respawn_wanted.is_empty() && self.respawn_wanted.remove(&id);
        if wanted && !self.stopping {
            self.respawn(id);
        }
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
    /// a sub-task may watch it), then the supervisors are aborted, each reporting its end. A
    /// blocking bean's thread is abandoned: it cannot keep the pod (or the process) alive
    /// past the deadline.
    async fn force(&mut self) {
        self.forced = true;
        self.deadline = None;
        for handle in self.shared.collect_slots(|s| s.stop.clone()) {
            handle.stop_now();
        }
        for task in self.tasks.iter().flatten() {
            task.abort();
        }
        while self.live > 0 {
            match self.commands.recv().await {
                Some(command) => self.on_command(command),
                None => break,
            }
        }
    }

    fn cancelled(&self, id: BeanId) {
        self.shared.update(id, |s| {
            if !s.state.is_final() {
                tracing::warn!(bean = %id, "bean cancelled at the stop deadline");
                s.state = BeanState::Cancelled;
                s.started = None;
                s.run = std::sync::Weak::new();
            }
        });
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
