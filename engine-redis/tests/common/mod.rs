//! Shared by the behaviour tests: starting a real `redis-server` (through
//! [`engine_redis::testing`]), and helpers to inspect streams.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part of this module"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{ChildStdout, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine_redis::testing::{Cluster, Server};
use redis::streams::{StreamInfoConsumersReply, StreamPendingReply, StreamRangeReply};
use redis::{Commands, ConnectionLike};

/// Serialises the heavy tests of one test binary: the machine has two cores.
pub static HEAVY: Mutex<()> = Mutex::new(());

/// Takes the [`HEAVY`] lock, even if a test that held it panicked.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The URL of `stream` on `server`, with the query `query` (if not empty).
pub fn url(server: &Server, stream: &str, query: &str) -> String {
    let mut url = server.stream_url(stream);
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// A connection to `cluster`, from every node as a seed: it follows the slots wherever
/// they are served.
pub fn cluster_connection(cluster: &Cluster) -> redis::cluster::ClusterConnection {
    let seeds: Vec<String> = cluster
        .ports()
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect();
    redis::cluster::ClusterClient::new(seeds)
        .expect("the seeds are valid")
        .get_connection()
        .expect("the cluster answers")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Every entry of `stream`, in order, as (id, fields).
pub fn entries(conn: &mut impl ConnectionLike, stream: &str) -> Vec<redis::streams::StreamId> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = conn
            .xrange_count(stream, &start, "+", 10_000)
            .expect("XRANGE");
        let Some(last) = page.ids.last() else {
            return out;
        };
        start = format!("({}", last.id);
        out.extend(page.ids);
    }
}

/// The decoded `d` fields of every entry of `stream`.
pub fn items<T: serde::de::DeserializeOwned>(
    conn: &mut impl ConnectionLike,
    stream: &str,
) -> Vec<T> {
    entries(conn, stream)
        .iter()
        .map(|entry| {
            let bytes: Vec<u8> = entry.get("d").expect("every entry has a `d` field");
            engine_core::protocol::from_bytes(&bytes).expect("every entry decodes")
        })
        .collect()
}

/// The length of `stream` (0 if it does not exist).
pub fn len(conn: &mut impl ConnectionLike, stream: &str) -> usize {
    conn.xlen(stream).expect("XLEN")
}

/// How many entries of `stream` are pending in `group` (0 if there is no group).
pub fn pending(conn: &mut impl ConnectionLike, stream: &str, group: &str) -> usize {
    conn.xpending::<_, _, StreamPendingReply>(stream, group)
        .map_or(0, |reply| reply.count())
}

/// The consumers of `group` and how many entries each has pending.
pub fn consumers(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> HashMap<String, usize> {
    conn.xinfo_consumers::<_, _, StreamInfoConsumersReply>(stream, group)
        .map(|reply| {
            reply
                .consumers
                .into_iter()
                .map(|c| (c.name, c.pending))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `condition` until it holds, panicking with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        // Polling an external process's state: yield, do not sleep as synchronisation.
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// This test executable run again in a role: only the test `role` (which does nothing in a
/// normal run), its output shown. The role's environment is the caller's to add.
pub fn role(role: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test executable"));
    command.args([role, "--exact", "--nocapture", "--test-threads=1"]);
    command
}

/// Reads a role process's output until a line that ends with `line`.
///
/// # Panics
///
/// If the process ends its output first.
pub fn expect_line(stdout: &mut BufReader<ChildStdout>, line: &str) {
    let mut got = String::new();
    loop {
        got.clear();
        let n = stdout
            .read_line(&mut got)
            .expect("read the consumer's output");
        assert!(n > 0, "the consumer exited before saying {line:?}");
        if got.trim_end().ends_with(line) {
            return;
        }
    }
}

/// Checks that a reason or message the crate wrote reads plainly: no Rust type path (`::`)
/// and no backtick.
pub fn assert_plain(reason: &str) {
    assert!(
        !reason.contains("::") && !reason.contains('`'),
        "not plain words: {reason}"
    );
}
