//! Failed items are logged with their stage and thread. Alone in its file because it installs a
//! global `tracing` subscriber (stage threads do not see a thread-local one).

mod common;

use common::Captured;
use engine_core::StageError;
use engine_threads::Engine;

#[test]
fn failed_items_are_logged_with_stage_and_thread() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let report = Engine::builder(0..100_u64)
        .transport(|x: u64| x)
        .backend_with(|_| {
            |x: u64| -> Result<(), StageError> {
                if x == 42 {
                    return Err(StageError::msg("the answer is not welcome"));
                }
                Ok(())
            }
        })
        .names("numbers", "copy", "picky")
        .run()
        .unwrap();
    assert_eq!(report.failed(), 1);

    let logs = captured.text();
    let line = logs
        .lines()
        .find(|l| l.contains("item failed"))
        .unwrap_or_else(|| panic!("no failure logged in:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("stage=\"picky\""), "{line}");
    assert!(line.contains("kind=\"backend\""), "{line}");
    assert!(line.contains("thread=0"), "{line}");
    assert!(line.contains("the answer is not welcome"), "{line}");
}
