//! The threaded engine against a hand-written pipeline of the same shape: 1 frontend thread
//! -> N transport threads (x + 1) -> 1 backend thread (sum), the hand-written one on
//! `crossbeam-channel` bounded channels of capacity 1024 sending one item at a time.
//!
//! Also: the same shape with 4 transport threads on this machine's cores, `x + 1` with the
//! batch-native form (`map_batch`) against a hand-written pipeline moving `Vec` batches, the
//! latency of a lone item (median and p99; by default and with `inline_when_idle`) against
//! a hand-written pipeline of the same shape, and the peak of items held in memory with a backend 100 times slower than the
//! frontend.
//!
//! And `traced`: the throughput pipeline without a trace hook against the same pipeline in a
//! process whose trace hook samples 1% of items (sampling is per batch, so about 1% of the
//! batches of each stage have a span; see `engine_core::trace`), each run in a process of
//! its own, alternately: a cheap hook of this bench's own, the real `tracing-opentelemetry`
//! layer and hook of engine-observe with an exporter that drops the spans (feature `otel`:
//! `cargo bench --bench threads --features otel -- traced`), and a hook that samples
//! nothing. With `ENGINE_BENCH_BASE` set to the path of another build of this bench (an
//! earlier commit's), its rounds without a hook run alternately too, and this build's are
//! compared with them.
//!
//! Run with `cargo xtask bench threads`.

#![allow(clippy::print_stdout, reason = "a benchmark prints its table")]

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use engine_threads::Engine;

const ITEMS: u64 = 10_000_000;
const ROUNDS: usize = 5;

/// The engine: returns the backend's sum.
fn engine(items: u64, transports: usize) -> u64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let report = Engine::builder(0..items)
        .transport(|x: u64| x + 1)
        .transport_threads(transports)
        .backend_with(move |_| {
            let tx = tx.clone();
            Summer { sum: 0, tx }
        })
        .run()
        .expect("the engine runs");
    assert_eq!(report.processed(), items);
    rx.try_iter().sum()
}

/// A backend that sums and reports its sum at cleanup.
struct Summer {
    sum: u64,
    tx: std::sync::mpsc::Sender<u64>,
}

impl engine_core::Backend for Summer {
    type Input = u64;

    fn process(
        &mut self,
        x: u64,
        _: &engine_core::StageContext,
    ) -> Result<(), engine_core::StageError> {
        self.sum = self.sum.wrapping_add(x);
        Ok(())
    }

    fn cleanup(&mut self, _: &engine_core::StageContext) {
        let _ = self.tx.send(self.sum);
    }
}

/// The hand-written pipeline: per-item sends on bounded crossbeam channels.
fn baseline(items: u64, transports: usize) -> u64 {
    let (tx1, rx1) = crossbeam_channel::bounded::<u64>(1024);
    let (tx2, rx2) = crossbeam_channel::bounded::<u64>(1024);
    let frontend = thread::spawn(move || {
        for x in 0..items {
            tx1.send(x).expect("the transports run");
        }
    });
    let workers: Vec<_> = (0..transports)
        .map(|_| {
            let (rx1, tx2) = (rx1.clone(), tx2.clone());
            thread::spawn(move || {
                for x in rx1 {
                    tx2.send(x + 1).expect("the backend runs");
                }
            })
        })
        .collect();
    drop((rx1, tx2));
    let backend = thread::spawn(move || rx2.iter().fold(0_u64, u64::wrapping_add));
    frontend.join().expect("frontend");
    for w in workers {
        w.join().expect("transport");
    }
    backend.join().expect("backend")
}

/// The engine with the batch-native form: `x + 1` on whole batches.
fn engine_batched(items: u64, transports: usize) -> u64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let report = Engine::builder(0..items)
        .map_batch(|mut xs: Vec<u64>| {
            xs.iter_mut().for_each(|x| *x += 1);
            xs
        })
        .transport_threads(transports)
        .backend_with(move |_| {
            let tx = tx.clone();
            Summer { sum: 0, tx }
        })
        .run()
        .expect("the engine runs");
    assert_eq!(report.processed(), items);
    rx.try_iter().sum()
}

