//! Stages chosen at run time, boxed, through the builder: a boxed frontend by value, boxed
//! transports and backends through the per-thread factories.

mod common;

use common::{Collect, Ids};
use engine_core::plumbing::{Outcome, Ticket};
use engine_core::{
    BoxBackend, BoxFrontend, BoxTransport, Frontend, IntoTransport, StageContext, StageError,
    box_frontend, filter_map, flat_map,
};
use engine_threads::Engine;

/// What a command line might choose.
#[derive(Clone, Copy)]
enum Step {
    Double,
    Expand,
}

fn transport(step: Step) -> BoxTransport<u64, u64> {
    match step {
        Step::Double => Box::new((|x: u64| x * 2).into_transport()),
        Step::Expand => Box::new(flat_map(|x: u64| [x, x])),
    }
}

fn backend(sink: &Collect<u64>) -> BoxBackend<u64> {
    Box::new(sink.clone())
}

#[test]
fn boxed_frontend_transport_and_backend_run_on_several_threads() {
    for (step, outputs) in [(Step::Double, 100), (Step::Expand, 200)] {
        let sink = Collect::default();
        let frontend: BoxFrontend<u64> = box_frontend(0..100_u64);
        let backend_sink = sink.clone();
        let report = Engine::builder(frontend)
            .transport_with(move |_: &StageContext| transport(step))
            .transport_threads(2)
            .backend_with(move |_: &StageContext| backend(&backend_sink))
            .backend_threads(2)
            .run()
            .expect("the run completes");
        report.check().expect("the counts add up");
        assert_eq!(report.processed(), outputs);
        assert_eq!(sink.items().len() as u64, outputs);
    }
}

/// A plain frontend that counts down.
struct Countdown(u64);

impl Frontend for Countdown {
    type Item = u64;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        Ok(self.0.checked_sub(1).inspect(|n| self.0 = *n))
    }
}

#[test]
fn a_boxed_plain_frontend_and_a_boxed_frontend_per_thread() {
    let boxed: Box<dyn Frontend<Item = u64> + Send> = Box::new(Countdown(10));
    let report = Engine::builder(boxed)
        .transport_with(|_: &StageContext| -> BoxTransport<u64, u64> {
            Box::new(filter_map(|x: u64| x.is_multiple_of(2).then_some(x)))
        })
        .run()
        .expect("the run completes");
    assert_eq!(report.processed(), 5);

    // Several frontend threads: each makes its own boxed frontend.
    let sink = Collect::default();
    let report = Engine::builder_with(2, |ctx: &StageContext| -> BoxFrontend<u64> {
        box_frontend(vec![ctx.index() as u64; 3])
    })
    .backend(sink.clone())
    .run()
    .expect("the run completes");
    assert_eq!(report.processed(), 6);
    assert_eq!(sink.sorted(), [0, 0, 0, 1, 1, 1]);
}

/// A ticket that records whether it was processed.
struct Acked(std::sync::mpsc::Sender<bool>);

impl Ticket for Acked {
    fn complete(self, outcome: Outcome<'_>) {
        let _ = self.0.send(matches!(outcome, Outcome::Processed));
    }

    fn split(self, parts: usize) -> Result<Vec<Self>, Self> {
        Ok((0..parts).map(|_| Acked(self.0.clone())).collect())
    }
}

#[test]
fn a_boxed_tracked_frontend_keeps_its_tickets_through_a_flat_map() {
    let (tx, acks) = std::sync::mpsc::channel();
    let frontend: BoxFrontend<u64> = box_frontend(Ids::new(3, move |_| Acked(tx.clone())));
    let report = Engine::builder(frontend)
        .transport_with(|_: &StageContext| transport(Step::Expand))
        .backend(|_x: u64| {})
        .run()
        .expect("the run completes");
    report.check().expect("the counts add up");
    assert_eq!(report.processed(), 6);
    let acks: Vec<bool> = acks.try_iter().collect();
    assert_eq!(acks, [true; 6], "each part of each input processed");
}
