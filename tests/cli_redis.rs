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
        // The log transport logs every line: at info, more than a pipe holds before the
        // output is read at the end.
        .env("RUST_LOG", "warn")
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

/// How many entries `stream` holds.
fn len(server: &Server, stream: &str) -> usize {
    let mut conn = server.connection().expect("connects");
    engine::redis::redis::cmd("XLEN")
        .arg(stream)
        .query(&mut conn)
        .expect("XLEN")
}

/// Polls `condition` until it holds, panicking with `what` after a minute.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        // Polling another process's state, not synchronising on a sleep.
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Runs a consumer with a bug (it fails every line starting with `poison`, and stops) on
/// `jobs` until the three poison lines there are dead letters: each failed run leaves its
/// lines pending, and the next run takes them back with one delivery too many.
fn bury_poison_with_a_buggy_consumer(server: &Server) {
    use engine::core::{ErrorPolicy, StageError, StopHandle, try_map};
    use engine::redis::{SourceOptions, StreamAddress, StreamSource};
    let address = StreamAddress::parse(&format!("{}?consumer=buggy", server.stream_url("jobs")))
        .expect("a valid address");
    for _run in 0..10 {
        let source = StreamSource::<String>::new(address.clone()).options(
            SourceOptions::new()
                .max_deliveries(1)
                .claim_idle(Duration::from_millis(1))
                .sweep_every(Duration::from_millis(10))
                .block(Duration::from_millis(20)),
        );
        let settlement = source.settlement();
        let stop = StopHandle::new();
        let handle = engine::threads::Engine::builder(source)
            .transport(try_map(|line: String| {
                if line.starts_with("poison") {
                    Err(StageError::msg(format!("cannot handle {line:?}")))
                } else {
                    Ok(line)
                }
            }))
            .backend(|_: String| {})
            .error_policy(ErrorPolicy::Stop)
            .stop_handle(&stop)
            .spawn()
            .expect("the buggy consumer starts");
        wait_until("the run fails or the poison is buried", || {
            handle.is_finished() || len(server, "{jobs}:dead") == 3
        });
        stop.stop();
        if handle.join().is_err() {
            // A failed run ends without waiting for its cleanup: let it record the errors.
            assert!(settlement.wait(Duration::from_secs(60)));
        }
        if len(server, "{jobs}:dead") == 3 {
            return;
        }
    }
    panic!("the poison lines were not dead-lettered in 10 runs");
}

