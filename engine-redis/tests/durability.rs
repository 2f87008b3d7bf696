//! Writes that survive a failover, against a real master and replica on loopback: with
//! `replicas=1` what a sink reported written, and what a source acknowledged, is on the
//! replica the moment the run returns; a write the replica does not confirm in time fails
//! its batch with the reason, and nothing of it is acknowledged upstream; asking for more
//! replicas than there are is a typed error at the start.

mod common;

use std::time::Duration;

use common::wait_until;
use engine_redis::testing::{Server, ServerOptions};
use engine_redis::{Broker, Error, RedisBroker, StreamAddress, StreamSink, StreamSource};
use engine_threads::Engine;

const WAIT: Duration = Duration::from_secs(60);

/// A master and one replica that is in sync with it.
fn pair() -> (Server, Server) {
    let master = Server::start().unwrap();
    let replica = Server::start_with(ServerOptions::new().replica_of(master.port())).unwrap();
    let mut conn = master.connection().unwrap();
    wait_until("the replica is online", WAIT, || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut conn)
            .unwrap();
        info.lines()
            .any(|line| line.starts_with("slave0:") && line.contains("state=online"))
    });
    (master, replica)
}

/// `address` with one replica confirming each write, waiting up to `timeout`.
fn durable(address: StreamAddress, timeout: Duration) -> StreamAddress {
    address.with_replicas(1, timeout)
}

/// Sends `signal` to the server's process.
fn signal(server: &Server, signal: libc::c_int) {
    let pid = i32::try_from(server.pid().expect("the server runs")).expect("a pid fits");
    // SAFETY: `kill` has no memory-safety preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[test]
fn with_replicas_what_was_written_and_acknowledged_is_on_the_replica_at_once() {
    let _heavy = common::heavy();
    let (master, replica) = pair();
    let address = durable(master.address("in").unwrap(), Duration::from_secs(10));
    let report = Engine::builder(0..2_000_u64)
        .backend(StreamSink::<u64>::new(address.clone()))
        .run()
        .unwrap();
    assert_eq!(report.processed(), 2_000);
    // No waiting: the sink reported the items written only once the replica had them.
    let mut on_replica = replica.connection().unwrap();
    assert_eq!(common::len(&mut on_replica, "in"), 2_000);

    let (tx, rx) = crossbeam_channel::unbounded();
    let source = StreamSource::<u64>::new(address.with_consumer("worker"));
    let consumer = Engine::builder(source)
        .backend(move |n: u64| tx.send(n).expect("the test listens"))
        .spawn()
        .unwrap();
    for _ in 0..2_000 {
        rx.recv_timeout(WAIT).expect("the items flow");
    }
    consumer.stop();
    consumer.join().unwrap();
    // The last acknowledgements were confirmed before the run returned.
    assert_eq!(common::len(&mut on_replica, "in"), 0);
    assert_eq!(common::pending(&mut on_replica, "in", "engine"), 0);
}

#[test]
fn more_replicas_than_connected_is_a_typed_error_at_the_start() {
    let _heavy = common::heavy();
    let (master, _replica) = pair();
    let url = common::url(&master, "in", "replicas=2");
    let address = StreamAddress::parse(&url).unwrap();
    match RedisBroker::connect(&address) {
        Err(Error::TooFewReplicas {
            wanted, connected, ..
        }) => assert_eq!((wanted, connected), (2, 1)),
        other => panic!("expected TooFewReplicas, got {other:?}"),
    }
    let err = Engine::builder(0..10_u64)
        .backend(StreamSink::<u64>::new(address))
        .run()
        .unwrap_err();
    let message = chain(&err);
    assert!(
        message.contains("replicas=2") && message.contains("1 connected replicas"),
        "{message}"
    );
    // Exactly as many as there are is fine.
    let one = StreamAddress::parse(&common::url(&master, "in", "replicas=1")).unwrap();
    RedisBroker::connect(&one).unwrap();
}

#[test]
fn a_write_not_confirmed_in_time_fails_its_batch_and_nothing_is_acknowledged() {
    const ITEMS: u64 = 100;
    let _heavy = common::heavy();
    let (master, replica) = pair();
    let mut plain = RedisBroker::connect(&master.address("in").unwrap()).unwrap();
    let payloads: Vec<Vec<u8>> = (0..ITEMS)
        .map(|n| engine_core::protocol::to_bytes(&n).unwrap())
        .collect();
    plain.append("in", &payloads, None).unwrap();

    // The replica stays connected but confirms nothing.
    signal(&replica, libc::SIGSTOP);
    let source = StreamSource::<u64>::new(master.address("in").unwrap().with_consumer("worker"));
    let out = durable(
        master.address("in").unwrap().with_stream("out"),
        Duration::from_millis(200),
    );
    let err = Engine::builder(source)
        .backend(StreamSink::<u64>::new(out))
        .run()
        .unwrap_err();
    let message = chain(&err);
    assert!(
        message.contains("only 0 of 1 replicas") && message.contains("within 200ms"),
        "the run fails with the reason: {message}"
    );
    signal(&replica, libc::SIGCONT);

    let mut conn = master.connection().unwrap();
    // The items reached the master's `out` unconfirmed; none of them was acknowledged.
    assert_eq!(
        common::len(&mut conn, "in") as u64,
        ITEMS,
        "nothing deleted"
    );
    let pending = common::pending(&mut conn, "in", "engine");
    assert!(pending > 0, "the delivered entries stay pending");
}

/// An error with its sources, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        out.push_str(": ");
        out.push_str(&next.to_string());
        source = next.source();
    }
    out
}
