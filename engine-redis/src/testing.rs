//! A throwaway `redis-server` for tests, benchmarks and examples: started on a free loopback
//! port in a temporary directory, and killed, reaped and cleaned up when dropped.
//!
//! [`Server::start`] looks for the `redis-server` executable on `PATH` (and in `/usr/bin`,
//! `/usr/sbin`, `/usr/local/bin`), starts it bound to `127.0.0.1` with nothing saved to disk,
//! and returns once it answers `PING`. Without `redis-server` it fails with
//! [`ServerError::NotInstalled`], whose message says how to install it: a test that needs a
//! server fails instead of passing silently.
//!
//! [`Server::start_with`] takes [`ServerOptions`]; with
//! [`append_only`](ServerOptions::append_only) the server writes every change to its
//! append-only file and syncs it before replying, so that [`Server::restart`] (which kills
//! the process at once, as a crash would) loses nothing that was acknowledged.
//!
//! [`Cluster::start`] starts a throwaway Redis Cluster of such servers (3 masters with a
//! replica each by default), whose nodes can be killed and started again.
//!
//! # Examples
//!
//! ```no_run
//! use engine::redis::testing::Server;
//! use engine::redis::{StreamSink, StreamSource};
//! use engine::threads::Engine;
//!
//! let server = Server::start()?;
//! let address = server.address("numbers")?;
//! Engine::builder(1..=100_u64)
//!     .backend(StreamSink::<u64>::new(address.clone()))
//!     .run()?;
//!
//! let mut conn = server.connection()?;
//! let len: usize = engine::redis::redis::cmd("XLEN").arg("numbers").query(&mut conn)?;
//! assert_eq!(len, 100);
//! // Dropping the server kills it and removes its directory.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::StreamAddress;

mod cluster;
mod error;
mod tls;

pub use cluster::{Cluster, ClusterOptions};
pub use error::ServerError;
use tls::{CA_FILE, make_certificates};

/// Directories searched after `PATH`: where packages install `redis-server`.
const USUAL_DIRS: [&str; 3] = ["/usr/bin", "/usr/sbin", "/usr/local/bin"];

/// The server's log file, in its directory.
const LOG_FILE: &str = "redis.log";

/// How long to wait between two connection attempts while the server starts.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How many free ports to try when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;

/// How a [`Server`] is started.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use engine::redis::testing::{Server, ServerOptions};
///
/// let server = Server::start_with(
///     ServerOptions::new()
///         .append_only(true)
///         .ready_timeout(Duration::from_secs(5)),
/// )?;
/// # Ok::<(), engine::redis::testing::ServerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    append_only: bool,
    tls: bool,
    password: Option<String>,
    ready_timeout: Duration,
    program: Option<PathBuf>,
    replica_of: Option<u16>,
    /// A node of a Redis Cluster, with this node timeout (see [`Cluster`]).
    cluster_node_timeout: Option<Duration>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            append_only: false,
            tls: false,
            password: None,
            ready_timeout: Duration::from_secs(20),
            program: None,
            replica_of: None,
            cluster_node_timeout: None,
        }
    }
}

impl ServerOptions {
    /// No persistence, 20 s to answer, `redis-server` found on `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the server logs every write to its append-only file and syncs it before
    /// replying (`appendonly yes`, `appendfsync always`), so that a [`Server::restart`] loses
    /// nothing acknowledged. Off by default: nothing is written to disk.
    #[must_use]
    pub fn append_only(mut self, append_only: bool) -> Self {
        self.append_only = append_only;
        self
    }

    /// Whether the server speaks TLS only (`--tls-port`), with a throwaway certificate for
    /// `127.0.0.1` signed by a throwaway CA, both made with the `openssl` command in the
    /// server's directory. [`Server::url`] is then `rediss://...`, and
    /// [`Server::address`] adds `ca=<the CA file>` so that the certificate is trusted.
    /// Clients need no certificate of their own (`--tls-auth-clients no`).
    #[must_use]
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// A password the server requires (`--requirepass`); [`Server::url`] carries it as
    /// `:<password>@`, so give one that needs no percent-encoding.
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How long the server may take to answer `PING` after it starts (or restarts, loading
    /// its data); 20 s by default.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the server as a replica of the server on `port` of `127.0.0.1`
    /// (`--replicaof`); it follows that master from then on. With a password, the master is
    /// given the same one (`--masterauth`). Plain connections only (no TLS).
    #[must_use]
    pub fn replica_of(mut self, port: u16) -> Self {
        self.replica_of = Some(port);
        self
    }

    /// The `redis-server` executable to run, instead of looking for it on `PATH`.
    #[must_use]
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }
}

