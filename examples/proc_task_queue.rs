//! The task queue (multipro_lab's "main process and few identical workers with a task
//! queue"): identical worker processes take tasks from one shared queue and work on them;
//! `pool.map` gives the results back in the order of the tasks.
//!
//! One task is deliberately slow. With a per-task timeout its worker is killed when the
//! timeout passes and replaced; the task's result is `TaskError::TimedOut`, and every other
//! task still gets its result.
//!
//! Run with `cargo run --example proc_task_queue --features proc`. It exits non-zero if any
//! check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use engine_core::{StageContext, StageError, Transport};
use engine_proc::{Pool, TaskError};
use serde::{Deserialize, Serialize};

/// How many identical workers take tasks from the queue.
const WORKERS: usize = 3;
/// How long a task may run before its worker is killed.
const TASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the slow task would run: far past the timeout.
const SLOW: Duration = Duration::from_secs(60);
/// The position of the slow task among the tasks.
const SLOW_AT: usize = 7;
/// How many tasks.
const TASKS: usize = 40;

/// A task of the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Task {
    /// Square this number.
    Square(u64),
    /// Work (sleep) this many milliseconds, then answer 0.
    Slow(u64),
}

/// The worker's code: every process the same. It is a plain [`Transport`], the same trait
/// the threaded engine runs, so this stage could run on threads or placed in an engine too.
#[derive(Clone, Serialize, Deserialize)]
struct Squarer;

impl Transport for Squarer {
    type Input = Task;
    type Output = u64;

    fn transport(&mut self, task: Task, _: &StageContext) -> Result<Option<u64>, StageError> {
        match task {
            Task::Square(n) => n
                .checked_mul(n)
                .map(Some)
                .ok_or_else(|| StageError::msg("overflow")),
            Task::Slow(millis) => {
                // The task's "work", which the timeout cuts short.
                std::thread::sleep(Duration::from_millis(millis));
                Ok(Some(0))
            }
        }
    }
}

fn task(i: usize) -> Task {
    if i == SLOW_AT {
        Task::Slow(SLOW.as_millis() as u64)
    } else {
        Task::Square(i as u64)
    }
}

fn main() -> Result<()> {
    engine_proc::init();

    let mut pool = Pool::builder()
        .workers(WORKERS, Squarer)
        .task_timeout(TASK_TIMEOUT)
        .start()?;
    ensure!(
        pool.worker_pids().len() == WORKERS,
        "{:?}",
        pool.worker_pids()
    );

    let started = Instant::now();
    let results: Vec<_> = pool.map((0..TASKS).map(task)).collect();
    let elapsed = started.elapsed();
    println!(
        "{} results in {elapsed:?}; stats: {:?}",
        results.len(),
        pool.stats()
    );

    ensure!(results.len() == TASKS, "{} results", results.len());
    for (i, result) in results.iter().enumerate() {
        if let Err(error) = result {
            println!("task {i}: {error}");
        }
        match (i, result) {
            (SLOW_AT, Err(TaskError::TimedOut { after })) => {
                ensure!(*after == TASK_TIMEOUT, "timed out after {after:?}");
            }
            (i, Ok(square)) if i != SLOW_AT => {
                ensure!(*square == (i * i) as u64, "task {i}: {square}");
            }
            (i, other) => bail!("task {i}: unexpected {other:?}"),
        }
    }
    ensure!(
        elapsed < SLOW / 2,
        "the slow task should have been cut short, but the run took {elapsed:?}"
    );

    // The pool went on after the timeout: more tasks, all fine.
    let more: Vec<u64> = pool
        .map((100..110).map(Task::Square))
        .collect::<Result<_, _>>()?;
    ensure!(
        more.iter().zip(100_u64..).all(|(sq, n)| *sq == n * n),
        "{more:?}"
    );

    // After the shutdown every pool thread has finished, so the counters are final.
    let (rest, stats) = pool.shutdown();
    println!("final stats: {stats:?}");
    ensure!(rest.is_empty(), "results left over: {rest:?}");
    let submitted = (TASKS + more.len()) as u64;
    ensure!(stats.submitted == submitted, "submitted: {stats:?}");
    ensure!(stats.completed == submitted, "completed: {stats:?}");
    ensure!(stats.failed == 1, "failed: {stats:?}");
    ensure!(stats.timeouts == 1, "timeouts: {stats:?}");
    ensure!(
        stats.worker_deaths == 1,
        "the slow task's worker was killed: {stats:?}"
    );
    ensure!(
        stats.retried == 0,
        "a timed-out task is not retried: {stats:?}"
    );
    ensure!(stats.corrupt_frames == 0, "{stats:?}");
    // The replacement worker is started after the timed-out result is delivered, so a
    // shutdown right after could come first: at most one respawn.
    ensure!(stats.respawns <= 1, "respawns: {stats:?}");
    println!("ok");
    Ok(())
}
