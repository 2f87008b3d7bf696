//! A slot moved from one master to another of a real Redis Cluster (3 masters on loopback)
//! while a producer and a consumer run: `CLUSTER SETSLOT ... IMPORTING` and `MIGRATING`,
//! the slot's keys moved one by one with `MIGRATE` (so the clients meet `ASK` redirections,
//! and `TRYAGAIN` for a script whose keys are split), then `SETSLOT ... NODE` (`MOVED`). The
//! producer and the consumer make progress at each step, for longer than the lease time; no
//! item is lost or repeated, each key's items arrive in order, and the consumer keeps its
//! leases throughout.
//!
//! The `redis` crate (1.8) follows `ASK` only for a command sent alone, so the broker runs a
//! pipeline that met one again one command at a time (a lease renewal, an acknowledgement),
//! or reads one stream at a time for a while; the first runs of this test without it lost
//! every lease once the lease key had moved and the slot was not yet the new master's. A
//! blocking read whose stream `MIGRATE` took away is ended by Redis with `UNBLOCKED`: a
//! passing state, read again (it stopped the unkeyed consumer in those runs).

#![allow(clippy::print_stdout, reason = "the test reports what went through")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_until;
use engine_redis::testing::{Cluster, ClusterOptions};
use engine_redis::{
    Broker, KeyedSource, Ownership, RedisBroker, StreamAddress, StreamSink, StreamSource,
    partition_of,
};
use engine_threads::{Engine, EngineHandle};

const KEYS: u64 = 20;
const PARTITIONS: u32 = 6;
/// How many items of the slot the consumer must get through between two steps of the
/// migration, and for how long at least: longer than the lease time (1 s), so that a
/// consumer that could not renew its leases in one state of the migration would lose them.
const PROGRESS: usize = 300;
const STEP: Duration = Duration::from_millis(2500);
/// The producer writes at most this many items a millisecond.
const PACE: u64 = 5;
const WAIT: Duration = Duration::from_secs(60);

/// `CLUSTER <args...>` on the node on `port`.
fn cluster_cmd<T: redis::FromRedisValue>(cluster: &Cluster, port: u16, args: &[&str]) -> T {
    let mut conn = cluster.connection(port).unwrap();
    let mut cmd = redis::cmd("CLUSTER");
    for arg in args {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn)
        .unwrap_or_else(|err| panic!("CLUSTER {args:?} on {port}: {err}"))
}

/// Moves `slot` from the master `from` to the master `to`, as `redis-cli --cluster reshard`
/// does, calling `progress` after each step (with what was done) so that the clients run
/// against every state of the migration. Returns the keys moved.
fn migrate(
    cluster: &Cluster,
    slot: u16,
    from: u16,
    to: u16,
    mut progress: impl FnMut(&str),
) -> Vec<String> {
    let from_id: String = cluster_cmd(cluster, from, &["MYID"]);
    let to_id: String = cluster_cmd(cluster, to, &["MYID"]);
    let slot_text = slot.to_string();
    let () = cluster_cmd(cluster, to, &["SETSLOT", &slot_text, "IMPORTING", &from_id]);
    let () = cluster_cmd(cluster, from, &["SETSLOT", &slot_text, "MIGRATING", &to_id]);
    progress("importing and migrating");
    let mut moved = Vec::new();
    let mut conn = cluster.connection(from).unwrap();
    loop {
        let keys: Vec<String> = cluster_cmd(cluster, from, &["GETKEYSINSLOT", &slot_text, "1"]);
        let Some(key) = keys.into_iter().next() else {
            break;
        };
        let () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&key)
            .query(&mut conn)
            .unwrap_or_else(|err| panic!("MIGRATE {key}: {err}"));
        progress(&format!("{key} moved"));
        moved.push(key);
    }
    // The new owner first, then the old one, then the rest, as `redis-cli` does.
    for port in [to, from].into_iter().chain(
        cluster
            .masters()
            .unwrap()
            .into_iter()
            .filter(|p| ![to, from].contains(p)),
    ) {
        let () = cluster_cmd(cluster, port, &["SETSLOT", &slot_text, "NODE", &to_id]);
    }
    progress("the slot is the other master's");
    moved
}

