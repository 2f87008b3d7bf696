//! `engine run --from/--to redis://...` against a real `redis-server`: lines through streams,
//! a bad address as a usage error, an unreachable server as a failure.

#![cfg(feature = "redis")]

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engine::redis::testing::Server;
use engine::redis::{Broker, RedisBroker};

/// Every line in `stream` on `server`, read through a new group of the test's own.
fn lines(server: &Server, stream: &str) -> Vec<String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let group = format!("inspect-{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let address = server.address(stream).expect("a valid address");
    let mut broker = RedisBroker::connect(&address).expect("connects");
    broker.create_group(stream, &group).expect("group");
    let mut lines = Vec::new();
    loop {
        let read = broker
            .read(stream, &group, "test", 1000, Duration::from_millis(1))
            .expect("read");
        if read.is_empty() {
            return lines;
        }
        for entry in read {
            let bytes = entry.payload.expect("a payload");
            lines.push(engine::core::protocol::from_bytes(&bytes).expect("a line"));
        }
    }
}

fn engine(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .expect("input written");
    child.wait_with_output().expect("the engine ends")
}

#[test]
fn a_bad_stream_address_is_a_usage_error() {
    for bad in [
        "redis://127.0.0.1:6379",
        "http://x/in",
        "redis://h/in?grup=g",
    ] {
        for option in ["--from", "--to"] {
            let out = engine(&["run", option, bad], "");
            assert_eq!(out.status.code(), Some(2), "{option} {bad}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("invalid stream address"), "{stderr}");
        }
    }
}

#[test]
fn an_unreachable_server_fails_the_run() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}/in");
    let started = Instant::now();
    let out = engine(&["run", "--to", &url], "a\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the broker"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn lines_go_from_stdin_to_a_stream_and_from_stream_to_stream() {
    let server = Server::start().unwrap();
    let input: String = (1..=500).map(|n| format!("line {n}\n")).collect();
    let expected: Vec<String> = (1..=500).map(|n| format!("line {n}")).collect();

    let out = engine(&["run", "--to", &server.stream_url("in")], &input);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("completed: 500 processed"), "{stderr}");

    // Stream to stream, until SIGINT.
    let child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "run",
            "--from",
            &format!("{}?block_ms=50", server.stream_url("in")),
        ])
        .args(["--to", &server.stream_url("out")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&server, "out").len() < 500 {
        assert!(Instant::now() < deadline, "the lines did not go through");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = child.wait_with_output().expect("the engine ends");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("500 processed"), "{stderr}");
    assert_eq!(lines(&server, "out"), expected);
    // Every line of `in` was finished: acknowledged and deleted.
    assert_eq!(lines(&server, "in"), Vec::<String>::new());
}
