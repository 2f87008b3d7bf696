//! `StreamMetrics` against a real `redis-server`: the lag, pending and dead-letter metrics
//! say what `XINFO GROUPS` and `XLEN` say.

#![cfg(feature = "metrics")]

use engine_redis::StreamMetrics;
use engine_redis::testing::Server;
use prometheus_client::registry::Registry;
use redis::streams::StreamInfoGroupsReply;

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

fn value(text: &str, metric: &str) -> i64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(metric))
        .unwrap_or_else(|| panic!("no {metric} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_lag_and_pending_metrics_match_xinfo_groups() {
    let server = Server::start().expect("redis-server is installed");
    let mut conn = server.connection().unwrap();
    redis::cmd("XGROUP")
        .arg(&["CREATE", "jobs", "workers", "0", "MKSTREAM"][..])
        .exec(&mut conn)
        .unwrap();
    for i in 0..10 {
        redis::cmd("XADD")
            .arg(&["jobs", "*", "d", &i.to_string()][..])
            .exec(&mut conn)
            .unwrap();
    }
    // One consumer reads four: four pending, six not yet delivered.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(
            &[
                "GROUP", "workers", "c1", "COUNT", "4", "STREAMS", "jobs", ">",
            ][..],
        )
        .query(&mut conn)
        .unwrap();
    redis::cmd("XADD")
        .arg(&["{jobs}:dead", "*", "reason", "poison"][..])
        .exec(&mut conn)
        .unwrap();

    let mut registry = Registry::default();
    let address = server.address("jobs").unwrap();
    registry.register_collector(Box::new(StreamMetrics::new(&address)));
    let text = scrape(&registry);

    let info: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg(&["GROUPS", "jobs"][..])
        .query(&mut conn)
        .unwrap();
    let group = info.groups.iter().find(|g| g.name == "workers").unwrap();
    let labels = r#"{stream="jobs",group="workers"}"#;
    assert_eq!(
        value(&text, &format!("engine_redis_pending{labels}")),
        group.pending as i64
    );
    assert_eq!(
        value(&text, &format!("engine_redis_lag{labels}")),
        group.lag.unwrap() as i64
    );
    assert_eq!((group.pending, group.lag), (4, Some(6)));
    assert_eq!(value(&text, &format!("engine_redis_consumers{labels}")), 1);
    assert_eq!(
        value(&text, r#"engine_redis_dead_letters{stream="jobs"}"#),
        1
    );
    assert_eq!(value(&text, r#"engine_redis_up{stream="jobs"}"#), 1);

    // The server gone: the scrape says so and does not fail.
    drop(server);
    let text = scrape(&registry);
    assert_eq!(value(&text, "engine_redis_up"), 0);
}

/// A keyed stream on a cluster: the group and dead-letter metrics are per partition, each
/// with the master serving it as `node`, and what they say is what the partition holds.
#[test]
fn a_keyed_stream_on_a_cluster_has_metrics_per_partition_and_node() {
    use engine_redis::testing::{Cluster, ClusterOptions};
    use engine_redis::{Broker, RedisBroker, StreamAddress, StreamSink};
    const PARTITIONS: u32 = 6;
    let cluster = Cluster::start_with(ClusterOptions::new().replicas(0)).unwrap();
    let address = StreamAddress::parse(&format!(
        "{}?partitions={PARTITIONS}",
        cluster.stream_url("orders")
    ))
    .unwrap();
    let mut broker = RedisBroker::connect(&address).unwrap();
    let partitions = broker.partition_streams("orders", PARTITIONS).unwrap();
    for partition in &partitions {
        broker.create_group(partition, "engine").unwrap();
    }
    let sink =
        StreamSink::<u64>::new(address.clone()).keyed(PARTITIONS, |n: &u64| (n % 60).to_le_bytes());
    engine_threads::Engine::builder(0..600_u64)
        .backend(sink)
        .run()
        .unwrap();

    let mut registry = Registry::default();
    registry.register_collector(Box::new(StreamMetrics::new(&address)));
    let text = scrape(&registry);
    assert_eq!(value(&text, r#"engine_redis_up{stream="orders"}"#), 1);
    let mut total = 0;
    let mut nodes = std::collections::HashSet::new();
    for partition in &partitions {
        let port = cluster.masters().unwrap()[0];
        let mut conn = cluster.connection(port).unwrap();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(partition)
            .query(&mut conn)
            .unwrap();
        let master = cluster.master_of_slot(slot).unwrap();
        let mut conn = cluster.connection(master).unwrap();
        let len: i64 = redis::cmd("XLEN").arg(partition).query(&mut conn).unwrap();
        let node = format!("127.0.0.1:{master}");
        let lag = value(
            &text,
            &format!(r#"engine_redis_lag{{stream="{partition}",group="engine",node="{node}"}}"#),
        );
        assert_eq!(lag, len, "{partition}");
        assert_eq!(
            value(
                &text,
                &format!(r#"engine_redis_dead_letters{{stream="{partition}",node="{node}"}}"#)
            ),
            0
        );
        total += lag;
        nodes.insert(node);
    }
    assert_eq!(total, 600);
    assert_eq!(nodes.len(), 3, "the partitions spread over the 3 masters");
}