#[test]
fn dead_letters_are_listed_shown_and_replayed_to_a_fixed_consumer() {
    let server = Server::start().unwrap();
    let jobs = server.stream_url("jobs");
    let out = engine(&["run", "--to", &jobs], "poison 1\npoison 2\npoison 3\n");
    assert!(out.status.success(), "{out:?}");
    bury_poison_with_a_buggy_consumer(&server);
    assert_eq!(len(&server, "jobs"), 0);

    // List: one line per dead letter, with its reason.
    let out = engine(&["dlq", "list", &jobs], "");
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<&str> = listed.lines().collect();
    assert_eq!(rows.len(), 3, "{listed}");
    assert!(
        rows.iter().all(|row| row.contains("deliveries=2")),
        "{listed}"
    );
    assert!(listed.contains("cannot handle \"poison 1\""), "{listed}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 dead letters in {jobs}:dead"));
    let ids: Vec<&str> = rows
        .iter()
        .map(|row| row.split('\t').next().expect("an id"))
        .collect();

    // Show: the whole letter, with its line.
    let out = engine(&["dlq", "show", ids[0], &jobs], "");
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("id: {}", ids[0])), "{shown}");
    assert!(shown.contains("stream: jobs"), "{shown}");
    assert!(shown.contains("line: \"poison 1\""), "{shown}");
    assert!(
        shown.contains("reason: delivered 2 times (limit 1)"),
        "{shown}"
    );
    let out = engine(&["dlq", "show", "1-1", &jobs], "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Replay one by id, then the rest; an unknown id fails, and usage errors are errors.
    let out = engine(&["dlq", "replay", ids[0], &jobs], "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert_eq!((len(&server, "jobs"), len(&server, "{jobs}:dead")), (1, 2));
    let out = engine(&["dlq", "replay", ids[0], &jobs], "");
    assert_eq!(out.status.code(), Some(1), "already replayed: {out:?}");
    for usage in [
        &["dlq", "replay", &jobs][..],
        &["dlq", "replay", "--all", ids[1], &jobs],
        &["dlq", "replay", "not-an-id", &jobs],
    ] {
        assert_eq!(engine(usage, "").status.code(), Some(2), "{usage:?}");
    }
    let out = engine(&["dlq", "replay", "--all", &jobs], "");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("replayed 2 dead letters"));
    assert_eq!((len(&server, "jobs"), len(&server, "{jobs}:dead")), (3, 0));

    // A fixed consumer processes them.
    let child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["run", "--from", &format!("{jobs}?block_ms=50")])
        .args(["--to", &server.stream_url("done")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine runs");
    wait_until("the replayed lines are done", || {
        lines(&server, "done").len() >= 3
    });
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = child.wait_with_output().expect("the engine ends");
    assert!(out.status.success(), "{out:?}");
    let mut done = lines(&server, "done");
    done.sort();
    assert_eq!(done, ["poison 1", "poison 2", "poison 3"]);
    assert_eq!((len(&server, "jobs"), len(&server, "{jobs}:dead")), (0, 0));
    let out = engine(&["dlq", "list", &jobs], "");
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
}

#[test]
fn rediss_with_a_password_works_and_no_log_line_shows_the_password() {
    use engine::redis::testing::ServerOptions;
    let password = "cli-secret-pw";
    let server = Server::start_with(ServerOptions::new().tls(true).password(password)).unwrap();
    let ca = server.ca_file().expect("a TLS server");
    let url = |password: &str| {
        format!(
            "rediss://:{password}@127.0.0.1:{}/tls?ca={}",
            server.port(),
            ca.display()
        )
    };
    let out = engine(
        &["--log-level", "trace", "run", "--to", &url(password)],
        "a\nb\n",
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("completed: 2 processed"), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");
    assert_eq!(len(&server, "tls"), 2);

    let wrong = "not-the-password";
    let out = engine(&["--log-level", "trace", "run", "--to", &url(wrong)], "a\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(
        !stderr.contains(wrong) && !stderr.contains(password),
        "{stderr}"
    );
    let out = engine(&["dlq", "list", &url(wrong)], "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(wrong));
}

#[test]
fn keyed_lines_keep_their_order_per_key_from_stream_to_stream() {
    let server = Server::start().unwrap();
    // 20 users, 25 lines each, interleaved; the key is the first field.
    let input: String = (0..25)
        .flat_map(|n| (0..20).map(move |user| format!("user{user} {n}\n")))
        .collect();
    let keyed = format!("{}?partitions=4", server.stream_url("keyed"));
    let out = engine(&["run", "--to", &keyed, "--key", "field:1"], &input);
    assert!(out.status.success(), "{out:?}");
    // Each user's lines are all in one partition, in order.
    let mut partition_of: std::collections::HashMap<String, usize> = Default::default();
    let mut total = 0;
    for p in 0..4 {
        let lines = lines(&server, &format!("keyed:p{p}"));
        total += lines.len();
        for line in lines {
            let user = line.split(' ').next().unwrap().to_owned();
            assert_eq!(*partition_of.entry(user).or_insert(p), p, "{line}");
        }
    }
    assert_eq!(total, 500);
    assert!(
        partition_of
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1
    );

    // A keyed source with two transport threads (ordered mode), until SIGINT.
    let from = format!("{keyed}&block_ms=50&lease_ms=500");
    let child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["run", "--from", &from, "--to", &server.stream_url("out")])
        .args(["--transport-threads", "2"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine runs");
    wait_until("the lines are through", || {
        lines(&server, "out").len() >= 500
    });
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = child.wait_with_output().expect("the engine ends");
    assert!(out.status.success(), "{out:?}");
    let mut next: std::collections::HashMap<String, u32> = Default::default();
    let got = lines(&server, "out");
    assert_eq!(got.len(), 500);
    for line in got {
        let (user, n) = line.split_once(' ').unwrap();
        let expected = next.entry(user.to_owned()).or_insert(0);
        assert_eq!(n.parse::<u32>().unwrap(), *expected, "{user} out of order");
        *expected += 1;
    }

    // A bad key is a usage error; a keyed source with several backend threads cannot keep
    // the order, and says so.
    let bad = engine(&["run", "--to", &keyed, "--key", "field:0"], "");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let threads = engine(&["run", "--from", &from, "--backend-threads", "2"], "");
    assert_eq!(threads.status.code(), Some(1), "{threads:?}");
    assert!(String::from_utf8_lossy(&threads.stderr).contains("ordered"));
}

/// The length of `key` on a cluster, wherever its slot is served.
fn cluster_len(conn: &mut engine::redis::redis::cluster::ClusterConnection, key: &str) -> usize {
    engine::redis::redis::cmd("XLEN")
        .arg(key)
        .query(conn)
        .expect("XLEN")
}

#[test]
fn dead_letters_of_a_keyed_stream_on_a_cluster_are_listed_and_replayed_in_every_partition() {
    use engine::redis::testing::{Cluster, ClusterOptions};
    use engine::redis::{StreamAddress, redis::cluster::ClusterClient};
    const PARTITIONS: u32 = 12;
    let cluster = Cluster::start_with(ClusterOptions::new().replicas(0)).unwrap();
    let keyed = format!("{}?partitions={PARTITIONS}", cluster.stream_url("jobs"));
    let seeds: Vec<String> = cluster
        .ports()
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect();
    let mut conn = ClusterClient::new(seeds).unwrap().get_connection().unwrap();

    // Good lines, then one poison entry (a payload that is no line) in 3 partitions, one on
    // each master: partition i is on master i % 3.
    let input: String = (0..30).map(|n| format!("user{n} ok\n")).collect();
    let out = engine(&["run", "--to", &keyed, "--key", "field:1"], &input);
    assert!(out.status.success(), "{out:?}");
    let address = StreamAddress::parse(&keyed).unwrap();
    let mut broker = RedisBroker::connect(&address).unwrap();
    let partitions = broker.partition_streams("jobs", PARTITIONS).unwrap();
    let poisoned = [0, 4, 8];
    for p in poisoned {
        broker
            .append(&partitions[p], &[vec![0xff, 0xff, 0xff]], None)
            .unwrap();
    }
    let dead = |p: usize| format!("{{{}}}:dead", partitions[p]);

    // A consumer takes the good lines and buries the poison.
    let child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "run",
            "--from",
            &format!("{keyed}&block_ms=50&lease_ms=500"),
        ])
        .args(["--to", &cluster.stream_url("done")])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine runs");
    wait_until("the poison is buried and the lines are done", || {
        poisoned
            .iter()
            .all(|p| cluster_len(&mut conn, &dead(*p)) == 1)
            && cluster_len(&mut conn, "done") >= 30
    });
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    child.wait_with_output().expect("the engine ends");

    // List: the three dead letters, from three partitions on three masters.
    let out = engine(&["dlq", "list", &keyed], "");
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("3 dead letters in the partitions of jobs"),
        "{stderr}"
    );
    for p in poisoned {
        assert!(
            stderr.contains(&format!("1 dead letters in {}", dead(p))),
            "{stderr}"
        );
    }
    let ids: Vec<&str> = listed
        .lines()
        .map(|row| row.split('\t').next().expect("an id"))
        .collect();

    // Show finds a letter in any partition; replay one by id, then the rest.
    let out = engine(&["dlq", "show", ids[2], &keyed], "");
    assert!(out.status.success(), "{out:?}");
    let out = engine(&["dlq", "replay", ids[1], &keyed], "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = engine(&["dlq", "replay", "--all", &keyed], "");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("replayed 2 dead letters to the partitions of jobs"),
        "{out:?}"
    );
    // Each poison entry is back in its own partition, no dead letter is left.
    for p in poisoned {
        assert_eq!(
            (
                cluster_len(&mut conn, &partitions[p]),
                cluster_len(&mut conn, &dead(p))
            ),
            (1, 0),
            "{}",
            partitions[p]
        );
    }
    let out = engine(&["dlq", "list", &keyed], "");
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
}