/// The keys of `slot` on the node on `port`, for a failure's message.
fn keys_in_slot(cluster: &Cluster, port: u16, slot: u16) -> Vec<String> {
    cluster_cmd(cluster, port, &["GETKEYSINSLOT", &slot.to_string(), "10"])
}

/// The slot of `key`, as the cluster computes it.
fn slot_of(cluster: &Cluster, port: u16, key: &str) -> u16 {
    cluster_cmd(cluster, port, &["KEYSLOT", key])
}

/// A producer of `(key, seq)` items (key `i % KEYS`, sequence `i / KEYS`) into `sink` until
/// `stop` is set, at most [`PACE`] items a millisecond; the count of items produced is its
/// report's.
fn producer<S>(sink: S, stop: &Arc<AtomicBool>) -> EngineHandle
where
    S: engine_core::Backend<Input = (u64, u64)> + Clone + Send + 'static,
{
    let stop = Arc::clone(stop);
    let items = (0..u64::MAX).map_while(move |i| {
        if i % PACE == 0 {
            // A pace, not a synchronisation: the migration takes seconds, and a producer at
            // full speed would write millions of items meanwhile, for nothing.
            std::thread::sleep(Duration::from_millis(1));
        }
        (!stop.load(Ordering::SeqCst)).then_some((i % KEYS, i / KEYS))
    });
    Engine::builder(items).backend(sink).spawn().unwrap()
}

/// Checks what the consumer saw against the `produced` items: each exactly once, and each
/// key's in order if `ordered`.
fn check(seen: &[(u64, u64)], produced: u64, ordered: bool) {
    let mut sorted = seen.to_vec();
    if ordered {
        let mut next: HashMap<u64, u64> = HashMap::new();
        for (key, seq) in seen {
            let expected = next.entry(*key).or_default();
            assert_eq!(seq, expected, "key {key}: out of order, or repeated");
            *expected += 1;
        }
    }
    sorted.sort_unstable_by_key(|(key, seq)| seq * KEYS + key);
    let expected: Vec<(u64, u64)> = (0..produced).map(|i| (i % KEYS, i / KEYS)).collect();
    assert!(
        sorted == expected,
        "each item once: {} of {produced} seen",
        seen.len()
    );
}

/// Stops the producer, waits until the consumer has read all it produced, stops the
/// consumer and checks what it saw (see [`check`]); returns how many items were produced.
fn finish(
    stop: &AtomicBool,
    producer: EngineHandle,
    consumer: EngineHandle,
    seen: &Mutex<Vec<(u64, u64)>>,
    ordered: bool,
) -> u64 {
    stop.store(true, Ordering::SeqCst);
    let produced = producer.join().unwrap().processed();
    wait_until("every item is read", WAIT, || {
        seen.lock().unwrap().len() as u64 >= produced
    });
    consumer.stop();
    consumer.join().unwrap();
    check(&seen.lock().unwrap(), produced, ordered);
    produced
}

/// Runs the migration of `slot` (from its master to another) while items flow, waiting
/// after each step until the consumer has seen [`PROGRESS`] more items of the keys `moving`
/// (those in the slot). Returns the keys moved.
fn migrate_while_flowing(
    cluster: &Cluster,
    slot: u16,
    seen: &Mutex<Vec<(u64, u64)>>,
    moving: impl Fn(u64) -> bool,
) -> Vec<String> {
    let count = || {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|(key, _)| moving(*key)).count()
    };
    let from = cluster.master_of_slot(slot).unwrap();
    let to = *cluster
        .masters()
        .unwrap()
        .iter()
        .find(|p| **p != from)
        .unwrap();
    let moved = migrate(cluster, slot, from, to, |step| {
        let (before, since) = (count(), Instant::now());
        while count() < before + PROGRESS || since.elapsed() < STEP {
            assert!(
                since.elapsed() < WAIT,
                "no item of the slot after {step}: {} seen, {before} before; the slot's \
                 keys on {from}: {:?}, on {to}: {:?}",
                count(),
                keys_in_slot(cluster, from, slot),
                keys_in_slot(cluster, to, slot),
            );
            // Polling the consumer's progress: yield, do not sleep as synchronisation.
            std::thread::park_timeout(Duration::from_millis(20));
        }
    });
    assert!(!moved.is_empty(), "the slot held keys");
    assert_eq!(cluster.master_of_slot(slot).unwrap(), to);
    moved
}

