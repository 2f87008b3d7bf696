//! Effects at most once, against a real `redis-server`: items carry their stable ids
//! (`StreamSource::with_ids`), and a deduplicating sink appends each id once, also when the
//! consumer is killed after its sink wrote and before it acknowledged, 50 times in a row
//! (10 times on a Redis Cluster).
//!
//! The consumers are this test executable run again in a consumer role (the `consumer_role`
//! test, selected by environment variables; it does nothing in a normal run).

#![allow(
    clippy::print_stdout,
    reason = "a consumer process reports on its standard output"
)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use engine_core::{Backend, StageContext, StageError};
use engine_redis::testing::{Cluster, ClusterOptions, Server};
use engine_redis::{
    Batch, Broker, DedupKey, DedupSink, Delivered, EntryId, ItemId, RedisBroker, SinkOptions,
    SourceOptions, StreamAddress, StreamSink, StreamSource,
};
use engine_threads::Engine;

/// Environment of a consumer process: its input and output addresses, and whether it kills
/// itself right after the first flush that appended something new.
const ROLE_IN: &str = "ENGINE_REDIS_DEDUP_IN";
const ROLE_OUT: &str = "ENGINE_REDIS_DEDUP_OUT";
const ROLE_DIE: &str = "ENGINE_REDIS_DEDUP_DIE";
/// How many items a dying consumer's life reads at a time.
const BATCH: usize = 20;
const LIVES: usize = 50;
const ITEMS: u64 = 20_000;

/// A sink that SIGKILLs its own process right after a flush that appended new entries: after
/// its sink wrote, before the source could acknowledge.
#[derive(Clone)]
struct DieAfterWrite {
    sink: DedupSink<u64>,
    /// Whether to die; otherwise a plain deduplicating sink.
    die: bool,
}

impl Backend for DieAfterWrite {
    type Input = Delivered<u64>;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.sink.setup(ctx)
    }

    fn process(&mut self, item: Delivered<u64>, ctx: &StageContext) -> Result<(), StageError> {
        self.sink.process(item, ctx)
    }

    fn flush(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.sink.flush(ctx)?;
        if self.die && self.sink.appended() > 0 {
            println!("duplicates skipped: {}", self.sink.duplicates());
            // SAFETY: `kill` and `getpid` have no memory-safety preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        Ok(())
    }
}

/// The consumer role: does nothing unless this executable was started as a consumer.
#[test]
fn consumer_role() {
    let Ok(input) = std::env::var(ROLE_IN) else {
        return;
    };
    let output = std::env::var(ROLE_OUT).expect("a consumer is given its output");
    let die = std::env::var(ROLE_DIE).is_ok();
    let input = StreamAddress::parse(&input).expect("valid input");
    let output = StreamAddress::parse(&output).expect("valid output");
    // One consumer name for every life: each life first takes back what the last one left
    // pending, as a restarted consumer does.
    let source = StreamSource::<u64>::new(input.with_consumer("c"))
        .options(
            SourceOptions::new()
                .batch(BATCH)
                .block(Duration::from_millis(20))
                // Fifty deaths in a row redeliver an entry more often than the default limit
                // when lives are short (a loaded machine: first batches of one item); this
                // test is about duplicates, so every redelivered entry is handed out.
                .max_deliveries(1000),
        )
        .with_ids();
    let sink = StreamSink::<u64>::new(output)
        .options(SinkOptions::new().unbounded())
        .dedup(Duration::from_secs(600));
    // One transport thread: the entries a life takes back reach the sink before any it
    // reads anew (with two, a new batch could overtake them, and the first write, which
    // ends the life, would skip nothing).
    let engine = Engine::builder(source)
        .transport(|d: Delivered<u64>| d.map(|n| n * 10))
        .transport_threads(1)
        .backend(DieAfterWrite { sink, die })
        .build()
        .expect("the consumer's engine builds");
    let _signals =
        engine_core::install_signal_handler(engine.stop_handle()).expect("signal handler");
    let report = engine.run().expect("the consumer runs");
    println!("consumer: {report}");
}

