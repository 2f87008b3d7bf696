//! Redis Cluster: the throwaway cluster of [`engine_redis::testing::Cluster`], and streams
//! through a real cluster on loopback (3 masters, 1 replica each).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_redis::testing::{Cluster, ClusterOptions, Server};
use engine_redis::{
    Broker, Error, KeyedSource, Ownership, RedisBroker, StreamAddress, StreamSink, StreamSource,
};
use engine_threads::Engine;

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn a_cluster_starts_reports_its_masters_and_survives_a_killed_master() {
    let _heavy = common::heavy();
    let mut cluster = Cluster::start().unwrap();
    let ports = cluster.ports();
    assert_eq!(ports.len(), 6);
    let masters = cluster.masters().unwrap();
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(masters.iter().all(|m| ports.contains(m)));
    assert_eq!(cluster.master_of_slot(0).unwrap(), masters[0]);
    assert_eq!(cluster.master_of_slot(16383).unwrap(), masters[2]);
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));

    // A master killed: its replica takes over, and the cluster is whole without it.
    let victim = masters[1];
    cluster.kill(victim).unwrap();
    assert!(!cluster.is_running(victim));
    cluster.wait_ok(None).unwrap();
    let after = cluster.masters().unwrap();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!after.contains(&victim), "{after:?}");

    // Started again, it rejoins as a replica of the new master.
    cluster.restart(victim).unwrap();
    assert!(cluster.is_running(victim));
    cluster.wait_ok(None).unwrap();
    assert_eq!(cluster.masters().unwrap(), after);
    let mut conn = cluster.connection(victim).unwrap();
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"slave".to_vec()))
    );
}

