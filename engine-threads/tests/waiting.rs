//! A frontend waiting on its source is waiting, not busy: its marked reads count as waiting
//! for input, in the live statistics and in the report.

use std::time::Duration;

use engine_core::{StageContext, StageError, StageKind, waiting_for_input};
use engine_threads::Engine;

/// A slow pipe: each item takes 10 ms to arrive, in a marked read.
struct SlowPipe(u64);

impl engine_core::Frontend for SlowPipe {
    type Item = u64;

    fn produce(&mut self, _: &StageContext) -> Result<Option<u64>, StageError> {
        if self.0 == 0 {
            return Ok(None);
        }
        self.0 -= 1;
        // Stands for a blocking read of a socket or a pipe: the time passes in the source.
        waiting_for_input(|| std::thread::sleep(Duration::from_millis(10)));
        Ok(Some(self.0))
    }
}

#[test]
fn a_frontend_waiting_on_its_source_is_not_busy() {
    let handle = Engine::builder(SlowPipe(30))
        .transport(|x: u64| x + 1)
        .backend(|_: u64| {})
        .spawn()
        .unwrap();
    let stats = handle.stats_reader();
    let report = handle.join().unwrap();
    assert_eq!(report.processed(), 30);
    let front = report.stage_of_kind(StageKind::Frontend).unwrap();
    let elapsed = report.elapsed;
    assert!(elapsed >= Duration::from_millis(300));
    assert!(
        front.busy() < elapsed / 10,
        "the frontend counts {:?} busy of {elapsed:?}",
        front.busy()
    );
    let live = stats.read();
    let thread = &live.stages[0].threads[0];
    assert!(
        thread.waiting_for_input >= Duration::from_millis(300),
        "{thread:?}"
    );
    // The consumers waited for their input too, and did little work.
    for stage in &live.stages[1..] {
        let t = &stage.threads[0];
        assert!(t.waiting_for_input > t.busy, "{}: {t:?}", stage.name);
    }
}
