//! The threaded engine against a hand-written pipeline of the same shape: 1 frontend thread
//! -> N transport threads (x + 1) -> 1 backend thread (sum), the hand-written one on
//! `crossbeam-channel` bounded channels of capacity 1024 sending one item at a time.
//!
//! Also: the same shape with 4 transport threads on this machine's cores, the latency of a
//! lone item, and the peak of items held in memory with a backend 100 times slower than the
//! frontend.
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

/// The median time for a lone item to go from the frontend to the backend, through an idle
/// engine, against the same hop on the hand-written pipeline.
fn latency() {
    const SAMPLES: usize = 200;
    let (input_tx, input_rx) = crossbeam_channel::unbounded::<Instant>();
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded::<Duration>();
    let handle = Engine::builder(input_rx)
        .transport(|t: Instant| t)
        .transport_threads(2)
        .backend(move |t: Instant| {
            let _ = seen_tx.send(t.elapsed());
        })
        .spawn()
        .expect("the engine starts");
    let mut engine_lat = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        input_tx.send(Instant::now()).expect("the engine runs");
        engine_lat.push(seen_rx.recv().expect("the item arrives"));
        // Let every thread go idle again, so each item really is alone.
        thread::sleep(Duration::from_millis(2));
    }
    drop(input_tx);
    handle.join().expect("the engine ends");

    let (tx1, rx1) = crossbeam_channel::bounded::<Instant>(1024);
    let (tx2, rx2) = crossbeam_channel::bounded::<Instant>(1024);
    let t = thread::spawn(move || {
        for x in rx1 {
            let _ = tx2.send(x);
        }
    });
    let mut base_lat = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        tx1.send(Instant::now()).expect("runs");
        base_lat.push(rx2.recv().expect("arrives").elapsed());
        thread::sleep(Duration::from_millis(2));
    }
    drop(tx1);
    t.join().expect("baseline");
    engine_lat.sort();
    base_lat.sort();
    println!("\nthreads: latency of a lone item, frontend -> backend (median of {SAMPLES})");
    println!(
        "engine {:>10.1?}   hand-written {:>10.1?}   (target: under 1 ms)",
        engine_lat[SAMPLES / 2],
        base_lat[SAMPLES / 2]
    );
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

fn main() {
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("throughput") {
        throughput();
    }
    if run("latency") {
        latency();
    }
    if run("memory") {
        memory();
    }
}
