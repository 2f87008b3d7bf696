//! The router: a main process and named workers of different kinds exchanging messages
//! (multipro_lab, pymulproc's queues).

use std::collections::HashMap;
use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, after, never, select, unbounded};
use engine_core::protocol::{Address, Envelope, Frame, Kind, to_bytes};
use engine_core::{RestartDecision, RestartPolicy, RestartTracker, StageError, StopHandle};

use crate::boot::{self, Spawned, address_at, offset_of};
use crate::codes::{EXIT_BOOT_FAILED, EXIT_CHANNEL_FAILED, INIT};
use crate::error::{ExitHow, ProcError, SpawnError};
use crate::node::{Handlers, MAIN, Node, NodeStats, WorkerInit};
use crate::wire::{self, Packet, RecvError, send_envelope, send_frame};

/// A router worker's code: registers its handlers (and periodic action) on `Handlers`. A
/// plain `fn`, or a closure that captures nothing: it runs in the worker process.
pub type WorkerMain = fn(&mut Handlers);

const KIND: &str = "router";
const STATS: &str = "engine.stats";

/// How one worker of a router ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Its name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// How it ended.
    pub exit: ExitHow,
    /// Whether it ended before the router told it to (a crash, a kill, its own `exit`).
    pub ended_early: bool,
    /// How many times it was started again after a crash (see [`RouterBuilder::restart`]);
    /// `pid`, `exit` and `stats` are those of its last process.
    pub restarts: u32,
    /// Its counters, if it sent them before it ended.
    pub stats: Option<NodeStats>,
}

/// What a router run did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterReport {
    /// The main process's counters.
    pub main: NodeStats,
    /// Every worker, in the order they were added.
    pub workers: Vec<WorkerReport>,
}

impl RouterReport {
    /// The report of the worker called `name`.
    pub fn worker(&self, name: &str) -> Option<&WorkerReport> {
        self.workers.iter().find(|w| w.name == name)
    }
}

/// Builds and runs a router.
///
/// ```no_run
/// use engine_core::protocol::Address;
/// use engine_proc::{Handlers, Router};
///
/// /// A worker that answers "ping" with "pong".
/// fn ponger(handlers: &mut Handlers) {
///     handlers.on("ping", |node, n: u32| node.send(&Address::Main, "pong", &(n + 1)).map_err(Into::into));
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     engine_proc::init();
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
    stop_timeout: Duration,
    start_timeout: Duration,
    restart: RestartPolicy,
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
            stop_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
            restart: RestartPolicy::default(),
        }
    }
}