/// The hand-written pipeline with batching: `Vec<u64>` batches of 256 on bounded crossbeam
/// channels (4 batches each, 1024 items).
fn baseline_batched(items: u64, transports: usize) -> u64 {
    const BATCH: u64 = 256;
    let (tx1, rx1) = crossbeam_channel::bounded::<Vec<u64>>(4);
    let (tx2, rx2) = crossbeam_channel::bounded::<Vec<u64>>(4);
    let frontend = thread::spawn(move || {
        let mut x = 0;
        while x < items {
            let end = (x + BATCH).min(items);
            tx1.send((x..end).collect()).expect("the transports run");
            x = end;
        }
    });
    let workers: Vec<_> = (0..transports)
        .map(|_| {
            let (rx1, tx2) = (rx1.clone(), tx2.clone());
            thread::spawn(move || {
                for mut xs in rx1 {
                    xs.iter_mut().for_each(|x| *x += 1);
                    tx2.send(xs).expect("the backend runs");
                }
            })
        })
        .collect();
    drop((rx1, tx2));
    let backend = thread::spawn(move || rx2.iter().flatten().fold(0_u64, u64::wrapping_add));
    frontend.join().expect("frontend");
    for w in workers {
        w.join().expect("transport");
    }
    backend.join().expect("backend")
}

fn expected(items: u64) -> u64 {
    (1..=items).fold(0_u64, u64::wrapping_add)
}

fn throughput() {
    harness::header(
        "threads: 10M u64, 1 frontend -> T transports (x+1) -> 1 backend (sum), items/s",
    );
    for transports in [2, 4] {
        let (e, b) = harness::compare(
            ROUNDS,
            ITEMS,
            || assert_eq!(engine(ITEMS, transports), expected(ITEMS)),
            || assert_eq!(baseline(ITEMS, transports), expected(ITEMS)),
        );
        harness::row(&format!("{transports} transport threads"), &e, &b);
    }
}

/// `x + 1` with the batch-native form against a hand-written pipeline that moves `Vec`
/// batches.
fn batched() {
    harness::header(
        "threads: 10M u64, 1 frontend -> 2 transports (x+1 on whole batches) -> 1 backend, items/s",
    );
    let (e, b) = harness::compare(
        ROUNDS,
        ITEMS,
        || assert_eq!(engine_batched(ITEMS, 2), expected(ITEMS)),
        || assert_eq!(baseline_batched(ITEMS, 2), expected(ITEMS)),
    );
    harness::row("map_batch vs Vec<u64> batches of 256 (target 0.3)", &e, &b);
}

/// How long a lone item takes from the frontend to the backend through an idle pipeline: the
/// engine against a hand-written pipeline of the same shape (a frontend thread reading the
/// same input channel, 2 transport threads, a backend thread, one item per crossbeam send).
/// Samples alternate between the two, so both see the same machine load. Measured twice:
/// the engine by default, then with `inline_when_idle`.
fn latency() {
    latency_against_hand_written(false);
    latency_against_hand_written(true);
}

/// [`latency`] for the engine by default, or with `inline_when_idle` (a lone item runs
/// through the idle stages on the frontend thread).
fn latency_against_hand_written(inline: bool) {
    const SAMPLES: usize = 400;
    let (engine_in, engine_seen, engine) = engine_pipeline(inline);
    let (base_in, base_seen, baseline) = hand_written_pipeline();
    let one = |input: &crossbeam_channel::Sender<Instant>,
               seen: &crossbeam_channel::Receiver<Duration>| {
        input.send(Instant::now()).expect("the pipeline runs");
        seen.recv().expect("the item arrives")
    };
    let (mut engine_lat, mut base_lat) = harness::alternate(
        SAMPLES,
        0,
        Duration::from_millis(1),
        |_| one(&engine_in, &engine_seen),
        |_| one(&base_in, &base_seen),
    );
    drop((engine_in, base_in));
    engine();
    baseline();
    let how = if inline { ", inline_when_idle" } else { "" };
    println!(
        "\nthreads: latency of a lone item, frontend -> 2 transports -> backend ({SAMPLES} \
         samples{how})"
    );
    harness::latency_table(
        ("engine", &mut engine_lat),
        ("hand-written", &mut base_lat),
        "targets: median ratio <= 2, p99 ratio <= 3",
    );
}

