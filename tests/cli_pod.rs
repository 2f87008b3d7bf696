//! `engine pod ctl` against a running `engine pod run`, both the real binary: status, stop,
//! restart and signal by label; a token refuses requests without it (exit 1, nothing
//! changed); bad options exit 2. `engine top --once` against the pod's status server lists
//! its beans, with the pod's token given by `--token` or `ENGINE_POD_CONTROL_TOKEN`, and says
//! "unauthorized" without it.

#![cfg(all(unix, feature = "pod"))]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);

/// A running pod and its log.
struct RunningPod {
    child: Child,
    stderr: BufReader<ChildStderr>,
    log: String,
    addr: String,
}

impl RunningPod {
    /// Starts `engine pod run` with `args`, waits for its status server's address.
    fn start(args: &[&str]) -> Self {
        Self::start_with(args, None)
    }

    /// Starts `engine pod run` with `args` and `ENGINE_POD_CONTROL_TOKEN` set to `token` if
    /// given (unset if not), waits for its status server's address.
    fn start_with(args: &[&str], token: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_engine"));
        command.args(["pod", "run"]).args(args);
        match token {
            Some(token) => command.env("ENGINE_POD_CONTROL_TOKEN", token),
            None => command.env_remove("ENGINE_POD_CONTROL_TOKEN"),
        };
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("the engine binary runs");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        let mut log = String::new();
        let addr = loop {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).expect("reads") > 0, "{log}");
            log += &line;
            if line.contains("status server listening")
                && let Some(rest) = line.split("addr=").nth(1)
            {
                break rest
                    .split_whitespace()
                    .next()
                    .expect("an address")
                    .to_owned();
            }
        };
        Self {
            child,
            stderr,
            log,
            addr,
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["pod", "ctl", "--addr", &self.addr])
            .args(args)
            .env_remove("ENGINE_POD_CONTROL_TOKEN")
            .output()
            .expect("ctl runs")
    }

    /// `ctl status` as rows of columns, checked to succeed.
    fn status(&self, token: &[&str]) -> Vec<Vec<String>> {
        let out = self.ctl(&[token, &["status"]].concat());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    /// Polls `ctl status` until `check` holds (a deadline, not a sleep).
    fn until(&self, token: &[&str], check: impl Fn(&[Vec<String>]) -> bool) -> Vec<Vec<String>> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rows = self.status(token);
            if check(&rows) {
                return rows;
            }
            assert!(Instant::now() < deadline, "{rows:?}");
            std::thread::yield_now();
        }
    }

    /// Reads the log until it contains `text`.
    fn log_until(&mut self, text: &str) {
        while !self.log.contains(text) {
            assert!(
                self.stderr.read_line(&mut self.log).expect("reads") > 0,
                "{}",
                self.log
            );
        }
    }

    fn finish(mut self) -> (std::process::ExitStatus, String) {
        self.stderr.read_to_string(&mut self.log).expect("reads");
        let status = self.child.wait().expect("the pod ends");
        (status, self.log)
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ctl_lists_stops_restarts_and_signals_beans_of_a_running_pod() {
    let mut pod = RunningPod::start(&["status", "sleep:label=a", "sleep:label=b", "sleep:label=b"]);
    let rows = pod.until(&[], |rows| {
        rows.len() == 4 && rows[1..].iter().all(|r| r[3] == "running")
    });
    // ID LABEL CORE STATE RESTARTS UPTIME_S ADDRESS
    assert_eq!(rows[0][2], "status");
    assert_eq!(rows[0][3], "ready");
    assert_eq!(rows[0][6], pod.addr);
    assert_eq!(rows[1][1], "a");

    // restart: a new start time and one more restart.
    let before: f64 = rows[1][5].parse().unwrap();
    let out = pod.ctl(&["restart", "2"]);
    assert!(out.status.success(), "{out:?}");
    let rows = pod.until(&[], |rows| rows[1][4] == "1" && rows[1][3] == "running");
    let after: f64 = rows[1][5].parse().unwrap();
    assert!(after < before + 0.5, "{before} -> {after}");
    pod.log_until("restarting bean on request");

    // signal: only the labelled beans' handlers run (the sleep beans handle "stop").
    let out = pod.ctl(&["signal", "stop", "--label", "b"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("2 handler(s) ran"),
        "{}",
        stdout(&out)
    );
    pod.log_until("sleep bean got the stop signal");
    let out = pod.ctl(&["signal", "stop", "--id", "2"]);
    assert!(
        stdout(&out).contains("1 handler(s) ran"),
        "{}",
        stdout(&out)
    );

    // stop: one bean ends, the others run on.
    let out = pod.ctl(&["stop", "3"]);
    assert!(out.status.success(), "{out:?}");
    let rows = pod.until(&[], |rows| rows[2][3] == "finished");
    assert_eq!(
        [&rows[0][3], &rows[1][3], &rows[3][3]],
        ["ready", "running", "running"]
    );

    // Refusals exit 1 with the server's reason; bad options exit 2.
    let out = pod.ctl(&["stop", "3"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bean 3 is finished"));
    let out = pod.ctl(&["restart", "9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(pod.ctl(&["stop", "x"]).status.code(), Some(2));
    assert_eq!(pod.ctl(&["frobnicate"]).status.code(), Some(2));
    let out = pod.ctl(&["signal", "x", "--payload", "{nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = pod.ctl(&["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    let (status, log) = pod.finish();
    assert!(status.success(), "{status:?} {log}");
    assert!(log.contains("stopping the pod"), "{log}");
}

#[test]
fn with_a_token_ctl_without_it_is_refused_and_nothing_changes() {
    let pod = RunningPod::start(&["--token", "s3cret", "status", "sleep"]);
    let token = ["--token", "s3cret"];
    pod.until(&token, |rows| rows.len() == 2 && rows[1][3] == "running");
    for args in [
        &["status"][..],
        &["stop", "2"],
        &["restart", "2"],
        &["signal", "stop"],
        &["shutdown"],
        &["--token", "wrong", "stop", "2"],
    ] {
        let out = pod.ctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("unauthorized: pass --token or ENGINE_POD_CONTROL_TOKEN"),
            "{out:?}"
        );
    }
    let rows = pod.status(&token);
    assert_eq!((rows[1][3].as_str(), rows[1][4].as_str()), ("running", "0"));
    assert!(!pod.log.contains("got the stop signal"));
    // The token from the environment works as well as --token.
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["pod", "ctl", "--addr", &pod.addr, "shutdown"])
        .env("ENGINE_POD_CONTROL_TOKEN", "s3cret")
        .output()
        .expect("ctl runs");
    assert!(out.status.success(), "{out:?}");
    let (status, log) = pod.finish();
    assert!(status.success(), "{status:?} {log}");
    assert!(!log.contains("s3cret"), "the token is never logged: {log}");
}

#[test]
fn ctl_without_a_pod_fails_with_1() {
    // A port that nothing listens on: bound, then released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["pod", "ctl", "--addr", &addr.to_string(), "status"])
        .output()
        .expect("ctl runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the pod"));
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["pod", "ctl", "--addr", "not an address", "status"])
        .output()
        .expect("ctl runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn top_once_against_the_pods_status_server_lists_the_beans() {
    let pod = RunningPod::start(&["status", "sleep:label=sleepers"]);
    pod.until(&[], |rows| rows.len() == 2 && rows[1][3] == "running");
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["top", "--once", &pod.addr])
        .output()
        .expect("top runs");
    let table = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    // BEAN LABEL CORE STATE RESTARTS UPTIME
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip_while(|l| !l.starts_with("BEAN"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(&rows[0][..3], ["1", "status", "ready"], "{table}");
    assert_eq!(
        &rows[1][..5],
        ["2", "sleepers", "sleep", "running", "0"],
        "{table}"
    );

    let out = pod.ctl(&["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    let (status, log) = pod.finish();
    assert!(status.success(), "{status:?} {log}");
}

/// `engine top --once` against `addr`, with `args`, and `ENGINE_POD_CONTROL_TOKEN` set to
/// `env_token` if given (unset if not).
fn top(addr: &str, args: &[&str], env_token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engine"));
    command.args(["top", "--once", addr]).args(args);
    match env_token {
        Some(token) => command.env("ENGINE_POD_CONTROL_TOKEN", token),
        None => command.env_remove("ENGINE_POD_CONTROL_TOKEN"),
    };
    command.output().expect("top runs")
}

#[test]
fn top_and_ctl_read_a_pod_with_a_token_given_each_way() {
    // The pod takes its token from the environment.
    let pod = RunningPod::start_with(&["status", "sleep:label=sleepers"], Some("s3cret"));
    let token = ["--token", "s3cret"];
    pod.until(&token, |rows| rows.len() == 2 && rows[1][3] == "running");

    // Without a token, or with a wrong one: a clear message and exit 1.
    for (args, env) in [
        (&[][..], None),
        (&["--token", "wrong"][..], None),
        (&[][..], Some("wrong")),
    ] {
        let out = top(&pod.addr, args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {out:?}");
        assert!(
            stderr.contains("unauthorized:")
                && stderr.contains("--token or ENGINE_POD_CONTROL_TOKEN"),
            "{stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
    let out = top(&pod.addr, &[], None);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unauthorized: pass --token or ENGINE_POD_CONTROL_TOKEN"),
        "{out:?}"
    );

    // With --token, or from the environment: the table of beans.
    for (args, env) in [(&token[..], None), (&[][..], Some("s3cret"))] {
        let out = top(&pod.addr, args, env);
        assert!(out.status.success(), "{args:?} {env:?}: {out:?}");
        let table = stdout(&out);
        assert!(
            table.contains("BEAN") && table.contains("sleepers"),
            "{table}"
        );
    }

    // ctl takes `--control-token` as another name for `--token`.
    let out = pod.ctl(&["--control-token", "s3cret", "shutdown"]);
    assert!(out.status.success(), "{out:?}");
    let (status, log) = pod.finish();
    assert!(status.success(), "{status:?} {log}");
    assert!(!log.contains("s3cret"), "the token is never logged: {log}");
}

#[test]
fn a_status_bean_beyond_loopback_without_a_token_ends_the_pod_at_start_with_2() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["pod", "run", "status:host=0.0.0.0", "sleep"])
        .env_remove("ENGINE_POD_CONTROL_TOKEN")
        .output()
        .expect("the pod runs");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("control_token"), "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
