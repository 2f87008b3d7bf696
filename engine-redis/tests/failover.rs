//! A master of a real Redis Cluster on loopback (3 masters, 1 replica each) SIGKILLed
//! mid-stream: keyed items (50 keys, 12 partitions) written by a sink and read by two
//! consumer processes. The failover completes; every item is processed at least once (but
//! what a failover may lose without `replicas=`); each key's first deliveries are in order;
//! the consumers heal within the cluster node timeout plus 3 s (or 3 s after the promotion,
//! when Redis itself takes longer to promote the replica on a loaded machine). With
//! `replicas=1` no item the sink reported written is missing after the failover; without
//! it, the test prints how many were lost.
//!
//! 200,000 items, as the issue asks. The master is killed once a third of them are
//! through, with the sink and both consumers busy; the killed node is then started again
//! and comes back as a replica of its promoted replica.
//!
//! The consumers are this test executable run again in a consumer role (the `consumer_role`
//! test, selected by environment variables; it does nothing in a normal run). Each reads the
//! keyed stream `in` with ids and writes `(key, seq, consumer tag, ms of the entry id in
//! `in`)` to the unkeyed stream `out`, on a master that is not killed. Entry ids are the
//! servers' clock (one machine, one clock), so the test can tell when an item was appended
//! to `in` and when it was processed, without polling in time.

#![allow(
    clippy::print_stdout,
    reason = "a consumer process reports on its standard output, the test its figures"
)]

mod common;

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::wait_until;
use engine_redis::testing::{Cluster, ClusterOptions};
use engine_redis::{
    Broker, Delivered, EntryId, KeyedSource, Ownership, RedisBroker, SinkOptions, StreamAddress,
    StreamSink, partition_of,
};
use engine_threads::Engine;
use redis::Commands;
use redis::streams::{StreamPendingReply, StreamRangeReply};

const ITEMS: u32 = 200_000;
const KEYS: u32 = 50;
const PARTITIONS: u32 = 12;
/// The cluster's node timeout: a killed master's replica takes over shortly after.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the consumers may take to heal after the kill (the bound).
const HEAL: Duration = Duration::from_secs(NODE_TIMEOUT.as_secs() + 3);
/// A sink keeps at most this many unfinished entries in each partition, so that the
/// consumers stay close behind it and an item written after the kill reaches `out` soon
/// after the consumers heal, not after a long backlog.
const BOUND: u64 = 500;
/// With `replicas=1`, how long a write waits for its replica: a promoted replica has none
/// until the killed master comes back as its replica and syncs, which the test brings about
/// at once.
const REPLICAS_TIMEOUT_MS: u64 = 15_000;
const WAIT: Duration = Duration::from_secs(120);

const ROLE_IN: &str = "ENGINE_REDIS_FAILOVER_IN";
const ROLE_OUT: &str = "ENGINE_REDIS_FAILOVER_OUT";
const ROLE_TAG: &str = "ENGINE_REDIS_FAILOVER_TAG";

/// The consumer role: does nothing unless this executable was started as a consumer.
#[test]
fn consumer_role() {
    let Ok(input) = std::env::var(ROLE_IN) else {
        return;
    };
    let output = std::env::var(ROLE_OUT).expect("a consumer is given its output");
    let tag: u32 = std::env::var(ROLE_TAG)
        .expect("a tag")
        .parse()
        .expect("a number");
    let holds = AtomicBool::new(false);
    let source = KeyedSource::<(u32, u32)>::new(
        StreamAddress::parse(&input)
            .expect("valid input")
            .with_consumer(format!("c{tag}")),
    )
    .on_ownership(move |event| {
        if matches!(event, Ownership::Acquired { .. }) && !holds.swap(true, Ordering::SeqCst) {
            println!("holds partitions");
            std::io::stdout().flush().expect("stdout");
        }
    });
    // Nobody reads `out`: no bound.
    let sink = StreamSink::<(u32, u32, u32, u64)>::new(
        StreamAddress::parse(&output).expect("valid output"),
    )
    .options(SinkOptions::new().unbounded());
    let engine = Engine::builder(source.with_ids())
        .transport(move |item: Delivered<(u32, u32)>| {
            let (key, seq) = item.item;
            (key, seq, tag, item.id.entry().ms)
        })
        .ordered(true)
        .backend(sink)
        .build()
        .expect("the consumer's engine builds");
    let _signals =
        engine_core::install_signal_handler(engine.stop_handle()).expect("signal handler");
    let report = engine.run().expect("the consumer runs");
    println!("consumer {tag}: {report}");
}

