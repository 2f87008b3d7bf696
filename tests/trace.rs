//! One trace per item: an item made by a frontend thread, transported in a worker process and
//! appended to a Redis stream, then read by a consumer in another process, leaves spans in
//! all three processes that share one trace id. Without a trace hook, nothing is captured
//! and no entry has a `traceparent` field.
//!
//! Each process that traces installs a small hook (below) that writes its finished spans to
//! a file of its own, one line per span: what an exporter would send to a collector.
//! Worker processes are copies of this binary, so the hook is installed before
//! `engine::proc::init()`, and the workers install it too.

#![allow(clippy::print_stdout, reason = "a test runner reports")]

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::hash::BuildHasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::core::trace::{self, BatchInfo, HookSpan, TraceHook, TraceParent};
use engine::core::{StageContext, StageError, Transport};
use engine::proc::ProcTransport;
use engine::redis::{SinkOptions, StreamAddress, StreamSink, StreamSource, TRACE_FIELD};
use engine::threads::Engine;
use engine_redis::redis;
use engine_redis::testing::Server;
use serde::{Deserialize, Serialize};

/// Where a tracing process writes its spans (a directory); unset, the process traces nothing.
const SPANS_DIR: &str = "ENGINE_TEST_SPANS_DIR";
/// The role a copy of this binary plays: `producer` or `consumer`.
const ROLE: &str = "ENGINE_TEST_TRACE_ROLE";
/// The stream address a role uses.
const ADDRESS: &str = "ENGINE_TEST_TRACE_ADDRESS";
/// Set: the producer's sink has a bound (its entries are appended by a script).
const BOUNDED: &str = "ENGINE_TEST_TRACE_BOUNDED";

const WAIT: Duration = Duration::from_secs(60);

/// A hook that samples every item and writes each finished span as a line of
/// `<name> <trace id> <span id> <parent id or -> <linked span ids, comma-separated, or -> <pid>`.
struct FileHook {
    path: PathBuf,
}

fn new_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::hash::RandomState::new().hash_one((n, std::process::id())) | 1
}

/// Writes its span's line when dropped, as a span ends.
struct Finish {
    path: PathBuf,
    line: String,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .expect("the spans file opens");
        writeln!(file, "{}", self.line).expect("the span is written");
    }
}

impl TraceHook for FileHook {
    fn current(&self) -> Option<TraceParent> {
        None
    }

    fn items_per_trace(&self) -> u64 {
        1
    }

    fn produced(&self, stage: &str) -> Option<TraceParent> {
        let trace_id = (u128::from(new_id()) << 64) | u128::from(new_id());
        let context = TraceParent::new(trace_id, new_id(), TraceParent::SAMPLED)?;
        drop(Finish {
            path: self.path.clone(),
            line: line(&format!("produce:{stage}"), &context, None, &[]),
        });
        Some(context)
    }

    fn enter_batch(&self, batch: BatchInfo<'_>) -> Option<HookSpan> {
        let (parent, links) = batch.parents.split_first()?;
        let context = TraceParent::new(parent.trace_id(), new_id(), parent.flags())?;
        let line = line(
            &format!("{}:{}", batch.kind, batch.stage),
            &context,
            Some(parent),
            links,
        );
        Some(HookSpan {
            context,
            guard: Box::new(Finish {
                path: self.path.clone(),
                line,
            }),
        })
    }
}

fn line(
    name: &str,
    span: &TraceParent,
    parent: Option<&TraceParent>,
    links: &[TraceParent],
) -> String {
    let parent = parent.map_or("-".to_owned(), |p| format!("{:016x}", p.span_id()));
    let links = if links.is_empty() {
        "-".to_owned()
    } else {
        let ids: Vec<String> = links
            .iter()
            .map(|l| format!("{:032x}", l.trace_id()))
            .collect();
        ids.join(",")
    };
    format!(
        "{name} {:032x} {:016x} {parent} {links} {}",
        span.trace_id(),
        span.span_id(),
        std::process::id()
    )
}

/// Adds one, in a worker process.
#[derive(Clone, Serialize, Deserialize)]
struct AddOne;

impl Transport for AddOne {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        Ok(Some(x + 1))
    }
}

fn main() {
    if let Some(dir) = std::env::var_os(SPANS_DIR) {
        let path = Path::new(&dir).join(format!("spans-{}.txt", std::process::id()));
        trace::install(FileHook { path }).expect("the only hook of this process");
    }
    engine::proc::init();
    match std::env::var(ROLE).as_deref() {
        Ok("producer") => producer(),
        Ok("consumer") => consumer(),
        _ => {
            one_item_leaves_one_trace_in_three_processes();
            println!("test one_item_leaves_one_trace_in_three_processes ... ok");
            without_a_hook_nothing_is_traced();
            println!("test without_a_hook_nothing_is_traced ... ok");
        }
    }
}

fn address() -> StreamAddress {
    let address = std::env::var(ADDRESS).expect("the role is given its stream");
    StreamAddress::parse(&address).expect("a valid stream address")
}

/// Makes one item on a frontend thread, adds one in a worker process, and appends it.
fn producer() {
    let mut sink = StreamSink::<u64>::new(address());
    if std::env::var_os(BOUNDED).is_some() {
        sink = sink.options(SinkOptions::default().bound(1000));
    }
    let report = Engine::builder(vec![41_u64])
        .transport(ProcTransport::new(AddOne).workers(1))
        .backend(sink)
        .run()
        .expect("the producer runs");
    report.check().expect("the counts add up");
    assert_eq!(report.processed(), 1);
}

