//! Shared by the behaviour tests: a real `redis-server` on a free loopback port in a
//! temporary directory, stopped by its pid when the guard drops, and helpers to inspect
//! streams.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part of this module"
)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::streams::{StreamInfoConsumersReply, StreamPendingReply, StreamRangeReply};
use redis::{Commands, Connection};

/// Serialises the heavy tests of one test binary: the machine has two cores.
pub static HEAVY: Mutex<()> = Mutex::new(());

/// Takes the [`HEAVY`] lock, even if a test that held it panicked.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `redis-server` executable, or a panic saying how to install it.
pub fn redis_server_path() -> PathBuf {
    let dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain([
            "/usr/bin".into(),
            "/usr/sbin".into(),
            "/usr/local/bin".into(),
        ])
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed, and these tests run a real one. Install it \
                 with `apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` \
                 (macOS), or put it on PATH."
            )
        })
}

/// A `redis-server` of this test, killed and waited for on drop.
pub struct Server {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    appendonly: bool,
}

impl Server {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that logs every write to its append-only file and fsyncs it before
    /// replying (`appendfsync always`), so that a restart loses nothing acknowledged.
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(appendonly: bool) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "engine-redis-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temporary directory can be made");
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
            appendonly,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new(redis_server_path());
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(["--logfile", "redis.log"])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until the server answers PING (it may be loading its data), with a deadline.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "redis-server exited with {status} at start; its log:\n{}",
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && let Ok(mut conn) = self.try_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {} within 20 s",
                self.port
            );
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address of `stream` on this server, with extra query keys.
    pub fn address(&self, stream: &str, query: &str) -> String {
        let mut address = format!("redis://127.0.0.1:{}/{stream}", self.port);
        if !query.is_empty() {
            address.push('?');
            address.push_str(query);
        }
        address
    }

    fn try_connection(&self) -> redis::RedisResult<Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(conn)
    }

    /// A plain connection, for the test's own inspections.
    pub fn connection(&self) -> Connection {
        self.try_connection().expect("the test server answers")
    }

    /// Kills the server at once (SIGKILL: no chance to save anything more) and starts it
    /// again on the same port and directory.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Every entry of `stream`, in order, as (id, fields).
pub fn entries(conn: &mut Connection, stream: &str) -> Vec<redis::streams::StreamId> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = conn
            .xrange_count(stream, &start, "+", 10_000)
            .expect("XRANGE");
        let Some(last) = page.ids.last() else {
            return out;
        };
        start = format!("({}", last.id);
        out.extend(page.ids);
    }
}

/// The decoded `d` fields of every entry of `stream`.
pub fn items<T: serde::de::DeserializeOwned>(conn: &mut Connection, stream: &str) -> Vec<T> {
    entries(conn, stream)
        .iter()
        .map(|entry| {
            let bytes: Vec<u8> = entry.get("d").expect("every entry has a `d` field");
            engine_core::protocol::from_bytes(&bytes).expect("every entry decodes")
        })
        .collect()
}

/// The length of `stream` (0 if it does not exist).
pub fn len(conn: &mut Connection, stream: &str) -> usize {
    conn.xlen(stream).expect("XLEN")
}

/// How many entries of `stream` are pending in `group` (0 if there is no group).
pub fn pending(conn: &mut Connection, stream: &str, group: &str) -> usize {
    conn.xpending::<_, _, StreamPendingReply>(stream, group)
        .map_or(0, |reply| reply.count())
}

/// The consumers of `group` and how many entries each has pending.
pub fn consumers(conn: &mut Connection, stream: &str, group: &str) -> HashMap<String, usize> {
    conn.xinfo_consumers::<_, _, StreamInfoConsumersReply>(stream, group)
        .map(|reply| {
            reply
                .consumers
                .into_iter()
                .map(|c| (c.name, c.pending))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `condition` until it holds, panicking with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        // Polling an external process's state: yield, do not sleep as synchronisation.
        std::thread::park_timeout(Duration::from_millis(20));
    }
}
