//! Natural batching (a lone item is never held for a batch; under load batches still form)
//! and the batch-native transport form (counts, tickets, order, stops and memory per item).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Collect, Ids, PATIENCE, spin, wait_until};
use engine_core::plumbing::{Outcome, Ticket};
use engine_core::{
    BatchOut, ErrorPolicy, Frontend, RunEnd, RunReport, StageContext, StageError, Transport,
};
use engine_threads::{Engine, EngineError};

fn counts(report: &RunReport, stage: &str) -> engine_core::Counts {
    report.stage(stage).expect("the stage ran").counts
}

/// Yields `0..n`, and before each item after the first waits until the backend has seen the
/// one before: the engine must pass every item on alone, at once. An item held back shows as
/// a fatal error after [`PATIENCE`], never as a hung test.
struct PingPong {
    next: u64,
    n: u64,
    seen: crossbeam_channel::Receiver<u64>,
}

impl Frontend for PingPong {
    type Item = u64;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        if self.next > 0 {
            let seen = self.seen.recv_timeout(PATIENCE).map_err(|_| {
                StageError::msg(format!("item {} was held back", self.next - 1)).fatal()
            })?;
            assert_eq!(seen, self.next - 1);
        }
        if self.next == self.n {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(self.next - 1))
    }
}

fn ping_pong(n: u64) -> (PingPong, crossbeam_channel::Sender<u64>) {
    let (tx, seen) = crossbeam_channel::unbounded();
    (PingPong { next: 0, n, seen }, tx)
}

/// Runs a pipeline of some shape on a [`PingPong`] frontend, its last stage sending what it
/// saw on the channel.
type Shape = fn(PingPong, crossbeam_channel::Sender<u64>) -> RunReport;

#[test]
fn a_lone_item_crosses_while_the_frontend_waits_for_it() {
    const N: u64 = 200;
    let shapes: [(&str, Shape); 6] = [
        ("transport and backend", |f, seen| {
            Engine::builder(f)
                .transport(|x: u64| x)
                .transport_threads(2)
                .for_each(move |x| seen.send(x).unwrap())
                .run()
                .unwrap()
        }),
        ("inline when idle", |f, seen| {
            Engine::builder(f)
                .transport(|x: u64| x)
                .transport_threads(2)
                .for_each(move |x| seen.send(x).unwrap())
                .inline_when_idle()
                .run()
                .unwrap()
        }),
        ("backend only", |f, seen| {
            Engine::builder(f)
                .for_each(move |x| seen.send(x).unwrap())
                .run()
                .unwrap()
        }),
        ("transport only", |f, seen| {
            Engine::builder(f)
                .transport(move |x: u64| seen.send(x).unwrap())
                .transport_threads(2)
                .run()
                .unwrap()
        }),
        ("a batch-native transport", |f, seen| {
            Engine::builder(f)
                .map_batch(|xs| xs)
                .transport_threads(2)
                .for_each(move |x| seen.send(x).unwrap())
                .run()
                .unwrap()
        }),
        ("ordered", |f, seen| {
            Engine::builder(f)
                .transport(|x: u64| x)
                .transport_threads(2)
                .for_each(move |x| seen.send(x).unwrap())
                .ordered(true)
                .run()
                .unwrap()
        }),
    ];
    for (shape, run) in shapes {
        let (frontend, seen) = ping_pong(N);
        let report = run(frontend, seen);
        report.check().unwrap();
        assert_eq!(report.end, RunEnd::Completed, "{shape}: {report}");
        assert_eq!(report.processed(), N, "{shape}: {report}");
    }
}

