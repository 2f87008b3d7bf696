//! Order per key with N consumers, against a real `redis-server`: 40,000 items over 1,000
//! keys in 8 partitions, read by 3 consumer processes; one is SIGKILLed mid-run and the
//! others take its partitions over within the lease time; a fourth joins mid-run and the
//! partitions rebalance. Each key's items are processed in production order, nothing is
//! lost, only the killed consumer's unacknowledged items are processed twice, and no
//! partition is ever owned by two consumers at once (each consumer records its ownership
//! intervals in a file).
//!
//! The consumers are this test executable run again in a consumer role (the `consumer_role`
//! test, selected by environment variables; it does nothing in a normal run).

#![allow(
    clippy::print_stdout,
    reason = "a consumer process reports on its standard output"
)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::wait_until;
use engine_redis::testing::Server;
use engine_redis::{KeyedSource, Ownership, SinkOptions, StreamAddress, StreamSink};
use engine_threads::Engine;
use redis::Commands;

const ITEMS: u32 = 40_000;
const KEYS: u32 = 1_000;
const PARTITIONS: u32 = 8;
const LEASE: Duration = Duration::from_millis(1000);
const WAIT: Duration = Duration::from_secs(120);

const ROLE_IN: &str = "ENGINE_REDIS_KEYED_IN";
const ROLE_OUT: &str = "ENGINE_REDIS_KEYED_OUT";
const ROLE_TAG: &str = "ENGINE_REDIS_KEYED_TAG";
const ROLE_LOG: &str = "ENGINE_REDIS_KEYED_LOG";
/// If set, the consumer stalls for ever (until killed) after this many items.
const ROLE_STALL_AFTER: &str = "ENGINE_REDIS_KEYED_STALL_AFTER";

fn micros(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

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
    let log = std::env::var(ROLE_LOG).expect("an ownership log");
    let stall_after: Option<u64> = std::env::var(ROLE_STALL_AFTER)
        .ok()
        .map(|n| n.parse().expect("a number"));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the ownership log opens");
    let source = KeyedSource::<(u32, u32)>::new(
        StreamAddress::parse(&input)
            .expect("valid input")
            .with_consumer(format!("c{tag}")),
    )
    .on_ownership(move |event| {
        let (what, partition, at) = match *event {
            Ownership::Acquired { partition, at } => ("acquired", partition, at),
            Ownership::Released { partition, at } => ("released", partition, at),
            Ownership::Lost { partition, at } => ("lost", partition, at),
        };
        // One write per line, to a file opened for appending: nothing is lost at a kill.
        let line = format!("{partition} {what} {}\n", micros(at));
        (&log)
            .write_all(line.as_bytes())
            .expect("the ownership log");
    });
    let seen = Arc::new(AtomicU64::new(0));
    let engine = Engine::builder(source)
        .transport(move |(key, seq): (u32, u32)| {
            if stall_after.is_some_and(|limit| seen.fetch_add(1, Ordering::SeqCst) == limit) {
                println!("stalled");
                std::io::stdout().flush().expect("stdout");
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
            }
            (key, seq, tag)
        })
        .transport_threads(2)
        .ordered(true)
        .backend(StreamSink::<(u32, u32, u32)>::new(
            StreamAddress::parse(&output).expect("valid output"),
        ))
        .build()
        .expect("the consumer's engine builds");
    let _signals =
        engine_core::install_signal_handler(engine.stop_handle()).expect("signal handler");
    let report = engine.run().expect("the consumer runs");
    println!("consumer {tag}: {report}");
}

