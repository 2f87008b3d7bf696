//! A router's main process at work: its workers started and told each other's addresses,
//! one method per event of its loop (a packet, a worker's end, a tick, a restart that is
//! due), and the shutdown.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, after, never, select, unbounded};
use engine_core::protocol::{Address, Envelope, Frame, Kind, to_bytes};
use engine_core::{RestartDecision, RestartPolicy, RestartTracker, StopHandle, StopSubscription};
use ipc_channel::ipc::IpcSender;

use crate::boot::{self, Live, Spawned, offset_of};
use crate::codes::INIT;
use crate::error::{ExitHow, ProcError, SpawnError};
use crate::node::{Handlers, Node, WorkerInit};
use crate::router_report::{RouterReport, WorkerReport};
use crate::router_worker::{KIND, STATS, WorkerMain, router_entry};
use crate::wire::{self, Packet, send_envelope, send_frame};

/// What the main loop hears.
enum Event {
    Packet(usize, Packet),
    Exited(usize, ExitHow),
    Wake,
}

/// How a router runs, as its builder set it.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How long workers get to exit once told to.
    pub(crate) stop_timeout: Duration,
    /// How long a worker may take to start.
    pub(crate) start_timeout: Duration,
    /// When a worker that ended is started again.
    pub(crate) restart: RestartPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stop_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
            restart: RestartPolicy::default(),
        }
    }
}

/// The main process of a running router.
pub(crate) struct MainLoop {
    /// Each worker's name and code, in the order they were added.
    wanted: Vec<(String, WorkerMain)>,
    main: Handlers,
    node: Node,
    settings: Settings,
    stop: StopHandle,
    _subscription: Option<StopSubscription>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    reports: Vec<WorkerReport>,
    lives: Vec<Live>,
    trackers: Vec<RestartTracker>,
    forwarders: Vec<JoinHandle<()>>,
    /// Restarts waiting for their backoff: when, which worker, and how it ended.
    due: Vec<(Instant, usize, ExitHow)>,
    /// Workers that have not ended for good.
    running: usize,
    last_tick: Instant,
}

impl MainLoop {
    /// Starts every worker (stopping those started if one cannot start), tells each the
    /// others' addresses, and listens to them.
    pub(crate) fn start(
        wanted: Vec<(String, WorkerMain)>,
        main: Handlers,
        stop: Option<StopHandle>,
        settings: Settings,
    ) -> Result<Self, ProcError> {
        let mut workers: Vec<(String, Spawned)> = Vec::new();
        let stop_all = |workers: &[(String, Spawned)]| {
            for (_, w) in workers {
                w.kill_and_wait();
            }
        };
        for (name, entry) in &wanted {
            match start_worker(name, *entry, settings.start_timeout) {
                Ok(spawned) => workers.push((name.clone(), spawned)),
                Err(error) => {
                    stop_all(&workers);
                    return Err(error);
                }
            }
        }
        let peers: Vec<(String, IpcSender<Packet>)> = workers
            .iter()
            .map(|(name, w)| (name.clone(), w.tx.clone()))
            .collect();
        for (_, w) in &workers {
            if w.tx.send(Packet::Peers(peers.clone())).is_err() {
                stop_all(&workers);
                return Err(ProcError::Closed);
            }
        }
        let (events_tx, events) = unbounded();
        let _subscription = stop.as_ref().map(|stop| {
            let events = events_tx.clone();
            stop.on_stop(move |_| {
                let _ = events.send(Event::Wake);
            })
        });
        let now = Instant::now();
        let mut this = Self {
            main,
            node: Node::new(Address::Main, peers.into_iter().collect()),
            stop: stop.unwrap_or_default(),
            _subscription,
            events_tx,
            events,
            reports: Vec::new(),
            lives: Vec::new(),
            trackers: Vec::new(),
            forwarders: Vec::new(),
            due: Vec::new(),
            running: workers.len(),
            last_tick: now,
            wanted,
            settings,
        };
        // One thread per worker forwards what it sends and says when it ends.
        for (index, (name, w)) in workers.into_iter().enumerate() {
            this.reports.push(WorkerReport {
                name,
                pid: w.pid,
                exit: ExitHow::Unknown,
                ended_early: false,
                restarts: 0,
                stats: None,
            });
            let mut tracker = this.settings.restart.tracker();
            tracker.started(now);
            this.trackers.push(tracker);
            this.lives.push(w.live());
            this.listen(index, w);
        }
        Ok(this)
    }

    /// Runs main's loop until a handler exits, the stop handle is raised, or nothing is left
    /// to wait for; then shuts the workers down.
    pub(crate) fn run(mut self) -> RouterReport {
        self.main.start(&mut self.node);
        self.last_tick = Instant::now();
        let events = self.events.clone();
        while self.goes_on() {
            self.step(&events);
        }
        // Restarts still waiting when the router stops do not happen.
        for (_, index, how) in std::mem::take(&mut self.due) {
            self.ended(index, how);
        }
        self.shutdown(&events)
    }

