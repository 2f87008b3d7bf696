//! The router: a main process and named workers of different kinds exchanging messages
//! (multipro_lab, pymulproc's queues). Its builder; the running main process is in
//! `router_main.rs`, a worker's side in `router_worker.rs`.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use engine_core::{RestartPolicy, StageError, StopHandle};

use crate::error::ProcError;
use crate::node::{Handlers, MAIN, Node};
use crate::router_main::{MainLoop, Settings};
use crate::router_report::RouterReport;
use crate::router_worker::WorkerMain;

/// Builds and runs a router.
///
/// ```no_run
/// use engine::core::protocol::Address;
/// use engine::proc::{Handlers, Router};
///
/// /// A worker that answers "ping" with "pong".
/// fn ponger(handlers: &mut Handlers) {
///     handlers.on("ping", |node, n: u32| node.send(&Address::Main, "pong", &(n + 1)).map_err(Into::into));
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     engine::proc::init();
///     let report = Router::builder()
///         .worker("ponger", ponger)
///         .on_start(|node| node.send(&Address::named("ponger"), "ping", &1_u32).map_err(Into::into))
///         .on("pong", |node, n: u32| {
///             assert_eq!(n, 2);
///             node.exit();
///             Ok(())
///         })
///         .run()?;
///     assert_eq!(report.main.handled, 1);
///     Ok(())
/// }
/// ```
pub struct RouterBuilder {
    workers: Vec<(String, WorkerMain)>,
    main: Handlers,
    stop: Option<StopHandle>,
    settings: Settings,
}

impl fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field(
                "workers",
                &self.workers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("main", &self.main)
            .finish_non_exhaustive()
    }
}

/// A main process and named worker processes (see [`RouterBuilder`]).
#[derive(Debug)]
pub struct Router;

impl Router {
    /// A router with no workers yet.
    pub fn builder() -> RouterBuilder {
        RouterBuilder {
            workers: Vec::new(),
            main: Handlers::default(),
            stop: None,
            settings: Settings::default(),
        }
    }
}

impl RouterBuilder {
    /// Adds a worker process called `name` running `main` (which registers its handlers).
    /// Names must be unique and not `"main"`.
    #[must_use]
    pub fn worker(mut self, name: impl Into<String>, main: WorkerMain) -> Self {
        self.workers.push((name.into(), main));
        self
    }

    /// Handles messages of `kind` in the main process (see [`Handlers::on`]).
    #[must_use]
    pub fn on<T, F>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        T: serde::de::DeserializeOwned,
        F: FnMut(&mut Node, T) -> Result<(), StageError> + 'static,
    {
        self.main.on(kind, handler);
        self
    }

    /// The main process's periodic action (multipro_lab's `main_action`).
    #[must_use]
    pub fn every<F>(mut self, interval: Duration, action: F) -> Self
    where
        F: FnMut(&mut Node) -> Result<(), StageError> + 'static,
    {
        self.main.every(interval, action);
        self
    }

    /// Runs `action` in main once every worker is connected.
    #[must_use]
    pub fn on_start<F>(mut self, action: F) -> Self
    where
        F: FnMut(&mut Node) -> Result<(), StageError> + 'static,
    {
        self.main.on_start(action);
        self
    }

    /// Stops the router when `stop` is raised (SIGINT/SIGTERM through
    /// [`install_signal_handler`](engine_core::install_signal_handler)): every worker is told
    /// to die, and killed if it has not within the stop timeout.
    #[must_use]
    pub fn stop_handle(mut self, stop: &StopHandle) -> Self {
        self.stop = Some(stop.clone());
        self
    }

    /// How long workers get to exit once told to (default 5 s).
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.settings.stop_timeout = timeout;
        self
    }

    /// When and how often a worker that ended is started again: the restart policy shared
    /// with pools and the pod (default: never, so a crashed worker is reported and stays
    /// gone). A crash (a signal, or an exit code other than 0) is a failure; with
    /// [`Restart::Always`](engine_core::Restart::Always) a clean end restarts too. Past the
    /// policy's limit, the worker stays gone.
    ///
    /// The new process has the same name and code; every other process learns its address
    /// before it can send anything, so messages to the name reach it. Messages sent to the
    /// crashed process and not yet handled are lost: router messages are not tasks (use a
    /// [`Pool`](crate::Pool) for work that must be retried). Nothing restarts once the
    /// router stops or main calls [`Node::exit`].
    #[must_use]
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.settings.restart = policy;
        self
    }

    /// How long a worker may take to start (default 10 s).
    #[must_use]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.settings.start_timeout = timeout;
        self
    }

    /// Starts the workers and runs main's loop until a handler calls [`Node::exit`], the stop
    /// handle is raised, or every worker has ended and main has no periodic action. Then
    /// every worker is told to die, waited for up to the stop timeout, and killed if need be.
    ///
    /// # Errors
    ///
    /// [`ProcError::Spawn`] if a worker cannot start (those started are stopped), or a name
    /// error.
    pub fn run(self) -> Result<RouterReport, ProcError> {
        check_names(&self.workers)?;
        Ok(MainLoop::start(self.workers, self.main, self.stop, self.settings)?.run())
    }
}

/// Worker names must be unique and not `"main"`.
fn check_names(workers: &[(String, WorkerMain)]) -> Result<(), ProcError> {
    let mut names = HashSet::new();
    match workers
        .iter()
        .find(|(name, _)| name == MAIN || !names.insert(name.as_str()))
    {
        Some((name, _)) => Err(ProcError::NoSuchPeer(format!(
            "{name} (worker names must be unique and not \"main\")"
        ))),
        None => Ok(()),
    }
}
