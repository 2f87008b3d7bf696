//! The benchmark workload on the threaded engine: `--items N` u64 items from one frontend
//! thread, through `--transport-threads T` transport threads (x + 1), to one backend thread
//! that sums them. Checks the sum and prints the rate; the last line is `<rate> items/s`.
//!
//! Run with `cargo run --release --example throughput -- --items 10000000 --transport-threads 2`.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, ensure};
use clap::Parser;
use engine::core::{Backend, StageContext, StageError};
use engine::threads::Engine;

/// Runs the throughput workload once.
#[derive(Debug, Parser)]
struct Args {
    /// Number of items.
    #[arg(long, default_value_t = 1_000_000)]
    items: u64,
    /// Number of transport threads.
    #[arg(long, default_value_t = 2)]
    transport_threads: usize,
}

/// Sums its items and adds its sum to the total at cleanup.
struct Sum {
    sum: u64,
    total: Arc<AtomicU64>,
}

impl Backend for Sum {
    type Input = u64;

    fn process(&mut self, x: u64, _ctx: &StageContext) -> Result<(), StageError> {
        self.sum = self.sum.wrapping_add(x);
        Ok(())
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        self.total.fetch_add(self.sum, Ordering::SeqCst);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let report = {
        let total = Arc::clone(&total);
        Engine::builder(0..args.items)
            .transport(|x: u64| x + 1)
            .transport_threads(args.transport_threads)
            .backend_with(move |_| Sum {
                sum: 0,
                total: Arc::clone(&total),
            })
            .run()?
    };
    let elapsed = started.elapsed();
    let expected = (1..=args.items).fold(0_u64, u64::wrapping_add);
    ensure!(
        total.load(Ordering::SeqCst) == expected,
        "wrong sum: {} instead of {expected}",
        total.load(Ordering::SeqCst)
    );
    ensure!(
        report.processed() == args.items,
        "{} items processed",
        report.processed()
    );
    report.check()?;
    println!("{report}");
    println!(
        "{:.0} items/s",
        args.items as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    );
    Ok(())
}