type Pipeline = (
    crossbeam_channel::Sender<Instant>,
    crossbeam_channel::Receiver<Duration>,
    Box<dyn FnOnce()>,
);

/// The engine, fed through a channel, with 2 transport threads; with `inline`,
/// `inline_when_idle`.
fn engine_pipeline(inline: bool) -> Pipeline {
    let (input_tx, input_rx) = crossbeam_channel::unbounded::<Instant>();
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded::<Duration>();
    let builder = Engine::builder(input_rx)
        .transport(|t: Instant| t)
        .transport_threads(2)
        .backend(move |t: Instant| {
            let _ = seen_tx.send(t.elapsed());
        });
    let builder = if inline {
        builder.inline_when_idle()
    } else {
        builder
    };
    let handle = builder.spawn().expect("the engine starts");
    let join = move || {
        handle.join().expect("the engine ends");
    };
    (input_tx, seen_rx, Box::new(join))
}

/// The same shape by hand: one thread per stage (2 transports), one item per send.
fn hand_written_pipeline() -> Pipeline {
    let (input_tx, input_rx) = crossbeam_channel::unbounded::<Instant>();
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded::<Duration>();
    let (tx1, rx1) = crossbeam_channel::bounded::<Instant>(1024);
    let (tx2, rx2) = crossbeam_channel::bounded::<Instant>(1024);
    let mut threads = vec![thread::spawn(move || {
        for x in input_rx {
            tx1.send(x).expect("the transports run");
        }
    })];
    for _ in 0..2 {
        let (rx1, tx2) = (rx1.clone(), tx2.clone());
        threads.push(thread::spawn(move || {
            for x in rx1 {
                tx2.send(x).expect("the backend runs");
            }
        }));
    }
    drop((rx1, tx2));
    threads.push(thread::spawn(move || {
        for t in rx2 {
            let _ = seen_tx.send(t.elapsed());
        }
    }));
    let join = move || {
        for t in threads {
            t.join().expect("a hand-written stage");
        }
    };
    (input_tx, seen_rx, Box::new(join))
}

/// Items alive at once with a backend 100 times slower than the frontend: bounded by the
/// queues whatever the item count.
fn memory() {
    println!("\nthreads: items alive at once, backend 100x slower than the frontend");
    // Two queues, plus one batch of at most 1024 in the hands of the frontend, the
    // transport (in and out) and the backend.
    let bound = 2 * engine_threads::DEFAULT_QUEUE_CAPACITY + 4 * 1024;
    println!("{:>10} {:>12} {:>14}", "items", "peak alive", "bound");
    for items in [20_000_u64, 80_000] {
        let alive = Arc::new(AtomicI64::new(0));
        let peak = Arc::new(AtomicI64::new(0));
        let source = {
            let (alive, peak) = (Arc::clone(&alive), Arc::clone(&peak));
            (0..items).map(move |i| {
                spin(Duration::from_nanos(200));
                let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                Tracked(i, Arc::clone(&alive))
            })
        };
        let report = Engine::builder(source)
            .transport(|t: Tracked| t)
            .backend(|t: Tracked| {
                spin(Duration::from_micros(20));
                drop(t);
            })
            .run()
            .expect("the engine runs");
        assert_eq!(report.processed(), items);
        println!(
            "{:>10} {:>12} {:>14}",
            items,
            peak.load(Ordering::SeqCst),
            bound
        );
    }
}

/// An item that counts itself alive.
struct Tracked(
    #[allow(dead_code, reason = "the payload")] u64,
    Arc<AtomicI64>,
);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// A trace hook that samples one item in a hundred, as an exporter with a 1% ratio sampler
/// does: a context for each sampled batch, a span (ids, a `tracing` span entered, a guard)
/// per traced batch in each stage. What an exporter then does with a span is its own cost
/// (the `otel` mode pays it).
struct SampleHook {
    every: u64,
}