/// Some work per item, a little more than the frontend's: the transport is the bottleneck,
/// as a stage doing real work is.
fn mix(mut x: u64) -> u64 {
    for _ in 0..24 {
        x = (x ^ (x >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    x
}

#[test]
fn batches_form_at_full_speed() {
    for inline in [false, true] {
        const N: u64 = 1_000_000;
        let batches = Arc::new(AtomicU64::new(0));
        let items = Arc::new(AtomicU64::new(0));
        let (b, i) = (Arc::clone(&batches), Arc::clone(&items));
        let builder = Engine::builder(0..N)
            .map_batch(move |mut xs: Vec<u64>| {
                b.fetch_add(1, Ordering::Relaxed);
                i.fetch_add(xs.len() as u64, Ordering::Relaxed);
                xs.iter_mut().for_each(|x| *x = mix(*x));
                xs
            })
            .for_each(|_x| {});
        // With `inline_when_idle`, items that are there at once are not lone: the frontend
        // does not run them itself one at a time.
        let builder = if inline {
            builder.inline_when_idle()
        } else {
            builder
        };
        let report = builder.run().unwrap();
        report.check().unwrap();
        assert_eq!(items.load(Ordering::SeqCst), N);
        let mean = N / batches.load(Ordering::SeqCst);
        assert!(
            mean >= 64,
            "a mean batch of {mean} items (inline: {inline})"
        );
    }
}

/// With `inline_when_idle`, an item the frontend thread waited for runs through the idle
/// stages on that thread: no stage thread is woken for it.
#[test]
fn with_inline_when_idle_a_lone_item_runs_on_the_frontend_thread() {
    const N: u64 = 200;
    let name = || thread::current().name().unwrap_or_default().to_owned();
    let (items, source) = crossbeam_channel::unbounded::<u64>();
    let (answers, answered) = crossbeam_channel::unbounded();
    let engine = Engine::builder(source)
        .transport(move |x: u64| (x * x, name()))
        .transport_threads(2)
        .for_each(move |(square, transported): (u64, String)| {
            answers.send((square, transported, name())).unwrap();
        })
        .inline_when_idle()
        .spawn()
        .unwrap();
    let (mut transported_here, mut processed_here) = (0, 0);
    for x in 0..N {
        // Lone items: one every millisecond or so, as a trickling source gives them (not a
        // wait for anything: the answer to the item before is already in).
        thread::sleep(Duration::from_millis(1));
        items.send(x).unwrap();
        let (square, transported, processed) = answered.recv_timeout(PATIENCE).unwrap();
        assert_eq!(square, x * x);
        assert!(transported.starts_with("frontend-") || transported.starts_with("transport-"));
        assert!(processed.starts_with("frontend-") || processed.starts_with("backend-"));
        transported_here += u64::from(transported == "frontend-0");
        processed_here += u64::from(processed == "frontend-0");
    }
    drop(items);
    let report = engine.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.processed(), N);
    assert_eq!(counts(&report, "transport").output, N);
    // Whether a stage thread is asleep when an item comes is the scheduler's business, but
    // with the items a millisecond apart, most find them asleep.
    assert!(
        transported_here > 0 && processed_here > 0,
        "of {N} items, {transported_here} were transported and {processed_here} processed on \
         the frontend thread"
    );
}

/// What a batch-native transport decided for the items it reported: the engine's counts and
/// tickets must say exactly the same.
#[derive(Clone, Default)]
struct Expected {
    passed: Arc<Mutex<Vec<u64>>>,
    filtered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

/// Per item: `x % 10 == 1` filtered, `x % 10 == 2` failed; a batch holding an `x % 1000 ==
/// 999` panics there, and one holding `x % 1000 == 500` returns an error there: the items
/// from there on (not reported) fail.
#[derive(Clone, Default)]
struct Mixed(Expected);

impl Transport for Mixed {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, _x: u64, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        unreachable!("the engine calls transport_batch")
    }

    fn takes_batches(&self) -> bool {
        true
    }

    fn transport_batch(
        &mut self,
        items: Vec<u64>,
        out: &mut BatchOut<u64>,
        _ctx: &StageContext,
    ) -> Result<(), StageError> {
        let n = items.len() as u64;
        for (at, x) in items.into_iter().enumerate() {
            let rest = n - at as u64;
            match (x % 1000, x % 10) {
                (999, _) => {
                    self.0.failed.fetch_add(rest, Ordering::SeqCst);
                    panic!("poison item {x}");
                }
                (500, _) => {
                    self.0.failed.fetch_add(rest, Ordering::SeqCst);
                    return Err(StageError::msg("a bad batch"));
                }
                (_, 1) => {
                    self.0.filtered.fetch_add(1, Ordering::SeqCst);
                    out.filter();
                }
                (_, 2) => {
                    self.0.failed.fetch_add(1, Ordering::SeqCst);
                    out.fail(StageError::msg("a bad item"));
                }
                _ => {
                    self.0.passed.lock().unwrap().push(x);
                    out.push(x);
                }
            }
        }
        Ok(())
    }
}

type Heard = Arc<Mutex<BTreeMap<u64, Vec<&'static str>>>>;

/// A ticket that records every completion of its item.
struct Note(u64, Heard);

impl Ticket for Note {
    fn complete(self, outcome: Outcome<'_>) {
        let what = match outcome {
            Outcome::Processed => "processed",
            Outcome::Filtered => "filtered",
            Outcome::Failed { .. } => "failed",
            Outcome::Dropped => "dropped",
            _ => "unknown",
        };
        self.1.lock().unwrap().entry(self.0).or_default().push(what);
    }
}

#[test]
fn filtered_failed_and_panicking_items_in_a_batch_are_counted_one_by_one() {
    const N: u64 = 50_000;
    for (transports, ordered) in [(1, false), (3, false), (2, true)] {
        let expected = Expected::default();
        let heard = Heard::default();
        let sink = Collect::default();
        let source = {
            let heard = Arc::clone(&heard);
            Ids::new(N, move |id| Note(id, Arc::clone(&heard)))
        };
        let report = Engine::builder(source)
            .transport(Mixed(expected.clone()))
            .transport_threads(transports)
            .backend(sink.clone())
            .backend_threads(if ordered { 1 } else { 2 })
            .queue_capacity(256)
            .ordered(ordered)
            .run()
            .unwrap();
        report.check().unwrap();
        let t = counts(&report, "transport");
        let mut passed = expected.passed.lock().unwrap().clone();
        assert_eq!(t.input, N);
        assert_eq!(t.output, passed.len() as u64, "{report}");
        assert_eq!(t.filtered, expected.filtered.load(Ordering::SeqCst));
        assert_eq!(t.failed, expected.failed.load(Ordering::SeqCst));
        assert!(
            t.failed > N / 10,
            "the failed items include whole batch tails"
        );
        if ordered {
            assert_eq!(sink.items(), {
                let mut p = passed.clone();
                p.sort_unstable();
                p
            });
        }
        passed.sort_unstable();
        assert_eq!(sink.sorted(), passed);
        // Every ticket completed once, with the outcome its item had.
        let heard = heard.lock().unwrap();
        assert_eq!(heard.len() as u64, N);
        let mut tally = BTreeMap::new();
        for outcomes in heard.values() {
            assert_eq!(outcomes.len(), 1, "{outcomes:?}");
            *tally.entry(outcomes[0]).or_insert(0_u64) += 1;
        }
        assert_eq!(tally.get("processed").copied(), Some(t.output));
        assert_eq!(tally.get("filtered").copied(), Some(t.filtered));
        assert_eq!(tally.get("failed").copied(), Some(t.failed));
    }
}

#[test]
fn a_map_batch_closure_that_panics_or_miscounts_fails_its_batch_and_the_run_goes_on() {
    const N: u64 = 20_000;
    let report = Engine::builder(0..N)
        .map_batch(|xs: Vec<u64>| {
            if xs.contains(&7_777) {
                panic!("poison");
            }
            if xs.contains(&12_345) {
                return Vec::new();
            }
            xs
        })
        .for_each(|_x| {})
        .queue_capacity(128)
        .run()
        .unwrap();
    report.check().unwrap();
    let t = counts(&report, "transport");
    assert_eq!(t.input, N);
    assert!(t.failed >= 2, "{report}");
    assert_eq!(t.output + t.failed, N, "{report}");
    assert_eq!(report.processed(), t.output);
}

#[test]
fn under_the_stop_policy_a_failed_item_in_a_batch_stops_the_run() {
    let report = Engine::builder(0..100_000_u64)
        .transport(Mixed::default())
        .for_each(|_x| {})
        .error_policy(ErrorPolicy::Stop)
        .queue_capacity(64)
        .run();
    let Err(EngineError::StageFailed { report, .. }) = report else {
        panic!("the run should fail: {report:?}");
    };
    report.check().unwrap();
    assert!(matches!(report.end, RunEnd::Failed { .. }), "{report}");
    assert!(counts(&report, "transport").failed >= 1, "{report}");
}

#[test]
fn a_graceful_stop_drains_and_a_forced_one_counts_what_it_dropped() {
    // Graceful: everything accepted comes out.
    let sink = Collect::default();
    let handle = Engine::builder(0_u64..)
        .map_batch(|xs| xs)
        .transport_threads(2)
        .backend(sink.clone())
        .queue_capacity(256)
        .spawn()
        .unwrap();
    wait_until("items at the backend", || {
        sink.0.lock().unwrap().len() >= 10_000
    });
    handle.stop();
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Stopped);
    assert_eq!(report.dropped(), 0);
    assert_eq!(sink.sorted(), (0..report.produced()).collect::<Vec<_>>());

    // Forced, with the backend stuck: the dropped count says what was abandoned.
    let (started, started_rx) = crossbeam_channel::unbounded();
    let (open, gate) = crossbeam_channel::unbounded::<()>();
    let first = Arc::new(AtomicU64::new(0));
    let handle = Engine::builder(0_u64..)
        .map_batch(|xs| xs)
        .for_each(move |_x| {
            if first.fetch_add(1, Ordering::SeqCst) == 0 {
                started.send(()).unwrap();
                let _ = gate.recv();
            }
        })
        .queue_capacity(64)
        .spawn()
        .unwrap();
    started_rx.recv_timeout(PATIENCE).unwrap();
    wait_until("full queues", || {
        handle.stats().stages.iter().map(|s| s.queued).sum::<u64>() >= 64
    });
    handle.stop_now();
    open.send(()).unwrap();
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Aborted);
    assert!(report.dropped() > 0, "{report}");
    assert_eq!(report.processed() + report.dropped(), report.produced());
}