/// What the main loop hears.
enum Event {
    Packet(usize, Packet),
    Exited(usize, ExitHow),
    Wake,
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
        self.stop_timeout = timeout;
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
        self.restart = policy;
        self
    }

    /// How long a worker may take to start (default 10 s).
    #[must_use]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
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
        let mut names: HashMap<&str, ()> = HashMap::new();
        for (name, _) in &self.workers {
            if name == MAIN || names.insert(name.as_str(), ()).is_some() {
                return Err(ProcError::NoSuchPeer(format!(
                    "{name} (worker names must be unique and not \"main\")"
                )));
            }
        }
        let RouterBuilder {
            workers: wanted,
            mut main,
            stop,
            stop_timeout,
            start_timeout,
            restart: policy,
        } = self;
        let (events_tx, events) = unbounded();
        let mut workers: Vec<(String, Spawned)> = Vec::new();
        let stop_all = |workers: &[(String, Spawned)]| {
            for (_, w) in workers {
                w.kill_and_wait();
            }
        };
        for (name, entry) in &wanted {
            let spawned = match start_worker(name, *entry, start_timeout) {
                Ok(spawned) => spawned,
                Err(error) => {
                    stop_all(&workers);
                    return Err(error);
                }
            };
            workers.push((name.clone(), spawned));
        }
        let peers: Vec<(String, ipc_channel::ipc::IpcSender<Packet>)> = workers
            .iter()
            .map(|(name, w)| (name.clone(), w.tx.clone()))
            .collect();
        for (_, w) in &workers {
            if w.tx.send(Packet::Peers(peers.clone())).is_err() {
                stop_all(&workers);
                return Err(ProcError::Closed);
            }
        }
        // One thread per worker forwards what it sends and says when it ends.
        let mut reports = Vec::new();
        let mut forwarders = Vec::new();
        let mut lives = Vec::new();
        for (index, (name, w)) in workers.into_iter().enumerate() {
            reports.push(WorkerReport {
                name,
                pid: w.pid,
                exit: ExitHow::Unknown,
                ended_early: false,
                restarts: 0,
                stats: None,
            });
            lives.push(w.live());
            let events = events_tx.clone();
            forwarders.push(thread::spawn(move || forward(index, &w, &events)));
        }
        let _subscription = stop.as_ref().map(|stop| {
            let events = events_tx.clone();
            stop.on_stop(move |_| {
                let _ = events.send(Event::Wake);
            })
        });
        let stop = stop.unwrap_or_default();

        let mut node = Node::new(Address::Main, peers.into_iter().collect());
        let mut running = reports.len();
        let mut trackers: Vec<RestartTracker> = reports
            .iter()
            .map(|_| {
                let mut tracker = policy.tracker();
                tracker.started(Instant::now());
                tracker
            })
            .collect();
        // Restarts waiting for their backoff: when, which worker, and how it ended.
        let mut due: Vec<(Instant, usize, ExitHow)> = Vec::new();
        main.start(&mut node);
        let mut last_tick = Instant::now();
        while !node.exit
            && !stop.is_stopping()
            && (running > 0 || main.next_tick(last_tick).is_some())
        {
            let tick = main
                .next_tick(last_tick)
                .map(|at| after(at.saturating_duration_since(Instant::now())));
            let tick = tick.unwrap_or_else(never);
            let restart_at = due
                .iter()
                .map(|(at, _, _)| *at)
                .min()
                .map_or_else(never, |at| {
                    after(at.saturating_duration_since(Instant::now()))
                });
            select! {
                recv(events) -> event => match event {
                    Ok(Event::Packet(index, packet)) => receive(&mut main, &mut node, &mut reports[index], packet),
                    Ok(Event::Exited(index, how)) => {
                        let report = &mut reports[index];
                        tracing::warn!(worker = %report.name, pid = report.pid, "a worker {how} on its own");
                        node.peers.remove(&report.name);
                        let stopping = stop.is_stopping() || node.exit;
                        match trackers[index].ended(!how.is_success(), stopping, Instant::now()) {
                            RestartDecision::Restart { after } => {
                                due.push((Instant::now() + after, index, how));
                                continue;
                            }
                            RestartDecision::LimitReached { restarts } => {
                                tracing::error!(worker = %report.name, restarts, "restart limit reached; the worker stays gone");
                            }
                            _ => {}
                        }
                        running -= 1;
                        report.exit = how;
                        report.ended_early = true;
                    }
                    Ok(Event::Wake) | Err(_) => {}
                },
                recv(tick) -> _ => {
                    last_tick = Instant::now();
                    main.tick(&mut node);
                }
                recv(restart_at) -> _ => {
                    let now = Instant::now();
                    for (_, index, how) in take_due(&mut due, now) {
                        let report = &mut reports[index];
                        report.restarts += 1;
                        match restart(&report.name, wanted[index].1, start_timeout, &mut node) {
                            Ok(spawned) => {
                                trackers[index].started(Instant::now());
                                report.pid = spawned.pid;
                                report.stats = None;
                                lives[index] = spawned.live();
                                let events = events_tx.clone();
                                forwarders.push(thread::spawn(move || forward(index, &spawned, &events)));
                            }
                            Err(error) => {
                                tracing::error!(worker = %report.name, "the worker could not be started again: {error}");
                                running -= 1;
                                report.exit = how;
                                report.ended_early = true;
                            }
                        }
                    }
                }
            }
        }
        // Restarts still waiting when the router stops do not happen.
        for (_, index, how) in due.drain(..) {
            running -= 1;
            reports[index].exit = how;
            reports[index].ended_early = true;
        }

        // Shutdown: die to every worker, wait until the deadline, kill the rest.
        for tx in node.peers.values() {
            let _ = send_frame(
                tx,
                &Frame::Message(Envelope::new(Address::Broadcast, Address::Main, Kind::Die)),
            );
        }
        let deadline = Instant::now() + stop_timeout;
        while running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if stop.is_stopped_now() || left.is_zero() {
                for (report, live) in reports.iter().zip(&lives) {
                    if report.exit == ExitHow::Unknown {
                        live.signal(libc::SIGKILL);
                    }
                }
            }
            let wait = if left.is_zero() {
                Duration::from_secs(60)
            } else {
                left
            };
            match events.recv_timeout(wait) {
                Ok(Event::Packet(index, packet)) => {
                    receive(&mut main, &mut node, &mut reports[index], packet)
                }
                Ok(Event::Exited(index, how)) => {
                    running -= 1;
                    reports[index].exit = how;
                }
                Ok(Event::Wake) | Err(_) => {}
            }
        }
        for forwarder in forwarders {
            let _ = forwarder.join();
        }
        Ok(RouterReport {
            main: node.stats,
            workers: reports,
        })
    }
}

fn receive(main: &mut Handlers, node: &mut Node, report: &mut WorkerReport, packet: Packet) {
    match wire::open(packet) {
        Ok(Frame::Message(envelope)) if envelope.kind == Kind::user(STATS) => {
            report.stats = envelope.body().ok();
        }
        Ok(Frame::Message(envelope)) => main.handle(node, envelope),
        Ok(other) => tracing::warn!(worker = %report.name, "unexpected {}", other.describe()),
        Err(error) => {
            node.stats.corrupt_frames += 1;
            tracing::warn!(worker = %report.name, "a corrupt frame was dropped: {error}");
        }
    }
}

fn forward(index: usize, worker: &Spawned, events: &Sender<Event>) {
    loop {
        match wire::recv_packet(&worker.rx, None) {
            Ok(packet) => {
                if events.send(Event::Packet(index, packet)).is_err() {
                    return;
                }
            }
            Err(_) => {
                let how = worker
                    .wait_exit(Duration::from_secs(5))
                    .unwrap_or_else(|| worker.kill_and_wait());
                let _ = events.send(Event::Exited(index, how));
                return;
            }
        }
    }
}

