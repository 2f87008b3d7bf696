//! One transport, first on threads, then placed in 4 worker processes by changing one line:
//! the results and the report's counts are identical.
//!
//! Lines of text go from an iterator frontend, through a word-counting transport, to a
//! backend on the main process. The transport reads its minimum line length from the app
//! config (sent once to each worker with `.config::<Settings>()`), filters short lines, and
//! fails on lines that contain "poison". The example checks that both runs give the same
//! outputs and counts, that the placed run really worked in other processes, and that every
//! line is accounted for.
//!
//! Run with `cargo run --example proc_stages`.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::{Context, ensure};
use engine_core::{RunReport, StageContext, StageError, StageKind, Transport};
use engine_proc::ProcTransport;
use engine_threads::Engine;
use serde::{Deserialize, Serialize};

/// The app config.
#[derive(Debug, Serialize, Deserialize)]
struct Settings {
    min_len: usize,
}

/// Counts the words of a line, with the line's number; filters lines shorter than the
/// config's `min_len` and refuses lines with "poison". Says which process it ran in.
#[derive(Clone, Serialize, Deserialize)]
struct WordCount;

impl Transport for WordCount {
    type Input = (usize, String);
    type Output = (usize, usize, u32);

    fn transport(
        &mut self,
        (n, line): (usize, String),
        ctx: &StageContext,
    ) -> Result<Option<(usize, usize, u32)>, StageError> {
        if line.len() < ctx.config::<Settings>()?.min_len {
            return Ok(None);
        }
        if line.contains("poison") {
            return Err(StageError::msg(format!("line {n} is poisoned")));
        }
        Ok(Some((
            n,
            line.split_whitespace().count(),
            std::process::id(),
        )))
    }
}

/// What a run gave: its report, the sorted `(line, words)` outputs, and the processes the
/// transport ran in.
type Outcome = (RunReport, Vec<(usize, usize)>, BTreeSet<u32>);

/// Runs the lines through `transport` on 2 engine threads; returns the report, the sorted
/// `(line, words)` outputs and the processes the transport ran in.
fn run<T>(transport: T, lines: &[(usize, String)]) -> anyhow::Result<Outcome>
where
    T: Transport<Input = (usize, String), Output = (usize, usize, u32)> + Clone + Send + 'static,
{
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let report = Engine::builder(lines.to_vec())
        .config(Settings { min_len: 5 })
        .transport(transport)
        .transport_threads(2)
        .backend(move |out: (usize, usize, u32)| sink.lock().expect("not poisoned").push(out))
        .run()
        .context("the pipeline failed")?;
    report.check().context("the report does not add up")?;
    let got = std::mem::take(&mut *got.lock().expect("not poisoned"));
    let pids = got.iter().map(|(_, _, pid)| *pid).collect();
    let mut outputs: Vec<(usize, usize)> = got.into_iter().map(|(n, w, _)| (n, w)).collect();
    outputs.sort_unstable();
    Ok((report, outputs, pids))
}

fn main() -> anyhow::Result<()> {
    engine_proc::init(); // first line: the worker processes are copies of this program

    let lines: Vec<(usize, String)> = (0..100_000)
        .map(|i| {
            let line = if i % 997 == 0 {
                "poison pill".to_owned()
            } else {
                "word ".repeat(i % 7)
            };
            (i, line)
        })
        .collect();

    // On threads.
    let (threads, on_threads, main_only) = run(WordCount, &lines)?;
    // In 4 worker processes: the one line that changes.
    let (placed, in_processes, workers) = run(
        ProcTransport::new(WordCount)
            .workers(4)
            .config::<Settings>(),
        &lines,
    )?;

    println!("{placed}");
    ensure!(on_threads == in_processes, "the outputs differ");
    for kind in [StageKind::Transport, StageKind::Backend] {
        let (a, b) = (
            threads.stage_of_kind(kind).context("a stage")?.counts,
            placed.stage_of_kind(kind).context("a stage")?.counts,
        );
        ensure!(
            a == b,
            "{kind} counts differ: {a:?} on threads, {b:?} placed"
        );
    }
    ensure!(
        main_only == BTreeSet::from([std::process::id()]),
        "on threads, the work ran in this process"
    );
    ensure!(
        !workers.contains(&std::process::id()) && !workers.is_empty() && workers.len() <= 4,
        "placed, the work ran in up to 4 other processes: {workers:?}"
    );
    ensure!(
        placed.processed() + placed.filtered() + placed.failed() == lines.len() as u64,
        "every line is accounted for"
    );
    println!(
        "{} outputs, identical on threads and in worker processes {workers:?}",
        in_processes.len()
    );
    Ok(())
}
