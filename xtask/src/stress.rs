//! `cargo xtask stress`: runs the concurrency-heavy tests many times, with CPU hogs beside them.
//!
//! The test binaries of the chosen suites are built once in release mode. Two busy-looping
//! child processes then keep both cores busy while every case (a test binary with its filter
//! arguments) runs once per run, each in its own process group and under a timeout. The
//! output of a passing run is thrown away; a failing run prints the end of its output and the
//! command that reproduces it; a hung run also prints the stack of every thread of every
//! process of its group (with `gdb`) before the group is killed. The first failure or hang
//! ends the stress run, which then fails. At the end comes a summary of the times per case.
//!
//! `--short` is the form `cargo xtask ci` runs: only the ordered-mode, stop and kill cases,
//! [`SHORT_RUNS`] runs of each.

use std::env;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::processes::{HOGS, Hogs, SignalGuard, die_with_parent, kill_group, print_stacks, wait};

/// The suites, each with the crate whose test binaries it runs.
const SUITES: [(&str, &str); 4] = [
    ("threads", "engine-threads"),
    ("proc", "engine-proc"),
    ("pod", "engine-pod"),
    ("redis", "engine-redis"),
];

/// Every case, one a line: its suite (a name of [`SUITES`]), the test target
/// (`tests/<target>.rs`) of the suite's crate, `short` if `--short` (and so CI) runs it (the
/// ordered-mode, stop and kill cases) or `-` if not, then the filter arguments. The libtest
/// binaries of engine-threads, engine-pod and engine-redis run the tests whose names contain
/// ANY of them; the own runner of the engine-proc binaries runs those whose names contain
/// EVERY one, so its cases take one. No argument runs every test of the binary.
const CASES: &str = "
threads modes    short ordered_mode
threads promises short stop
threads promises -     panics_and_errors_in_any_stage_are_caught
                       the_stop_policy_ends_the_run_at_the_first_failure
                       a_failing_setup_stops_the_run
threads modes    -     a_panicking_stage_factory a_failed_flush ticket
threads promises -     every_item_is_accounted_for
threads async_stages short stop
threads async_stages -     random_delays never_more_than_k errors_panics
threads stall    -     a_held_back_item
threads batching -     a_lone_item_crosses with_inline_when_idle batches_form
proc    placed   short ordered_mode_keeps_the_order_through_the_processes
proc    placed   -     lone_items_reach_the_backend_also_past_a_killed_idle_worker
proc    placed   -     lone_items_come_back_whether_their_worker_answers_late_or_dies
proc    placed   -     pairs_of_items_through_one_worker_all_come_back
proc    placed   -     a_lone_item_that_hangs_times_out
proc    placed   -     a_worker_killed_mid_run_loses_nothing_and_runs_nothing_twice
proc    placed   short stop_now_frees_the_engine_from_a_hung_worker_at_once
proc    placed   -     the_stop_deadline_frees_the_engine_from_a_hung_worker
proc    placed   -     a_placed_stage_recycles_its_workers_between_batches
proc    pool     short kill_9_mid_run_loses_and_repeats_nothing
proc    pool     short a_lone_task_sent_to_a_killed_idle_worker_is_retried
proc    pool     -     lone_tasks_go_straight_to_an_idle_worker
proc    pool     -     a_lone_task_submitted_just_before_a_shutdown_comes_back
proc    pool     -     a_task_past_the_timeout_is_killed_and_its_worker_replaced
proc    pool     -     a_stop_cancels_queued_tasks_and_delivers_finished_ones
proc    pool     -     recycling_after_100_tasks_runs_every_task_once_in_new_processes
proc    pool     -     map_keeps_the_order_of_the_tasks
proc    pool     -     workers_die_with_their_master
proc    stages   short a_graceful_stop_drains_through_the_worker_processes
proc    stages   -     counts_add_up_with_transport_and_backend_in_processes
pod     stop     short
pod     pod      -     stop cancel
pod     pod      -     restart
pod     engine_async - an_engine_beans_async_stage
pod     feed_inline short
redis   heal     short entries_delivered_in_a_lost_reply_are_taken_back_after_the_reconnect
redis   heal     -     twenty_server_crashes_in_a_row_each_heal_within_three_seconds
redis   dedup    -     a_consumer_killed_between_write_and_acknowledgement_50_times
redis   cluster  -     a_killed_consumers_pending_items_are_claimed_by_the_other
redis   cluster  -     the_pipeline_resumes_after_the_server_restarts
redis   keyed    -     keys_stay_in_order_across_a_kill_and_a_rebalance
redis   async_stage -  
redis   late_heartbeat - entries_dropped_while_a_late_heartbeat_is_out_are_claimed_again
redis   migration -    a_partition_whose_slot_moves an_unkeyed_stream_whose_slot_moves
redis   dedup    -     on_a_cluster_a_relay_killed
";

