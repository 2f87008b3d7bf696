//! The default engine, like os-m3-engine's `create()` with no arguments: the lines of standard
//! input go through a `LogTransport` to a `LogBackend`, and both log each line through
//! `tracing`. This is the engine that `engine run` (and so `cargo run`) runs.
//!
//! CI runs examples with an empty standard input, so the example checks itself by running
//! itself again: it starts a copy of itself with `DEFAULT_ENGINE_CHILD=1`, writes five lines
//! to the copy's standard input, and checks what the copy logged. The copy is the default
//! engine; run it alone and type lines with `DEFAULT_ENGINE_CHILD=1 cargo run --example
//! default_engine` (end with Ctrl-D).
//!
//! Run with `cargo run --example default_engine`. It exits non-zero if any check fails.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example shows its results"
)]

use std::io::{IsTerminal, Write};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// Set in the copy that runs the engine.
const CHILD: &str = "DEFAULT_ENGINE_CHILD";

fn main() -> Result<()> {
    if std::env::var_os(CHILD).is_some() {
        return run_default_engine();
    }
    let lines = ["one", "two", "three", "four", "five"];
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // Dropping the pipe at the end of this block closes the copy's standard input, which
    // ends its frontend and so its run.
    {
        let mut stdin = child.stdin.take().context("the child has no stdin")?;
        for line in lines {
            writeln!(stdin, "{line}")?;
        }
    }
    let output = child.wait_with_output()?;
    let log = String::from_utf8(output.stderr)?;
    print!("{log}");
    ensure!(
        output.status.success(),
        "the engine failed: {}",
        output.status
    );
    for line in lines {
        for stage in ["transport", "backend"] {
            let logged = log.lines().any(|entry| {
                entry.contains(&format!("stage=\"{stage}\""))
                    && entry.contains(&format!("item=\"{line}\""))
            });
            ensure!(logged, "the {stage} did not log the line {line:?}");
        }
    }
    ensure!(
        log.contains("completed: 5 processed"),
        "the report does not say that 5 lines were processed"
    );
    println!("ok");
    Ok(())
}

/// The default engine, logging to standard error, as `engine run` does.
fn run_default_engine() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let engine = engine::default_engine().build()?;
    // Ctrl-C stops gracefully: the lines already read are still logged.
    #[cfg(unix)]
    let _signals = engine::core::install_signal_handler(engine.stop_handle())?;
    let report = engine.run()?;
    eprintln!("{report}");
    report.check()?;
    Ok(())
}
