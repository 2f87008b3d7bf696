//! A 3-stage pipeline whose transport runs in worker processes: the same stage code as on
//! threads, wrapped in `ProcTransport`.
//!
//! Lines of text go from an iterator frontend, through a word-counting transport that runs in
//! two worker processes (one per transport thread), to a backend on the main process that
//! sums the counts. The example checks the sum, that the work really ran in other processes,
//! and that the run report adds up.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::{Context, ensure};
use engine_core::{StageContext, StageError, Transport};
use engine_proc::ProcTransport;
use engine_threads::Engine;
use serde::{Deserialize, Serialize};

/// Counts the words of a line longer than `min_len` characters; shorter lines are filtered.
/// It reports the process it ran in, to show where the work happened.
#[derive(Clone, Serialize, Deserialize)]
struct WordCount {
    min_len: usize,
}

impl Transport for WordCount {
    type Input = String;
    type Output = (usize, u32);

    fn transport(
        &mut self,
        line: String,
        _ctx: &StageContext,
    ) -> Result<Option<(usize, u32)>, StageError> {
        if line.len() < self.min_len {
            return Ok(None);
        }
        Ok(Some((line.split_whitespace().count(), std::process::id())))
    }
}

fn main() -> anyhow::Result<()> {
    engine_proc::init(); // first line: the worker processes are copies of this program

    let lines: Vec<String> = (0..1_000).map(|i| "word ".repeat(i % 7)).collect();
    let expected: usize = lines
        .iter()
        .filter(|l| l.len() >= 5)
        .map(|l| l.split_whitespace().count())
        .sum();

    let total = Arc::new(Mutex::new(0_usize));
    let pids = Arc::new(Mutex::new(BTreeSet::new()));
    let (sum, seen) = (Arc::clone(&total), Arc::clone(&pids));
    let report = Engine::builder(lines)
        .transport(ProcTransport::new(WordCount { min_len: 5 }))
        .transport_threads(2)
        .backend(move |(words, pid): (usize, u32)| {
            *sum.lock().expect("not poisoned") += words;
            seen.lock().expect("not poisoned").insert(pid);
        })
        .run()
        .context("the pipeline failed")?;
    println!("{report}");
    report.check().context("the report does not add up")?;

    let total = *total.lock().expect("not poisoned");
    let pids = pids.lock().expect("not poisoned");
    println!("{total} words counted in worker processes {pids:?}");
    ensure!(
        total == expected,
        "counted {total} words, expected {expected}"
    );
    ensure!(
        !pids.contains(&std::process::id()),
        "the transport ran in the main process"
    );
    ensure!(
        report.processed() + report.filtered() == 1_000,
        "every line is accounted for"
    );
    Ok(())
}