struct Consumer {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Consumer {
    fn spawn(server: &Server, tag: u32, logs: &Path, stall_after: Option<u64>) -> Self {
        let query = format!(
            "partitions={PARTITIONS}&lease_ms={}&block_ms=20",
            LEASE.as_millis()
        );
        let mut command = common::role("consumer_role");
        command
            .env(ROLE_IN, common::url(server, "in", &query))
            .env(ROLE_OUT, server.stream_url("out"))
            .env(ROLE_TAG, tag.to_string())
            .env(ROLE_LOG, logs.join(format!("c{tag}")))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(n) = stall_after {
            command.env(ROLE_STALL_AFTER, n.to_string());
        }
        let mut child = command.spawn().expect("the consumer starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Self { child, stdout }
    }

    /// Waits for the consumer to say `line`.
    fn expect_line(&mut self, line: &str) {
        common::expect_line(&mut self.stdout, line);
    }

    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("the output");
        let status = self.child.wait().expect("the consumer exits");
        assert!(status.success(), "the consumer failed ({status}):\n{rest}");
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The owner of each partition's lease, per the server.
fn owners(conn: &mut redis::Connection) -> Vec<Option<String>> {
    (0..PARTITIONS)
        .map(|p| conn.get(format!("{{in:p{p}}}:lease:engine")).expect("GET"))
        .collect()
}

/// How many partitions each consumer holds, if all are held.
fn shares(conn: &mut redis::Connection) -> Option<HashMap<String, usize>> {
    let mut shares = HashMap::new();
    for owner in owners(conn) {
        *shares.entry(owner?).or_insert(0) += 1;
    }
    Some(shares)
}

/// One consumer's ownership intervals per partition, `[start, end)` in µs since the epoch;
/// an interval still open ends at `open_until`.
fn intervals(path: &Path, open_until: u128) -> Vec<(u32, u128, u128)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut open: HashMap<u32, u128> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [partition, what, at] = parts[..] else {
            panic!("a bad ownership line {line:?}");
        };
        let (partition, at): (u32, u128) = (partition.parse().unwrap(), at.parse().unwrap());
        match what {
            "acquired" => {
                assert!(
                    open.insert(partition, at).is_none(),
                    "acquired twice: {line}"
                );
            }
            _ => {
                let start = open.remove(&partition).expect("released what it held");
                out.push((partition, start, at));
            }
        }
    }
    out.extend(open.into_iter().map(|(p, start)| (p, start, open_until)));
    out
}

#[test]
fn keys_stay_in_order_across_a_kill_and_a_rebalance() {
    let _heavy = common::heavy();
    let server = Server::start().unwrap();
    let logs = server.dir().join("ownership");
    std::fs::create_dir_all(&logs).unwrap();
    let mut conn = server.connection().unwrap();
    let mut victim = Consumer::spawn(&server, 1, &logs, Some(3_000));
    let mut consumers = vec![
        Consumer::spawn(&server, 2, &logs, None),
        Consumer::spawn(&server, 3, &logs, None),
    ];
    wait_until("three consumers share the partitions", WAIT, || {
        shares(&mut conn).is_some_and(|s| s.len() == 3 && s.values().all(|&n| n <= 3))
    });

    // The producer: ITEMS items, key i % 1000 and sequence i / 1000, gated at 60% and 80%.
    let (gate, gated) = crossbeam_channel::unbounded::<()>();
    let items = (0..ITEMS).map(move |i| {
        if i == ITEMS / 10 * 6 || i == ITEMS / 10 * 8 {
            gated.recv().expect("the test opens the gate");
        }
        (i % KEYS, i / KEYS)
    });
    let sink = StreamSink::<(u32, u32)>::new(server.address("in").unwrap())
        .options(SinkOptions::new().bound(2_000))
        .keyed(PARTITIONS, |(key, _)| key.to_le_bytes());
    let producer = Engine::builder(items).backend(sink).spawn().unwrap();

    // Kill the victim while it holds items; the others take its partitions over.
    victim.expect_line("stalled");
    let victims: BTreeSet<usize> = owners(&mut conn)
        .iter()
        .enumerate()
        .filter(|(_, owner)| owner.as_deref() == Some("c1"))
        .map(|(p, _)| p)
        .collect();
    assert!(!victims.is_empty(), "the victim owned partitions");
    victim.child.kill().expect("SIGKILL the victim");
    let killed_at = micros(SystemTime::now());
    let killed = Instant::now();
    victim.child.wait().expect("the victim is reaped");
    wait_until("the survivors own every partition", WAIT, || {
        shares(&mut conn).is_some_and(|s| s.keys().all(|c| c == "c2" || c == "c3"))
    });
    let takeover = killed.elapsed();
    // The lease runs out, then the next heartbeat (every third of the lease) takes it.
    assert!(
        takeover <= LEASE + LEASE / 3 + Duration::from_millis(500),
        "took {takeover:?} to take over"
    );

    // A fourth consumer joins mid-run: the partitions rebalance to 3, 3, 2.
    gate.send(()).unwrap();
    consumers.push(Consumer::spawn(&server, 4, &logs, None));
    wait_until("the fourth consumer gets its share", WAIT, || {
        shares(&mut conn).is_some_and(|s| s.get("c4") == Some(&2) && s.len() == 3)
    });
    gate.send(()).unwrap();
    assert_eq!(producer.join().unwrap().processed(), u64::from(ITEMS));

    let mut distinct = || {
        let got: Vec<(u32, u32, u32)> = common::items(&mut conn, "out");
        got.iter()
            .map(|(k, s, _)| (*k, *s))
            .collect::<BTreeSet<_>>()
            .len()
    };
    wait_until("every item is in `out`", WAIT, || {
        distinct() == ITEMS as usize
    });
    let mut conn = server.connection().unwrap();
    wait_until("every partition is empty", WAIT, || {
        (0..PARTITIONS).all(|p| {
            let stream = format!("in:p{p}");
            common::len(&mut conn, &stream) == 0
                && common::pending(&mut conn, &stream, "engine") == 0
        })
    });
    for consumer in consumers {
        consumer.stop();
    }

    // Order per key: the first time each item appears, it is the next of its key.
    let out: Vec<(u32, u32, u32)> = common::items(&mut conn, "out");
    let mut next = vec![0_u32; KEYS as usize];
    let mut first_by: HashMap<(u32, u32), u32> = HashMap::new();
    let mut times: HashMap<(u32, u32), u32> = HashMap::new();
    for &(key, seq, tag) in &out {
        *times.entry((key, seq)).or_default() += 1;
        if let std::collections::hash_map::Entry::Vacant(e) = first_by.entry((key, seq)) {
            e.insert(tag);
            assert_eq!(seq, next[key as usize], "key {key} out of order");
            next[key as usize] += 1;
        } else {
            // Again: only what the killed consumer processed and never acknowledged.
            assert_eq!(
                first_by[&(key, seq)],
                1,
                "({key}, {seq}) processed twice by survivors"
            );
            assert!(times[&(key, seq)] <= 2);
        }
    }
    assert!(next.iter().all(|&n| n == ITEMS / KEYS), "nothing lost");
    let by_tag = |tag| out.iter().filter(|(_, _, t)| *t == tag).count();
    assert!(by_tag(4) > 0, "the fourth consumer processed items");

    // No partition was ever owned by two consumers at once.
    let mut all: Vec<(u32, u128, u128, u32)> = Vec::new();
    for tag in 1..=4 {
        let open_until = if tag == 1 { killed_at } else { u128::MAX };
        for (p, start, end) in intervals(&logs.join(format!("c{tag}")), open_until) {
            assert!(
                tag == 1 || end != u128::MAX,
                "c{tag} released partition {p} at its stop"
            );
            all.push((p, start, end, tag));
        }
    }
    all.sort_unstable();
    for pair in all.windows(2) {
        let ((p, _, end, a), (q, start, _, b)) = (pair[0], pair[1]);
        if p == q {
            assert!(
                start >= end,
                "partition {p} owned by c{a} and c{b} at once: {pair:?}"
            );
        }
    }
    let taken_from_victim: BTreeSet<usize> = all
        .iter()
        .filter(|(_, start, _, tag)| *tag != 1 && *start >= killed_at)
        .map(|(p, ..)| *p as usize)
        .collect();
    assert!(
        victims.is_subset(&taken_from_victim),
        "{victims:?} taken over"
    );
    let _: PathBuf = logs;
}

#[test]
fn a_keyed_source_removes_consumers_long_idle_with_nothing_pending() {
    let server = Server::start().unwrap();
    let mut conn = server.connection().unwrap();
    let partitions: Vec<String> = (0..2).map(|p| format!("ghosts:p{p}")).collect();
    for stream in &partitions {
        redis::cmd("XGROUP")
            .arg(&["CREATE", stream, "engine", "0", "MKSTREAM"])
            .exec(&mut conn)
            .unwrap();
        redis::cmd("XGROUP")
            .arg(&["CREATECONSUMER", stream, "engine", "gone"])
            .exec(&mut conn)
            .unwrap();
    }
    let created = Instant::now();
    let idle = Duration::from_millis(300);
    let source = KeyedSource::<u64>::new(server.address("ghosts").unwrap().with_consumer("live"))
        .partitions(2)
        .options(
            engine_redis::SourceOptions::new()
                .block(Duration::from_millis(20))
                .lease(Duration::from_millis(300))
                .sweep_every(Duration::from_millis(20))
                .remove_consumers_idle_for(idle),
        );
    let engine = Engine::builder(source)
        .backend(|_: u64| {})
        .build()
        .unwrap();
    let stop = engine.stop_handle().clone();
    let handle = engine.spawn().unwrap();
    wait_until(
        "the idle consumer is removed from every partition",
        WAIT,
        || {
            partitions
                .iter()
                .all(|stream| !common::consumers(&mut conn, stream, "engine").contains_key("gone"))
        },
    );
    assert!(
        created.elapsed() >= idle,
        "removed before it was idle long enough"
    );
    stop.stop();
    handle.join().unwrap();
}
