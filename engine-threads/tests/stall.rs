//! A run whose admitted items stop settling logs one warning naming what each thread waits
//! on. Alone in its file because it installs a global `tracing` subscriber (stage threads do
//! not see a thread-local one).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Captured;
use engine_threads::{Engine, EngineError};

#[test]
fn a_held_back_item_is_reported_with_the_ordered_window_and_its_batch() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    // Item 0 (in the first batch) is held in the transport until the test has seen the
    // report; meanwhile the other thread passes everything else on, and the frontend fills
    // the ordered window and waits.
    const N: u64 = 200_000;
    let (release, held) = crossbeam_channel::bounded::<()>(0);
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let handle = Engine::builder(0..N)
        .transport(move |x: u64| {
            if x == 0 {
                held.recv().expect("the test releases the item");
            }
            x
        })
        .transport_threads(2)
        .ordered(true)
        .stall_report(Some(Duration::from_millis(100)))
        .names("numbers", "hold", "collect")
        .backend(move |x: u64| sink.lock().unwrap().push(x))
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let logs = captured.text();
        if let Some(line) = logs.lines().find(|l| l.contains("makes no progress")) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no stall report in:\n{logs}");
        std::thread::sleep(Duration::from_millis(10));
    };
    release.send(()).unwrap();
    let report = handle.join().unwrap();

    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("numbers (frontend) thread 0: waiting for the ordered window"),
        "{line}"
    );
    assert!(line.contains("oldest_unsettled_batch=0"), "{line}");
    assert!(line.contains("the sink waits for batch 0"), "{line}");
    assert!(
        line.contains("hold (transport) thread") && line.contains("working (in the stage's code)"),
        "{line}"
    );
    assert!(
        line.contains("collect (backend) thread 0: waiting for its input"),
        "{line}"
    );
    assert_eq!(report.processed(), N);
    assert!(*got.lock().unwrap() == (0..N).collect::<Vec<_>>());
    // Reported once, not on every check.
    assert_eq!(captured.text().matches("makes no progress").count(), 1);
}

#[test]
fn a_zero_stall_interval_is_refused() {
    let error = Engine::builder(0..1_u64)
        .backend(|_: u64| {})
        .stall_report(Some(Duration::ZERO))
        .run()
        .unwrap_err();
    assert!(
        matches!(error, EngineError::InvalidOption { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("stall_report"), "{error}");
}
