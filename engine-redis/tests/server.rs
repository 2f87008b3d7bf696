//! The throwaway `redis-server` of [`engine_redis::testing`]: it answers, a restart keeps
//! what an append-only server acknowledged, and dropping it ends the process and removes its
//! directory.

use engine_redis::redis::{self, Commands};
use engine_redis::testing::{Server, ServerOptions};
use engine_redis::{Broker, RedisBroker};

/// Whether a process with this id exists (a zombie still counts).
fn exists(pid: u32) -> bool {
    let pid = i32::try_from(pid).expect("a pid fits in i32");
    // SAFETY: `kill` with signal 0 sends nothing and has no memory-safety preconditions.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn a_server_answers_and_is_gone_when_dropped() {
    let server = Server::start().unwrap();
    let pid = server.pid().expect("it runs");
    let dir = server.dir().to_owned();
    assert!(exists(pid));
    assert!(dir.is_dir());
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));

    let mut conn = server.connection().unwrap();
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    let address = server.address("s").unwrap();
    assert_eq!(address.stream(), "s");
    let mut broker = RedisBroker::connect(&address).unwrap();
    assert_eq!(broker.append("s", &[vec![1]], None).unwrap(), 1);
    assert_eq!(conn.xlen::<_, usize>("s").unwrap(), 1);

    drop(conn);
    drop(broker);
    drop(server);
    // Killed and reaped: not even a zombie is left.
    assert!(!exists(pid), "redis-server {pid} still exists");
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[test]
fn an_append_only_server_keeps_its_data_across_a_restart() {
    let mut server = Server::start_with(ServerOptions::new().append_only(true)).unwrap();
    let (port, first) = (server.port(), server.pid().expect("it runs"));
    let mut conn = server.connection().unwrap();
    let _: () = conn.set("k", "v").unwrap();
    drop(conn);

    server.restart().unwrap();
    let second = server.pid().expect("it runs again");
    assert_ne!(first, second);
    assert!(!exists(first), "the first process was reaped");
    assert_eq!(server.port(), port, "a restart keeps the port");
    let mut conn = server.connection().unwrap();
    assert_eq!(conn.get::<_, String>("k").unwrap(), "v");
}

#[test]
fn a_server_without_persistence_starts_empty_after_a_restart() {
    let mut server = Server::start().unwrap();
    let mut conn = server.connection().unwrap();
    let _: () = conn.set("k", "v").unwrap();
    drop(conn);
    server.restart().unwrap();
    let mut conn = server.connection().unwrap();
    assert_eq!(conn.get::<_, Option<String>>("k").unwrap(), None);
}