/// A consumer process.
struct Consumer {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Consumer {
    fn spawn(input: &str, output: &str, tag: u32) -> Self {
        let mut command = common::role("consumer_role");
        command
            .env(ROLE_IN, input)
            .env(ROLE_OUT, output)
            .env(ROLE_TAG, tag.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("the consumer starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Self { child, stdout }
    }

    /// Stops the consumer gracefully (SIGTERM), checks that it exits successfully, and
    /// returns the rest of its output.
    fn stop(mut self) -> String {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("the output");
        let status = self.child.wait().expect("the consumer exits");
        assert!(status.success(), "the consumer failed ({status}):\n{rest}");
        rest
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An entry of `out`: `(key, seq, consumer tag, ms of the item's entry id in `in`)`, and
/// the entry's id in `out`.
type Processed = ((u32, u32, u32, u64), EntryId);

/// What the consumers wrote to `out` so far, read incrementally from its master.
struct Out {
    conn: redis::Connection,
    /// The id of the last entry read.
    last: Option<String>,
    /// `(key, seq, tag, ms of the item's entry id in `in`)` and the entry's id in `out`, in
    /// `out`'s order.
    items: Vec<Processed>,
}

impl Out {
    fn new(conn: redis::Connection) -> Self {
        Self {
            conn,
            last: None,
            items: Vec::new(),
        }
    }

    /// Reads the entries added since the last call (none while the cluster is down).
    fn refresh(&mut self) -> &[Processed] {
        let before = self.items.len();
        loop {
            let start = self
                .last
                .as_ref()
                .map_or_else(|| "-".to_owned(), |id| format!("({id}"));
            // While a master is down the whole cluster refuses commands (`CLUSTERDOWN`):
            // nothing new, then.
            let Ok(page) = self
                .conn
                .xrange_count::<_, _, _, _, StreamRangeReply>("out", &start, "+", 10_000)
            else {
                return &self.items[before..];
            };
            let Some(last) = page.ids.last() else {
                return &self.items[before..];
            };
            self.last = Some(last.id.clone());
            for entry in &page.ids {
                let bytes: Vec<u8> = entry.get("d").expect("every entry has a `d` field");
                let item = engine_core::protocol::from_bytes(&bytes).expect("an item");
                let id = entry.id.parse().expect("an entry id");
                self.items.push((item, id));
            }
        }
    }
}

/// What one run found.
#[derive(Debug)]
struct Run {
    /// From the kill until a replica served the killed master's slots (as the test polled).
    failed_over: Duration,
    /// From the kill until the killed master was back, as a replica in sync.
    resynced: Duration,
    /// From the kill until the first item of a partition of the killed master, produced
    /// after the kill, was in `out` (per `out`'s entry ids).
    healed: Duration,
    /// Items the sink reported written that no consumer processed.
    lost: Vec<(u32, u32)>,
    /// Items processed more than once, counted once each.
    repeated: usize,
    /// Each key's first deliveries out of order, described.
    disorder: Vec<String>,
    /// Whether each key's partition was on the killed master.
    affected: Vec<bool>,
    /// How many items had been produced when the master was killed.
    produced_at_kill: u64,
}

/// The slot of `key`.
fn slot_of(cluster: &Cluster, key: &str) -> u16 {
    let port = cluster.masters().unwrap()[0];
    let mut conn = cluster.connection(port).unwrap();
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut conn)
        .unwrap()
}

/// Whether the node on `port` lists a replica with each slot range (`CLUSTER SLOTS`: start,
/// end, master, replicas...).
fn replicas_listed(cluster: &Cluster, port: u16) -> bool {
    let Ok(mut conn) = cluster.connection(port) else {
        return false;
    };
    let slots: redis::RedisResult<Vec<Vec<redis::Value>>> =
        redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn);
    slots.is_ok_and(|ranges| !ranges.is_empty() && ranges.iter().all(|range| range.len() >= 4))
}

/// Whether the node on `port` is a replica whose link to its master is up.
fn in_sync(cluster: &Cluster, port: u16) -> bool {
    let Ok(mut conn) = cluster.connection(port) else {
        return false;
    };
    let info: redis::RedisResult<String> = redis::cmd("INFO").arg("replication").query(&mut conn);
    info.is_ok_and(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
}

/// The length and pending count of each partition, or the error of asking.
fn partition_lengths(cluster: &Cluster, partitions: &[String]) -> Vec<String> {
    let mut conn = common::cluster_connection(cluster);
    partitions
        .iter()
        .map(|p| {
            let len: redis::RedisResult<usize> = conn.xlen(p);
            let pending = conn.xpending::<_, _, StreamPendingReply>(p, "engine");
            format!(
                "{p}: {len:?} entries, {:?} pending",
                pending.map(|r| r.count())
            )
        })
        .collect()
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_millis()).expect("ms fit in u64"))
}

/// Runs the items through a cluster whose master (of 4 partitions, neither `out` nor the
/// stream's own keys) is SIGKILLed a third of the way, with `replicas=1` if `durable`.
fn failover(durable: bool) -> Run {
    let mut cluster = Cluster::start_with(ClusterOptions::new().node_timeout(NODE_TIMEOUT))
        .expect("the cluster starts");
    let mut query = format!("partitions={PARTITIONS}&lease_ms=1000&block_ms=20");
    if durable {
        query.push_str(&format!(
            "&replicas=1&replicas_timeout_ms={REPLICAS_TIMEOUT_MS}"
        ));
    }
    let input = format!("{}?{query}", cluster.stream_url("in"));
    let output = cluster.stream_url("out");
    let address = StreamAddress::parse(&input).unwrap();

    // Right after the cluster forms, a node may not list every replica in its slot map
    // yet, and a stage with `replicas=1` asking it would refuse to start.
    wait_until("every node lists a replica for every slot", WAIT, || {
        cluster
            .ports()
            .iter()
            .all(|port| replicas_listed(&cluster, *port))
    });
    // The partitions' names (recorded now, for the sink and the consumers alike), and the
    // victim: the master of 4 of them, holding neither `out` nor `in`'s own keys (members,
    // placement).
    let mut broker = RedisBroker::connect(&address).unwrap();
    let partitions = broker.partition_streams("in", PARTITIONS).unwrap();
    let masters = cluster.masters().unwrap();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let out_master = cluster.master_of_slot(slot_of(&cluster, "out")).unwrap();
    let in_master = cluster.master_of_slot(slot_of(&cluster, "{in}")).unwrap();
    let victim = *masters
        .iter()
        .find(|m| **m != out_master && **m != in_master)
        .expect("3 masters");
    let on_victim: Vec<bool> = partitions
        .iter()
        .map(|p| cluster.master_of_slot(slot_of(&cluster, p)).unwrap() == victim)
        .collect();
    assert_eq!(
        on_victim.iter().filter(|v| **v).count(),
        4,
        "{partitions:?}"
    );
    let affected: Vec<bool> = (0..KEYS)
        .map(|key| on_victim[partition_of(&key.to_le_bytes(), PARTITIONS) as usize])
        .collect();
    assert!(affected.iter().any(|a| *a), "some keys are on the victim");

    let mut consumers: Vec<Consumer> = (1..=2)
        .map(|tag| Consumer::spawn(&input, &output, tag))
        .collect();
    for consumer in &mut consumers {
        common::expect_line(&mut consumer.stdout, "holds partitions");
    }

    // The producer: key i % KEYS, sequence i / KEYS, counting what it has produced.
    let produced = Arc::new(AtomicU64::new(0));
    let items = {
        let produced = Arc::clone(&produced);
        (0..ITEMS).map(move |i| {
            produced.fetch_add(1, Ordering::SeqCst);
            (i % KEYS, i / KEYS)
        })
    };
    let sink = StreamSink::<(u32, u32)>::new(address)
        .options(SinkOptions::new().bound(BOUND))
        .keyed(PARTITIONS, |(key, _): &(u32, u32)| key.to_le_bytes());
    let producer = Engine::builder(items).backend(sink).spawn().unwrap();

    let mut out = Out::new(cluster.connection(out_master).unwrap());
    // `XLEN`, not `out.refresh()`: reading is slower than the pipeline in a debug build.
    wait_until("a third of the items are through", WAIT, || {
        out.conn.xlen::<_, usize>("out").expect("XLEN") >= ITEMS as usize / 3
    });
    let produced_at_kill = produced.load(Ordering::SeqCst);
    cluster.kill(victim).unwrap();
    let (killed, killed_ms) = (Instant::now(), now_ms());

    wait_until("a replica takes over", WAIT, || {
        cluster
            .masters()
            .is_ok_and(|m| m.len() == 3 && !m.contains(&victim))
    });
    let failed_over = killed.elapsed();
    // The killed master comes back, as its replica's replica: with `replicas=1` the
    // promoted master's writes wait for it.
    cluster.restart(victim).unwrap();

    // Healed: an item of a partition of the killed master, appended to `in` after the kill
    // (so on the promoted replica), is in `out`; when, `out`'s entry id says.
    let deadline = Instant::now() + WAIT;
    let mut resynced = None;
    let healed = loop {
        if resynced.is_none() && in_sync(&cluster, victim) {
            resynced = Some(killed.elapsed());
        }
        let first = out
            .refresh()
            .iter()
            .find(|((key, _, _, in_ms), _)| affected[*key as usize] && *in_ms > killed_ms)
            .map(|(_, id)| id.ms);
        if let Some(ms) = first {
            break Duration::from_millis(ms.saturating_sub(killed_ms));
        }
        if Instant::now() >= deadline {
            let lengths = partition_lengths(&cluster, &partitions);
            let latest = |on: bool| {
                out.items
                    .iter()
                    .filter(|((key, ..), _)| affected[*key as usize] == on)
                    .map(|((.., in_ms), _)| *in_ms)
                    .max()
            };
            panic!(
                "the consumers did not heal: {} produced, {} in `out`, partitions {lengths:?} \
                 (the victim's: {on_victim:?}); killed at {killed_ms} ms, the latest entry of \
                 `in` in `out` on the victim's partitions {:?}, on the others {:?}",
                produced.load(Ordering::SeqCst),
                out.items.len(),
                latest(true),
                latest(false),
            );
        }
        std::thread::park_timeout(Duration::from_millis(20));
    };
    wait_until("the killed master is a replica in sync", WAIT, || {
        in_sync(&cluster, victim)
    });
    let resynced = resynced.unwrap_or_else(|| killed.elapsed());

    let report = producer.join().expect("the producer runs");
    assert_eq!(report.processed(), u64::from(ITEMS), "{report}");
    cluster.wait_ok(Some(WAIT)).expect("the cluster is whole");
    let masters = cluster.masters().unwrap();
    assert!(
        masters.len() == 3 && !masters.contains(&victim),
        "{masters:?}"
    );
    let mut conn = cluster.connection(victim).unwrap();
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"slave".to_vec())),
        "the killed master came back as a replica"
    );

    // Every partition empty, nothing pending: what is in `out` is all that will be.
    let mut conn = common::cluster_connection(&cluster);
    wait_until("every partition is empty", WAIT, || {
        partitions.iter().all(|p| {
            let len: usize = conn.xlen(p).unwrap();
            let pending = conn
                .xpending::<_, _, StreamPendingReply>(p, "engine")
                .map_or(0, |reply| reply.count());
            len == 0 && pending == 0
        })
    });
    for consumer in consumers {
        consumer.stop();
    }
    out.refresh();

    // Order per key: the first time each item appears, it comes after its key's last.
    let mut times: HashMap<(u32, u32), u32> = HashMap::new();
    let mut last: Vec<Option<Processed>> = vec![None; KEYS as usize];
    let mut disorder = Vec::new();
    for &((key, seq, tag, _), id) in &out.items {
        let n = times.entry((key, seq)).or_default();
        *n += 1;
        if *n == 1 {
            let previous = &mut last[key as usize];
            if let Some(before) = previous.filter(|((_, before, _, _), _)| *before > seq) {
                disorder.push(format!(
                    "key {key} (on the victim: {}): seq {seq} by c{tag} at {id} after seq {} by \
                     c{} at {}; killed at {killed_ms}, {produced_at_kill} produced then",
                    affected[key as usize], before.0.1, before.0.2, before.1
                ));
            }
            *previous = Some(((key, seq, tag, 0), id));
        }
    }
    let lost: Vec<(u32, u32)> = (0..ITEMS)
        .map(|i| (i % KEYS, i / KEYS))
        .filter(|item| !times.contains_key(item))
        .collect();
    Run {
        failed_over,
        resynced,
        healed,
        lost,
        repeated: times.values().filter(|n| **n > 1).count(),
        disorder,
        affected,
        produced_at_kill,
    }
}

