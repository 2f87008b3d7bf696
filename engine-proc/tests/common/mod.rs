//! A small test runner for test binaries that are also worker processes (they need their own
//! `main`, which calls `engine_proc::init()` first).

#![allow(clippy::print_stdout, reason = "a test runner reports")]

pub(crate) mod compare;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

/// Runs the tests whose names contain every non-option argument, one after another, and
/// returns the exit code: 0 if all passed.
pub(crate) fn run_tests(tests: &[(&str, fn())]) -> i32 {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filters.iter().all(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", chosen.len());
    let mut failed = Vec::new();
    let started = Instant::now();
    for (name, test) in chosen.iter().copied() {
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(test));
        let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
        println!("test {name} ... {verdict} ({:.2?})", t.elapsed());
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; finished in {:.2?}\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        chosen.len() - failed.len(),
        failed.len(),
        started.elapsed()
    );
    for name in &failed {
        println!("failed: {name}");
    }
    i32::from(!failed.is_empty())
}
