//! The main process and different workers exchanging messages (multipro_lab's "main process
//! and a number of different workers"): every process has handlers by message type, any
//! process sends to any other by name, main has a periodic action (`main_action`), and when
//! main exits every worker is sent the exit message and waited for.
//!
//! Here a `splitter` worker cuts lines into words and sends them straight to a `counter`
//! worker (worker to worker, not through main), which counts them and tells main after each
//! line. Main's periodic action notices when every line is counted and broadcasts `report`;
//! each worker answers with its summary, and main exits.
//!
//! Run with `cargo run --example proc_router --features proc`. It exits non-zero if any check
//! fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Result, ensure};
use engine_core::StageError;
use engine_core::protocol::Address;
use engine_proc::{Handlers, Node, Router};
use serde::{Deserialize, Serialize};

const TEXT: [&str; 4] = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "the dog sleeps",
    "",
];

/// Main's periodic action ends the run after this many ticks (10 s) if it has not ended:
/// a guard against a hang, never reached when all goes well.
const GIVE_UP_TICKS: u32 = 2_000;

/// What each worker answers to `report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Summary {
    /// The splitter: lines split, words sent on.
    Splitter { lines: u64, words: u64 },
    /// The counter: how often each word came.
    Counter(BTreeMap<String, u64>),
}

fn send(node: &mut Node, to: &str, kind: &str, body: &impl Serialize) -> Result<(), StageError> {
    node.send(&Address::named(to), kind, body)
        .map_err(StageError::new)
}

/// The `splitter` worker: `line` -> `words` to the counter.
fn splitter(handlers: &mut Handlers) {
    let done = Rc::new(Cell::new((0_u64, 0_u64)));
    let seen = Rc::clone(&done);
    handlers
        .on("line", move |node, (number, line): (u64, String)| {
            let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            let (lines, total) = seen.get();
            seen.set((lines + 1, total + words.len() as u64));
            // Straight to the other worker.
            send(node, "counter", "words", &(number, words))
        })
        .on("report", move |node, (): ()| {
            let (lines, words) = done.get();
            node.send(
                &Address::Main,
                "summary",
                &Summary::Splitter { lines, words },
            )
            .map_err(StageError::new)
        });
}

/// The `counter` worker: counts `words`, tells main each line is counted, and answers
/// `report` with the counts.
fn counter(handlers: &mut Handlers) {
    let counts = Rc::new(RefCell::new(BTreeMap::<String, u64>::new()));
    let report = Rc::clone(&counts);
    handlers
        .on("words", move |node, (number, words): (u64, Vec<String>)| {
            // Only the splitter sends words.
            if node.sender() != Some(&Address::named("splitter")) {
                return Err(StageError::msg(format!("words from {:?}", node.sender())));
            }
            for word in words {
                *counts.borrow_mut().entry(word).or_default() += 1;
            }
            node.send(&Address::Main, "counted", &number)
                .map_err(StageError::new)
        })
        .on("report", move |node, (): ()| {
            let counts = report.borrow().clone();
            node.send(&Address::Main, "summary", &Summary::Counter(counts))
                .map_err(StageError::new)
        });
}

fn main() -> Result<()> {
    engine_proc::init();

    let counted = Rc::new(RefCell::new(Vec::<u64>::new()));
    let summaries = Rc::new(RefCell::new(Vec::<Summary>::new()));
    let ticks = Rc::new(Cell::new(0_u32));
    let reported = Rc::new(Cell::new(false));

    let report = Router::builder()
        .worker("splitter", splitter)
        .worker("counter", counter)
        // Main sends the work once every worker is connected.
        .on_start(|node| {
            ensure_peers(node)?;
            for (number, line) in TEXT.iter().enumerate() {
                send(node, "splitter", "line", &(number as u64, *line))?;
            }
            Ok(())
        })
        .on("counted", {
            let counted = Rc::clone(&counted);
            move |_node, number: u64| {
                counted.borrow_mut().push(number);
                Ok(())
            }
        })
        // Main's periodic action: once every line is counted, ask everyone for a report.
        .every(Duration::from_millis(5), {
            let (counted, ticks, reported) =
                (Rc::clone(&counted), Rc::clone(&ticks), Rc::clone(&reported));
            move |node| {
                ticks.set(ticks.get() + 1);
                if ticks.get() > GIVE_UP_TICKS {
                    // Something is wrong: end now; the checks below say what.
                    node.exit();
                }
                if !reported.get() && counted.borrow().len() == TEXT.len() {
                    reported.set(true);
                    node.send(&Address::Broadcast, "report", &())
                        .map_err(StageError::new)?;
                }
                Ok(())
            }
        })
        .on("summary", {
            let summaries = Rc::clone(&summaries);
            move |node, summary: Summary| {
                println!("summary from {:?}: {summary:?}", node.sender());
                summaries.borrow_mut().push(summary);
                if summaries.borrow().len() == 2 {
                    node.exit(); // Every worker is told to exit, then waited for.
                }
                Ok(())
            }
        })
        .run()?;

    println!("{report:#?}");
    println!("main's periodic action ran {} time(s)", ticks.get());

    // What the workers computed.
    let mut expected = BTreeMap::<String, u64>::new();
    for word in TEXT.iter().flat_map(|line| line.split_whitespace()) {
        *expected.entry(word.to_owned()).or_default() += 1;
    }
    let words: u64 = expected.values().sum();
    let mut counted = counted.borrow().clone();
    counted.sort_unstable();
    ensure!(
        counted == (0..TEXT.len() as u64).collect::<Vec<_>>(),
        "each line counted once: {counted:?}"
    );
    let summaries = summaries.borrow();
    ensure!(
        summaries.contains(&Summary::Splitter {
            lines: TEXT.len() as u64,
            words
        }),
        "{summaries:?}"
    );
    ensure!(
        summaries.contains(&Summary::Counter(expected)),
        "{summaries:?}"
    );
    ensure!(ticks.get() >= 1 && reported.get(), "the periodic action");

    // The report: main handled every line's `counted` and both summaries.
    let lines = TEXT.len() as u64;
    ensure!(report.main.handled == lines + 2, "main: {:?}", report.main);
    ensure!(report.main.handler_errors == 0, "main: {:?}", report.main);
    ensure!(report.main.unknown_kind == 0, "main: {:?}", report.main);
    ensure!(
        report.main.sent == lines + 2,
        "main sent the lines and a report to each worker: {:?}",
        report.main
    );
    ensure!(report.workers.len() == 2, "{report:?}");
    for worker in &report.workers {
        ensure!(
            worker.exit.is_success() && !worker.ended_early,
            "{} should exit cleanly when told to: {worker:?}",
            worker.name
        );
        let stats = worker
            .stats
            .ok_or_else(|| anyhow::anyhow!("{} sent no counters", worker.name))?;
        ensure!(
            stats.handled == lines + 1 && stats.handler_errors == 0 && stats.bad_body == 0,
            "{}: {stats:?}",
            worker.name
        );
        ensure!(stats.sent == lines + 1, "{}: {stats:?}", worker.name);
    }
    println!("ok");
    Ok(())
}

/// Checks that main sees both workers.
fn ensure_peers(node: &Node) -> Result<(), StageError> {
    let peers = node.peer_names();
    if peers == ["counter", "splitter"] {
        Ok(())
    } else {
        Err(StageError::msg(format!("unexpected peers {peers:?}")))
    }
}