/// Starts a crashed worker again and tells every process its new address: the others first,
/// so that nothing the new worker sends can reach a peer that does not know it yet.
fn restart(
    name: &str,
    entry: WorkerMain,
    timeout: Duration,
    node: &mut Node,
) -> Result<Spawned, ProcError> {
    let spawned = start_worker(name, entry, timeout)?;
    for tx in node.peers.values() {
        // A peer that is gone has its own exit to report.
        let _ = tx.send(Packet::Peers(vec![(name.to_owned(), spawned.tx.clone())]));
    }
    node.peers.insert(name.to_owned(), spawned.tx.clone());
    let peers = node
        .peers
        .iter()
        .map(|(name, tx)| (name.clone(), tx.clone()))
        .collect();
    if spawned.tx.send(Packet::Peers(peers)).is_err() {
        node.peers.remove(name);
        spawned.kill_and_wait();
        return Err(ProcError::Closed);
    }
    Ok(spawned)
}

fn start_worker(name: &str, entry: WorkerMain, timeout: Duration) -> Result<Spawned, ProcError> {
    let spawned = boot::spawn(router_entry, KIND, timeout)?;
    let init = WorkerInit {
        name: name.to_owned(),
        main: offset_of(entry as usize),
    };
    let envelope = Envelope::new(Address::named(name), Address::Main, Kind::user(INIT))
        .with_raw_body(to_bytes(&init)?);
    if let Err(error) = send_envelope(&spawned.tx, envelope) {
        spawned.kill_and_wait();
        return Err(ProcError::Spawn(SpawnError::Protocol(error)));
    }
    Ok(spawned)
}

/// The main function of a router's worker process.
pub(crate) fn router_entry(server: String) -> i32 {
    let conn = match boot::connect(server, KIND) {
        Ok(conn) => conn,
        Err(reason) => {
            tracing::error!("router worker cannot start: {reason}");
            return EXIT_BOOT_FAILED;
        }
    };
    let init = match wire::recv_frame(&conn.inbox) {
        Ok(Frame::Message(e)) if e.kind == Kind::user(INIT) => e.body::<WorkerInit>(),
        _ => return EXIT_BOOT_FAILED,
    };
    let Ok(init) = init else {
        return EXIT_BOOT_FAILED;
    };
    // SAFETY: the master computed the offset of a `WorkerMain` of this same binary (the
    // handshake and the executable's identity were checked at start).
    let worker_main: WorkerMain =
        unsafe { std::mem::transmute::<usize, WorkerMain>(address_at(init.main)) };
    let mut handlers = Handlers::default();
    worker_main(&mut handlers);
    let mut peers: HashMap<String, _> = match wire::recv_packet(&conn.inbox, None) {
        Ok(Packet::Peers(peers)) => peers.into_iter().filter(|(n, _)| *n != init.name).collect(),
        _ => return EXIT_BOOT_FAILED,
    };
    peers.insert(MAIN.to_owned(), conn.to_master.clone());
    let mut node = Node::new(Address::named(init.name.as_str()), peers);
    handlers.start(&mut node);
    let mut last_tick = Instant::now();
    let code = loop {
        if node.exit {
            break 0;
        }
        let timeout = handlers
            .next_tick(last_tick)
            .map(|at| at.saturating_duration_since(Instant::now()));
        match wire::recv_packet(&conn.inbox, timeout) {
            // A restarted peer's new address.
            Ok(Packet::Peers(update)) => {
                for (name, tx) in update {
                    if name != init.name {
                        node.peers.insert(name, tx);
                    }
                }
            }
            Ok(packet) => match wire::open(packet) {
                Ok(Frame::Message(envelope)) if envelope.kind == Kind::Die => break 0,
                Ok(Frame::Message(envelope)) => handlers.handle(&mut node, envelope),
                Ok(_) => {}
                Err(error) => {
                    node.stats.corrupt_frames += 1;
                    tracing::warn!(node = %node.me, "a corrupt frame was dropped: {error}");
                }
            },
            Err(RecvError::Timeout) => {
                last_tick = Instant::now();
                handlers.tick(&mut node);
            }
            Err(RecvError::Closed) => break 0,
            Err(error) => {
                tracing::error!(node = %node.me, "{error}");
                break EXIT_CHANNEL_FAILED;
            }
        }
    };
    let stats =
        Envelope::new(Address::Main, node.me.clone(), Kind::user(STATS)).with_body(&node.stats);
    if let Ok(stats) = stats {
        let _ = send_envelope(&conn.to_master, stats);
    }
    code
}

/// Takes the restarts that are due at `now`.
fn take_due(
    due: &mut Vec<(Instant, usize, ExitHow)>,
    now: Instant,
) -> Vec<(Instant, usize, ExitHow)> {
    let (ready, waiting): (Vec<_>, Vec<_>) = due.drain(..).partition(|(at, _, _)| *at <= now);
    *due = waiting;
    ready
}
