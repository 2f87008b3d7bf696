//! Process-backed stages in the threaded engine: the engine's promises hold.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use engine_core::{Backend, RunEnd, StageContext, StageError, StopHandle, Transport};
use engine_proc::{ProcBackend, ProcTransport};
use engine_threads::Engine;
use serde::{Deserialize, Serialize};

/// Multiplies by its factor, in a worker process; panics on 13 and refuses 99. Reports its
/// process id with the output, so the test sees where it ran.
#[derive(Clone, Serialize, Deserialize)]
struct Scale {
    factor: u64,
}

impl Transport for Scale {
    type Input = u64;
    type Output = (u64, u32);

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<(u64, u32)>, StageError> {
        match x {
            13 => panic!("thirteen"),
            99 => Err(StageError::msg("99 refused")),
            x if x % 10 == 5 => Ok(None),
            x => Ok(Some((x * self.factor, std::process::id()))),
        }
    }
}

/// Fails on odd hundreds, in a worker process.
#[derive(Clone, Serialize, Deserialize)]
struct Picky;

impl Backend for Picky {
    type Input = (u64, u32);

    fn process(&mut self, (x, _): (u64, u32), _: &StageContext) -> Result<(), StageError> {
        if x % 200 == 100 * 3 % 200 && x % 100 == 0 && x > 0 {
            return Err(StageError::msg("picky"));
        }
        Ok(())
    }
}

fn counts_add_up_with_transport_and_backend_in_processes() {
    const N: u64 = 2_000;
    let report = Engine::builder(0..N)
        .transport(ProcTransport::new(Scale { factor: 3 }))
        .transport_threads(2)
        .backend(ProcBackend::new(Picky))
        .run()
        .unwrap();
    report.check().unwrap();
    let transport = report
        .stage_of_kind(engine_core::StageKind::Transport)
        .unwrap();
    assert_eq!(transport.counts.input, N);
    assert_eq!(transport.counts.failed, 2, "13 panicked, 99 was refused");
    assert_eq!(transport.counts.filtered, N / 10);
    let backend = report
        .stage_of_kind(engine_core::StageKind::Backend)
        .unwrap();
    assert_eq!(backend.counts.input, N - 2 - N / 10);
    // x*3 is a multiple of 100 and of 300 but odd hundreds: 300, 900, 1500 ... of x*3 < 6000.
    let picky = (1..N)
        .filter(|x| x % 10 != 5 && *x != 13 && *x != 99)
        .filter(|x| {
            let y = x * 3;
            y % 200 == 100 && y % 100 == 0
        });
    assert_eq!(backend.counts.failed, picky.count() as u64);
}

fn by_default_a_placed_stage_has_one_worker_per_engine_thread() {
    let pids = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = Arc::clone(&pids);
    let report = Engine::builder(0..400_u64)
        .transport(ProcTransport::new(Scale { factor: 1 }))
        .transport_threads(2)
        .backend(move |(_, pid): (u64, u32)| {
            seen.lock().unwrap().insert(pid);
        })
        .run()
        .unwrap();
    report.check().unwrap();
    let pids = pids.lock().unwrap();
    assert!(
        !pids.contains(&std::process::id()),
        "nothing ran in the engine's process"
    );
    assert!(!pids.is_empty() && pids.len() <= 2, "{pids:?}");
    for pid in pids.iter() {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} was stopped and reaped"
        );
    }
}

fn a_graceful_stop_drains_through_the_worker_processes() {
    let stop = StopHandle::new();
    let trigger = stop.clone();
    let delivered = Arc::new(Mutex::new(0_u64));
    let count = Arc::clone(&delivered);
    let report = Engine::builder((0..).inspect(move |x: &u64| {
        if *x == 500 {
            trigger.stop();
        }
    }))
    .transport(ProcTransport::new(Scale { factor: 1 }))
    .stop_handle(&stop)
    .backend(move |_: (u64, u32)| *count.lock().unwrap() += 1)
    .run()
    .unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Stopped);
    assert_eq!(report.dropped(), 0, "a graceful stop drops nothing");
    let transport = report
        .stage_of_kind(engine_core::StageKind::Transport)
        .unwrap();
    assert_eq!(*delivered.lock().unwrap(), transport.counts.output);
    assert!(transport.counts.input >= 500);
}

fn main() {
    engine_proc::init();
    let tests: &[(&str, fn())] = &[
        (
            "counts_add_up_with_transport_and_backend_in_processes",
            counts_add_up_with_transport_and_backend_in_processes,
        ),
        (
            "by_default_a_placed_stage_has_one_worker_per_engine_thread",
            by_default_a_placed_stage_has_one_worker_per_engine_thread,
        ),
        (
            "a_graceful_stop_drains_through_the_worker_processes",
            a_graceful_stop_drains_through_the_worker_processes,
        ),
    ];
    std::process::exit(common::run_tests(tests));
}
