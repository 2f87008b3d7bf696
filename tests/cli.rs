//! The `engine` binary: help, version, `info`, and a clear error on bad options.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn engine(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .output()
        .expect("the engine binary runs")
}

/// Runs the engine with `input` on standard input.
fn engine_with_input(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine binary runs");
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("the engine ends");
    writer.join().expect("writer").expect("input written");
    out
}

#[test]
fn no_arguments_runs_the_default_engine_on_stdin() {
    let out = engine(&[]);
    assert!(out.status.success(), "{out:?}");
    // Logs and the report go to standard error, without colour codes when it is not a
    // terminal.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(stderr.contains("completed: 0 processed"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

#[test]
fn run_logs_every_line_and_reports_every_item() {
    let input: String = (1..=10_000).map(|n| format!("{n}\n")).collect();
    let out = engine_with_input(
        &[
            "run",
            "--transport-threads",
            "2",
            "--backend-threads",
            "2",
            "--queue-size",
            "64",
        ],
        input.as_bytes(),
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("completed: 10000 processed"), "{stderr}");
    for stage in ["transport", "backend"] {
        let mut logged: Vec<u32> = stderr
            .lines()
            .filter(|l| l.contains(&format!("stage=\"{stage}\"")))
            .filter_map(|l| {
                l.rsplit("item=\"")
                    .next()?
                    .trim_end_matches('"')
                    .parse()
                    .ok()
            })
            .collect();
        logged.sort_unstable();
        assert_eq!(logged, (1..=10_000).collect::<Vec<_>>(), "{stage}");
    }
}

#[test]
fn run_options_are_checked() {
    let out = engine_with_input(&["run", "--transport-threads", "0"], b"");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid option `transport_threads`"),
        "{stderr}"
    );
    let out = engine_with_input(&["--stats-interval", "soon"], b"");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = engine_with_input(
        &["--stats-interval", "10ms", "--queue-size", "8"],
        b"a\nb\n",
    );
    assert!(out.status.success(), "{out:?}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_a_run_blocked_on_stdin_and_prints_the_report() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("run")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine binary runs");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(b"one\ntwo\n").expect("written");
    // Wait until both lines went through: the signal handler is installed by then.
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut seen = String::new();
    while !seen.contains("stage=\"backend\" thread=0 item=\"two\"") {
        assert!(stderr.read_line(&mut seen).expect("reads") > 0, "{seen}");
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("reads");
    let status = child.wait().expect("the engine ends");
    assert!(status.success(), "{status:?} {rest}");
    assert!(rest.contains("stopped (drained): 2 processed"), "{rest}");
    drop(stdin);
}

#[test]
fn info_lists_versions_and_features() {
    let out = engine(&["info"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(concat!("engine ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "protocol version {}",
            engine::core::protocol::PROTOCOL_VERSION
        )),
        "{stdout}"
    );
    let features = engine::enabled_features().join(", ");
    assert!(
        stdout.contains(&format!("features: {features}")),
        "{stdout}"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let out = engine(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        concat!("engine ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_log_level_is_a_clear_error() {
    let out = engine(&["--log-level", "engine=[", "info"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid --log-level"), "{stderr}");
}

#[test]
fn an_unknown_subcommand_is_rejected() {
    let out = engine(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

/// Writes a pod config file for one test.
#[cfg(feature = "pod")]
fn pod_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pod-{name}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pod.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

/// Starts `engine pod run -c FILE`, waits for `ready` in its log, sends `signals` SIGTERMs, and
/// returns its exit status and whole log.
#[cfg(all(unix, feature = "pod"))]
fn pod_with_signals(
    config: &std::path::Path,
    ready: &str,
    signals: usize,
) -> (std::process::ExitStatus, String, std::time::Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["pod", "run", "-c"])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine binary runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut log = String::new();
    while !log.contains(ready) {
        assert!(stderr.read_line(&mut log).expect("reads") > 0, "{log}");
    }
    let started = std::time::Instant::now();
    for _ in 0..signals {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        if signals > 1 {
            // The second signal must come after the first was seen.
            while !log.contains("stopping the pod") {
                assert!(stderr.read_line(&mut log).expect("reads") > 0, "{log}");
            }
        }
    }
    stderr.read_to_string(&mut log).expect("reads");
    let status = child.wait().expect("the pod ends");
    (status, log, started.elapsed())
}

#[cfg(all(unix, feature = "pod"))]
#[test]
fn a_pod_stops_on_sigterm_running_handlers_and_cancelling_at_the_deadline() {
    let config = pod_config(
        "sigterm",
        r#"
        stop_wait_time = "300ms"

        [[beans]]
        core = "sleep"
        label = "polite"

        [[beans]]
        core = "sleep"
        label = "stubborn"
        ignore_stop = true

        [[beans]]
        core = "hello"
        name = "pod"
        wait = true
        "#,
    );
    let (status, log, took) = pod_with_signals(&config, "hello pod!", 1);
    assert!(status.success(), "{status:?} {log}");
    assert_eq!(log.matches("got the stop signal").count(), 2, "{log}");
    assert!(
        log.contains("bean cancelled at the stop deadline bean=2"),
        "{log}"
    );
    assert!(log.contains("core=hello state=Finished"), "{log}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
}

#[cfg(all(unix, feature = "pod"))]
#[test]
fn a_second_sigterm_stops_a_pod_at_once() {
    let config = pod_config(
        "second",
        "[[beans]]\ncore = \"sleep\"\nignore_stop = true\n[[beans]]\ncore = \"hello\"\nwait = true\n",
    );
    // No stop_wait_time: only the second signal can end the stubborn bean.
    let (status, log, _) = pod_with_signals(&config, "hello world!", 2);
    assert!(status.success(), "{status:?} {log}");
    assert!(log.contains("core=sleep state=Cancelled"), "{log}");
}

#[cfg(feature = "pod")]
#[test]
fn pod_config_errors_are_clear_and_exit_with_2() {
    let cases = [
        (
            "unknown-core",
            "[[beans]]\ncore = \"helo\"\n",
            "unknown core \"helo\"; registered: engine, hello, sleep, status, stdin, tcp_server",
        ),
        (
            "wrong-type",
            "[[beans]]\ncore = \"sleep\"\nignore_stop = \"yes\"\n",
            "bean \"sleep\": parameter `ignore_stop`: invalid type",
        ),
        (
            "unknown-key",
            "[[beans]]\ncore = \"hello\"\nnmae = \"x\"\n",
            "unknown field `nmae`",
        ),
        (
            "no-core",
            "[[beans]]\nlabel = \"x\"\n",
            "bean #1 (?): no `core`",
        ),
    ];
    for (name, text, expected) in cases {
        let config = pod_config(name, text);
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["pod", "run", "-c"])
            .arg(&config)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let out = engine(&["pod", "run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no beans to run"));
}

#[cfg(feature = "pod")]
#[test]
fn pod_quick_start_and_debug_print_the_effective_config() {
    let out = engine(&["pod", "run", "--debug", "hello:name=Ozzy"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[[beans]]") && stdout.contains("name = \"Ozzy\""),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("hello Ozzy!"));
    let out = engine(&["pod", "beans"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "hello")
    );
}

#[cfg(all(unix, feature = "pod"))]
#[test]
fn the_engine_bean_reads_stdin_and_stops_with_the_pod() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["pod", "run", "engine:transport_threads=2", "status"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine binary runs");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(b"alpha\nbeta\n").expect("written");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut log = String::new();
    while !(log.contains("stage=\"backend\" thread=0 item=\"beta\"")
        && log.contains("status server listening"))
    {
        assert!(stderr.read_line(&mut log).expect("reads") > 0, "{log}");
    }
    // Standard input stays open: the engine's frontend is blocked reading it.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    stderr.read_to_string(&mut log).expect("reads");
    let status = child.wait().expect("the pod ends");
    assert!(status.success(), "{status:?} {log}");
    assert!(log.contains("stopped (drained): 2 processed"), "{log}");
    assert!(log.contains("core=engine state=Finished"), "{log}");
    drop(stdin);
}
