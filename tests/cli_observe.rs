//! `engine run --metrics-addr` and `engine top`: the metrics of a run fed from a pipe rise as
//! lines are written and equal the report's counts once it ends; `engine top --once` shows the
//! stages; `HEAD` answers as `GET` without the body; a non-loopback address is refused; the
//! progress line stays off a pipe.

#![cfg(feature = "observe")]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use engine::observe::{Scraper, Snapshot};

/// Starts `engine run` with its metrics on a free loopback port; returns the process, the
/// metrics address and the rest of its standard error.
fn start(extra: &[&str]) -> (Child, String, BufReader<ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "run",
            "--log-level",
            "warn",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine binary runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if stderr.read_line(&mut line).expect("stderr") == 0 {
            let _ = child.kill();
            let status = child.wait();
            panic!("the engine ended ({status:?}) before it served metrics");
        }
        if let Some(rest) = line.strip_prefix("metrics on http://") {
            break rest.split('/').next().expect("an address").to_owned();
        }
    };
    (child, addr, stderr)
}

/// Scrapes until `done` holds for the snapshot, within 20 s.
fn scrape_until(scraper: &Scraper, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(snapshot) = scraper.scrape()
            && done(&snapshot)
        {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn processed(snapshot: &Snapshot) -> f64 {
    snapshot
        .stages
        .iter()
        .find(|s| s.kind == "backend")
        .map_or(0.0, |s| s.items_out)
}

fn lines(from: u64, to: u64) -> String {
    (from..to).map(|n| format!("{n}\n")).collect()
}

#[test]
fn metrics_rise_with_the_input_and_end_equal_to_the_report() {
    let (mut child, addr, mut stderr) = start(&["--metrics-linger", "60s"]);
    let scraper = Scraper::new(&addr).unwrap();
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(lines(0, 1000).as_bytes()).unwrap();
    stdin.flush().unwrap();
    scrape_until(&scraper, "1000 lines through", |s| processed(s) == 1000.0);
    stdin.write_all(lines(1000, 2500).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let running = scrape_until(&scraper, "2500 lines through", |s| processed(s) == 2500.0);
    assert!(running.running);

    // The table of `engine top`, once, against the running engine.
    let top = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["top", "--once", &addr])
        .output()
        .unwrap();
    assert!(top.status.success(), "{top:?}");
    let table = String::from_utf8_lossy(&top.stdout);
    for stage in ["frontend", "transport", "backend"] {
        assert!(table.contains(stage), "{table}");
    }

    // The end of the input ends the run; the metrics stay up (linger) with the final counts.
    drop(stdin);
    let last = scrape_until(&scraper, "the end of the run", |s| !s.running);
    // Ctrl-C ends the linger.
    kill(child.id(), 2);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    assert!(
        !rest.contains("items |"),
        "no progress line on a pipe: {rest}"
    );
    // The report: `stage kind threads in out filtered failed dropped busy`.
    for stage in &last.stages {
        let row = rest
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage.name.as_str()))
            .unwrap_or_else(|| panic!("no report row for {}: {rest}", stage.name));
        let numbers: Vec<f64> = row
            .split_whitespace()
            .skip(3)
            .take(5)
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            numbers,
            [
                stage.items_in,
                stage.items_out,
                stage.filtered,
                stage.failed,
                stage.dropped
            ],
            "{row}"
        );
    }
    assert_eq!(processed(&last), 2500.0);
}

fn kill(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
fn a_metrics_address_beyond_loopback_is_refused_unless_asked_for() {
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["run", "--metrics-addr", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--metrics-public"), "{stderr}");
}

#[test]
fn top_of_a_bad_address_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["top", "--once", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// One raw HTTP/1.1 exchange, the connection closed after it: the status line and every byte
/// after the headers.
fn raw(addr: &str, method: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("the server listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("a whole answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn head_answers_every_get_route_without_a_body_and_the_page_carries_the_stages() {
    let (mut child, addr, _stderr) = start(&[]);
    let scraper = Scraper::new(&addr).unwrap();
    let stdin = child.stdin.take().expect("piped");
    scrape_until(&scraper, "the stages", |s| s.stages.len() == 3);
    for path in ["/metrics", "/", "/index.html"] {
        let (status, body) = raw(&addr, "GET", path);
        assert!(
            status.contains(" 200 ") && !body.is_empty(),
            "GET {path}: {status}"
        );
        let (status, body) = raw(&addr, "HEAD", path);
        assert!(status.contains(" 200 "), "HEAD {path}: {status}");
        assert_eq!(body, "", "HEAD {path} has no body");
    }
    // The page as served already holds the stages, for its first paint.
    let (_, page) = raw(&addr, "GET", "/");
    for stage in ["frontend", "transport", "backend"] {
        assert!(page.contains(&format!("stage=\\\"{stage}\\\"")), "{stage}");
    }
    let (status, _) = raw(&addr, "POST", "/metrics");
    assert!(status.contains(" 405 "), "{status}");
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
