//! Transports that emit many outputs per input (`flat_map`) through the threaded engine:
//! counts, order, split tickets, tickets that cannot split, failures, offloaded stages.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{Collect, Ids};
use engine_core::plumbing::{Finished, ItemOutcome, Offload, Outcome, Ticket};
use engine_core::{Counts, RunEnd, RunReport, StageContext, StageError, Transport};
use engine_threads::Engine;

fn counts(report: &RunReport, stage: &str) -> Counts {
    report
        .stage(stage)
        .expect("the stage is in the report")
        .counts
}

/// The expected outputs of `expand` over `inputs`, in order.
fn expanded(inputs: impl IntoIterator<Item = u64>, expand: impl Fn(u64) -> Vec<u64>) -> Vec<u64> {
    inputs.into_iter().flat_map(expand).collect()
}

/// Gives `x % 4` copies of `x`: none, one, or several.
fn copies(x: u64) -> Vec<u64> {
    vec![x; (x % 4) as usize]
}

#[test]
fn counts_add_up_with_several_transport_threads_and_a_backend() {
    const N: u64 = 10_000;
    let sink = Collect::default();
    let report = Engine::builder(0..N)
        .flat_map(copies)
        .transport_threads(3)
        .backend(sink.clone())
        .backend_threads(2)
        .queue_capacity(256)
        .run()
        .expect("the run completes");
    report.check().expect("the counts add up");
    let mut expected = expanded(0..N, copies);
    expected.sort_unstable();
    assert_eq!(sink.sorted(), expected);

    let outputs = expected.len() as u64;
    let filtered = N / 4;
    let transport = counts(&report, "transport");
    assert_eq!(transport.input, N);
    assert_eq!(transport.output, outputs);
    assert_eq!(transport.filtered, filtered);
    assert_eq!(transport.expanded, outputs - (N - filtered));
    assert_eq!((transport.failed, transport.dropped), (0, 0));
    let backend = counts(&report, "backend");
    assert_eq!((backend.input, backend.output), (outputs, outputs));
    assert_eq!(report.processed(), outputs);
}

#[test]
fn ordered_mode_keeps_the_order_of_the_expanded_outputs() {
    const N: u64 = 5_000;
    let expand = |x: u64| (0..x % 3).map(|k| x * 10 + k).collect::<Vec<_>>();
    let sink = Collect::default();
    let report = Engine::builder(0..N)
        .flat_map(expand)
        .transport_threads(4)
        .backend(sink.clone())
        .ordered(true)
        .queue_capacity(64)
        .run()
        .expect("the run completes");
    report.check().expect("the counts add up");
    assert_eq!(sink.items(), expanded(0..N, expand));
}

/// What a tracked source heard of each input, by id: the outcomes, and for each how many
/// parts of the input had finished by then.
type Heard = Arc<Mutex<BTreeMap<u64, Vec<(String, usize)>>>>;

fn describe(outcome: &Outcome<'_>) -> String {
    match outcome {
        Outcome::Processed => "processed".to_owned(),
        Outcome::Filtered => "filtered".to_owned(),
        Outcome::Failed { error, .. } => format!("failed: {error}"),
        Outcome::Dropped => "dropped".to_owned(),
        _ => "an outcome this test does not know".to_owned(),
    }
}

/// An input's ticket that splits into parts; the source hears of the input once, when its
/// last part completes.
struct Parted {
    id: u64,
    remaining: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    /// The first outcome of a part that was not processed.
    worst: Arc<Mutex<Option<String>>>,
    heard: Heard,
}

impl Parted {
    fn new(id: u64, heard: &Heard) -> Self {
        Self {
            id,
            remaining: Arc::new(AtomicUsize::new(1)),
            finished: Arc::new(AtomicUsize::new(0)),
            worst: Arc::default(),
            heard: Arc::clone(heard),
        }
    }

    fn part(&self) -> Self {
        Self {
            id: self.id,
            remaining: Arc::clone(&self.remaining),
            finished: Arc::clone(&self.finished),
            worst: Arc::clone(&self.worst),
            heard: Arc::clone(&self.heard),
        }
    }
}

impl Ticket for Parted {
    fn complete(self, outcome: Outcome<'_>) {
        let finished = self.finished.fetch_add(1, Ordering::SeqCst) + 1;
        if !matches!(outcome, Outcome::Processed) {
            self.worst
                .lock()
                .unwrap()
                .get_or_insert_with(|| describe(&outcome));
        }
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            let what = self.worst.lock().unwrap().clone();
            let what = what.unwrap_or_else(|| "processed".to_owned());
            let mut heard = self.heard.lock().unwrap();
            heard.entry(self.id).or_default().push((what, finished));
        }
    }

    fn split(self, parts: usize) -> Result<Vec<Self>, Self> {
        self.remaining.fetch_add(parts - 1, Ordering::SeqCst);
        Ok((0..parts).map(|_| self.part()).collect())
    }
}

