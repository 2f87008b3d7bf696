//! Project automation, run as `cargo xtask <command>` from anywhere in the workspace.
//!
//! - `cargo xtask ci`: exactly what CI runs: the house rules (`tidy`), format check, clippy
//!   with warnings denied, the workspace tests, the short stress run (`stress --short`), the
//!   docs with warnings denied, and every example (each checks its own result and exits
//!   non-zero when it is wrong).
//! - `cargo xtask tidy`: the house rules alone (file length, a `//!` line atop every file, no
//!   circle between the modules of a crate).
//! - `cargo xtask bench [NAME...]`: the benchmarks in `benches/` (all, or those named), each
//!   printing the engine's figures next to a hand-written baseline and their ratio.
//! - `cargo xtask stress [--runs N] [--suite NAME]... [--timeout SECS] [--short]`: the
//!   concurrency-heavy test binaries, built in release mode, run many times with two CPU hogs
//!   beside them, each run under a timeout; a hung run prints every thread's stack (`gdb`).
//!   The suites are `threads`, `proc`, `pod` and `redis` (skipped without `redis-server`);
//!   `--short` is CI's form: the ordered-mode, stop and kill cases, 20 runs.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a build tool reports progress on the terminal"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use anyhow::{Context, Result, bail};

mod circles;
mod processes;
mod stress;
mod tidy;

/// How long one example may run before it counts as hung.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = project_root()?;
    env::set_current_dir(&root)
        .with_context(|| format!("cannot enter the project root {}", root.display()))?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("tidy") => tidy::tidy(&root),
        Some("bench") => bench(&root, &args[1..]),
        Some("stress") => stress::stress(
            &root,
            &target_dir(&root),
            &stress::Options::parse(&args[1..])?,
        ),
        Some("-h" | "--help" | "help") | None => {
            println!("{}", usage());
            Ok(())
        }
        Some(other) => bail!("unknown xtask command {other:?}\n\n{}", usage()),
    }
}

fn usage() -> &'static str {
    "usage: cargo xtask <command>\n\n\
     commands:\n  \
     ci            tidy, fmt check, clippy -D warnings, tests, stress --short,\n                \
     docs -D warnings, every example\n  \
     tidy          house rules: no source file over 600 lines, a `//!` line atop each\n  \
     bench [NAME]  run the benchmarks in benches/ (all, or the ones named)\n  \
     stress [--runs N] [--suite threads|proc|pod|redis]... [--timeout SECS] [--short]\n                \
     run the concurrency-heavy tests (release) N times (default 300) beside two CPU\n                \
     hogs, each run under a timeout (default 60 s), printing every stack of a hung\n                \
     run; --short: the ordered, stop and kill cases, 20 runs (what ci runs)"
}

/// The workspace root: the parent of this crate's manifest directory.
fn project_root() -> Result<PathBuf> {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask must live one level below the workspace root")
}

/// Where cargo puts what it builds.
fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command to completion, failing with its description if it does not succeed.
fn run(what: &str, command: &mut Command) -> Result<()> {
    eprintln!("\n==> {what}");
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("cannot start: {what}"))?;
    if !status.success() {
        bail!("failed ({status}): {what}");
    }
    eprintln!("<== {what}: ok in {:.1?}", started.elapsed());
    Ok(())
}

fn ci(root: &Path) -> Result<()> {
    let started = Instant::now();
    eprintln!("\n==> tidy");
    tidy::tidy(root)?;
    run(
        "cargo fmt --all -- --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy --workspace --all-targets --all-features -- -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "cargo test --workspace --all-features",
        cargo().args(["test", "--workspace", "--all-features"]),
    )?;
    stress::stress(root, &target_dir(root), &stress::Options::short())?;
    run(
        "RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps --all-features",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run_examples(root)?;
    eprintln!("\nci: all checks passed in {:.1?}", started.elapsed());
    Ok(())
}

/// The names of the files in `dir` with extension `rs`, sorted.
fn rust_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Builds every example once, then runs each with no standard input and a time limit.
fn run_examples(root: &Path) -> Result<()> {
    let examples = rust_files(&root.join("examples"))?;
    run(
        "cargo build --examples --all-features",
        cargo().args(["build", "--examples", "--all-features"]),
    )?;
    let dir = target_dir(root).join("debug").join("examples");
    for name in &examples {
        let what = format!("example {name}");
        eprintln!("\n==> {what}");
        let mut child = Command::new(dir.join(name))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > EXAMPLE_TIMEOUT {
                // Best effort: the process may have exited between the check and the kill.
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what} did not finish within {EXAMPLE_TIMEOUT:?}");
            }
            // Polling a child process's exit status: a build tool, not a test.
            thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        eprintln!("<== {what}: ok in {:.1?}", started.elapsed());
    }
    eprintln!("\nall {} examples passed", examples.len());
    Ok(())
}

fn bench(root: &Path, names: &[String]) -> Result<()> {
    let available = rust_files(&root.join("benches"))?;
    let selected: Vec<&String> = if names.is_empty() {
        available.iter().collect()
    } else {
        for name in names {
            if !available.contains(name) {
                bail!(
                    "no benchmark named {name:?}; available: {}",
                    available.join(", ")
                );
            }
        }
        available.iter().filter(|n| names.contains(n)).collect()
    };
    for name in selected {
        run(
            &format!("cargo bench --bench {name}"),
            cargo().args(["bench", "--all-features", "--bench", name]),
        )?;
    }
    Ok(())
}