/// One test binary run with some arguments: a run executes each chosen case once.
#[derive(Debug, Clone)]
struct Case {
    suite: &'static str,
    target: &'static str,
    short: bool,
    args: Vec<&'static str>,
}

/// The cases of [`CASES`]; a line that starts with a space goes on with the arguments of
/// the line before.
fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for line in CASES.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        match cases.last_mut() {
            Some(last) if line.starts_with(' ') => last.args.extend(words),
            _ => {
                let (suite, target, short) = (words.next(), words.next(), words.next());
                cases.push(Case {
                    suite: suite.unwrap_or_default(),
                    target: target.unwrap_or_default(),
                    short: short == Some("short"),
                    args: words.collect(),
                });
            }
        }
    }
    cases
}

/// How many runs `--short` makes unless `--runs` says otherwise.
pub(crate) const SHORT_RUNS: usize = 20;

/// How many lines of a failed or hung run's output are shown.
const TAIL_LINES: usize = 60;

/// How to load the machine as stress does, printed after a reproducing command.
const HOGS_NOTE: &str = "(it ran beside CPU hogs; start them with \
                         `for i in 1 2; do sh -c 'while :; do :; done' & done`)";

/// Where `redis-server` is looked for after `PATH`, as `engine_redis::testing` does.
const REDIS_DIRS: [&str; 3] = ["/usr/bin", "/usr/sbin", "/usr/local/bin"];

/// What `cargo xtask stress` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// How many times each case runs.
    runs: usize,
    /// The suites to run (all when empty).
    suites: Vec<String>,
    /// How long one case run may take before it counts as hung.
    timeout: Duration,
    /// Only the cases marked `short`.
    short: bool,
}

impl Options {
    /// The CI form: the short cases of every suite, [`SHORT_RUNS`] runs of each.
    pub(crate) fn short() -> Self {
        Self {
            runs: SHORT_RUNS,
            suites: Vec::new(),
            timeout: Duration::from_secs(60),
            short: true,
        }
    }

    /// Reads `[--runs N] [--suite NAME]... [--timeout SECS] [--short]`.
    pub(crate) fn parse(args: &[String]) -> Result<Self> {
        let mut runs = None;
        let mut options = Self {
            short: false,
            ..Self::short()
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .with_context(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--runs" => {
                    let n: usize = value("--runs")?.parse().context("--runs takes a number")?;
                    if n == 0 {
                        bail!("--runs must be at least 1");
                    }
                    runs = Some(n);
                }
                "--suite" => {
                    let name = value("--suite")?;
                    if !SUITES.iter().any(|(suite, _)| *suite == name) {
                        let names: Vec<&str> = SUITES.iter().map(|(suite, _)| *suite).collect();
                        bail!("no suite named {name:?}; the suites: {}", names.join(", "));
                    }
                    options.suites.push(name);
                }
                "--timeout" => {
                    let secs: u64 = value("--timeout")?
                        .parse()
                        .context("--timeout takes a number of seconds")?;
                    if secs == 0 {
                        bail!("--timeout must be at least 1 second");
                    }
                    options.timeout = Duration::from_secs(secs);
                }
                "--short" => options.short = true,
                other => bail!("unknown stress option {other:?}"),
            }
        }
        options.runs = runs.unwrap_or(if options.short { SHORT_RUNS } else { 300 });
        Ok(options)
    }
}

/// A case whose test binary was built: what a run executes.
struct Ready {
    /// The case, from [`CASES`].
    case: Case,
    /// The test binary.
    exe: PathBuf,
    /// The directory it runs in, its crate's (as `cargo test` does).
    dir: PathBuf,
    /// The file that takes its output, rewritten at each run.
    log: PathBuf,
    /// How long each of its runs took.
    times: Vec<Duration>,
}

impl Ready {
    /// How the summary and the messages name the case: its first argument stands for all.
    fn label(&self) -> String {
        let args = match self.case.args.as_slice() {
            [] => "(all)".to_owned(),
            [one] => (*one).to_owned(),
            [first, rest @ ..] => format!("{first} +{}", rest.len()),
        };
        format!("{} {} {args}", self.case.suite, self.case.target)
    }