thread_local! {
    static RNG: std::cell::Cell<u64> = const { std::cell::Cell::new(0x9e37_79b9_7f4a_7c15) };
}

/// A random id (xorshift), as an exporter's id generator makes.
fn new_id() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x | 1
    })
}

impl engine_core::trace::TraceHook for SampleHook {
    fn current(&self) -> Option<engine_core::trace::TraceParent> {
        None
    }

    fn items_per_trace(&self) -> u64 {
        self.every
    }

    fn produced(&self, _stage: &str) -> Option<engine_core::trace::TraceParent> {
        let trace = (u128::from(new_id()) << 64) | u128::from(new_id());
        engine_core::trace::TraceParent::new(trace, new_id(), 1)
    }

    fn enter_batch(
        &self,
        batch: engine_core::trace::BatchInfo<'_>,
    ) -> Option<engine_core::trace::HookSpan> {
        let parent = batch.parents.first()?;
        let context = engine_core::trace::TraceParent::new(parent.trace_id(), new_id(), 1)?;
        let span = tracing::info_span!("batch", stage = batch.stage, items = batch.items);
        Some(engine_core::trace::HookSpan {
            context,
            guard: Box::new(span.entered()),
        })
    }
}

/// A span exporter that drops what it is given: the cost of the layer and the SDK's batch
/// processor, without a collector's.
#[cfg(feature = "otel")]
#[derive(Debug)]
struct Discard;

/// The spans the `otel` mode's exporter was given.
#[cfg(feature = "otel")]
static EXPORTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(feature = "otel")]
impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        EXPORTED.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Installs engine-observe's `tracing-opentelemetry` layer (at `info`, as a program would
/// filter) and its hook, sampling 1%; returns it, to shut down after the round.
#[cfg(feature = "otel")]
fn install_otel() -> engine_observe::otel::Otel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let otel = engine_observe::otel::Otel::with_exporter(Discard, "bench").sample(0.01);
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(otel.layer())
        .init();
    otel.install().expect("the only hook");
    otel
}

/// One round of the throughput pipeline (2 transports) in this process, with the trace hook
/// of `mode` (`none`: none): prints its rate, and in the `otel` mode a second line with the
/// number of spans exported.
fn traced_child(mode: &str) {
    #[cfg(feature = "otel")]
    let otel = (mode == "otel").then(install_otel);
    match mode {
        "sampled" => engine_core::trace::install(SampleHook { every: 100 }),
        "hooked" => engine_core::trace::install(SampleHook { every: 0 }),
        _ => Ok(()),
    }
    .expect("the only hook");
    let started = Instant::now();
    assert_eq!(engine(ITEMS, 2), expected(ITEMS));
    println!("{}", ITEMS as f64 / started.elapsed().as_secs_f64());
    #[cfg(feature = "otel")]
    if let Some(otel) = otel {
        otel.shutdown();
        println!("{}", EXPORTED.load(Ordering::Relaxed));
    }
}