    fn goes_on(&self) -> bool {
        !self.node.exit
            && !self.stop.is_stopping()
            && (self.running > 0 || self.main.next_tick(self.last_tick).is_some())
    }

    /// Waits for the next event and handles it.
    fn step(&mut self, events: &Receiver<Event>) {
        let tick = self.main.next_tick(self.last_tick).map_or_else(never, at);
        let restart = self.due.iter().map(|(when, _, _)| *when).min();
        let restart = restart.map_or_else(never, at);
        select! {
            recv(events) -> event => match event {
                Ok(Event::Packet(index, packet)) => self.on_packet(index, packet),
                Ok(Event::Exited(index, how)) => self.on_exit(index, how),
                Ok(Event::Wake) | Err(_) => {}
            },
            recv(tick) -> _ => self.on_tick(),
            recv(restart) -> _ => self.on_restarts_due(),
        }
    }

    fn on_packet(&mut self, index: usize, packet: Packet) {
        receive(
            &mut self.main,
            &mut self.node,
            &mut self.reports[index],
            packet,
        );
    }

    /// A worker ended on its own: it is restarted after its backoff if the policy says so.
    fn on_exit(&mut self, index: usize, how: ExitHow) {
        let report = &self.reports[index];
        tracing::warn!(worker = %report.name, pid = report.pid, "a worker {how} on its own");
        self.node.peers.remove(&report.name);
        let stopping = self.stop.is_stopping() || self.node.exit;
        match self.trackers[index].ended(!how.is_success(), stopping, Instant::now()) {
            RestartDecision::Restart { after } => {
                self.due.push((Instant::now() + after, index, how));
                return;
            }
            RestartDecision::LimitReached { restarts } => {
                tracing::error!(
                    worker = %report.name,
                    restarts,
                    "restart limit reached; the worker stays gone"
                );
            }
            _ => {}
        }
        self.ended(index, how);
    }

    fn on_tick(&mut self) {
        self.last_tick = Instant::now();
        self.main.tick(&mut self.node);
    }

    /// Starts again the workers whose backoff is over.
    fn on_restarts_due(&mut self) {
        for (_, index, how) in take_due(&mut self.due, Instant::now()) {
            let report = &mut self.reports[index];
            report.restarts += 1;
            let entry = self.wanted[index].1;
            match restart(
                &report.name,
                entry,
                self.settings.start_timeout,
                &mut self.node,
            ) {
                Ok(spawned) => {
                    self.trackers[index].started(Instant::now());
                    report.pid = spawned.pid;
                    report.stats = None;
                    self.lives[index] = spawned.live();
                    self.listen(index, spawned);
                }
                Err(error) => {
                    tracing::error!(
                        worker = %report.name,
                        "the worker could not be started again: {error}"
                    );
                    self.ended(index, how);
                }
            }
        }
    }

    /// Worker `index` ended for good, before the router told it to.
    fn ended(&mut self, index: usize, how: ExitHow) {
        self.running -= 1;
        let report = &mut self.reports[index];
        report.exit = how;
        report.ended_early = true;
    }

    /// Forwards what worker `index` sends, and its end, to the main loop.
    fn listen(&mut self, index: usize, worker: Spawned) {
        let events = self.events_tx.clone();
        self.forwarders
            .push(thread::spawn(move || forward(index, &worker, &events)));
    }

    /// Tells every worker to die, waits until the stop timeout, kills the rest.
    fn shutdown(mut self, events: &Receiver<Event>) -> RouterReport {
        for tx in self.node.peers.values() {
            let _ = send_frame(
                tx,
                &Frame::Message(Envelope::new(Address::Broadcast, Address::Main, Kind::Die)),
            );
        }
        let deadline = Instant::now() + self.settings.stop_timeout;
        while self.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.stop.is_stopped_now() || left.is_zero() {
                for (report, live) in self.reports.iter().zip(&self.lives) {
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
                Ok(Event::Packet(index, packet)) => self.on_packet(index, packet),
                Ok(Event::Exited(index, how)) => {
                    self.running -= 1;
                    self.reports[index].exit = how;
                }
                Ok(Event::Wake) | Err(_) => {}
            }
        }
        for forwarder in self.forwarders.drain(..) {
            let _ = forwarder.join();
        }
        RouterReport {
            main: self.node.stats,
            workers: self.reports,
        }
    }
}

/// A channel that fires at `when`.
fn at(when: Instant) -> Receiver<Instant> {
    after(when.saturating_duration_since(Instant::now()))
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

/// Takes the restarts that are due at `now`.
fn take_due(
    due: &mut Vec<(Instant, usize, ExitHow)>,
    now: Instant,
) -> Vec<(Instant, usize, ExitHow)> {
    let (ready, waiting): (Vec<_>, Vec<_>) = due.drain(..).partition(|(at, _, _)| *at <= now);
    *due = waiting;
    ready
}
