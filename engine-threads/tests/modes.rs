//! Ordered mode, live statistics, completion tickets and option checks.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Collect, Ids, PATIENCE, spin, wait_until};
use engine_core::plumbing::{Outcome, Ticket};
use engine_core::{RunEnd, RunReport, StageContext, StageError, StageKind, filter_map};
use engine_threads::{Engine, EngineError};

/// A transport that takes longer on some items, so that threads overtake each other.
fn uneven(x: u64) -> u64 {
    spin(Duration::from_micros(x % 5 * 20));
    x
}

#[test]
fn ordered_mode_delivers_in_frontend_order_with_several_transport_threads() {
    const N: u64 = 5_000;
    let sink = Collect::default();
    let report = Engine::builder(0..N)
        .transport(filter_map(|x: u64| {
            (!x.is_multiple_of(3)).then(|| uneven(x))
        }))
        .transport_threads(4)
        .backend(sink.clone())
        .queue_capacity(32)
        .ordered(true)
        .run()
        .unwrap();
    report.check().unwrap();
    let expected: Vec<u64> = (0..N).filter(|x| x % 3 != 0).collect();
    assert_eq!(sink.items(), expected);
}

#[test]
fn ordered_mode_with_the_transport_as_last_stage_or_no_transport() {
    const N: u64 = 3_000;
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = Arc::clone(&seen);
        Engine::builder(0..N)
            .transport(move |x: u64| seen.lock().unwrap().push(x))
            .ordered(true)
            .queue_capacity(16)
            .run()
            .unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), (0..N).collect::<Vec<_>>());
    let sink = Collect::default();
    Engine::builder(0..N)
        .backend(sink.clone())
        .ordered(true)
        .queue_capacity(16)
        .run()
        .unwrap();
    assert_eq!(sink.items(), (0..N).collect::<Vec<_>>());
}

/// Asserts that `err` is about the builder option `option`.
fn assert_invalid(err: &EngineError, option: &str) {
    assert!(
        matches!(err, EngineError::InvalidOption { option: o, .. } if *o == option),
        "{err}"
    );
}

#[test]
fn ordered_mode_needs_one_frontend_and_one_last_thread() {
    let err = Engine::builder_with(2, |_| 0..10_u64)
        .backend(|_: u64| {})
        .ordered(true)
        .build()
        .unwrap_err();
    assert_invalid(&err, "ordered");
    let err = Engine::builder(0..10_u64)
        .transport(|x: u64| x)
        .transport_threads(3)
        .backend(|_: u64| {})
        .backend_threads(2)
        .ordered(true)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid option `ordered`: ordered mode needs exactly one thread in the last stage"
    );
}

#[test]
fn zero_threads_or_capacity_are_clear_errors() {
    let err = Engine::builder(0..10_u64)
        .transport(|x: u64| x)
        .transport_threads(0)
        .run()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid option `transport_threads`: a transport needs at least one thread"
    );
    let err = Engine::builder(0..10_u64)
        .backend(|_: u64| {})
        .backend_threads(0)
        .run()
        .unwrap_err();
    assert_invalid(&err, "backend_threads");
    let err = Engine::builder(0..10_u64)
        .backend(|_: u64| {})
        .queue_capacity(0)
        .run()
        .unwrap_err();
    assert_invalid(&err, "queue_capacity");
    let err = Engine::builder_with(0, |_| 0..10_u64)
        .backend(|_: u64| {})
        .run()
        .unwrap_err();
    assert_invalid(&err, "builder_with");
}

#[test]
fn stats_show_counts_and_queue_depths_while_running() {
    let (open, gate) = crossbeam_channel::bounded::<()>(0);
    let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
    let handle = Engine::builder(0..1_000_u64)
        .transport(|x: u64| x)
        .backend(move |_: u64| {
            let _ = started_tx.try_send(());
            let _ = gate.recv();
        })
        .queue_capacity(64)
        .names("numbers", "copy", "sink")
        .spawn()
        .unwrap();
    started.recv_timeout(PATIENCE).unwrap();
    wait_until("a full backend queue", || {
        handle.stats().stage("sink").unwrap().queued >= 32
    });
    let stats = handle.stats();
    let names: Vec<_> = stats
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("numbers", StageKind::Frontend),
            ("copy", StageKind::Transport),
            ("sink", StageKind::Backend)
        ]
    );
    let queued = stats.stage("sink").unwrap().queued;
    assert!(
        stats.stage("numbers").unwrap().counts.output > queued,
        "{stats}"
    );
    assert_eq!(stats.stage("sink").unwrap().handled(), 0);
    assert!(stats.to_string().contains("sink 0 handled"), "{stats}");
    drop(open);
    let report = handle.join().unwrap();
    assert_eq!(report.processed(), 1_000);
}

