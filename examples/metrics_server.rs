//! A program of one's own that serves its engine's metrics and the dashboard: one registry,
//! one collector, one server. It scrapes itself while the run lasts and once after, and checks
//! that the final counters equal the run report.
//!
//! Run with `cargo run --example metrics_server`; while it runs, `engine top ADDR` (the address
//! it prints) shows its stages.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use engine::observe::{MetricsServer, Scraper};
use engine::threads::Engine;
use prometheus_client::registry::Registry;

fn main() -> anyhow::Result<()> {
    // A pipeline whose backend is the slow part.
    let handle = Engine::builder(0..200_000_u64)
        .transport(|x: u64| x * 2)
        .transport_threads(2)
        .backend(|_: u64| {
            let until = Instant::now() + Duration::from_micros(5);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        })
        .spawn()?;

    let mut registry = Registry::default();
    registry.register_collector(Box::new(handle.metrics()));
    let server = MetricsServer::builder(Arc::new(registry)).start()?;
    let addr = server.local_addr().to_string();
    println!("metrics on http://{addr}/metrics, dashboard on http://{addr}/");

    let scraper = Scraper::new(&addr)?;
    let during = scraper.scrape()?;
    println!(
        "while running: {} stages, {} items through so far",
        during.stages.len(),
        during.stages.last().map_or(0.0, |s| s.handled())
    );

    let report = handle.join()?;
    let after = scraper.scrape()?;
    ensure!(!after.running, "the metrics say the run has ended");
    for stage in &after.stages {
        let counts = report
            .stages
            .iter()
            .find(|s| s.name == stage.name)
            .context("every stage is in the report")?
            .counts;
        ensure!(
            stage.items_in == counts.input as f64 && stage.items_out == counts.output as f64,
            "{}: the metrics equal the report",
            stage.name
        );
    }
    for line in engine::observe::top::render(&addr, Some(&during), &after) {
        println!("{line}");
    }
    println!("{report}");
    Ok(())
}