/// A ticket that cannot split (the default `split`).
struct Whole {
    id: u64,
    heard: Heard,
}

impl Ticket for Whole {
    fn complete(self, outcome: Outcome<'_>) {
        let mut heard = self.heard.lock().unwrap();
        heard
            .entry(self.id)
            .or_default()
            .push((describe(&outcome), 1));
    }
}

/// Gives `x % 5` copies of `x`.
fn fives(x: u64) -> Vec<u64> {
    vec![x; (x % 5) as usize]
}

#[test]
fn a_split_ticket_completes_once_after_all_its_parts_with_processed() {
    const N: u64 = 2_000;
    let heard = Heard::default();
    let tickets = Arc::clone(&heard);
    let source = Ids::new(N, move |id| Parted::new(id, &tickets));
    let sink = Collect::default();
    let report = Engine::builder(source)
        .flat_map(fives)
        .transport_threads(2)
        .backend(sink.clone())
        .backend_threads(2)
        .run()
        .expect("the run completes");
    report.check().expect("the counts add up");
    assert_eq!(sink.items().len(), expanded(0..N, fives).len());

    let heard = heard.lock().unwrap();
    assert_eq!(heard.len() as u64, N, "every input's ticket completed");
    for (id, outcomes) in heard.iter() {
        let parts = (id % 5) as usize;
        let expected = match parts {
            0 => ("filtered".to_owned(), 1),
            k => ("processed".to_owned(), k),
        };
        assert_eq!(outcomes, &[expected], "input {id}");
    }
}

#[test]
fn a_ticket_that_cannot_split_fails_its_item_with_a_clear_error_and_the_counts_balance() {
    const N: u64 = 99;
    let heard = Heard::default();
    let tickets = Arc::clone(&heard);
    let source = Ids::new(N, move |id| Whole {
        id,
        heard: Arc::clone(&tickets),
    });
    let sink = Collect::default();
    let report = Engine::builder(source)
        .flat_map(|x: u64| vec![x; (x % 3) as usize])
        .backend(sink.clone())
        .run()
        .expect("a failed item does not stop the run under the default policy");
    report.check().expect("the counts add up");
    assert_eq!(report.end, RunEnd::Completed);
    let transport = counts(&report, "transport");
    // 0, 1 and 2 outputs by turns: filtered, passed on, failed.
    assert_eq!(transport.input, N);
    assert_eq!(transport.filtered, N / 3);
    assert_eq!(transport.output, N / 3);
    assert_eq!(transport.failed, N / 3);
    assert_eq!(transport.expanded, 0);
    assert_eq!(
        sink.sorted(),
        (0..N).filter(|x| x % 3 == 1).collect::<Vec<_>>()
    );

    let heard = heard.lock().unwrap();
    assert_eq!(heard.len() as u64, N);
    for (id, outcomes) in heard.iter().filter(|(id, _)| *id % 3 == 2) {
        assert_eq!(outcomes.len(), 1, "input {id} completed once");
        let (what, _) = &outcomes[0];
        assert!(what.starts_with("failed: "), "input {id}: {what}");
        assert!(what.contains("cannot be split"), "input {id}: {what}");
    }
}

#[test]
fn a_panic_in_the_flat_map_closure_fails_just_that_item() {
    let sink = Collect::default();
    let report = Engine::builder(0..100_u64)
        .flat_map(|x| {
            assert!(x != 13, "thirteen");
            [x, x + 1000]
        })
        .transport_threads(2)
        .backend(sink.clone())
        .run()
        .expect("the run completes");
    report.check().expect("the counts add up");
    let transport = counts(&report, "transport");
    assert_eq!((transport.input, transport.failed), (100, 1));
    assert_eq!((transport.output, transport.expanded), (198, 99));
    let seen = sink.sorted();
    assert_eq!(seen.len(), 198);
    assert!(!seen.contains(&13) && !seen.contains(&1013));
}

/// Emits `x` and `x + 1000`, but fails on 7 after pushing its first output.
#[derive(Clone)]
struct FailsHalfway;

impl Transport for FailsHalfway {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        Ok(Some(x))
    }

    fn emits_many(&self) -> bool {
        true
    }

    fn transport_each(
        &mut self,
        x: u64,
        _ctx: &StageContext,
        out: &mut Vec<u64>,
    ) -> Result<(), StageError> {
        out.push(x);
        if x == 7 {
            return Err(StageError::msg("seven"));
        }
        out.push(x + 1000);
        Ok(())
    }
}

