//! A batch-native transport placed in worker processes: each engine batch is one call of
//! `transport_batch` in a worker, and the outputs and counts are those of the same stage on
//! threads.

use engine_core::{BatchOut, StageContext, StageError, Transport};
use engine_proc::ProcTransport;
use serde::{Deserialize, Serialize};

engine_proc::test_support!();

#[path = "common/compare.rs"]
mod compare;

use compare::{collect, counts};

/// Per item: multiples of 10 filtered, `x % 97 == 96` failed, the others squared; with
/// `poison`, a batch holding 7_777 panics there, failing the items from there on.
#[derive(Clone, Serialize, Deserialize)]
struct SquareBatch {
    poison: bool,
}

impl Transport for SquareBatch {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, _x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        unreachable!("engines call transport_batch")
    }

    fn takes_batches(&self) -> bool {
        true
    }

    fn transport_batch(
        &mut self,
        items: Vec<u64>,
        out: &mut BatchOut<u64>,
        _: &StageContext,
    ) -> Result<(), StageError> {
        for x in items {
            match x {
                7_777 if self.poison => panic!("poison"),
                x if x.is_multiple_of(10) => out.filter(),
                x if x % 97 == 96 => out.fail(StageError::msg(format!("{x} fails"))),
                x => out.push(x * x),
            }
        }
        Ok(())
    }
}

#[test]
fn a_batch_native_transport_placed_in_three_workers_gives_what_it_gives_on_threads() {
    const N: u64 = 50_000;
    let stage = SquareBatch { poison: false };
    let (threads, on_threads) = collect(stage.clone(), N);
    let (placed, in_processes) = collect(ProcTransport::new(stage).workers(3), N);
    assert!(on_threads == in_processes, "the outputs differ");
    assert_eq!(counts(&threads), counts(&placed));
    let transport = counts(&placed)[0];
    let filtered = (0..N).filter(|x| x.is_multiple_of(10)).count() as u64;
    let failed = (0..N)
        .filter(|x| !x.is_multiple_of(10) && x % 97 == 96)
        .count() as u64;
    assert_eq!(transport.input, N);
    assert_eq!(transport.filtered, filtered);
    assert_eq!(transport.failed, failed);
    assert_eq!(transport.output, N - filtered - failed);
    assert_eq!(placed.processed(), transport.output);
}

#[test]
fn a_panic_in_a_placed_batch_fails_the_items_it_did_not_report() {
    const N: u64 = 20_000;
    let (placed, outputs) = collect(
        ProcTransport::new(SquareBatch { poison: true }).workers(3),
        N,
    );
    let transport = counts(&placed)[0];
    assert_eq!(transport.input, N);
    assert!(transport.is_balanced(), "{placed}");
    let failed = (0..N)
        .filter(|x| !x.is_multiple_of(10) && x % 97 == 96)
        .count() as u64;
    assert!(
        transport.failed > failed,
        "the poison item fails too: {placed}"
    );
    assert_eq!(outputs.len() as u64, transport.output);
    assert!(!outputs.contains(&(7_777 * 7_777)));
}