    /// The shell command that runs the case once more, as it ran here.
    fn reproduce(&self) -> String {
        let mut line = format!("cd {} && {}", self.dir.display(), self.exe.display());
        for arg in &self.case.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }
}

/// How one case run ended.
enum Outcome {
    Passed,
    Failed(ExitStatus),
    Hung,
}

/// Runs `cargo xtask stress` with `options` in the workspace at `root`.
pub(crate) fn stress(root: &Path, target_dir: &Path, options: &Options) -> Result<()> {
    let mut chosen: Vec<Case> = cases()
        .into_iter()
        .filter(|c| options.suites.is_empty() || options.suites.iter().any(|s| s == c.suite))
        .filter(|c| c.short || !options.short)
        .collect();
    if chosen.iter().any(|c| c.suite == "redis") && !redis_server_found() {
        eprintln!("stress: note: no `redis-server` on PATH, so the redis suite is skipped");
        chosen.retain(|c| c.suite != "redis");
    }
    if chosen.is_empty() {
        eprintln!("stress: no case to run");
        return Ok(());
    }
    let build_started = Instant::now();
    let mut cases = build(root, target_dir, &chosen)?;
    let build_time = build_started.elapsed();
    let form = if options.short { ", short form" } else { "" };
    eprintln!(
        "\n==> stress: {} runs of {} cases{form}, {:?} per case run at most, {HOGS} CPU hogs",
        options.runs,
        cases.len(),
        options.timeout
    );
    let _signals = SignalGuard::install();
    let hogs = Hogs::start()?;
    let started = Instant::now();
    let (mut failures, mut hangs, mut runs) = (0, 0, 0);
    'runs: for run in 1..=options.runs {
        runs = run;
        let run_started = Instant::now();
        for ready in &mut cases {
            match run_case(ready, run, options.timeout)? {
                Outcome::Passed => {}
                Outcome::Failed(status) => {
                    eprintln!("\nstress: run {run}: {} FAILED ({status})", ready.label());
                    print_tail(&ready.log, "its output");
                    eprintln!("reproduce with: {}", ready.reproduce());
                    eprintln!("{HOGS_NOTE}");
                    failures += 1;
                    break 'runs;
                }
                Outcome::Hung => {
                    hangs += 1;
                    break 'runs;
                }
            }
        }
        eprintln!(
            "stress: run {run}/{}: {} cases ok in {:.1?} ({:.0?} so far)",
            options.runs,
            cases.len(),
            run_started.elapsed(),
            started.elapsed()
        );
    }
    hogs.stop();
    print_summary(&cases, started.elapsed());
    eprintln!(
        "stress: {runs} runs of {} cases, {failures} failures, {hangs} hangs in {:.1?} \
         (after {build_time:.1?} to build)",
        cases.len(),
        started.elapsed()
    );
    if failures + hangs > 0 {
        bail!("stress: a case failed or hung (see above)");
    }
    Ok(())
}

/// Whether `redis-server` is on `PATH` or in one of [`REDIS_DIRS`].
fn redis_server_found() -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(REDIS_DIRS.iter().map(PathBuf::from))
        .any(|dir| dir.join("redis-server").is_file())
}

/// Builds the test binaries of `cases` in release mode, in one cargo run (so that the crates
/// they share are built once, with the same features), and finds them.
fn build(root: &Path, target_dir: &Path, cases: &[Case]) -> Result<Vec<Ready>> {
    let logs = target_dir.join("stress");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut args = vec!["test", "--release", "--all-features"];
    // Every crate of every suite, whichever suites run: the features (and so the builds) of
    // the crates they share stay those of a full run.
    for (_, krate) in SUITES {
        args.extend(["-p", krate]);
    }
    let mut targets: Vec<&str> = cases.iter().map(|c| c.target).collect();
    targets.sort_unstable();
    targets.dedup();
    for target in targets {
        args.extend(["--test", target]);
    }
    args.push("--no-run");
    let what = format!("cargo {}", args.join(" "));
    eprintln!("\n==> {what}");
    let output = crate::cargo()
        .args(&args)
        .arg("--message-format=json")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start: {what}"))?;
    if !output.status.success() {
        bail!("failed ({}): {what}", output.status);
    }
    let exes = test_executables(&String::from_utf8_lossy(&output.stdout));
    let mut ready = Vec::new();
    for case in cases {
        let krate = crate_of(case.suite);
        let exe = exes
            .iter()
            .find(|(dir, name, _)| dir == krate && name == case.target)
            .map(|(_, _, exe)| exe.clone())
            .with_context(|| format!("cargo built no test binary {krate}/{}", case.target))?;
        ready.push(Ready {
            case: case.clone(),
            exe,
            dir: root.join(krate),
            log: logs.join(format!("{}.log", ready.len() + 1)),
            times: Vec::new(),
        });
    }
    Ok(ready)
}