/// A throwaway `redis-server` on a free port of `127.0.0.1`, in a temporary directory of its
/// own; dropping it kills the process (`SIGKILL`), reaps it, and removes the directory.
///
/// The server saves no snapshots (`save ""`), so it never writes to disk unless started with
/// [`ServerOptions::append_only`]. Its log is `redis.log` in [`dir`](Self::dir).
///
/// # Examples
///
/// ```no_run
/// use engine::redis::testing::{Server, ServerOptions};
///
/// let mut server = Server::start_with(ServerOptions::new().append_only(true))?;
/// let mut conn = server.connection()?;
/// engine::redis::redis::cmd("SET").arg("k").arg("v").exec(&mut conn)?;
///
/// // A crash and a restart on the same port: the append-only file keeps the key.
/// server.restart()?;
/// let mut conn = server.connection()?;
/// let v: String = engine::redis::redis::cmd("GET").arg("k").query(&mut conn)?;
/// assert_eq!(v, "v");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    child: Option<Child>,
    program: PathBuf,
    port: u16,
    /// The cluster bus port of a cluster node (0 otherwise).
    bus_port: u16,
    dir: PathBuf,
    options: ServerOptions,
}

impl Server {
    /// Starts a server without persistence.
    ///
    /// # Errors
    ///
    /// [`ServerError::NotInstalled`] without `redis-server`, and the other [`ServerError`]s
    /// if it cannot start or does not answer within 20 s.
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with(ServerOptions::new())
    }

    /// Starts a server with `options`.
    ///
    /// # Errors
    ///
    /// [`ServerError::NotInstalled`] without `redis-server`; [`ServerError::Io`] if the
    /// directory cannot be made or the process cannot start; [`ServerError::Exited`] if it
    /// exits at once (its log says why); [`ServerError::NotReady`] if it does not answer
    /// within the [`ready_timeout`](ServerOptions::ready_timeout).
    pub fn start_with(options: ServerOptions) -> Result<Self, ServerError> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let program = match &options.program {
            Some(program) if program.is_file() => program.clone(),
            Some(program) => {
                return Err(ServerError::NotInstalled {
                    searched: vec![program.clone()],
                });
            }
            None => find_program("redis-server")?,
        };
        let dir = std::env::temp_dir().join(format!(
            "engine-redis-server-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A directory left by an earlier process with the same id is stale.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| ServerError::Io {
            action: format!("create the directory {}", dir.display()),
            source,
        })?;
        let mut server = Self {
            child: None,
            program,
            port: 0,
            bus_port: 0,
            dir,
            options,
        };
        if server.options.tls {
            // On an error, dropping `server` removes the directory.
            make_certificates(&server.dir)?;
        }
        // The port is free when chosen, but another process may bind it before the server
        // does: then the server exits at once, and another port is tried.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = || {
                free_port().map_err(|source| ServerError::Io {
                    action: "find a free port".to_owned(),
                    source,
                })
            };
            server.port = port()?;
            if server.options.cluster_node_timeout.is_some() {
                server.bus_port = port()?;
            }
            match server.spawn() {
                Err(ServerError::Exited { log, .. })
                    if attempts < PORT_ATTEMPTS && log.contains("in use") => {}
                // On an error, dropping `server` removes the directory.
                other => return other.map(|()| server),
            }
        }
    }

    /// Starts the process on `self.port` and waits until it answers.
    fn spawn(&mut self) -> Result<(), ServerError> {
        // A fresh log, so that an error shows this start's lines only.
        let _ = std::fs::remove_file(self.dir.join(LOG_FILE));
        let mut command = Command::new(&self.program);
        let port = self.port.to_string();
        if self.options.tls {
            let file = |name: &str| self.dir.join(name).into_os_string();
            command
                .args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(file("server.pem"))
                .arg("--tls-key-file")
                .arg(file("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(file(CA_FILE))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &port]);
        }
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password, "--masterauth", password]);
        }
        if let Some(master) = self.options.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        if let Some(timeout) = self.options.cluster_node_timeout {
            // The bus port is chosen (not the default port + 10000, which may not exist), and
            // a replica may always take over, however long its master was gone.
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", &timeout.as_millis().to_string()])
                .args(["--cluster-port", &self.bus_port.to_string()])
                .args(["--cluster-replica-validity-factor", "0"]);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(["--logfile", LOG_FILE])
            .args([
                "--appendonly",
                if self.options.append_only {
                    "yes"
                } else {
                    "no"
                },
            ])
            .args(["--appendfsync", "always"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => ServerError::NotInstalled {
                    searched: vec![self.program.clone()],
                },
                _ => ServerError::Io {
                    action: format!("start {}", self.program.display()),
                    source,
                },
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Tries to connect and `PING` until the server answers (it may be loading its data),
    /// the process exits, or the deadline passes.
    fn wait_ready(&mut self) -> Result<(), ServerError> {
        let timeout = self.options.ready_timeout;
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait().map_err(|source| ServerError::Io {
                    action: "check on redis-server".to_owned(),
                    source,
                })?
            {
                self.child = None;
                return Err(ServerError::Exited {
                    status,
                    log: self.log_tail(20),
                });
            }
            let last = match self.ping() {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                self.kill();
                return Err(ServerError::NotReady {
                    port: self.port,
                    timeout,
                    last: last.to_string(),
                });
            }
            // A refused connection fails at once: pause between attempts rather than spin on
            // two cores the server needs to start. The deadline, not this pause, decides.
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.connection()?;
        redis::cmd("PING").query::<String>(&mut conn).map(drop)
    }

    /// The last `n` lines of the server's log.
    fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join(LOG_FILE)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The port the server listens on, on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, or `None` after a failed [`restart`](Self::restart).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's directory: its log (`redis.log`) and, if any, its append-only files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's URL, `redis://127.0.0.1:<port>` (`rediss://` with TLS, and
    /// `:<password>@` before the host with a password).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        let auth = self
            .options
            .password
            .as_ref()
            .map_or_else(String::new, |password| format!(":{password}@"));
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) that signed the server's certificate, with
    /// [`ServerOptions::tls`].
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.dir.join(CA_FILE))
    }

    /// The URL of `stream` on this server, `redis://127.0.0.1:<port>/<stream>`, to which a
    /// query (`?group=...`) may be added; see [`StreamAddress`] for the form.
    pub fn stream_url(&self, stream: &str) -> String {
        format!("{}/{stream}", self.url())
    }

    /// The address of `stream` on this server, with the default group.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`](crate::Error::InvalidAddress) if `stream` is not a valid URL
    /// path (percent-encode `?`, `#`, `%` and spaces).
    pub fn address(&self, stream: &str) -> crate::Result<StreamAddress> {
        let mut url = self.stream_url(stream);
        if let Some(ca) = self.ca_file() {
            url.push_str("?ca=");
            url.push_str(&ca.display().to_string());
        }
        StreamAddress::parse(&url)
    }

    /// A new connection, for the caller's own commands: 2 s to connect, 10 s for each reply.
    ///
    /// # Errors
    ///
    /// The `redis` crate's error if the server does not answer.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let address = self.address("any").map_err(|err| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a valid address",
                err.to_string(),
            ))
        })?;
        let client = crate::redis_broker::client(&address).map_err(|reason| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot make a client",
                reason,
            ))
        })?;
        let conn = client.get_connection_with_timeout(crate::DEFAULT_CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(crate::DEFAULT_RESPONSE_TIMEOUT))?;
        Ok(conn)
    }

    /// Kills the server at once (`SIGKILL`: it has no chance to save anything more, as in a
    /// crash), and starts it again on the same port and directory; returns once it answers.
    /// With [`ServerOptions::append_only`] it loads every write it acknowledged; without, it
    /// starts empty.
    ///
    /// # Errors
    ///
    /// As [`start_with`](Self::start_with); the port is not changed, so a process that took
    /// it in the meantime makes the restart fail. After an error the server is not running,
    /// and [`pid`](Self::pid) is `None`.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn()
    }

    /// Starts the process again after [`kill`](Self::kill), on the same ports and directory.
    pub(crate) fn start_again(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn()
    }

    /// Kills and reaps the process, if it runs.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it already exited; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url())
            .field("pid", &self.pid())
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The first program `name` on `PATH` or in the usual directories.
fn find_program(name: &str) -> Result<PathBuf, ServerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let searched: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(USUAL_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .collect();
    match searched.iter().find(|path| path.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(ServerError::NotInstalled { searched }),
    }
}

/// A port nothing listens on right now.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
