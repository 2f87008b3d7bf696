//! Per-thread state: each factory runs on its own stage thread, with that thread's context,
//! once per thread, and may make stages that are neither `Send` nor `Clone`.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use common::Collect;
use engine_core::StageContext;
use engine_threads::Engine;

/// What one factory call saw: its stage, thread index and count, and the thread it ran on.
type Seen = Arc<Mutex<Vec<(String, usize, usize, Option<String>)>>>;

fn note(seen: &Seen, ctx: &StageContext) {
    let thread = std::thread::current().name().map(str::to_owned);
    let entry = (ctx.stage().to_owned(), ctx.index(), ctx.instances(), thread);
    seen.lock().unwrap().push(entry);
}

#[test]
fn each_factory_runs_once_per_thread_on_that_thread_with_its_context() {
    let seen = Seen::default();
    let (front, middle, back) = (Arc::clone(&seen), Arc::clone(&seen), Arc::clone(&seen));
    let report = Engine::builder_with(2, move |ctx: &StageContext| {
        note(&front, ctx);
        let from = ctx.index() as u64 * 100;
        from..from + 100
    })
    .transport_with(move |ctx: &StageContext| {
        note(&middle, ctx);
        |x: u64| x
    })
    .transport_threads(3)
    .backend_with(move |ctx: &StageContext| {
        note(&back, ctx);
        |_x: u64| {}
    })
    .backend_threads(2)
    .names("source", "map", "sink")
    .run()
    .expect("the run completes");
    assert_eq!(report.processed(), 200);

    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let expected: Vec<_> = [("map", 3), ("sink", 2), ("source", 2)]
        .into_iter()
        .flat_map(|(stage, threads)| {
            (0..threads).map(move |index| {
                let thread = Some(format!("{stage}-{index}"));
                (stage.to_owned(), index, threads, thread)
            })
        })
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_factory_makes_stages_that_are_neither_send_nor_clone() {
    let sink = Collect::default();
    let report = Engine::builder(0..1000_u64)
        .transport_with(|_: &StageContext| {
            // An `Rc` is not `Send`: the stage is made on its thread and stays there.
            let seen = Rc::new(Cell::new(0_u64));
            move |x: u64| {
                seen.set(seen.get() + 1);
                (x, seen.get())
            }
        })
        .transport_threads(2)
        .backend(sink.clone())
        .run()
        .expect("the run completes");
    assert_eq!(report.processed(), 1000);
    let items = sink.items();
    let mut inputs: Vec<u64> = items.iter().map(|&(x, _)| x).collect();
    inputs.sort_unstable();
    assert_eq!(inputs, (0..1000).collect::<Vec<_>>());
    // Each thread counted its own items, 1, 2, 3, ...: every count appears once per thread
    // that got that far, so at most twice, and never more often than the one before it.
    let mut times = std::collections::BTreeMap::<u64, usize>::new();
    for &(_, n) in &items {
        *times.entry(n).or_default() += 1;
    }
    let times: Vec<usize> = times.into_values().collect();
    assert!(times.iter().all(|&t| (1..=2).contains(&t)), "{times:?}");
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert_eq!(times.iter().sum::<usize>(), 1000);
}
