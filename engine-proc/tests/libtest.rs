//! Worker processes from a plain libtest suite: `engine_proc::test_support!()` at the top,
//! then ordinary `#[test]`s that start pools and placed stages. No `harness = false`, no
//! `main` of its own: every worker process is this binary started as the one test the macro
//! adds.

use engine_core::{StageContext, StageError, Transport};
use engine_proc::{Pool, ProcTransport, TaskError};
use serde::{Deserialize, Serialize};

engine_proc::test_support!();

#[path = "common/compare.rs"]
mod compare;

use compare::{collect, counts};

/// Squares, with the pid of the process it ran in; refuses 13, filters multiples of 10.
#[derive(Clone, Serialize, Deserialize)]
struct Square;

impl Transport for Square {
    type Input = u64;
    type Output = (u64, u32);

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<(u64, u32)>, StageError> {
        if x == 13 {
            return Err(StageError::msg("13 is refused"));
        }
        Ok((!x.is_multiple_of(10)).then_some((x * x, std::process::id())))
    }
}

#[test]
fn a_pool_runs_its_tasks_in_worker_processes_from_a_plain_test() {
    let mut pool = Pool::builder().workers(2, Square).start().unwrap();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    assert!(
        !pids.contains(&std::process::id()),
        "workers are other processes"
    );
    let results: Vec<_> = pool.map(0..1_000).collect();
    for (x, result) in (0_u64..).zip(&results) {
        match result {
            Ok((square, pid)) => {
                assert_eq!(*square, x * x);
                assert!(pids.contains(pid), "task {x} ran in {pid}, not a worker");
            }
            Err(TaskError::Failed(error)) => {
                assert_eq!(x, 13);
                assert!(format!("{error}").contains("13 is refused"));
            }
            Err(TaskError::Filtered) => assert!(x.is_multiple_of(10)),
            Err(other) => panic!("task {x}: {other}"),
        }
    }
    let (rest, stats) = pool.shutdown();
    assert!(rest.is_empty());
    assert_eq!((stats.submitted, stats.completed), (1_000, 1_000));
    // A filtered task is an error to the caller, not a failure of the worker.
    assert_eq!(stats.failed, 1, "13");
    assert_eq!(stats.worker_deaths, 0);
}

#[test]
fn a_placed_stage_runs_in_worker_processes_from_a_plain_test() {
    const N: u64 = 20_000;
    let (threads, on_threads) = collect(Square, N);
    let (placed, in_processes) = collect(ProcTransport::new(Square).workers(2), N);
    let me = std::process::id();
    assert!(on_threads.iter().all(|(_, pid)| *pid == me));
    assert!(
        in_processes.iter().all(|(_, pid)| *pid != me),
        "items ran in this process"
    );
    let values = |v: &[(u64, u32)]| v.iter().map(|(x, _)| *x).collect::<Vec<_>>();
    assert_eq!(values(&on_threads), values(&in_processes));
    assert_eq!(counts(&threads), counts(&placed));
    let transport = counts(&placed)[0];
    assert_eq!((transport.input, transport.failed), (N, 1));
    assert_eq!(transport.filtered, N / 10);
}

/// A flat_map-style transport: `x` becomes `x % 4` outputs (none: filtered), and every 97th
/// item fails after pushing outputs (which are then discarded).
#[derive(Clone, Serialize, Deserialize)]
struct Split;

impl Transport for Split {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, ctx: &StageContext) -> Result<Option<u64>, StageError> {
        let mut out = Vec::new();
        self.transport_each(x, ctx, &mut out)?;
        Ok(out.pop())
    }

    fn emits_many(&self) -> bool {
        true
    }

    fn transport_each(
        &mut self,
        x: u64,
        _: &StageContext,
        out: &mut Vec<u64>,
    ) -> Result<(), StageError> {
        out.extend((0..x % 4).map(|k| x * 10 + k));
        if x % 97 == 96 {
            return Err(StageError::msg(format!("{x} fails")));
        }
        Ok(())
    }
}

#[test]
fn a_flat_map_transport_placed_in_two_workers_gives_what_it_gives_on_threads() {
    const N: u64 = 50_000;
    let (threads, on_threads) = collect(Split, N);
    let (placed, in_processes) = collect(ProcTransport::new(Split).workers(2), N);
    assert_eq!(on_threads.len(), in_processes.len());
    assert!(on_threads == in_processes, "the outputs differ");
    assert_eq!(counts(&threads), counts(&placed));
    let transport = counts(&placed)[0];
    let ok = |x: &u64| x % 97 != 96;
    let outputs: u64 = (0..N).filter(ok).map(|x| x % 4).sum();
    let expanded: u64 = (0..N).filter(ok).map(|x| (x % 4).saturating_sub(1)).sum();
    assert_eq!(transport.input, N);
    assert_eq!(transport.output, outputs);
    assert_eq!(transport.expanded, expanded);
    assert_eq!(transport.failed, (0..N).filter(|x| !ok(x)).count() as u64);
    assert_eq!(
        transport.filtered,
        (0..N).filter(|x| ok(x) && x % 4 == 0).count() as u64
    );
    assert!(transport.is_balanced());
    assert_eq!(placed.processed(), outputs);
}