/// Runs `command` to its end, with its output; kills it and fails after `timeout`.
fn within(timeout: Duration, mut command: Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the consumer starts");
    let deadline = std::time::Instant::now() + timeout;
    while child
        .try_wait()
        .expect("the consumer can be waited for")
        .is_none()
    {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("the consumer's output");
            panic!("the consumer did not die within {timeout:?}: {out:?}");
        }
        // Polling a child process: no event to wait on without blocking for good.
        std::thread::park_timeout(Duration::from_millis(5));
    }
    child.wait_with_output().expect("the consumer's output")
}

/// A consumer process relaying `input` to `output`, dying after its first write if `die`.
fn consumer(input: &str, output: &str, die: bool) -> Command {
    let mut command = common::role("consumer_role");
    command
        .env(ROLE_IN, input)
        .env(ROLE_OUT, output)
        .env("RUST_LOG", "warn");
    if die {
        command.env(ROLE_DIE, "1");
    }
    command
}

/// Writes `items` items to the stream `in` of `input`, then relays them to `output` through
/// `lives` consumers that each SIGKILL themselves right after their first write, before they
/// acknowledge, and a last one that finishes. Checks that every life but the first skipped
/// the items it was delivered again, and that `out` (on the server `conn` reaches) holds each
/// item exactly once.
fn relay_killed_between_write_and_ack(
    input: &StreamAddress,
    output: &str,
    items: u64,
    lives: usize,
    conn: &mut impl redis::ConnectionLike,
) {
    Engine::builder(0..items)
        .backend(StreamSink::<u64>::new(input.clone()))
        .run()
        .unwrap();
    let input = format!("{}?block_ms=20", input.as_str());
    let mut skipped_lives = 0;
    for life in 0..lives {
        let out = within(Duration::from_secs(30), consumer(&input, output, true));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            None,
            "life {life} was killed by its own SIGKILL after a write: {out:?}"
        );
        // Each life after the first had the last one's written items delivered again, and
        // skipped them.
        let skipped: u64 = stdout
            .lines()
            .find_map(|line| line.split("duplicates skipped: ").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("life {life} reports its duplicates: {out:?}"));
        if skipped > 0 {
            skipped_lives += 1;
        }
        assert!(common::pending(conn, "in", "engine") > 0, "life {life}");
    }
    // A last consumer runs to the end, gracefully.
    let mut last = consumer(&input, output, false)
        .spawn()
        .expect("the consumer starts");
    common::wait_until("every item is through", Duration::from_secs(60), || {
        common::len(conn, "in") == 0 && common::pending(conn, "in", "engine") == 0
    });
    let pid = i32::try_from(last.id()).expect("a pid");
    // SAFETY: `kill` has no memory-safety preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(last.wait().unwrap().success());
    assert!(
        skipped_lives >= lives - 1,
        "redelivered items were skipped in {skipped_lives} lives"
    );
    assert_each_once(&common::items(conn, "out"), items);
}

/// Checks that `got` holds each of the `items` items (times ten) exactly once.
fn assert_each_once(got: &[u64], items: u64) {
    let mut times: HashMap<u64, usize> = HashMap::new();
    for n in got {
        *times.entry(*n).or_default() += 1;
    }
    assert_eq!(got.len() as u64, items, "each item exactly once");
    assert!(times.values().all(|&n| n == 1));
    assert!((0..items).all(|n| times.contains_key(&(n * 10))));
}

