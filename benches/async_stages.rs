//! Async stages against hand-written tokio and against blocking threads:
//!
//! - 5 ms of simulated I/O per item (a tokio timer), 4,096 in flight: the engine's async
//!   transport against `buffer_unordered(4096)` on a runtime of the same size, and against the
//!   same work on 256 blocking transport threads (`thread::sleep`);
//! - memory: the resident growth while 4,096 items wait, async against 4,096 blocking threads;
//! - a future that is ready at once (`x + 1`): the async transport against the blocking one,
//!   on the same engine (the cost of the async path);
//! - adaptive concurrency against a loopback server whose latency rises steeply beyond 64
//!   requests at once, against the best fixed concurrency of a sweep.
//!
//! Run with `cargo xtask bench async_stages`; `cargo bench --bench async_stages -- ready`
//! runs one case (`io`, `ready`, `adaptive`).

#![allow(clippy::print_stdout, reason = "a benchmark prints its table")]

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use engine_threads::{Async, Engine};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IO: Duration = Duration::from_millis(5);
const ROUNDS: usize = 5;

fn engine_async(items: u64, k: usize) -> u64 {
    let report = Engine::builder(0..items)
        .transport(
            Async::map(|x: u64| async move {
                tokio::time::sleep(IO).await;
                x
            })
            .concurrency(k),
        )
        .backend(|_: u64| {})
        .run()
        .expect("the engine runs");
    report.processed()
}

fn engine_blocking(items: u64, threads: usize) -> u64 {
    let report = Engine::builder(0..items)
        .transport(|x: u64| {
            thread::sleep(IO);
            x
        })
        .transport_threads(threads)
        .backend(|_: u64| {})
        .run()
        .expect("the engine runs");
    report.processed()
}

fn hand_written(runtime: &tokio::runtime::Runtime, items: u64, k: usize) -> u64 {
    runtime.block_on(async {
        futures_util::stream::iter(0..items)
            .map(|x| async move {
                tokio::time::sleep(IO).await;
                x
            })
            .buffer_unordered(k)
            .fold(0_u64, |n, _| async move { n + 1 })
            .await
    })
}

/// Resident bytes of this process now.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The most the resident size grew while `f` ran.
fn growth(f: impl FnOnce()) -> u64 {
    let before = resident();
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(resident(), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    f();
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("the sampler ends");
    peak.load(Ordering::Relaxed).saturating_sub(before)
}

/// 5 ms per request up to 64 at once, then steeply more: 5 ms x (n / 64)^4.
fn degrading(active: usize) -> Duration {
    let over = (active as f64 / 64.0).max(1.0);
    Duration::from_secs_f64((0.005 * over.powi(4)).min(1.0))
}

/// Serves 8-byte requests, each answered after `degrading` of the requests in progress.
async fn serve(listener: TcpListener) {
    let active = Arc::new(AtomicU64::new(0));
    while let Ok((mut stream, _)) = listener.accept().await {
        let active = Arc::clone(&active);
        tokio::spawn(async move {
            let mut request = [0_u8; 8];
            if stream.read_exact(&mut request).await.is_ok() {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(degrading(now as usize)).await;
                active.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.write_all(&request).await;
            }
        });
    }
}

async fn request(addr: std::net::SocketAddr, x: u64) -> std::io::Result<u64> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&x.to_le_bytes()).await?;
    let mut answer = [0_u8; 8];
    stream.read_exact(&mut answer).await?;
    Ok(u64::from_le_bytes(answer))
}

/// Items per second through the degrading server, with a fixed K or adaptive up to 1,024.
fn through_server(addr: std::net::SocketAddr, items: u64, fixed: Option<usize>) -> f64 {
    let stage = Async::try_map(move |x: u64| request(addr, x));
    let stage = match fixed {
        Some(k) => stage.concurrency(k),
        None => stage.adaptive(1_024),
    };
    let started = std::time::Instant::now();
    let report = Engine::builder(0..items)
        .transport(stage)
        .backend(|_: u64| {})
        .run()
        .expect("the engine runs");
    assert_eq!(report.processed(), items);
    items as f64 / started.elapsed().as_secs_f64()
}