/// The throughput pipeline without a trace hook against the same with a hook: sampling 1%
/// of items with the bench's hook and with the real `tracing-opentelemetry` layer (feature
/// `otel`), and sampling nothing; and, with `ENGINE_BENCH_BASE`, without a hook against
/// another build. Each round runs in a fresh process (a hook, once installed, stays), the
/// modes alternately.
fn traced() {
    harness::header(
        "threads: 10M u64, 1 frontend -> 2 transports (x+1) -> 1 backend, trace hook vs none, items/s",
    );
    let base = std::env::var_os("ENGINE_BENCH_BASE");
    // The spans the `otel` rounds exported.
    let mut spans = Vec::new();
    // A round: its rate, and the CPU time of its process (less swayed than the rate by other
    // processes on a loaded machine).
    let mut round = |mode: &str| -> (f64, Option<f64>) {
        let exe = match (mode, &base) {
            ("base", Some(base)) => std::path::PathBuf::from(base),
            _ => std::env::current_exe().expect("this bench"),
        };
        let mode = if mode == "base" { "none" } else { mode };
        let before = children_cpu();
        let out = std::process::Command::new(exe)
            .args(["__traced_child", mode])
            .output()
            .expect("the round runs");
        assert!(out.status.success(), "the {mode} round failed");
        let cpu = before.zip(children_cpu()).map(|(b, a)| a - b);
        let out = String::from_utf8_lossy(&out.stdout);
        let mut lines = out.lines();
        let rate = lines.next().and_then(|l| l.trim().parse().ok());
        if let Some(n) = lines.next().and_then(|l| l.trim().parse::<f64>().ok()) {
            spans.push(n);
        }
        (rate.expect("a rate"), cpu)
    };
    let mut modes = vec!["none", "sampled", "hooked"];
    if cfg!(feature = "otel") {
        modes.push("otel");
    }
    if base.is_some() {
        modes.push("base");
    }
    // More rounds than the other cases: each is short, and the ratios are small.
    let rounds = std::env::var("ENGINE_BENCH_TRACED_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ROUNDS * 2);
    // Rates (and items per CPU second) in round order: a round's modes run one after the
    // other, under the same load, each round starting with the next mode so that none always
    // follows the same one.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut per_cpu: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for r in 0..rounds {
        for i in (0..modes.len()).map(|i| (i + r) % modes.len()) {
            let (rate, cpu) = round(modes[i]);
            rates[i].push(rate);
            if let Some(cpu) = cpu.filter(|c| *c > 0.0) {
                per_cpu[i].push(ITEMS as f64 / cpu);
            }
        }
    }
    let at = |mode: &str| modes.iter().position(|m| *m == mode);
    let sorted = |rates: &[f64]| {
        let mut rates = rates.to_vec();
        rates.sort_by(f64::total_cmp);
        harness::Figures { rates }
    };
    let paired = |a: &[f64], b: &[f64]| {
        let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
        sorted(&ratios).median()
    };
    for (case, mode, against) in [
        (
            "1% sampled, the bench's hook (target 0.9)",
            "sampled",
            "none",
        ),
        (
            "1% sampled, otel layer, spans dropped (0.9)",
            "otel",
            "none",
        ),
        ("a hook that samples nothing", "hooked", "none"),
        (
            "no hook, this build vs the base (target 0.98)",
            "none",
            "base",
        ),
    ] {
        let (Some(i), Some(j)) = (at(mode), at(against)) else {
            continue;
        };
        harness::row(case, &sorted(&rates[i]), &sorted(&rates[j]));
        // The same ratio round by round, whose median shrugs off load that changes
        // between rounds; and the ratio of items per CPU second of the two processes.
        println!(
            "{:<44} {:>42.2}",
            "  median of the rounds' ratios",
            paired(&rates[i], &rates[j])
        );
        if per_cpu[i].len() == rounds && per_cpu[j].len() == rounds {
            println!(
                "{:<44} {:>42.2}",
                "  same, items per CPU second",
                paired(&per_cpu[i], &per_cpu[j])
            );
        }
    }
    if !spans.is_empty() {
        println!(
            "  otel: {:.0} spans per round of {ITEMS} items (median)",
            sorted(&spans).median()
        );
    }
}

/// The CPU time, in seconds, of this process's children that ended (Linux: `cutime` and
/// `cstime` of `/proc/self/stat`, in ticks of 1/100 s); `None` elsewhere.
fn children_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses: the state is field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<f64>().ok();
    Some((ticks(16)? + ticks(17)?) / 100.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    if let Some("__traced_child") = args.next().as_deref() {
        traced_child(args.next().as_deref().unwrap_or("none"));
        return;
    }
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("throughput") {
        throughput();
    }
    if run("batched") {
        batched();
    }
    if run("latency") {
        latency();
    }
    if run("memory") {
        memory();
    }
    if run("traced") {
        traced();
    }
}