#[test]
fn a_bad_cluster_is_a_typed_error_at_start() {
    let _heavy = common::heavy();
    let cluster = Cluster::start_with(ClusterOptions::new().replicas(0)).unwrap();
    let plain = Server::start().unwrap();

    // Cluster nodes and a plain server in one address.
    let mixed = format!("{},127.0.0.1:{}/s", cluster.url(), plain.port());
    let err = RedisBroker::connect(&StreamAddress::parse(&mixed).unwrap()).unwrap_err();
    match &err {
        Error::NotACluster { node, .. } => {
            assert_eq!(node, &format!("redis://127.0.0.1:{}", plain.port()));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("not a Redis Cluster node"),
        "{err}"
    );

    // More replicas than the masters have.
    let address = StreamAddress::parse(&format!("{}?replicas=1", cluster.stream_url("s"))).unwrap();
    let err = RedisBroker::connect(&address).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooFewReplicas {
                wanted: 1,
                connected: 0,
                ..
            }
        ),
        "{err:?}"
    );

    // A working cluster connects; one with a slot nobody serves does not.
    let address = cluster.address("s").unwrap();
    let mut broker = RedisBroker::connect(&address).unwrap();
    assert_eq!(broker.append("s", &[vec![1]], None).unwrap(), 1);
    for port in cluster.ports() {
        let mut conn = cluster.connection(port).unwrap();
        redis::cmd("CLUSTER")
            .arg("DELSLOTS")
            .arg(0)
            .exec(&mut conn)
            .unwrap();
    }
    let err = RedisBroker::connect(&address).unwrap_err();
    assert!(
        matches!(err, Error::SlotsUncovered { uncovered: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn an_unkeyed_stream_goes_through_a_cluster() {
    const ITEMS: u64 = 20_000;
    let _heavy = common::heavy();
    let cluster = Cluster::start_with(ClusterOptions::new().replicas(0)).unwrap();
    let address =
        StreamAddress::parse(&format!("{}?block_ms=50", cluster.stream_url("numbers"))).unwrap();
    let report = Engine::builder(0..ITEMS)
        .backend(StreamSink::<u64>::new(address.clone()))
        .run()
        .unwrap();
    assert_eq!(report.processed(), ITEMS);

    let source = StreamSource::<u64>::new(address);
    let settlement = source.settlement();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = {
        let seen = Arc::clone(&seen);
        Engine::builder(source)
            .backend(move |n: u64| seen.lock().unwrap().push(n))
            .spawn()
            .unwrap()
    };
    common::wait_until("every item is read", WAIT, || {
        seen.lock().unwrap().len() as u64 >= ITEMS
    });
    handle.stop();
    handle.join().unwrap();
    assert_eq!(settlement.outstanding(), 0);
    let seen = seen.lock().unwrap();
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    // Exact counts; not the order: without `ordered(true)` the engine may hand a few items
    // to the backend out of the source's order.
    assert_eq!(
        (seen.len(), sorted.len()),
        (ITEMS as usize, ITEMS as usize),
        "each item once"
    );
    // Acknowledged and deleted: the stream is empty, on the master of its slot.
    let master = cluster
        .master_of_slot(slot_of(&cluster, "numbers"))
        .unwrap();
    let mut conn = cluster.connection(master).unwrap();
    assert_eq!(common::len(&mut conn, "numbers"), 0);
    assert_eq!(common::pending(&mut conn, "numbers", "engine"), 0);
}

/// The slot of `key`, as the cluster computes it.
fn slot_of(cluster: &Cluster, key: &str) -> u16 {
    let port = cluster.masters().unwrap()[0];
    let mut conn = cluster.connection(port).unwrap();
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut conn)
        .unwrap()
}

#[test]
fn a_keyed_stream_spreads_over_the_masters_and_keeps_order_per_key() {
    const KEYS: u64 = 50;
    const PER_KEY: u64 = 200;
    let _heavy = common::heavy();
    let cluster = Cluster::start_with(ClusterOptions::new().replicas(0)).unwrap();
    let url = format!(
        "{}?partitions=12&block_ms=50&lease_ms=1000",
        cluster.stream_url("orders")
    );
    let address = StreamAddress::parse(&url).unwrap();

    // Two consumers share the partitions.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let acquired = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let consumers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let acquired = Arc::clone(&acquired);
            let source = KeyedSource::<(u64, u64)>::new(address.clone().with_consumer(name))
                .on_ownership(move |event| {
                    if matches!(event, Ownership::Acquired { .. }) {
                        acquired.lock().unwrap().insert(name);
                    }
                });
            let seen = Arc::clone(&seen);
            Engine::builder(source)
                .ordered(true)
                .backend(move |item: (u64, u64)| seen.lock().unwrap().push((name, item)))
                .spawn()
                .unwrap()
        })
        .collect();
    common::wait_until("both consumers hold partitions", WAIT, || {
        acquired.lock().unwrap().len() == 2
    });
    let items: Vec<(u64, u64)> = (0..PER_KEY)
        .flat_map(|seq| (0..KEYS).map(move |key| (key, seq)))
        .collect();
    let sink = StreamSink::<(u64, u64)>::new(address.clone())
        .keyed(12, |(key, _): &(u64, u64)| key.to_le_bytes());
    Engine::builder(items).backend(sink).run().unwrap();

    // The partitions: 12 on 3 masters, 4 each, as the sink and the consumers named them.
    let mut broker = RedisBroker::connect(&address).unwrap();
    let partitions = broker.partition_streams("orders", 12).unwrap();
    let mut per_master = std::collections::HashMap::new();
    for partition in &partitions {
        let master = cluster
            .master_of_slot(slot_of(&cluster, partition))
            .unwrap();
        *per_master.entry(master).or_insert(0) += 1;
    }
    assert_eq!(per_master.len(), 3, "{partitions:?} {per_master:?}");
    assert!(per_master.values().all(|n| *n == 4), "{per_master:?}");

    common::wait_until("every item is read", WAIT, || {
        seen.lock().unwrap().len() as u64 >= KEYS * PER_KEY
    });
    for consumer in consumers {
        consumer.stop();
        consumer.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, KEYS * PER_KEY, "each item once");
    let mut next = vec![0; KEYS as usize];
    let mut by = std::collections::HashSet::new();
    for (consumer, (key, seq)) in seen.iter() {
        assert_eq!(*seq, next[*key as usize], "key {key} out of order");
        next[*key as usize] += 1;
        by.insert(*consumer);
    }
    assert_eq!(by.len(), 2, "both consumers had partitions");
}