/// Reads the item from the stream and stops.
fn consumer() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = {
        let seen = Arc::clone(&seen);
        Engine::builder(StreamSource::<u64>::new(address()))
            .backend(move |x: u64| seen.lock().unwrap().push(x))
            .spawn()
            .expect("the consumer starts")
    };
    let deadline = Instant::now() + WAIT;
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the consumer read nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.stop();
    handle.join().expect("the consumer ends");
    assert_eq!(*seen.lock().unwrap(), [42]);
}

/// Runs this binary in `role`, tracing into `spans` if given.
fn run_role(role: &str, address: &str, spans: Option<&Path>) {
    run_role_with(role, address, spans, false);
}

/// [`run_role`], the producer's sink bounded if `bounded`.
fn run_role_with(role: &str, address: &str, spans: Option<&Path>, bounded: bool) {
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command.env(ROLE, role).env(ADDRESS, address);
    if bounded {
        command.env(BOUNDED, "1");
    } else {
        command.env_remove(BOUNDED);
    }
    match spans {
        Some(dir) => command.env(SPANS_DIR, dir),
        None => command.env_remove(SPANS_DIR),
    };
    let status = command.status().expect("the role starts");
    assert!(status.success(), "the {role} failed: {status}");
}

/// Every span line written into `dir`, as (pid, fields).
fn spans(dir: &Path) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the spans directory") {
        let text = std::fs::read_to_string(entry.expect("an entry").path()).expect("a spans file");
        out.extend(
            text.lines()
                .map(|l| l.split(' ').map(str::to_owned).collect::<Vec<_>>()),
        );
    }
    out
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("engine-trace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

fn one_item_leaves_one_trace_in_three_processes() {
    let server = Server::start().expect("redis-server starts");
    let address = format!("{}?block_ms=50", server.stream_url("traced"));
    let dir = fresh_dir("traced");
    run_role("producer", &address, Some(&dir));

    // The entry carries the trace context of the span that appended it.
    let mut conn = server.connection().expect("a connection");
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("traced")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    assert_eq!(entries.ids.len(), 1);
    let header: String = entries.ids[0]
        .get(TRACE_FIELD)
        .expect("the entry has a traceparent");
    let header: TraceParent = header.parse().expect("a valid traceparent");

    run_role("consumer", &address, Some(&dir));

    let spans = spans(&dir);
    // A bounded sink appends through a script: its entries carry the context too.
    let bounded = format!("{}?block_ms=50", server.stream_url("bounded"));
    let bounded_dir = fresh_dir("bounded");
    run_role_with("producer", &bounded, Some(&bounded_dir), true);
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("bounded")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    assert_eq!(entries.ids.len(), 1);
    let bounded_header: String = entries.ids[0]
        .get(TRACE_FIELD)
        .expect("the bounded sink's entry has a traceparent");
    let bounded_header: TraceParent = bounded_header.parse().expect("a valid traceparent");
    let bounded_spans = self::spans(&bounded_dir);
    assert!(
        bounded_spans
            .iter()
            .any(|s| s[1] == format!("{:032x}", bounded_header.trace_id())),
        "the bounded entry's trace is the producer's: {bounded_spans:#?}"
    );
    let _ = std::fs::remove_dir_all(&bounded_dir);

    let pids: BTreeSet<&str> = spans.iter().map(|s| s[5].as_str()).collect();
    assert_eq!(pids.len(), 3, "spans from three processes: {spans:#?}");
    let traces: BTreeSet<&str> = spans.iter().map(|s| s[1].as_str()).collect();
    assert_eq!(traces.len(), 1, "one trace id: {spans:#?}");
    assert_eq!(
        format!("{:032x}", header.trace_id()),
        *traces.first().unwrap()
    );
    // Each span but the item's own has a parent among the spans: one tree.
    let ids: BTreeSet<&str> = spans.iter().map(|s| s[2].as_str()).collect();
    let roots: Vec<&Vec<String>> = spans.iter().filter(|s| s[3] == "-").collect();
    assert_eq!(roots.len(), 1, "one root: {spans:#?}");
    assert!(roots[0][0].starts_with("produce:"), "{spans:#?}");
    for span in &spans {
        assert!(
            span[3] == "-" || ids.contains(span[3].as_str()),
            "a parent outside the trace: {spans:#?}"
        );
    }
    // The worker's span and the consumer's are there, by name.
    for name in ["transport:", "backend:"] {
        assert!(
            spans.iter().any(|s| s[0].starts_with(name)),
            "no {name} span: {spans:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn without_a_hook_nothing_is_traced() {
    let server = Server::start().expect("redis-server starts");
    let address = format!("{}?block_ms=50", server.stream_url("plain"));
    let dir = fresh_dir("plain");
    run_role("producer", &address, None);
    let mut conn = server.connection().expect("a connection");
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("plain")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    assert_eq!(entries.ids.len(), 1);
    assert!(
        !entries.ids[0].map.contains_key(TRACE_FIELD),
        "an untraced entry has no traceparent: {:?}",
        entries.ids[0].map
    );
    run_role("consumer", &address, None);
    assert!(spans(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
