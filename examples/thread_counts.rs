//! Threads per stage, like os-m3-engine's `create(engine_transport_config=config)` with
//! `config.thread_num = 10`: 10 transport threads and 2 backend threads. Each thread runs its
//! own clone of its stage; the run report has one line per thread.
//!
//! Run with `cargo run --example thread_counts`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use anyhow::{Result, ensure};
use engine::core::StageKind;
use engine::ootb::CollectBackend;
use engine::threads::Engine;

const ITEMS: u64 = 10_000;
const TRANSPORT_THREADS: usize = 10;
const BACKEND_THREADS: usize = 2;

fn main() -> Result<()> {
    // The clones of a `CollectBackend` share one vector, so both backend threads fill it.
    let backend = CollectBackend::new();
    let collected = backend.collected();
    let report = Engine::builder(0..ITEMS)
        .transport(|n: u64| n * 2)
        .transport_threads(TRANSPORT_THREADS)
        .backend(backend)
        .backend_threads(BACKEND_THREADS)
        .run()?;
    println!("{report}");
    report.check()?;

    // The report lists the stages in pipeline order, each with one entry per thread.
    let expected = [
        (StageKind::Frontend, 1),
        (StageKind::Transport, TRANSPORT_THREADS),
        (StageKind::Backend, BACKEND_THREADS),
    ];
    ensure!(
        report.stages.len() == expected.len(),
        "{} stages",
        report.stages.len()
    );
    for (stage, (kind, threads)) in report.stages.iter().zip(expected) {
        ensure!(
            stage.kind == kind,
            "stage {} is a {}",
            stage.name,
            stage.kind
        );
        ensure!(
            stage.threads.len() == threads,
            "the {} stage ran {} threads instead of {threads}",
            stage.name,
            stage.threads.len()
        );
        // What the threads of a stage handled adds up to what reached the stage.
        let handled: u64 = stage.threads.iter().map(|thread| thread.items).sum();
        ensure!(
            handled == stage.counts.input,
            "the threads of {} handled {handled} of {} items",
            stage.name,
            stage.counts.input
        );
    }

    // The threads deliver in no particular order, but every item arrived exactly once.
    let mut items = collected.take();
    items.sort_unstable();
    ensure!(
        items.iter().copied().eq((0..ITEMS).map(|n| n * 2)),
        "the backend did not receive every doubled number exactly once"
    );
    println!("ok");
    Ok(())
}
