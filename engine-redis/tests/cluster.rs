//! Several processes sharing a stream through a consumer group, against a real
//! `redis-server`: two consumers share 30,000 items; one is killed mid-stream and the other
//! takes over its pending items; the server crashes and restarts mid-stream.
//!
//! The consumers are this test executable run again in a consumer role (the `consumer_role`
//! test, selected by environment variables; it does nothing in a normal run). Each reads
//! `in` through the group and writes `(item, consumer tag)` to `out`, so the test can count
//! what was processed and by whom.

#![allow(
    clippy::print_stdout,
    reason = "a consumer process reports on its standard output"
)]

mod common;

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::wait_until;
use engine_redis::testing::{Server, ServerOptions};
use engine_redis::{SinkOptions, StreamAddress, StreamSink, StreamSource};
use engine_threads::Engine;

const ITEMS: u64 = 30_000;
const WAIT: Duration = Duration::from_secs(120);

/// Environment of a consumer process: its input address, output address and tag.
const ROLE_IN: &str = "ENGINE_REDIS_TEST_IN";
const ROLE_OUT: &str = "ENGINE_REDIS_TEST_OUT";
const ROLE_TAG: &str = "ENGINE_REDIS_TEST_TAG";
/// If set, the consumer stalls for ever (until killed) after this many items.
const ROLE_STALL_AFTER: &str = "ENGINE_REDIS_TEST_STALL_AFTER";

/// The consumer role: does nothing unless this executable was started as a consumer.
#[test]
fn consumer_role() {
    let Ok(input) = std::env::var(ROLE_IN) else {
        return;
    };
    let output = std::env::var(ROLE_OUT).expect("a consumer is given its output");
    let tag: u64 = std::env::var(ROLE_TAG)
        .expect("a consumer is given its tag")
        .parse()
        .expect("the tag is a number");
    let stall_after: Option<u64> = std::env::var(ROLE_STALL_AFTER)
        .ok()
        .map(|n| n.parse().expect("a number"));

    let address = StreamAddress::parse(&input).expect("valid input");
    // Join the group before saying so: Redis 7.0 lists a consumer only once it has read
    // something.
    let client = redis::Client::open(format!(
        "redis://{}/",
        address.server().trim_start_matches("redis://")
    ))
    .expect("a valid server");
    let mut conn = client.get_connection().expect("the server answers");
    let _ = redis::cmd("XGROUP")
        .arg(&["CREATE", address.stream(), address.group(), "0", "MKSTREAM"])
        .exec(&mut conn);
    redis::cmd("XGROUP")
        .arg(&["CREATECONSUMER", address.stream(), address.group()])
        .arg(format!("c{tag}"))
        .exec(&mut conn)
        .expect("the consumer joins the group");
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let source = StreamSource::<u64>::new(address.with_consumer(format!("c{tag}")));
    let settlement = source.settlement();
    let seen = Arc::new(AtomicU64::new(0));
    let engine = Engine::builder(source)
        .transport(move |n: u64| {
            if stall_after.is_some_and(|limit| seen.fetch_add(1, Ordering::SeqCst) == limit) {
                // Hold this item (and so everything behind it) until the test kills us.
                println!("stalled");
                std::io::stdout().flush().expect("stdout");
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
            }
            (n, tag)
        })
        .backend(StreamSink::<(u64, u64)>::new(
            StreamAddress::parse(&output).expect("valid output"),
        ))
        .build()
        .expect("the consumer's engine builds");
    let _signals =
        engine_core::install_signal_handler(engine.stop_handle()).expect("signal handler");
    let report = engine.run().expect("the consumer runs");
    // A graceful stop: `run` returns once the source's last acknowledgements are sent.
    assert_eq!(settlement.outstanding(), 0, "every acknowledgement is sent");
    println!("consumer {tag}: {report}");
    report.check().expect("the consumer's counts add up");
}

