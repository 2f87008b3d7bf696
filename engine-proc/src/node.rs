//! Message handling shared by the router's processes: handlers per kind, a periodic action,
//! and the [`Node`] that sends.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use engine_core::StageError;
use engine_core::protocol::{Address, Envelope, Kind, ProtocolError, from_bytes};
use ipc_channel::ipc::IpcSender;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ProcError;
use crate::wire::{Packet, send_envelope};

type Handler = Box<dyn FnMut(&mut Node, &Envelope) -> Result<(), HandlerError>>;
type Action = Box<dyn FnMut(&mut Node) -> Result<(), StageError>>;

/// Why a handler did not handle a message.
enum HandlerError {
    BadBody(ProtocolError),
    Failed(StageError),
}

/// Counters of one process of a router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeStats {
    /// Messages received.
    pub received: u64,
    /// Messages a handler handled without error.
    pub handled: u64,
    /// Messages of a kind with no handler here (logged and dropped).
    pub unknown_kind: u64,
    /// Messages whose body did not decode as the handler's type (logged and dropped).
    pub bad_body: u64,
    /// Messages whose handler returned an error (logged).
    pub handler_errors: u64,
    /// Frames that did not decode at all (logged and dropped).
    pub corrupt_frames: u64,
    /// Messages sent.
    pub sent: u64,
}

/// The handlers of one process: a handler per message kind, an optional periodic action
/// (multipro_lab's `main_action` / `worker_action`) and a start action.
#[derive(Default)]
pub struct Handlers {
    handlers: HashMap<String, Handler>,
    every: Option<(Duration, Action)>,
    on_start: Option<Action>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<&String> = self.handlers.keys().collect();
        kinds.sort();
        f.debug_struct("Handlers")
            .field("kinds", &kinds)
            .field("every", &self.every.as_ref().map(|(d, _)| d))
            .finish_non_exhaustive()
    }
}

impl Handlers {
    /// Handles messages of `kind`, whose bodies decode as `T`. A body that does not decode is
    /// logged and counted, never a crash; an error from the handler is logged and counted.
    pub fn on<T, F>(&mut self, kind: impl Into<String>, mut handler: F) -> &mut Self
    where
        T: DeserializeOwned,
        F: FnMut(&mut Node, T) -> Result<(), StageError> + 'static,
    {
        self.handlers.insert(
            kind.into(),
            Box::new(move |node, envelope| {
                let body = from_bytes::<T>(&envelope.body).map_err(HandlerError::BadBody)?;
                handler(node, body).map_err(HandlerError::Failed)
            }),
        );
        self
    }

    /// Runs `action` every `interval` (the first time one interval after the start).
    pub fn every<F>(&mut self, interval: Duration, action: F) -> &mut Self
    where
        F: FnMut(&mut Node) -> Result<(), StageError> + 'static,
    {
        self.every = Some((interval.max(Duration::from_micros(100)), Box::new(action)));
        self
    }

    /// Runs `action` once every process is connected, before any message is handled.
    pub fn on_start<F>(&mut self, action: F) -> &mut Self
    where
        F: FnMut(&mut Node) -> Result<(), StageError> + 'static,
    {
        self.on_start = Some(Box::new(action));
        self
    }

    pub(crate) fn start(&mut self, node: &mut Node) {
        if let Some(Err(error)) = self.on_start.as_mut().map(|action| action(node)) {
            node.stats.handler_errors += 1;
            tracing::warn!(node = %node.me, "start action failed: {error:#}");
        }
        self.drain(node);
    }

    /// When the periodic action is due next.
    pub(crate) fn next_tick(&self, last: Instant) -> Option<Instant> {
        self.every.as_ref().map(|(interval, _)| last + *interval)
    }

    pub(crate) fn tick(&mut self, node: &mut Node) {
        if let Some(Err(error)) = self.every.as_mut().map(|(_, action)| action(node)) {
            node.stats.handler_errors += 1;
            tracing::warn!(node = %node.me, "periodic action failed: {error:#}");
        }
        self.drain(node);
    }

    /// Handles one message (and whatever the process sent itself meanwhile).
    pub(crate) fn handle(&mut self, node: &mut Node, envelope: Envelope) {
        self.dispatch(node, envelope);
        self.drain(node);
    }

    fn drain(&mut self, node: &mut Node) {
        while let Some(envelope) = node.to_self.pop_front() {
            self.dispatch(node, envelope);
        }
    }

