//! A small benchmark harness shared by the files in `benches/`: each benchmark runs the
//! engine's code and a hand-written baseline of the same shape in the same process, several
//! rounds each, interleaved, and reports medians and their ratio.
//!
//! Medians over interleaved rounds keep the figures usable on a noisy shared machine.

#![allow(
    dead_code,
    reason = "each benchmark binary uses a different part of the harness"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

/// The figures of one side (engine or baseline) of a comparison.
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    /// Per-round rates in operations per second, sorted.
    pub(crate) rates: Vec<f64>,
}

impl Figures {
    /// The median rate.
    pub(crate) fn median(&self) -> f64 {
        let n = self.rates.len();
        if n == 0 {
            return 0.0;
        }
        if n % 2 == 1 {
            self.rates[n / 2]
        } else {
            (self.rates[n / 2 - 1] + self.rates[n / 2]) / 2.0
        }
    }
}

/// Runs `engine` and `baseline` alternately for `rounds` rounds. Each call performs `ops`
/// operations and returns a value that is kept from the optimiser.
pub(crate) fn compare<R1, R2>(
    rounds: usize,
    ops: u64,
    mut engine: impl FnMut() -> R1,
    mut baseline: impl FnMut() -> R2,
) -> (Figures, Figures) {
    // One warm-up call each.
    black_box(engine());
    black_box(baseline());
    let mut engine_rates = Vec::with_capacity(rounds);
    let mut baseline_rates = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        engine_rates.push(rate(ops, time(&mut engine)));
        baseline_rates.push(rate(ops, time(&mut baseline)));
    }
    engine_rates.sort_by(f64::total_cmp);
    baseline_rates.sort_by(f64::total_cmp);
    (
        Figures {
            rates: engine_rates,
        },
        Figures {
            rates: baseline_rates,
        },
    )
}

fn time<R>(f: &mut impl FnMut() -> R) -> Duration {
    let started = Instant::now();
    black_box(f());
    started.elapsed()
}

fn rate(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Calls `op` `ops` times and sums what it returns: the loop of one benchmark round.
pub(crate) fn repeat(ops: u64, mut op: impl FnMut() -> usize) -> usize {
    (0..ops).map(|_| op()).sum()
}

/// Prints the header of a comparison table.
pub(crate) fn header(title: &str) {
    println!("\n{title}");
    println!(
        "{:<44} {:>16} {:>16} {:>8}",
        "case", "engine ops/s", "baseline ops/s", "ratio"
    );
}

/// Prints one row: medians of both sides and engine / baseline.
pub(crate) fn row(case: &str, engine: &Figures, baseline: &Figures) {
    let (e, b) = (engine.median(), baseline.median());
    println!(
        "{:<44} {:>16.0} {:>16.0} {:>8.2}",
        case,
        e,
        b,
        if b > 0.0 { e / b } else { 0.0 }
    );
}

/// Times lone items through two pipelines, alternating sample by sample so that both see the
/// same machine load: `a(i)` and `b(i)` send item `i` through and return how long it took.
/// The first `warm_up` samples of each are not kept; `spacing` between samples lets every
/// thread go idle again, so that each item really is alone.
pub(crate) fn alternate(
    samples: usize,
    warm_up: usize,
    spacing: Duration,
    mut a: impl FnMut(u64) -> Duration,
    mut b: impl FnMut(u64) -> Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut a_lat, mut b_lat) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for i in 0..samples + warm_up {
        for (side, lat) in [
            (&mut a as &mut dyn FnMut(u64) -> Duration, &mut a_lat),
            (&mut b, &mut b_lat),
        ] {
            let took = side(i as u64);
            if i >= warm_up {
                lat.push(took);
            }
            std::thread::sleep(spacing);
        }
    }
    (a_lat, b_lat)
}

/// Prints the median, p90 and p99 of two sets of latencies (sorted here), each side under
/// its name, their ratio, and `note` (the targets) beside the header.
pub(crate) fn latency_table(
    (a, a_lat): (&str, &mut [Duration]),
    (b, b_lat): (&str, &mut [Duration]),
    note: &str,
) {
    a_lat.sort();
    b_lat.sort();
    let at = |lat: &[Duration], q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!("{:<8} {a:>44} {b:>20} {:>8}   ({note})", "", "ratio");
    for (name, q) in [("median", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let (x, y) = (at(a_lat, q), at(b_lat, q));
        println!(
            "{name:<8} {:>44} {:>20} {:>8.2}",
            format!("{x:.1?}"),
            format!("{y:.1?}"),
            x.as_secs_f64() / y.as_secs_f64()
        );
    }
}