/// A consumer process.
struct Consumer {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Consumer {
    fn spawn(server: &Server, tag: u64, query: &str, stall_after: Option<u64>) -> Self {
        let mut command = common::role("consumer_role");
        command
            .env(ROLE_IN, common::url(server, "in", query))
            .env(ROLE_OUT, server.stream_url("out"))
            .env(ROLE_TAG, tag.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(n) = stall_after {
            command.env(ROLE_STALL_AFTER, n.to_string());
        }
        let mut child = command.spawn().expect("the consumer starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut consumer = Self { child, stdout };
        consumer.expect_line("ready");
        consumer
    }

    /// Waits for the consumer to say `line`.
    fn expect_line(&mut self, line: &str) {
        common::expect_line(&mut self.stdout, line);
    }

    /// Stops the consumer gracefully (SIGTERM) and checks that it exits successfully.
    fn stop(mut self) -> String {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our unreaped child.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM could not be sent");
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .expect("the consumer's output");
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

/// Writes `0..ITEMS` to `in`, keeping at most 10,000 unfinished entries there.
fn produce(server: &Server) -> engine_threads::EngineHandle {
    let address = server.address("in").unwrap();
    Engine::builder(0..ITEMS)
        .backend(StreamSink::<u64>::new(address).options(SinkOptions::new().bound(10_000)))
        .spawn()
        .expect("the producer starts")
}

/// How many times each item is in `out`, and how many items each consumer tag wrote.
fn tally(server: &Server) -> (HashMap<u64, u64>, HashMap<u64, u64>) {
    let mut conn = server.connection().unwrap();
    let mut times = HashMap::new();
    let mut by_tag = HashMap::new();
    for (item, tag) in common::items::<(u64, u64)>(&mut conn, "out") {
        *times.entry(item).or_insert(0) += 1;
        *by_tag.entry(tag).or_insert(0) += 1;
    }
    (times, by_tag)
}

/// Waits until `out` holds every item at least once, and `in` is empty with nothing pending.
fn wait_for_everything(server: &Server) {
    let mut conn = server.connection().unwrap();
    wait_until("every item is in `out`", WAIT, || {
        common::len(&mut conn, "out") as u64 >= ITEMS && tally(server).0.len() as u64 == ITEMS
    });
    wait_until("`in` is empty and nothing is pending", WAIT, || {
        common::len(&mut conn, "in") == 0 && common::pending(&mut conn, "in", "engine") == 0
    });
}

#[test]
fn two_consumers_share_the_items_exactly_once() {
    let _heavy = common::heavy();
    let server = Server::start().unwrap();
    let consumers = [
        Consumer::spawn(&server, 1, "", None),
        Consumer::spawn(&server, 2, "", None),
    ];
    let mut conn = server.connection().unwrap();
    assert_eq!(common::consumers(&mut conn, "in", "engine").len(), 2);
    let producer = produce(&server);
    assert_eq!(producer.join().unwrap().processed(), ITEMS);
    wait_for_everything(&server);
    for consumer in consumers {
        consumer.stop();
    }
    let (times, by_tag) = tally(&server);
    assert_eq!(times.len() as u64, ITEMS);
    assert!(
        times.values().all(|&n| n == 1),
        "an item was processed twice"
    );
    assert_eq!(common::len(&mut conn, "out") as u64, ITEMS);
    assert_eq!(by_tag.len(), 2, "both consumers took a share: {by_tag:?}");
    assert_eq!(by_tag.values().sum::<u64>(), ITEMS);
    assert_eq!(common::pending(&mut conn, "in", "engine"), 0);
}

#[test]
fn a_killed_consumers_pending_items_are_claimed_by_the_other() {
    let _heavy = common::heavy();
    let server = Server::start().unwrap();
    // Entries idle for a second are claimed; the sweep runs every 100 ms.
    let query = "claim_idle_ms=1000";
    let mut victim = Consumer::spawn(&server, 1, query, Some(5_000));
    let survivor = Consumer::spawn(&server, 2, query, None);
    let mut conn = server.connection().unwrap();
    assert_eq!(common::consumers(&mut conn, "in", "engine").len(), 2);
    let producer = produce(&server);
    // The victim holds its 5,001st item, and everything it read after it, until killed.
    victim.expect_line("stalled");
    victim.child.kill().expect("SIGKILL the victim");
    victim.child.wait().expect("the victim is reaped");
    let left = common::consumers(&mut conn, "in", "engine");
    let victim_pending = left.get("c1").copied().unwrap_or(0);
    assert!(
        victim_pending > 0,
        "the victim held pending items: {left:?}"
    );

    assert_eq!(producer.join().unwrap().processed(), ITEMS);
    wait_for_everything(&server);
    // The victim's items were claimed: it has nothing pending any more.
    let after = common::consumers(&mut conn, "in", "engine");
    assert!(after.values().all(|&pending| pending == 0), "{after:?}");
    survivor.stop();
    let (times, by_tag) = tally(&server);
    assert_eq!(times.len() as u64, ITEMS, "no item is lost");
    assert!(by_tag.get(&2).copied().unwrap_or(0) >= victim_pending as u64);
}

#[test]
fn the_pipeline_resumes_after_the_server_restarts() {
    let _heavy = common::heavy();
    let mut server = Server::start_with(ServerOptions::new().append_only(true)).unwrap();
    let consumer = Consumer::spawn(&server, 1, "claim_idle_ms=1000", None);
    let mut conn = server.connection().unwrap();
    let producer = produce(&server);
    wait_until("a third of the items are through", WAIT, || {
        common::len(&mut conn, "out") as u64 >= ITEMS / 3
    });
    let before = common::len(&mut conn, "out");
    drop(conn);
    server.restart().unwrap();
    let mut conn = server.connection().unwrap();
    // What was written before the crash is still there.
    assert!(common::len(&mut conn, "out") >= before);
    assert_eq!(producer.join().unwrap().processed(), ITEMS);
    wait_for_everything(&server);
    let log = consumer.stop();
    let (times, _) = tally(&server);
    assert_eq!(times.len() as u64, ITEMS, "no item is lost:\n{log}");
}