#[test]
fn a_partition_whose_slot_moves_mid_stream_loses_nothing_and_keeps_its_lease() {
    let _heavy = common::heavy();
    let cluster = Cluster::start_with(ClusterOptions::new().replicas(0)).unwrap();
    let url = format!(
        "{}?partitions={PARTITIONS}&block_ms=20&lease_ms=1000",
        cluster.stream_url("orders")
    );
    let address = StreamAddress::parse(&url).unwrap();
    let mut broker = RedisBroker::connect(&address).unwrap();
    let partitions = broker.partition_streams("orders", PARTITIONS).unwrap();

    let events = Arc::new(Mutex::new(Vec::new()));
    let source = {
        let events = Arc::clone(&events);
        KeyedSource::<(u64, u64)>::new(address.clone().with_consumer("a"))
            .on_ownership(move |event| events.lock().unwrap().push(*event))
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let consumer = {
        let seen = Arc::clone(&seen);
        Engine::builder(source)
            .ordered(true)
            .backend(move |item: (u64, u64)| seen.lock().unwrap().push(item))
            .spawn()
            .unwrap()
    };
    wait_until("the consumer holds every partition", WAIT, || {
        events.lock().unwrap().len() == PARTITIONS as usize
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sink = StreamSink::<(u64, u64)>::new(address.clone())
        .keyed(PARTITIONS, |(key, _): &(u64, u64)| key.to_le_bytes());
    let producer = producer(sink, &stop);
    wait_until("items flow", WAIT, || {
        seen.lock().unwrap().len() >= PROGRESS
    });

    let port = cluster.masters().unwrap()[0];
    let slot = slot_of(&cluster, port, &partitions[0]);
    let moved = migrate_while_flowing(&cluster, slot, &seen, |key| {
        partition_of(&key.to_le_bytes(), PARTITIONS) == 0
    });
    // The partition stream and its lease at least.
    assert!(moved.len() >= 2, "{moved:?}");

    let produced = finish(&stop, producer, consumer, &seen, true);
    let events = events.lock().unwrap();
    let kept = events
        .iter()
        .filter(|e| matches!(e, Ownership::Acquired { .. }))
        .count();
    assert!(
        kept == PARTITIONS as usize && !events.iter().any(|e| matches!(e, Ownership::Lost { .. })),
        "the consumer kept its leases: {events:?}"
    );
    println!("{produced} items through while slot {slot} moved, with {moved:?}");
}

#[test]
fn an_unkeyed_stream_whose_slot_moves_mid_stream_loses_nothing() {
    let _heavy = common::heavy();
    let cluster = Cluster::start_with(ClusterOptions::new().replicas(0)).unwrap();
    let url = format!("{}?block_ms=20", cluster.stream_url("numbers"));
    let address = StreamAddress::parse(&url).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let consumer = {
        let seen = Arc::clone(&seen);
        Engine::builder(StreamSource::<(u64, u64)>::new(address.clone()))
            .backend(move |item: (u64, u64)| seen.lock().unwrap().push(item))
            .spawn()
            .unwrap()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let producer = producer(StreamSink::<(u64, u64)>::new(address), &stop);
    wait_until("items flow", WAIT, || {
        seen.lock().unwrap().len() >= PROGRESS
    });
    let port = cluster.masters().unwrap()[0];
    let slot = slot_of(&cluster, port, "numbers");
    let moved = migrate_while_flowing(&cluster, slot, &seen, |_| true);

    let produced = finish(&stop, producer, consumer, &seen, false);
    println!("{produced} items through while slot {slot} moved, with {moved:?}");
}
