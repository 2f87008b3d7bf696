//! `engine run --from/--to redis://...` against a real `redis-server`: lines through streams,
//! a bad address as a usage error, an unreachable server as a failure.

#![cfg(feature = "redis")]

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engine::redis::{Broker, RedisBroker, StreamAddress};

/// A `redis-server` on a free loopback port, killed and waited for on drop.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Server {
    fn start() -> Self {
        let path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("redis-server"))
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "redis-server is not installed, and these tests run a real one: install it \
                     with `apt-get install -y redis-server`"
                )
            });
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("engine-cli-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let child = Command::new(path)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while RedisBroker::connect(&server.address("probe")).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::park_timeout(Duration::from_millis(10));
        }
        server
    }

    fn url(&self, stream: &str) -> String {
        format!("redis://127.0.0.1:{}/{stream}", self.port)
    }

    fn address(&self, stream: &str) -> StreamAddress {
        StreamAddress::parse(&self.url(stream)).expect("a valid address")
    }

    /// Every line in `stream`, read through a new group of the test's own.
    fn lines(&self, stream: &str) -> Vec<String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let group = format!("inspect-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let mut broker = RedisBroker::connect(&self.address(stream)).expect("connects");
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
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
    let server = Server::start();
    let input: String = (1..=500).map(|n| format!("line {n}\n")).collect();
    let expected: Vec<String> = (1..=500).map(|n| format!("line {n}")).collect();

    let out = engine(&["run", "--to", &server.url("in")], &input);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("completed: 500 processed"), "{stderr}");

    // Stream to stream, until SIGINT.
    let child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "run",
            "--from",
            &format!("{}?block_ms=50", server.url("in")),
        ])
        .args(["--to", &server.url("out")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.lines("out").len() < 500 {
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
    assert_eq!(server.lines("out"), expected);
    // Every line of `in` was finished: acknowledged and deleted.
    assert_eq!(server.lines("in"), Vec::<String>::new());
}