#[test]
fn an_error_from_a_transport_that_emits_many_discards_that_items_outputs() {
    let sink = Collect::default();
    let report = Engine::builder(0..20_u64)
        .transport(FailsHalfway)
        .backend(sink.clone())
        .run()
        .expect("the run completes");
    report.check().expect("the counts add up");
    let transport = counts(&report, "transport");
    assert_eq!((transport.input, transport.failed), (20, 1));
    assert_eq!((transport.output, transport.expanded), (38, 19));
    let expected = expanded((0..20).filter(|&x| x != 7), |x| vec![x, x + 1000]);
    assert_eq!(sink.sorted(), {
        let mut e = expected;
        e.sort_unstable();
        e
    });
}

/// A transport that runs its items "elsewhere": whole batches go in, and come back as
/// outcomes from `fives`, two batches in flight at most.
#[derive(Default)]
struct Elsewhere {
    done: VecDeque<Finished<u64>>,
}

impl Clone for Elsewhere {
    /// A fresh instance, with nothing in flight.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Transport for Elsewhere {
    type Input = u64;
    type Output = u64;

    /// Never called: the engine hands an offloading stage whole batches.
    fn transport(&mut self, _x: u64, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        Err(StageError::msg("this stage runs its items elsewhere"))
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = u64, Output = u64>> {
        Some(self)
    }
}

impl Offload for Elsewhere {
    type Input = u64;
    type Output = u64;

    fn capacity(&self) -> usize {
        2
    }

    fn submit(&mut self, tag: u64, items: Vec<u64>) {
        let outcomes = items
            .into_iter()
            .map(|x| match x % 5 {
                0 => ItemOutcome::Filtered,
                4 => ItemOutcome::Failed(StageError::msg("four")),
                1 => ItemOutcome::Done(x),
                _ => ItemOutcome::Many(fives(x)),
            })
            .collect();
        self.done.push_back((tag, outcomes));
    }

    fn finished(&mut self, _wait: bool) -> Option<Finished<u64>> {
        self.done.pop_front()
    }
}

#[test]
fn an_offloaded_stage_that_emits_many_splits_tickets_and_the_counts_balance() {
    const N: u64 = 1_000;
    let heard = Heard::default();
    let tickets = Arc::clone(&heard);
    let source = Ids::new(N, move |id| Parted::new(id, &tickets));
    let sink = Collect::default();
    let report = Engine::builder(source)
        .transport(Elsewhere::default())
        .transport_threads(2)
        .backend(sink.clone())
        .run()
        .expect("the run completes");
    report.check().expect("the counts add up");
    let kept = |x: &u64| x % 5 != 4;
    let mut expected = expanded((0..N).filter(kept), fives);
    expected.sort_unstable();
    assert_eq!(sink.sorted(), expected);
    let transport = counts(&report, "transport");
    assert_eq!(transport.input, N);
    assert_eq!(transport.filtered, N / 5);
    assert_eq!(transport.failed, N / 5);
    assert_eq!(transport.output, expected.len() as u64);

    let heard = heard.lock().unwrap();
    assert_eq!(heard.len() as u64, N);
    for (id, outcomes) in heard.iter() {
        assert_eq!(outcomes.len(), 1, "input {id} completed once");
        let (what, parts) = &outcomes[0];
        match id % 5 {
            0 => assert_eq!(what, "filtered"),
            4 => assert!(what.starts_with("failed: four"), "{what}"),
            k => assert_eq!((what.as_str(), *parts), ("processed", k as usize)),
        }
    }
}

/// A backend that runs its items "elsewhere" and, wrongly, gives outputs for item 3.
#[derive(Default)]
struct ConfusedSink {
    done: VecDeque<Finished<()>>,
}

impl Clone for ConfusedSink {
    /// A fresh instance, with nothing in flight.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl engine_core::Backend for ConfusedSink {
    type Input = u64;

    /// Never called: the engine hands an offloading stage whole batches.
    fn process(&mut self, _x: u64, _ctx: &StageContext) -> Result<(), StageError> {
        Err(StageError::msg("this stage runs its items elsewhere"))
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = u64, Output = ()>> {
        Some(self)
    }
}

impl Offload for ConfusedSink {
    type Input = u64;
    type Output = ();

    fn capacity(&self) -> usize {
        1
    }

    fn submit(&mut self, tag: u64, items: Vec<u64>) {
        let outcomes = items
            .into_iter()
            .map(|x| match x {
                3 => ItemOutcome::Many(vec![(), ()]),
                _ => ItemOutcome::Done(()),
            })
            .collect();
        self.done.push_back((tag, outcomes));
    }

    fn finished(&mut self, _wait: bool) -> Option<Finished<()>> {
        self.done.pop_front()
    }
}

#[test]
fn an_offloaded_backend_that_gives_outputs_fails_just_that_item() {
    let report = Engine::builder(0..10_u64)
        .backend(ConfusedSink::default())
        .run()
        .expect("the run completes");
    report.check().expect("the counts add up");
    let backend = counts(&report, "backend");
    assert_eq!((backend.input, backend.output, backend.failed), (10, 9, 1));
}
