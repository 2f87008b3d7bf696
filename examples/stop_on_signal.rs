//! Stopping from a signal: the first SIGINT asks for a graceful stop, the second for an
//! immediate one. The example sends itself both signals with `kill`, as Ctrl-C twice would.
//!
//! Run with `cargo run --example stop_on_signal`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{Result, ensure};
use engine::core::{StopHandle, StopLevel, install_signal_handler_with};

fn main() -> Result<()> {
    let stop = StopHandle::new();
    let _guard = install_signal_handler_with(&stop, |signal, level| {
        println!("received {signal}: stopping ({level})");
    })?;

    // A worker that drains its queue on a graceful stop and abandons it on an immediate one.
    let worker = {
        let stop = stop.clone();
        thread::spawn(move || {
            let level = stop.wait();
            if level == StopLevel::Graceful {
                println!("draining...");
                stop.wait_for_level(StopLevel::Now, Some(Duration::from_secs(30)))
                    .unwrap_or(level)
            } else {
                level
            }
        })
    };

    let pid = std::process::id().to_string();
    let kill = |signal: &str| Command::new("kill").args([signal, &pid]).status();

    ensure!(kill("-INT")?.success(), "kill -INT failed");
    ensure!(
        stop.wait_timeout(Duration::from_secs(30)) == Some(StopLevel::Graceful),
        "the first SIGINT did not stop gracefully"
    );
    ensure!(kill("-INT")?.success(), "kill -INT failed");
    let level = worker
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))?;
    ensure!(
        level == StopLevel::Now,
        "the second SIGINT did not stop now"
    );
    println!("ok");
    Ok(())
}