fn adaptive_against_a_sweep(runtime: &tokio::runtime::Runtime) {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    runtime.spawn(serve(listener));
    const ITEMS: u64 = 40_000;
    println!("\nadaptive concurrency against a server degrading beyond 64 at once (items/s)");
    let mut best = (0, 0.0_f64);
    for k in [16, 32, 48, 64, 80, 128] {
        let rate = through_server(addr, ITEMS, Some(k));
        println!("fixed K = {k:<5} {rate:>12.0}");
        if rate > best.1 {
            best = (k, rate);
        }
    }
    let mut adaptive: Vec<f64> = (0..3).map(|_| through_server(addr, ITEMS, None)).collect();
    adaptive.sort_by(f64::total_cmp);
    println!(
        "adaptive (median of 3) {:>8.0}, best fixed K = {} {:.0}, ratio {:.2}",
        adaptive[1],
        best.0,
        best.1,
        adaptive[1] / best.1
    );
}

/// The x + 1 case: an async transport whose future is ready at once, against the blocking
/// transport on the same engine.
fn ready_at_once() {
    harness::header("a future ready at once: x + 1 (items/s)");
    const READY_ITEMS: u64 = 2_000_000;
    let (ready, blocking) = harness::compare(
        ROUNDS,
        READY_ITEMS,
        || {
            Engine::builder(0..READY_ITEMS)
                .transport(Async::map(|x: u64| async move { x + 1 }))
                .backend(|_: u64| {})
                .run()
                .expect("the engine runs")
                .processed()
        },
        || {
            Engine::builder(0..READY_ITEMS)
                .transport(|x: u64| x + 1)
                .backend(|_: u64| {})
                .run()
                .expect("the engine runs")
                .processed()
        },
    );
    harness::row("async x + 1 vs blocking x + 1", &ready, &blocking);
}

/// 5 ms of I/O per item at 4,096 in flight: against `buffer_unordered`, 256 blocking
/// threads, and the memory of 4,096 blocking threads.
fn io_bound(runtime: &tokio::runtime::Runtime) {
    harness::header("5 ms of I/O per item, 4,096 in flight (items/s)");
    const IO_ITEMS: u64 = 200_000;
    let (engine, baseline) = harness::compare(
        ROUNDS,
        IO_ITEMS,
        || engine_async(IO_ITEMS, 4096),
        || hand_written(runtime, IO_ITEMS, 4096),
    );
    harness::row(
        "async transport vs buffer_unordered(4096)",
        &engine,
        &baseline,
    );
    const BLOCKING_ITEMS: u64 = 20_000;
    let (_, blocking) = harness::compare(
        1,
        BLOCKING_ITEMS,
        || 0,
        || engine_blocking(BLOCKING_ITEMS, 256),
    );
    harness::row(
        "async transport vs 256 blocking threads",
        &engine,
        &blocking,
    );

    println!("\nresident growth with 4,096 items waiting");
    let async_growth = growth(|| {
        engine_async(40_000, 4096);
    });
    let blocking_growth = growth(|| {
        engine_blocking(40_000, 4096);
    });
    println!(
        "async: {:.1} MiB, 4,096 blocking threads: {:.1} MiB, ratio {:.2}",
        async_growth as f64 / (1 << 20) as f64,
        blocking_growth as f64 / (1 << 20) as f64,
        async_growth as f64 / blocking_growth.max(1) as f64
    );
}

fn main() {
    // `cargo bench --bench async_stages -- io ready adaptive` runs the cases named (all when
    // none is).
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| ["io", "ready", "adaptive"].contains(&a.as_str()))
        .collect();
    let runs = |case: &str| named.is_empty() || named.iter().any(|n| n == case);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if runs("io") {
        io_bound(&runtime);
    }
    if runs("ready") {
        ready_at_once();
    }
    if runs("adaptive") {
        adaptive_against_a_sweep(&runtime);
    }
}