#[test]
fn a_dedup_sink_appends_each_id_once_within_its_window() {
    let server = Server::start().unwrap();
    let address = server.address("once").unwrap();
    // Entry ids of entries written now: the window counts from their timestamps.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ids: Vec<ItemId> = (0..100)
        .map(|n| ItemId::new("in", EntryId::new(now, n)))
        .collect();
    let items = |range: std::ops::Range<usize>| -> Vec<Delivered<u64>> {
        ids[range]
            .iter()
            .map(|id| Delivered::new(id.clone(), id.entry().seq))
            .collect()
    };
    for bound in [
        SinkOptions::new().bound(1000),
        SinkOptions::new().unbounded(),
    ] {
        let stream = format!("once-{}", bound.get_bound().is_some());
        let sink = StreamSink::<u64>::new(address.clone().with_stream(stream.as_str()))
            .options(bound)
            .dedup(Duration::from_secs(60));
        // The first 60, then 40..100: 40..60 are delivered twice.
        Engine::builder(items(0..60))
            .backend(sink.clone())
            .run()
            .unwrap();
        let report = Engine::builder(items(40..100)).backend(sink).run().unwrap();
        assert_eq!(report.processed(), 60, "a duplicate counts as written");
        let mut conn = server.connection().unwrap();
        let got: Vec<u64> = common::items(&mut conn, &stream);
        assert_eq!(
            got,
            (0..100).collect::<Vec<u64>>(),
            "each id once, in order"
        );
    }
    // Twice in one flush: once.
    let twice = vec![items(0..1)[0].clone(), items(0..1)[0].clone()];
    let sink = StreamSink::<u64>::new(address.clone().with_stream("twice"));
    Engine::builder(twice)
        .backend(sink.dedup(Duration::from_secs(60)))
        .run()
        .unwrap();
    let mut conn = server.connection().unwrap();
    assert_eq!(common::len(&mut conn, "twice"), 1);
    // A plain sink appends everything; the window is per output stream.
    let plain = StreamSink::<u64>::new(address.with_stream("plain"));
    Engine::builder(vec![1_u64, 1])
        .backend(plain)
        .run()
        .unwrap();
    let mut conn = server.connection().unwrap();
    assert_eq!(common::len(&mut conn, "plain"), 2);
}

#[test]
fn items_carry_their_stream_and_entry_ids() {
    let server = Server::start().unwrap();
    let address = StreamAddress::parse(&common::url(&server, "ids", "block_ms=20")).unwrap();
    let mut broker = RedisBroker::connect(&address).unwrap();
    let payloads: Vec<Vec<u8>> = (0..10_u64)
        .map(|n| engine_core::protocol::to_bytes(&n).unwrap())
        .collect();
    broker.append("ids", &payloads, None).unwrap();
    let mut conn = server.connection().unwrap();
    let written: Vec<String> = common::entries(&mut conn, "ids")
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    let (tx, rx) = crossbeam_channel::unbounded();
    let engine = Engine::builder(StreamSource::<u64>::new(address).with_ids())
        .backend(move |d: Delivered<u64>| {
            let _ = tx.send((d.id.to_string(), d.item));
        })
        .build()
        .unwrap();
    let stop = engine.stop_handle().clone();
    let handle = engine.spawn().unwrap();
    let got: Vec<(String, u64)> = (0..10)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("an item"))
        .collect();
    stop.stop();
    handle.join().unwrap();
    let expected: Vec<(String, u64)> = written
        .iter()
        .zip(0..)
        .map(|(id, n)| (format!("ids/{id}"), n))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_consumer_killed_between_write_and_acknowledgement_50_times_repeats_nothing() {
    let _heavy = common::heavy();
    let server = Server::start().unwrap();
    let mut conn = server.connection().unwrap();
    relay_killed_between_write_and_ack(
        &server.address("in").unwrap(),
        &server.stream_url("out"),
        ITEMS,
        LIVES,
        &mut conn,
    );
}

