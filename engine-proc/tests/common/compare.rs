//! Running the same transport on threads and placed in worker processes, to compare what
//! the two runs did.

#![allow(dead_code, reason = "not every test binary compares runs")]

use std::sync::{Arc, Mutex};

use engine_core::{Counts, RunReport, StageKind, Transport};
use engine_threads::Engine;

/// Runs 0..n through `transport` on 2 threads; the sorted outputs and the report.
pub(crate) fn collect<T>(transport: T, n: u64) -> (RunReport, Vec<T::Output>)
where
    T: Transport<Input = u64> + Clone + Send + 'static,
    T::Output: Ord + Send + 'static,
{
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let report = Engine::builder(0..n)
        .transport(transport)
        .transport_threads(2)
        .backend(move |x: T::Output| sink.lock().unwrap().push(x))
        .run()
        .unwrap();
    report.check().unwrap();
    let mut got = std::mem::take(&mut *got.lock().unwrap());
    got.sort_unstable();
    (report, got)
}

/// The counts of the transport and the backend, to compare two runs.
pub(crate) fn counts(report: &RunReport) -> [Counts; 2] {
    [StageKind::Transport, StageKind::Backend]
        .map(|kind| report.stage_of_kind(kind).unwrap().counts)
}
