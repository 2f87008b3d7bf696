//! The regular practice of stopping the engine, as in os-m3-engine's README: an engine whose
//! frontend never ends, stopped by SIGINT (Ctrl-C). The first SIGINT stops the engine
//! gracefully: the frontend stops and everything it produced still flows through. The example
//! sends itself the SIGINT with `kill` once the backend has seen some items.
//!
//! Run with `cargo run --example engine_stop_on_signal`. It exits non-zero if any check fails.
//! Signals are a Unix feature: elsewhere the example only prints a note.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    use std::process::Command;
    use std::thread;

    use anyhow::ensure;
    use engine::core::{RunEnd, install_signal_handler};
    use engine::threads::Engine;

    // The backend tells this channel when it has seen 1000 items.
    let (seen_enough, wait_for_items) = crossbeam_channel::bounded(1);
    let mut seen = 0_u64;
    let engine = Engine::builder(0_u64..)
        .transport(|n: u64| n + 1)
        .backend(move |_n: u64| {
            seen += 1;
            if seen == 1000 {
                let _ = seen_enough.send(());
            }
        })
        .build()?;
    // Like the origin's `signal.signal(signal.SIGINT, stop)`: a SIGINT stops the engine.
    let _signals = install_signal_handler(engine.stop_handle())?;

    // Plays the user pressing Ctrl-C. If the engine ended first, the channel is closed and
    // nothing is sent.
    let user = thread::spawn(move || -> anyhow::Result<bool> {
        if wait_for_items.recv().is_err() {
            return Ok(false);
        }
        let pid = std::process::id().to_string();
        Ok(Command::new("kill")
            .args(["-INT", &pid])
            .status()?
            .success())
    });

    let report = engine.run()?;
    println!("{report}");
    let killed = user
        .join()
        .map_err(|_| anyhow::anyhow!("the signalling thread panicked"))??;
    ensure!(killed, "kill -INT failed");
    ensure!(
        report.end == RunEnd::Stopped,
        "the run ended as {:?}",
        report.end
    );
    ensure!(
        report.dropped() == 0,
        "{} items were dropped",
        report.dropped()
    );
    ensure!(
        report.processed() == report.produced(),
        "{} items produced but {} processed",
        report.produced(),
        report.processed()
    );
    ensure!(
        report.processed() >= 1000,
        "only {} processed",
        report.processed()
    );
    report.check()?;
    println!("ok");
    Ok(())
}

#[cfg(not(unix))]
fn main() -> anyhow::Result<()> {
    println!("this example sends itself SIGINT, which needs a Unix system");
    Ok(())
}