/// The same on a Redis Cluster (3 masters, no replicas), where `in` and `out` live on
/// masters of their own and the dedup records in `out`'s slot: the relay SIGKILLed 10 times
/// between write and acknowledgement, each item appears once downstream.
#[test]
fn on_a_cluster_a_relay_killed_between_write_and_acknowledgement_10_times_repeats_nothing() {
    const LIVES: usize = 10;
    let _heavy = common::heavy();
    let cluster = Cluster::start_with(ClusterOptions::new().replicas(0)).unwrap();
    let mut conn = common::cluster_connection(&cluster);
    relay_killed_between_write_and_ack(
        &cluster.address("in").unwrap(),
        &cluster.stream_url("out"),
        ITEMS,
        LIVES,
        &mut conn,
    );
}

/// The append script's bookkeeping, through the broker: ids of one millisecond share a
/// bitmap, an id with a large sequence number has a field of its own, a repeat within one
/// call is skipped, and a bound stops a run part way without recording what it left.
#[test]
fn the_append_script_records_exactly_the_ids_it_appended() {
    let server = Server::start().unwrap();
    let address = server.address("script").unwrap();
    let mut broker = RedisBroker::connect(&address).unwrap();
    let mut conn = server.connection().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hash: std::sync::Arc<str> = std::sync::Arc::from("script:dedup:in:0");
    let expire_at_ms = now + 60_000;
    let key = |ms: u64, seq: u64| DedupKey {
        set: std::sync::Arc::clone(&hash),
        id: EntryId::new(ms, seq),
        expire_at_ms,
    };
    // Each payload is its id's `ms offset * 100_000 + seq`, to see which ones were appended.
    let mut append = |stream: &str, ids: &[(u64, u64)], bound: Option<u64>| {
        let keys: Vec<DedupKey> = ids.iter().map(|&(ms, seq)| key(now + ms, seq)).collect();
        let payloads: Vec<Vec<u8>> = ids
            .iter()
            .map(|&(ms, seq)| engine_core::protocol::to_bytes(&(ms * 100_000 + seq)).unwrap())
            .collect();
        let batch = Batch {
            stream,
            payloads: &payloads,
            dedup_keys: Some(&keys),
        };
        broker.append_batches(&[batch], bound).unwrap()
    };
    let first: Vec<(u64, u64)> = (0..21).map(|seq| (0, seq)).collect();
    let appended = append("a", &first, None);
    assert_eq!((appended.taken, appended.duplicates), (vec![21], 0));
    // 10..=20 again, 21..=30 new, 25 twice, a large sequence number twice, another ms.
    let mut second: Vec<(u64, u64)> = (10..31).map(|seq| (0, seq)).collect();
    second.extend([(0, 25), (0, 5000), (0, 5000), (1, 3)]);
    let appended = append("a", &second, None);
    assert_eq!((appended.taken, appended.duplicates), (vec![25], 13));
    let got: Vec<u64> = common::items(&mut conn, "a");
    let mut expected: Vec<u64> = (0..31).collect();
    expected.extend([5000, 100_003]);
    assert_eq!(got, expected, "each id once, in order");
    // Room for five more: two duplicates (taking no room) and five new ones are taken, and
    // the five left over are not recorded, so they are appended later.
    let mut third = vec![(0, 0), (0, 1)];
    third.extend((100..110).map(|seq| (2, seq)));
    let appended = append("a", &third, Some(33 + 5));
    assert_eq!((appended.taken, appended.duplicates), (vec![7], 2));
    let rest: Vec<(u64, u64)> = (105..110).map(|seq| (2, seq)).collect();
    let appended = append("a", &rest, None);
    assert_eq!((appended.taken, appended.duplicates), (vec![5], 0));
    let again = append("a", &rest, None);
    assert_eq!((again.taken, again.duplicates), (vec![5], 5));
    // The records of another stream are its own.
    let elsewhere = append("b", &rest, None);
    assert_eq!((elsewhere.taken, elsewhere.duplicates), (vec![5], 0));
    // The ids are kept until the window's end, in the stream's hash slot.
    let expires: i64 = engine_redis::redis::cmd("PEXPIRETIME")
        .arg(format!("{{a}}:{hash}"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(expires, i64::try_from(expire_at_ms).unwrap());
}
