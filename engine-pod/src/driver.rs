//! The pod's driver: notices each bean's end as it happens (a `JoinSet` of supervisors),
//! starts ended beans again on request, and on a stop waits for the beans until the stop
//! deadline, then cancels what is left. One method per event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use engine_core::StopSubscription;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::pod::{BeanSpec, PodReport};
use crate::shared::{Command, PodShared};
use crate::state::{BeanId, BeanState};
use crate::supervise::supervise;

/// The driver's state; [`run`](Self::run) is its loop.
pub(crate) struct Driver {
    shared: Arc<PodShared>,
    tasks: JoinSet<BeanSpec>,
    ids: HashMap<tokio::task::Id, BeanId>,
    /// The specs of beans that ended for good, kept to start them again on request.
    ended: HashMap<BeanId, BeanSpec>,
    /// Beans asked to start again before their end was joined.
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
        beans: usize,
    ) -> Self {
        Self {
            shared,
            tasks: JoinSet::new(),
            // Sized once: growing them while 10,000 beans end moves every spec again and again.
            ids: HashMap::with_capacity(beans),
            ended: HashMap::with_capacity(beans),
            respawn_wanted: HashSet::new(),
            commands,
            deadline: None,
            stopping: false,
            forced: false,
            _subscription: subscription,
        }
    }

    /// Starts the supervisor of bean `id`.
    pub(crate) fn spawn(&mut self, id: BeanId, spec: BeanSpec) {
        let fut = supervise(Arc::clone(&self.shared), id, spec);
        let handle = self.tasks.spawn(fut);
        self.ids.insert(handle.id(), id);
    }

    /// Runs until every bean has ended, and reports.
    pub(crate) async fn run(mut self) -> PodReport {
        while !self.tasks.is_empty() {
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
                Some(joined) = self.tasks.join_next_with_id() => {
                    self.on_end(joined);
                    // Beans often end together (a pod stop): take every end there is before
                    // waiting again.
                    while let Some(joined) = self.tasks.try_join_next_with_id() {
                        self.on_end(joined);
                    }
                }
                Some(command) = self.commands.recv() => self.on_command(command),
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

    /// A supervisor ended: its bean ended for good (or was cancelled).
    fn on_end(&mut self, joined: Result<(tokio::task::Id, BeanSpec), JoinError>) {
        match joined {
            Ok((task, spec)) => {
                let Some(id) = self.ids.remove(&task) else {
                    return;
                };
                tracing::debug!(bean = %id, "bean ended for good");
                if self.respawn_wanted.remove(&id) && !self.stopping {
                    self.respawn(id, spec);
                } else {
                    self.ended.insert(id, spec);
                }
            }
            Err(err) => {
                if let Some(id) = self.ids.remove(&err.id()) {
                    self.cancelled(id);
                }
            }
        }
    }

    /// A request from a context or the control API.
    fn on_command(&mut self, command: Command) {
        match command {
            Command::Respawn(id) if !self.stopping => match self.ended.remove(&id) {
                Some(spec) => self.respawn(id, spec),
                None => {
                    self.respawn_wanted.insert(id);
                }
            },
            Command::Respawn(id) => {
                tracing::info!(bean = %id, "not restarting a bean: the pod is stopping");
            }
        }
    }

    /// The pod's stop handle was stopped: every bean's handle is stopping too; wait for
    /// them until the deadline.
    fn on_stop_request(&mut self) {
        self.stopping = true;
        // Sent by the handle's callback already, unless the pod started stopped.
        self.shared.send_stop_signal();
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

    /// Cancels every bean left: each is stopped now first (a blocking bean or a sub-task may
    /// watch its handle), then the tasks are aborted. A blocking bean's thread is abandoned:
    /// it cannot keep the pod (or the process) alive past the deadline.
    async fn force(&mut self) {
        self.forced = true;
        self.deadline = None;
        let handles: Vec<_> = self.shared.slots().iter().map(|s| s.stop.clone()).collect();
        for handle in handles {
            handle.stop_now();
        }
        self.tasks.abort_all();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            self.on_end(joined);
        }
    }

    fn cancelled(&self, id: BeanId) {
        self.shared.update(id, |s| {
            if !s.state.is_final() {
                tracing::warn!(bean = %id, "bean cancelled at the stop deadline");
                s.state = BeanState::Cancelled;
                s.started = None;
                s.run = None;
            }
        });
    }

    /// Starts an ended bean again, with a new stop handle (its last one may be stopped).
    fn respawn(&mut self, id: BeanId, spec: BeanSpec) {
        tracing::info!(bean = %id, "starting an ended bean again on request");
        let root = self.shared.stop.clone();
        self.shared.update(id, |s| {
            s.stop = root.child();
            s.restarts += 1;
            s.last_error = None;
            s.state = BeanState::Pending;
        });
        self.spawn(id, spec);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
