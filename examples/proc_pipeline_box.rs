//! A master and its workers (DumbPipelineBox's `Master` / `Worker`): every worker process
//! does its expensive set-up once, from serialisable arguments given to `add_worker(**kwargs)`
//! (here `.worker(WorkerStage::<W>::new(init))`), then runs tasks; `master.run(...)` yields `(task_id, result)`
//! pairs as the tasks complete, and a task that fails comes back as an error value instead
//! of taking the pool down.
//!
//! Each worker builds a table of primes (a sieve) up to its own limit; a task `n` asks how
//! many primes are at most `n`. One task asks beyond every worker's table and fails.
//!
//! Run with `cargo run --example proc_pipeline_box --features proc`. It exits non-zero if any
//! check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::collections::BTreeMap;

use anyhow::{Result, bail, ensure};
use engine_core::StageError;
use engine_proc::{Pool, TaskError, Worker, WorkerStage};
use serde::{Deserialize, Serialize};

/// The arguments a worker is initialised from (DumbPipelineBox's `**kwargs`): plain data,
/// sent to the worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SieveInit {
    /// The worker's name, returned with each result to show who ran it.
    label: String,
    /// How far the worker's table of primes goes.
    limit: u64,
}

/// A worker with a lookup table built once, at start.
struct PrimeCounter {
    label: String,
    /// `counts[n]` is the number of primes at most `n`.
    counts: Vec<u64>,
}

impl Worker for PrimeCounter {
    type Init = SieveInit;
    type Task = u64;
    /// The worker's label and the count.
    type Output = (String, u64);

    fn init(init: SieveInit) -> Result<Self, StageError> {
        // The expensive initialisation: a sieve of Eratosthenes, then running counts.
        let limit = usize::try_from(init.limit).map_err(StageError::new)?;
        let mut composite = vec![false; limit + 1];
        let mut counts = vec![0_u64; limit + 1];
        let mut primes = 0;
        for n in 2..=limit {
            if !composite[n] {
                primes += 1;
                for multiple in (n * n..=limit).step_by(n) {
                    composite[multiple] = true;
                }
            }
            counts[n] = primes;
        }
        Ok(Self {
            label: init.label,
            counts,
        })
    }

    fn run(&mut self, n: u64) -> Result<(String, u64), StageError> {
        let count = usize::try_from(n)
            .ok()
            .and_then(|n| self.counts.get(n))
            .ok_or_else(|| {
                StageError::msg(format!(
                    "{n} is beyond the table of {} (up to {})",
                    self.label,
                    self.counts.len() - 1
                ))
            })?;
        Ok((self.label.clone(), *count))
    }
}

/// The tasks, and the number of primes at most each (known values of the prime-counting
/// function); `None` for the task that must fail.
const TASKS: [(u64, Option<u64>); 8] = [
    (10, Some(4)),
    (100, Some(25)),
    (1_000, Some(168)),
    (10_000_000, None),
    (10_000, Some(1_229)),
    (2, Some(1)),
    (1, Some(0)),
    (50_000, Some(5_133)),
];

fn main() -> Result<()> {
    engine_proc::init();

    // Two workers, each set up from its own arguments.
    let mut pool = Pool::builder()
        .worker(WorkerStage::<PrimeCounter>::new(SieveInit {
            label: "small".into(),
            limit: 50_000,
        }))
        .worker(WorkerStage::<PrimeCounter>::new(SieveInit {
            label: "large".into(),
            limit: 100_000,
        }))
        .start()?;

    // Results in completion order; ids are given in submission order, from 0.
    let mut results = BTreeMap::new();
    for (id, result) in pool.run(TASKS.iter().map(|(n, _)| *n)) {
        match &result {
            Ok((label, count)) => println!("{id}: {count} primes (worker {label})"),
            Err(error) => println!("{id}: error: {error}"),
        }
        ensure!(
            results.insert(id.0, result).is_none(),
            "{id} came back twice"
        );
    }

    ensure!(
        results.keys().copied().eq(0..TASKS.len() as u64),
        "every task should come back once: got ids {:?}",
        results.keys().collect::<Vec<_>>()
    );
    for ((id, result), (n, expected)) in results.iter().zip(TASKS) {
        match (result, expected) {
            (Ok((label, count)), Some(expected)) => {
                ensure!(
                    *count == expected,
                    "task #{id} ({n}): {count} primes, expected {expected}"
                );
                ensure!(
                    label == "small" || label == "large",
                    "task #{id}: unknown worker {label}"
                );
            }
            (Err(TaskError::Failed(error)), None) => ensure!(
                error.to_string().contains("is beyond the table of"),
                "task #{id}: unexpected message {error:#}"
            ),
            (other, _) => bail!("task #{id} ({n}): unexpected {other:?}"),
        }
    }

    // The failure was the task's, not the pool's: the same workers go on.
    let (id, result) = pool
        .run([97])
        .next()
        .ok_or_else(|| anyhow::anyhow!("no result for the task after the failure"))?;
    println!("{id}: {result:?}");
    ensure!(
        matches!(&result, Ok((_, 25))),
        "after the failure: {result:?}"
    );

    let (rest, stats) = pool.shutdown();
    println!("{stats:?}");
    ensure!(rest.is_empty(), "results left over: {rest:?}");
    ensure!(
        stats.submitted == TASKS.len() as u64 + 1,
        "submitted: {stats:?}"
    );
    ensure!(stats.completed == stats.submitted, "completed: {stats:?}");
    ensure!(stats.failed == 1, "failed: {stats:?}");
    ensure!(
        stats.worker_deaths == 0 && stats.respawns == 0 && stats.retried == 0,
        "no worker should die: {stats:?}"
    );
    println!("ok");
    Ok(())
}