/// An item that counts the items alive.
struct Alive(Arc<AtomicI64>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn memory_stays_bounded_with_a_batch_native_transport_and_a_slow_backend() {
    const N: u64 = 20_000;
    let alive = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let source = {
        let (alive, peak) = (Arc::clone(&alive), Arc::clone(&peak));
        (0..N).map(move |_| {
            let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            Alive(Arc::clone(&alive))
        })
    };
    let report = Engine::builder(source)
        .map_batch(|xs: Vec<Alive>| xs)
        .for_each(|a| {
            spin(Duration::from_micros(10));
            drop(a);
        })
        .queue_capacity(64)
        .run()
        .unwrap();
    assert_eq!(report.processed(), N);
    assert_eq!(alive.load(Ordering::SeqCst), 0);
    // As with per-item transports: two queues of 64, plus one batch of at most 16 in the
    // hands of each of the frontend, the transport (in and out) and the backend.
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 2 * 64 + 4 * 16, "{peak} items alive at once");
}

#[test]
fn a_batch_native_transport_keeps_frontend_order_in_ordered_mode() {
    const N: u64 = 30_000;
    let sink = Collect::default();
    let report = Engine::builder(0..N)
        .map_batch(|xs: Vec<u64>| {
            // Uneven work, so that threads overtake each other.
            if xs.first().is_some_and(|x| x % 3 == 0) {
                thread::yield_now();
            }
            xs.into_iter().map(|x| x * 2).collect()
        })
        .transport_threads(3)
        .backend(sink.clone())
        .queue_capacity(64)
        .ordered(true)
        .run()
        .unwrap();
    report.check().unwrap();
    assert_eq!(sink.items(), (0..N).map(|x| x * 2).collect::<Vec<_>>());
}
