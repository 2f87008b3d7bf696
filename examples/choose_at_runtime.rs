//! A pipeline built from command-line flags with boxed stages: the source, the transport and
//! the sink are chosen at run time, and the engine has one type whatever is chosen.
//!
//! ```text
//! cargo run --example choose_at_runtime -- --source text --transport words --sink collect
//! ```
//!
//! Each run checks its result against the same computation done with plain iterators. With no
//! flags, it runs every combination of source, transport and sink, and checks each.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::{Arc, Mutex};

use anyhow::{Context, ensure};
use clap::{Parser, ValueEnum};
use engine::core::{
    BoxBackend, BoxFrontend, BoxTransport, IntoBackend, IntoTransport, box_frontend, filter_map,
    flat_map,
};
use engine::prelude::*;

const TEXT: &str = "the quick brown fox\n\njumps over\nthe lazy dog\n";

/// Where the lines come from.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    /// The numbers 1 to 1,000, as lines.
    Numbers,
    /// A few lines of text, one of them blank.
    Text,
}

/// What happens to each line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Step {
    /// Upper-case it (a map).
    Upper,
    /// Drop blank lines (a filter_map).
    NonBlank,
    /// Split it into words, one item each (a flat_map).
    Words,
}

/// Where the items go.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sink {
    /// Keep every item.
    Collect,
    /// Keep only the total length of the items.
    Length,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    source: Option<Source>,
    #[arg(long, value_enum)]
    transport: Option<Step>,
    #[arg(long, value_enum)]
    sink: Option<Sink>,
}

fn lines(source: Source) -> Vec<String> {
    match source {
        Source::Numbers => (1..=1_000).map(|n| n.to_string()).collect(),
        Source::Text => TEXT.lines().map(str::to_owned).collect(),
    }
}

fn frontend(source: Source) -> BoxFrontend<String> {
    box_frontend(lines(source))
}

/// The transport: one per transport thread, so a factory rather than a value.
fn transport(step: Step) -> BoxTransport<String, String> {
    match step {
        Step::Upper => Box::new((|line: String| line.to_uppercase()).into_transport()),
        Step::NonBlank => Box::new(filter_map(|line: String| {
            (!line.trim().is_empty()).then_some(line)
        })),
        Step::Words => Box::new(flat_map(|line: String| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })),
    }
}

/// What the sinks found, shared by the backend threads.
type Found = Arc<Mutex<Vec<String>>>;

fn backend(sink: Sink, found: &Found) -> BoxBackend<String> {
    let found = Arc::clone(found);
    match sink {
        Sink::Collect => Box::new(
            (move |line: String| found.lock().expect("not poisoned").push(line)).into_backend(),
        ),
        Sink::Length => Box::new(
            (move |line: String| {
                found
                    .lock()
                    .expect("not poisoned")
                    .push(line.len().to_string())
            })
            .into_backend(),
        ),
    }
}

/// The same computation with plain iterators.
fn expected(source: Source, step: Step, sink: Sink) -> Vec<String> {
    let mapped: Vec<String> = lines(source)
        .into_iter()
        .flat_map(|line| match step {
            Step::Upper => vec![line.to_uppercase()],
            Step::NonBlank if line.trim().is_empty() => vec![],
            Step::NonBlank => vec![line],
            Step::Words => line.split_whitespace().map(str::to_owned).collect(),
        })
        .collect();
    match sink {
        Sink::Collect => mapped,
        Sink::Length => mapped.iter().map(|s| s.len().to_string()).collect(),
    }
}

fn run(source: Source, step: Step, sink: Sink) -> anyhow::Result<()> {
    let found = Found::default();
    let sink_found = Arc::clone(&found);
    let report = Engine::builder(frontend(source))
        .transport_with(move |_| transport(step))
        .transport_threads(2)
        .backend_with(move |_| backend(sink, &sink_found))
        .backend_threads(2)
        .run()?;
    report.check()?;

    let mut got = std::mem::take(&mut *found.lock().expect("not poisoned"));
    let mut want = expected(source, step, sink);
    // Two transport and two backend threads: the order is not kept, the multiset is.
    got.sort();
    want.sort();
    ensure!(
        got == want,
        "{source:?} -> {step:?} -> {sink:?}: {got:?} != {want:?}"
    );
    println!(
        "{source:?} -> {step:?} -> {sink:?}: {} lines in, {} items out, {} filtered",
        report.produced(),
        report.processed(),
        report.filtered()
    );
    Ok(())
}

/// The one value chosen, or every value.
fn all<T: Copy>(one: Option<T>, every: &[T]) -> Vec<T> {
    one.map_or_else(|| every.to_vec(), |one| vec![one])
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for source in all(args.source, &[Source::Numbers, Source::Text]) {
        for step in all(args.transport, &[Step::Upper, Step::NonBlank, Step::Words]) {
            for sink in all(args.sink, &[Sink::Collect, Sink::Length]) {
                run(source, step, sink).with_context(|| format!("{source:?} {step:?} {sink:?}"))?;
            }
        }
    }
    Ok(())
}