/// A ticket that records its item's outcome.
struct Record(u64, Arc<Mutex<Vec<(u64, &'static str)>>>);

impl Ticket for Record {
    fn complete(self, outcome: Outcome<'_>) {
        let what = match outcome {
            Outcome::Processed => "processed",
            Outcome::Filtered => "filtered",
            Outcome::Failed { .. } if outcome.is_finished() => "failed",
            Outcome::Dropped => "dropped",
            _ => "other",
        };
        self.1.lock().unwrap().push((self.0, what));
    }
}

/// The ids `0..n`, each with a ticket that records its outcome in `outcomes`.
fn recorded(
    n: u64,
    outcomes: &Arc<Mutex<Vec<(u64, &'static str)>>>,
) -> Ids<impl FnMut(u64) -> Record + use<>> {
    let outcomes = Arc::clone(outcomes);
    Ids::new(n, move |id| Record(id, Arc::clone(&outcomes)))
}

#[test]
fn every_ticket_is_completed_once_with_its_items_outcome() {
    const N: u64 = 3_000;
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let report = Engine::builder(recorded(N, &outcomes))
        .transport(filter_map(|x: u64| x.is_multiple_of(2).then_some(x)))
        .transport_threads(2)
        .backend(|x: u64| -> Result<(), StageError> {
            if x.is_multiple_of(10) {
                return Err(StageError::msg("tens fail"));
            }
            Ok(())
        })
        .run()
        .unwrap();
    report.check().unwrap();
    let mut outcomes = outcomes.lock().unwrap().clone();
    outcomes.sort_unstable();
    let expected: Vec<_> = (0..N)
        .map(|x| {
            let what = match x {
                x if x % 2 == 1 => "filtered",
                x if x % 10 == 0 => "failed",
                _ => "processed",
            };
            (x, what)
        })
        .collect();
    assert_eq!(outcomes, expected);
}

#[test]
fn tickets_of_abandoned_items_complete_as_dropped() {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let (open, gate) = crossbeam_channel::bounded::<()>(0);
    let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
    let handle = Engine::builder(recorded(1_000_000, &outcomes))
        .transport(|x: u64| x)
        .backend(move |_: u64| {
            let _ = started_tx.try_send(());
            let _ = gate.recv();
        })
        .queue_capacity(64)
        .spawn()
        .unwrap();
    started.recv_timeout(PATIENCE).unwrap();
    handle.stop_now();
    drop(open);
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Aborted);
    let outcomes = outcomes.lock().unwrap();
    let dropped = outcomes.iter().filter(|(_, w)| *w == "dropped").count() as u64;
    let processed = outcomes.iter().filter(|(_, w)| *w == "processed").count() as u64;
    assert_eq!(dropped, report.dropped());
    assert_eq!(processed, report.processed());
    assert_eq!(outcomes.len() as u64, report.produced());
}

#[test]
fn a_panicking_stage_factory_fails_the_run_instead_of_hanging_it() {
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let result = Engine::builder(0..1_000_000_u64)
            .transport_with(|ctx: &engine_core::StageContext| {
                assert!(ctx.index() != 1, "no transport for thread 1");
                |x: u64| x
            })
            .transport_threads(2)
            .backend(|_: u64| {})
            .run();
        done_tx.send(result).unwrap();
    });
    let result = done.recv_timeout(PATIENCE).expect("the run ended");
    let Err(EngineError::StageFailed {
        stage,
        during_setup,
        error,
        report,
        ..
    }) = result
    else {
        panic!("expected a setup failure, got {result:?}");
    };
    assert_eq!((stage.as_str(), during_setup), ("transport", true));
    assert!(
        error.to_string().contains("no transport for thread 1"),
        "{error}"
    );
    report.check().unwrap();
}

/// A ticket whose completion panics.
struct Grumpy;

impl Ticket for Grumpy {
    fn complete(self, _outcome: Outcome<'_>) {
        panic!("this ticket never completes quietly");
    }
}

#[test]
fn a_panicking_ticket_disturbs_neither_the_run_nor_its_counts() {
    let report = Engine::builder(Ids::new(100, |_| Grumpy))
        .transport(filter_map(|x: u64| x.is_multiple_of(2).then_some(x)))
        .backend(|x: u64| -> Result<(), StageError> {
            if x == 10 {
                return Err(StageError::msg("ten"));
            }
            Ok(())
        })
        .run()
        .unwrap();
    report.check().unwrap();
    assert_eq!(
        (report.filtered(), report.failed(), report.processed()),
        (50, 1, 49)
    );
}

#[test]
fn the_backend_queue_capacity_holds_behind_a_large_transport_queue() {
    let alive = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let report = {
        let (alive, peak) = (Arc::clone(&alive), Arc::clone(&peak));
        let born = move |x: u64| {
            let now = alive.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            Counted(x, Arc::clone(&alive))
        };
        Engine::builder(0..5_000_u64)
            .transport(born)
            .backend(|c: Counted| {
                spin(Duration::from_micros(20));
                drop(c);
            })
            .transport_queue_capacity(4096)
            .backend_queue_capacity(4)
            .run()
            .unwrap()
    };
    assert_eq!(report.processed(), 5_000);
    // The backend queue (4), one item in the transport's open batch and one in the
    // backend's hands: batches of one, since 4 items make 4 slots of 1.
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(peak <= 8, "{peak} transport outputs alive at once");
}