/// The crate of `suite`, a name of [`SUITES`].
fn crate_of(suite: &str) -> &'static str {
    SUITES
        .iter()
        .find(|(name, _)| *name == suite)
        .map_or("", |(_, krate)| krate)
}

/// The (crate directory name, target name, executable) of each test binary in cargo's JSON
/// messages.
fn test_executables(json: &str) -> Vec<(String, String, PathBuf)> {
    let mut found = Vec::new();
    for line in json.lines() {
        if !line.contains(r#""reason":"compiler-artifact""#) {
            continue;
        }
        let Some(profile) = line.split(r#""profile":{"#).nth(1) else {
            continue;
        };
        if !profile
            .split('}')
            .next()
            .unwrap_or("")
            .contains(r#""test":true"#)
        {
            continue;
        }
        let (Some(exe), Some(manifest)) = (
            json_string(line, "executable"),
            json_string(line, "manifest_path"),
        ) else {
            continue;
        };
        let exe = PathBuf::from(exe);
        let dir = Path::new(&manifest)
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str());
        // The file is `<target>-<hash>`, with the dashes of the target name as underscores.
        let name = exe
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('-'))
            .map(|(name, _hash)| name);
        if let (Some(dir), Some(name)) = (dir, name) {
            found.push((dir.to_owned(), name.to_owned(), exe));
        }
    }
    found
}

/// The value of the string field `key` of a one-line JSON object, unescaped.
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// Runs a case once, its output going to its log, and records its time if it passed.
fn run_case(ready: &mut Ready, run: usize, timeout: Duration) -> Result<Outcome> {
    let log = File::create(&ready.log)
        .with_context(|| format!("cannot create {}", ready.log.display()))?;
    let mut command = Command::new(&ready.exe);
    command
        .args(&ready.case.args)
        .current_dir(&ready.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    die_with_parent(&mut command);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", ready.exe.display()))?;
    let pgid = child.id();
    let ended = match wait(&mut child, started + timeout) {
        Ok(ended) => ended,
        Err(err) => {
            kill_group(pgid);
            let _ = child.wait();
            return Err(err);
        }
    };
    let outcome = match ended {
        Some(status) if status.success() => {
            ready.times.push(started.elapsed());
            Outcome::Passed
        }
        Some(status) => Outcome::Failed(status),
        None => {
            eprintln!(
                "\nstress: run {run}: {} HUNG: still running after {timeout:?}",
                ready.label()
            );
            print_stacks(pgid);
            print_tail(&ready.log, "its output so far");
            eprintln!("reproduce with: {}", ready.reproduce());
            eprintln!("{HOGS_NOTE}");
            Outcome::Hung
        }
    };
    // The test binary's group may hold worker processes it left behind (or all of it, if
    // it hung); none may outlive the run.
    kill_group(pgid);
    if ended.is_none() {
        child.wait()?;
    }
    Ok(outcome)
}

/// Prints the last [`TAIL_LINES`] lines of the file at `path`.
fn print_tail(path: &Path, what: &str) {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    eprintln!(
        "\n---- the last {} lines of {what} ({}):",
        lines.len() - from,
        path.display()
    );
    for line in &lines[from..] {
        eprintln!("{line}");
    }
    eprintln!("---- end of the output");
}

/// Prints the runs and the min / median / max time of each case.
fn print_summary(cases: &[Ready], total: Duration) {
    let labels: Vec<String> = cases.iter().map(Ready::label).collect();
    let width = labels.iter().map(String::len).max().unwrap_or(0);
    eprintln!(
        "\nstress: summary ({total:.1?} in all)\n  {:width$}  runs       min    median       max",
        "case"
    );
    for (ready, label) in cases.iter().zip(&labels) {
        let mut times = ready.times.clone();
        times.sort_unstable();
        let Some((min, max)) = times.first().zip(times.last()) else {
            eprintln!("  {label:width$}  {:>4}", 0);
            continue;
        };
        let median = times[times.len() / 2];
        eprintln!(
            "  {label:width$}  {:>4}  {:>8.2}s {:>8.2}s {:>8.2}s",
            times.len(),
            min.as_secs_f64(),
            median.as_secs_f64(),
            max.as_secs_f64()
        );
    }
}
