//! A stream source feeding an async stage (`engine_threads::Async::map`), in a consumer
//! process SIGKILLed mid-run and started again: every entry is processed at least once, and
//! no entry is acknowledged before its future finished.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::wait_until;
use engine_redis::testing::Server;
use engine_redis::{Broker, EntryId, RedisBroker, StreamAddress, StreamSource};
use engine_threads::{Async, Engine};

const ITEMS: u64 = 4000;
const WAIT: Duration = Duration::from_secs(120);

/// Environment of a consumer process: its input address and the file its futures record
/// each item in.
const ROLE_IN: &str = "ENGINE_REDIS_TEST_ASYNC_IN";
const ROLE_RECORD: &str = "ENGINE_REDIS_TEST_ASYNC_RECORD";

/// The consumer role: does nothing unless this executable was started as a consumer.
#[test]
fn async_consumer_role() {
    let Ok(input) = std::env::var(ROLE_IN) else {
        return;
    };
    let record = std::env::var(ROLE_RECORD).expect("a consumer is given its record file");
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(record)
            .expect("the record file opens"),
    );
    let address = StreamAddress::parse(&input).expect("valid input");
    let source = StreamSource::<u64>::new(address.with_consumer("async"));
    let engine = Engine::builder(source)
        .transport(
            Async::map(move |x: u64| {
                let file = Arc::clone(&file);
                async move {
                    // Some work, then the effect: one appended line per item (a single
                    // write, whole even at a kill), before the future returns.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    (&*file)
                        .write_all(format!("{x}\n").as_bytes())
                        .expect("record");
                    x
                }
            })
            .concurrency(16),
        )
        .backend(|_: u64| {})
        .build()
        .expect("the consumer's engine builds");
    let _signals =
        engine_core::install_signal_handler(engine.stop_handle()).expect("signal handler");
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let report = engine.run().expect("the consumer runs");
    println!("consumer: {report}");
}

/// A consumer process, killed when dropped.
struct Consumer {
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

impl Consumer {
    fn spawn(server: &Server, record: &std::path::Path) -> Self {
        let mut command = common::role("async_consumer_role");
        command
            .env(ROLE_IN, common::url(server, "in", "block_ms=50"))
            .env(ROLE_RECORD, record)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("the consumer starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        common::expect_line(&mut stdout, "ready");
        Self {
            child,
            _stdout: stdout,
        }
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Stops the process gracefully (SIGTERM) and checks that it exits successfully.
    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.child.wait().expect("the consumer exits");
        assert!(status.success(), "the consumer failed ({status})");
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The items recorded in `record`, with how many times each was.
fn recorded(record: &std::path::Path) -> HashMap<u64, u64> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let mut counts = HashMap::new();
    // A line cut by the kill has no newline yet: only whole lines count.
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        *counts
            .entry(line.trim().parse().expect("a number"))
            .or_insert(0) += 1;
    }
    counts
}

/// The ids of the entries still in `stream`.
fn remaining(server: &Server, stream: &str) -> HashSet<EntryId> {
    let mut conn = server.connection().unwrap();
    common::entries(&mut conn, stream)
        .iter()
        .map(|entry| entry.id.parse().expect("an entry id"))
        .collect()
}

#[test]
fn a_killed_async_consumer_acknowledges_nothing_its_futures_did_not_finish() {
    let _heavy = common::heavy();
    let server = Server::start().unwrap();
    let record = server.dir().join("recorded.txt");
    let mut broker = RedisBroker::connect(&server.address("in").unwrap()).unwrap();
    broker.create_group("in", "engine").unwrap();
    let payloads: Vec<Vec<u8>> = (0..ITEMS)
        .map(|n| engine_core::protocol::to_bytes(&n).unwrap())
        .collect();
    assert_eq!(
        broker.append("in", &payloads, None).unwrap(),
        payloads.len()
    );
    // Which item each entry holds.
    let mut conn = server.connection().unwrap();
    let item_of: HashMap<EntryId, u64> = common::entries(&mut conn, "in")
        .iter()
        .map(|entry| {
            let bytes: Vec<u8> = entry.get("d").expect("a payload");
            let id = entry.id.parse().expect("an entry id");
            (
                id,
                engine_core::protocol::from_bytes(&bytes).expect("an item"),
            )
        })
        .collect();
    assert_eq!(item_of.len() as u64, ITEMS);

    // Killed mid-run, with futures in flight.
    let consumer = Consumer::spawn(&server, &record);
    wait_until("a quarter of the items is recorded", WAIT, || {
        recorded(&record).len() as u64 >= ITEMS / 4
    });
    consumer.kill();
    let left = remaining(&server, "in");
    let done = recorded(&record);
    let acknowledged: Vec<u64> = item_of
        .iter()
        .filter(|(id, _)| !left.contains(id))
        .map(|(_, item)| *item)
        .collect();
    assert!(!acknowledged.is_empty(), "something was acknowledged");
    assert!(left.len() as u64 > 0, "the kill came before the end");
    let early: Vec<u64> = acknowledged
        .iter()
        .filter(|item| !done.contains_key(item))
        .copied()
        .collect();
    assert!(
        early.is_empty(),
        "{} entries were acknowledged before their futures finished: {:?}",
        early.len(),
        &early[..early.len().min(10)]
    );

    // Started again: it takes its pending entries back and finishes everything.
    let consumer = Consumer::spawn(&server, &record);
    wait_until("the stream is empty", WAIT, || {
        common::len(&mut conn, "in") == 0 && common::pending(&mut conn, "in", "engine") == 0
    });
    consumer.stop();
    let done = recorded(&record);
    let missing: Vec<u64> = (0..ITEMS).filter(|n| !done.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "not processed: {:?}",
        &missing[..missing.len().min(10)]
    );
    let repeats: u64 = done.values().map(|n| n - 1).sum();
    println!(
        "{ITEMS} items, {} acknowledged before the kill, {repeats} processed again after it",
        acknowledged.len()
    );
}