/// An item that counts the items alive.
struct Counted(
    #[allow(dead_code, reason = "the payload")] u64,
    Arc<std::sync::atomic::AtomicI64>,
);

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_zero_or_endless_stats_interval_is_a_clear_error() {
    for interval in [Duration::ZERO, Duration::MAX] {
        let err = Engine::builder(0..10_u64)
            .backend(|_: u64| {})
            .stats_interval(interval)
            .build()
            .unwrap_err();
        assert_invalid(&err, "stats_interval");
    }
}

/// A backend that buffers items and writes them to `written` only when flushed; every third
/// flush fails when `flaky`.
struct Buffered {
    buffer: Vec<u64>,
    written: Arc<Mutex<Vec<u64>>>,
    flushes: u64,
    flaky: bool,
}

impl engine_core::Backend for Buffered {
    type Input = u64;

    fn process(&mut self, item: u64, _ctx: &StageContext) -> Result<(), StageError> {
        self.buffer.push(item);
        Ok(())
    }

    fn flush(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        self.flushes += 1;
        if self.flaky && self.flushes.is_multiple_of(3) {
            self.buffer.clear();
            return Err(StageError::msg("the sink refused the batch"));
        }
        self.written.lock().unwrap().append(&mut self.buffer);
        Ok(())
    }
}

/// A ticket that checks, when its item is reported processed, that the sink has written it.
struct Durable(
    u64,
    Arc<Mutex<Vec<u64>>>,
    Arc<Mutex<Vec<(u64, &'static str)>>>,
);

impl Ticket for Durable {
    fn complete(self, outcome: Outcome<'_>) {
        let what = match outcome {
            Outcome::Processed if self.1.lock().unwrap().contains(&self.0) => "processed",
            Outcome::Processed => "processed before it was written",
            Outcome::Failed { .. } if outcome.is_finished() => "failed",
            _ => "other",
        };
        self.2.lock().unwrap().push((self.0, what));
    }
}

/// What a run of `N` items through a [`Buffered`] backend gave: its report, what the sink
/// wrote, and what each ticket heard.
struct BufferedRun {
    report: RunReport,
    written: Vec<u64>,
    outcomes: Vec<(u64, &'static str)>,
}

const BUFFERED_ITEMS: u64 = 20_000;

/// Runs `BUFFERED_ITEMS` items through a buffering backend on `threads` threads, whose every
/// third flush fails if it is `flaky`.
fn run_buffered(threads: usize, flaky: bool) -> BufferedRun {
    let written = Arc::new(Mutex::new(Vec::new()));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let sink_written = Arc::clone(&written);
    let (ticket_written, ticket_outcomes) = (Arc::clone(&written), Arc::clone(&outcomes));
    let source = Ids::new(BUFFERED_ITEMS, move |id| {
        Durable(
            id,
            Arc::clone(&ticket_written),
            Arc::clone(&ticket_outcomes),
        )
    });
    let report = Engine::builder(source)
        .backend_with(move |_: &StageContext| Buffered {
            buffer: Vec::new(),
            written: Arc::clone(&sink_written),
            flushes: 0,
            flaky,
        })
        .backend_threads(threads)
        .queue_capacity(256)
        .run()
        .unwrap();
    report.check().unwrap();
    let written = written.lock().unwrap().clone();
    let outcomes = outcomes.lock().unwrap().clone();
    BufferedRun {
        report,
        written,
        outcomes,
    }
}

#[test]
fn a_buffering_backend_has_its_items_settled_only_after_its_flush() {
    let BufferedRun {
        report,
        mut written,
        outcomes,
    } = run_buffered(2, false);
    assert_eq!(report.processed(), BUFFERED_ITEMS);
    written.sort_unstable();
    assert_eq!(
        written,
        (0..BUFFERED_ITEMS).collect::<Vec<_>>(),
        "the last buffer was flushed too"
    );
    assert_eq!(outcomes.len() as u64, BUFFERED_ITEMS);
    assert!(
        outcomes.iter().all(|(_, what)| *what == "processed"),
        "{outcomes:?}"
    );
}

#[test]
fn a_failed_flush_fails_every_item_it_covered_and_the_counts_still_add_up() {
    let BufferedRun {
        report,
        written,
        outcomes,
    } = run_buffered(1, true);
    let failed = outcomes.iter().filter(|(_, w)| *w == "failed").count() as u64;
    let processed = outcomes.iter().filter(|(_, w)| *w == "processed").count() as u64;
    assert!(failed > 0, "some flushes failed");
    assert_eq!(processed, written.len() as u64);
    assert_eq!(processed + failed, BUFFERED_ITEMS, "{outcomes:?}");
    assert_eq!(report.processed(), processed);
    assert_eq!(report.failed(), failed);
}
