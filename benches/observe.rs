//! What watching an engine costs: the threads pipeline (10M `u64`, 1 frontend -> 2 transports
//! (x + 1) -> 1 backend) with its metrics served and scraped every 100 ms, and with the
//! progress line drawing, each against the same pipeline unwatched in the same run; and how
//! often `engine top` can refresh while an engine runs at full speed.
//!
//! Run with `cargo xtask bench observe`.

#![allow(clippy::print_stdout, reason = "a benchmark prints its table")]

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use engine::observe::{MetricsServer, Progress, Scraper};
use engine::threads::{Engine, EngineHandle};

use prometheus_client::registry::Registry;

const ITEMS: u64 = 10_000_000;
const ROUNDS: usize = 9;

fn expected(items: u64) -> u64 {
    (1..=items).fold(0_u64, u64::wrapping_add)
}

/// Starts the pipeline; the backend's sum lands in `sum`.
fn start(items: u64, sum: &Arc<AtomicU64>) -> EngineHandle {
    let sum = Arc::clone(sum);
    let mut local = 0_u64;
    Engine::builder(0..items)
        .transport(|x: u64| x + 1)
        .transport_threads(2)
        .backend(move |x: u64| {
            local = local.wrapping_add(x);
            sum.store(local, Ordering::Relaxed);
        })
        .spawn()
        .expect("the engine starts")
}

/// Runs the pipeline with `watch` looking at it from another thread until it ends (the
/// flag says when); returns how long the run took, from its start to its end (not to the
/// watcher's own end, which may come in the middle of its interval).
fn watched(
    watch: impl FnOnce(engine::threads::EngineMetrics, engine::threads::StatsReader, &AtomicBool) + Send,
) -> Duration {
    let sum = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handle = start(ITEMS, &sum);
    let (metrics, reader) = (handle.metrics(), handle.stats_reader());
    let done = AtomicBool::new(false);
    let (report, took) = thread::scope(|s| {
        s.spawn(|| watch(metrics, reader, &done));
        let report = handle.join();
        let took = started.elapsed();
        done.store(true, Ordering::SeqCst);
        (report, took)
    });
    assert_eq!(report.expect("the engine runs").processed(), ITEMS);
    assert_eq!(sum.load(Ordering::Relaxed), expected(ITEMS));
    took
}

/// Runs both sides alternately, each timing its own run; returns their rates.
fn compare(
    mut watched: impl FnMut() -> Duration,
    mut plain: impl FnMut() -> Duration,
) -> (harness::Figures, harness::Figures) {
    watched();
    plain();
    let rate = |d: Duration| ITEMS as f64 / d.as_secs_f64().max(1e-12);
    let (mut w, mut p) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        w.push(rate(watched()));
        p.push(rate(plain()));
    }
    w.sort_by(f64::total_cmp);
    p.sort_by(f64::total_cmp);
    (harness::Figures { rates: w }, harness::Figures { rates: p })
}

fn unwatched() -> Duration {
    watched(|_, _, _| {})
}

/// Serves the engine's metrics and scrapes them every 100 ms, as Prometheus would.
fn with_metrics() -> Duration {
    watched(|metrics, _, done| {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics));
        let server = MetricsServer::builder(Arc::new(registry))
            .start()
            .expect("the server starts");
        let scraper = Scraper::new(&server.local_addr().to_string()).expect("an address");
        while !done.load(Ordering::SeqCst) {
            let snapshot = scraper.scrape().expect("a scrape");
            assert!(!snapshot.stages.is_empty());
            thread::sleep(Duration::from_millis(100)); // The scrape interval.
        }
    })
}

/// Draws the progress line (every 200 ms, as `engine run` does).
fn with_progress() -> Duration {
    watched(|_, reader, done| {
        let progress = Progress::start(Duration::from_millis(200), move || {
            (engine::snapshot_of(&reader.read()), None)
        });
        while !done.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5)); // Idle until the run ends.
        }
        progress.finish();
    })
}

/// How many times a second `engine top`'s scrape and table can refresh while the engine
/// runs at full speed.
fn top_refresh() {
    let sum = Arc::new(AtomicU64::new(0));
    let handle = start(u64::MAX, &sum);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(handle.metrics()));
    let server = MetricsServer::builder(Arc::new(registry))
        .start()
        .expect("the server starts");
    let addr = server.local_addr().to_string();
    let scraper = Scraper::new(&addr).expect("an address");
    let mut before = None;
    let mut took = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let t = Instant::now();
        let now = scraper.scrape().expect("a scrape");
        let lines = engine::observe::top::render(&addr, before.as_ref(), &now);
        assert!(lines.len() > 3);
        took.push(t.elapsed());
        before = Some(now);
    }
    handle.stop_now();
    let _ = handle.join();
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "engine top: one refresh (scrape + table) takes {:.2} ms (median of {}), at most {:.0} refreshes/s; target >= 4/s",
        median.as_secs_f64() * 1e3,
        took.len(),
        1.0 / median.as_secs_f64().max(1e-9)
    );
}

fn main() {
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("metrics") {
        let (e, b) = compare(with_metrics, unwatched);
        harness::header("observe: threads pipeline, 10M u64, items/s");
        harness::row("metrics scraped every 100 ms vs none", &e, &b);
        println!("target ratio >= 0.97");
    }
    if run("progress") {
        let (e, b) = compare(with_progress, unwatched);
        harness::header("observe: threads pipeline, 10M u64, items/s");
        harness::row("progress line vs none", &e, &b);
        println!("target ratio >= 0.97");
    }
    if run("top") {
        top_refresh();
    }
}