#[test]
fn without_replicas_a_failover_loses_at_most_what_the_killed_master_confirmed_last() {
    let _heavy = common::heavy();
    let run = failover(false);
    println!(
        "without replicas=: failed over in {:?}, healed in {:?}; {} of {ITEMS} items the \
         sink reported written were lost, {} processed more than once",
        run.failed_over,
        run.healed,
        run.lost.len(),
        run.repeated
    );
    assert!(run.disorder.is_empty(), "{:#?}", run.disorder);
    // What may be lost: only what the killed master confirmed before the kill and its
    // replica had not yet received.
    let unexplained: Vec<&(u32, u32)> = run
        .lost
        .iter()
        .filter(|(key, seq)| {
            !run.affected[*key as usize] || u64::from(seq * KEYS + key) >= run.produced_at_kill
        })
        .collect();
    assert!(unexplained.is_empty(), "lost: {unexplained:?}");
    // Redis itself takes the node timeout plus an election (0.5 to 1 s, more on a loaded
    // machine) to promote the replica; the bound leaves the consumers the rest of
    // the 3 s. When Redis took longer, the consumers still get 3 s from the promotion.
    let bound = HEAL.max(run.failed_over + Duration::from_secs(3));
    assert!(
        run.healed <= bound,
        "the consumers took {:?} to heal (bound {bound:?})",
        run.healed
    );
}

#[test]
fn with_replicas_nothing_the_sink_reported_written_is_lost_in_a_failover() {
    let _heavy = common::heavy();
    let run = failover(true);
    println!(
        "with replicas=1: failed over in {:?}, the killed master back as a replica in sync \
         after {:?}, healed in {:?}; {} of {ITEMS} items lost, {} processed more than once",
        run.failed_over,
        run.resynced,
        run.healed,
        run.lost.len(),
        run.repeated
    );
    assert!(run.disorder.is_empty(), "{:#?}", run.disorder);
    assert!(run.lost.is_empty(), "lost: {:?}", run.lost);
    // With one replica per master, the promoted replica has none until the killed master
    // is back in sync: until then no write of its slots can be confirmed, by design. The
    // issue's bound holds from then on (with 2 replicas per master it would hold as is).
    let bound = HEAL
        .max(run.failed_over + Duration::from_secs(3))
        .max(run.resynced + Duration::from_secs(3));
    assert!(
        run.healed <= bound,
        "the consumers took {:?} to heal (bound {bound:?})",
        run.healed
    );
}