    fn dispatch(&mut self, node: &mut Node, envelope: Envelope) {
        node.stats.received += 1;
        let Kind::User(kind) = &envelope.kind else {
            return;
        };
        let Some(handler) = self.handlers.get_mut(kind.as_str()) else {
            node.stats.unknown_kind += 1;
            tracing::warn!(node = %node.me, from = %envelope.sender, kind = %kind, "no handler for this kind; message dropped");
            return;
        };
        node.current_sender = Some(envelope.sender.clone());
        match handler(node, &envelope) {
            Ok(()) => node.stats.handled += 1,
            Err(HandlerError::BadBody(error)) => {
                node.stats.bad_body += 1;
                tracing::warn!(node = %node.me, from = %envelope.sender, kind = %kind, "the body does not decode; message dropped: {error}");
            }
            Err(HandlerError::Failed(error)) => {
                node.stats.handler_errors += 1;
                tracing::warn!(node = %node.me, from = %envelope.sender, kind = %kind, "handler failed: {error:#}");
            }
        }
        node.current_sender = None;
    }
}

/// One process of a router, as its handlers see it: sends messages to the others and ends
/// its own loop.
pub struct Node {
    pub(crate) me: Address,
    /// Other processes by name; `main` for the main process.
    pub(crate) peers: HashMap<String, IpcSender<Packet>>,
    pub(crate) to_self: VecDeque<Envelope>,
    pub(crate) current_sender: Option<Address>,
    pub(crate) exit: bool,
    pub(crate) stats: NodeStats,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("me", &self.me)
            .field("peers", &self.peer_names())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The peer name of the main process.
pub(crate) const MAIN: &str = "main";

impl Node {
    pub(crate) fn new(me: Address, peers: HashMap<String, IpcSender<Packet>>) -> Self {
        Self {
            me,
            peers,
            to_self: VecDeque::new(),
            current_sender: None,
            exit: false,
            stats: NodeStats::default(),
        }
    }

    /// This process's address: [`Address::Main`] or its worker name.
    pub fn me(&self) -> &Address {
        &self.me
    }

    /// The sender of the message being handled, if a handler is running.
    pub fn sender(&self) -> Option<&Address> {
        self.current_sender.as_ref()
    }

    /// The names of the other processes (workers; not main).
    pub fn peer_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .peers
            .keys()
            .map(String::as_str)
            .filter(|n| *n != MAIN)
            .collect();
        names.sort_unstable();
        names
    }

    /// Sends a message of `kind` to `to`: [`Address::Main`], a worker by name
    /// ([`Address::named`]), or [`Address::Broadcast`] (every other process). Workers reach
    /// each other directly, not through main.
    ///
    /// # Errors
    ///
    /// [`ProcError::NoSuchPeer`] for an unknown name, [`ProcError::Closed`] if the receiver is
    /// gone, [`ProcError::Protocol`] if the body cannot be encoded.
    pub fn send<T: Serialize + ?Sized>(
        &mut self,
        to: &Address,
        kind: &str,
        body: &T,
    ) -> Result<(), ProcError> {
        let envelope =
            Envelope::new(to.clone(), self.me.clone(), Kind::user(kind)).with_body(body)?;
        self.send_envelope(envelope)
    }

    /// Sends a prepared envelope to its receiver.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_envelope(&mut self, envelope: Envelope) -> Result<(), ProcError> {
        let targets: Vec<String> = match &envelope.receiver {
            Address::Broadcast => self.peers.keys().cloned().collect(),
            receiver if receiver == &self.me => {
                self.to_self.push_back(envelope);
                self.stats.sent += 1;
                return Ok(());
            }
            Address::Main => vec![MAIN.to_owned()],
            Address::Named(name) => vec![name.clone()],
            other => return Err(ProcError::NoSuchPeer(other.to_string())),
        };
        for target in targets {
            let tx = self
                .peers
                .get(&target)
                .ok_or_else(|| ProcError::NoSuchPeer(target.clone()))?;
            send_envelope(tx, envelope.clone()).map_err(|_| ProcError::Closed)?;
            self.stats.sent += 1;
        }
        Ok(())
    }

    /// Sends raw bytes as if they were a frame: for tests of how peers take corrupt input.
    /// Only with the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn send_raw_frame(&mut self, to: &str, bytes: Vec<u8>) -> Result<(), ProcError> {
        let tx = self
            .peers
            .get(to)
            .ok_or_else(|| ProcError::NoSuchPeer(to.to_owned()))?;
        tx.send(Packet::Frame(bytes)).map_err(|_| ProcError::Closed)
    }

    /// Ends this process's loop after the current handler: in main, the router stops (every
    /// worker is told to die); in a worker, the worker exits.
    pub fn exit(&mut self) {
        self.exit = true;
    }

    /// Whether [`exit`](Self::exit) was called.
    pub fn is_exiting(&self) -> bool {
        self.exit
    }

    /// This process's counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerInit {
    pub(crate) name: String,
    pub(crate) main: isize,
}
