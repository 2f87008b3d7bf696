//! A router's worker process: its code registers handlers, then it handles what main and its
//! peers send until told to die, and reports its counters.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use engine_core::protocol::{Address, Envelope, Frame, Kind};
use ipc_channel::ipc::{IpcReceiver, IpcSender};

use crate::boot::{self, address_at};
use crate::codes::{EXIT_BOOT_FAILED, EXIT_CHANNEL_FAILED};
use crate::node::{Handlers, MAIN, Node, WorkerInit};
use crate::wire::{self, Packet, RecvError, send_envelope};

/// A router worker's code: registers its handlers (and periodic action) on `Handlers`. A
/// plain `fn`, or a closure that captures nothing: it runs in the worker process.
pub type WorkerMain = fn(&mut Handlers);

/// The other processes of a router by name, as a worker knows them.
type Peers = HashMap<String, IpcSender<Packet>>;

/// The kind a router worker says hello as.
pub(crate) const KIND: &str = "router";
/// The kind of the message that carries a worker's counters to main at its end.
pub(crate) const STATS: &str = "engine.stats";

/// The main function of a router's worker process.
pub(crate) fn router_entry(server: String) -> i32 {
    let (conn, init) = match boot::connect_with_init::<WorkerInit>(server, KIND) {
        Ok(started) => started,
        Err(reason) => {
            tracing::error!("router worker cannot start: {reason}");
            return EXIT_BOOT_FAILED;
        }
    };
    // SAFETY: the master computed the offset of a `WorkerMain` of this same binary (the
    // handshake and the executable's identity were checked at start).
    let worker_main: WorkerMain =
        unsafe { std::mem::transmute::<usize, WorkerMain>(address_at(init.main)) };
    let mut handlers = Handlers::default();
    worker_main(&mut handlers);
    let (mut peers, mut early) = match wait_for_peers(&conn.inbox, &init.name) {
        Ok(started) => started,
        Err(error) => {
            tracing::error!(worker = %init.name, "no peer list came: {error}");
            return EXIT_BOOT_FAILED;
        }
    };
    peers.insert(MAIN.to_owned(), conn.to_master.clone());
    let mut node = Node::new(Address::named(init.name.as_str()), peers);
    handlers.start(&mut node);
    let mut last_tick = Instant::now();
    let code = loop {
        if node.exit {
            break 0;
        }
        // What came before the peer list is handled first, in the order it came.
        let packet = match early.pop_front() {
            Some(packet) => Ok(packet),
            None => {
                let timeout = handlers
                    .next_tick(last_tick)
                    .map(|at| at.saturating_duration_since(Instant::now()));
                wire::recv_packet(&conn.inbox, timeout)
            }
        };
        match packet {
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

/// Waits for the worker's peer list (the others' addresses, without `me`), holding in order
/// whatever arrives before it: a peer that got its list first may already be sending from its
/// start action. What is held is bounded by what the peers send before main's list arrives.
fn wait_for_peers(
    inbox: &IpcReceiver<Packet>,
    me: &str,
) -> Result<(Peers, VecDeque<Packet>), RecvError> {
    let mut early = VecDeque::new();
    loop {
        match wire::recv_packet(inbox, None)? {
            Packet::Peers(peers) => {
                let peers = peers.into_iter().filter(|(n, _)| n != me).collect();
                return Ok((peers, early));
            }
            packet => early.push_back(packet),
        }
    }
}
