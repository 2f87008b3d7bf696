//! The Redis Streams broker: one synchronous connection, made again after it breaks, with
//! read timeouts longer than any blocking read.

use std::fmt;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::address::StreamAddress;
use crate::broker::Connector;
use crate::error::{Error, Result};

mod admin;
mod append;
mod cluster;
mod cluster_append;
mod commands;
mod conn;
mod parse;

use conn::{Client, Conn};

/// The field of a stream entry that holds the encoded item.
pub const PAYLOAD_FIELD: &str = "d";

/// The field of a stream entry that holds the protocol version it was written with
/// ([`engine_core::protocol::PROTOCOL_VERSION`], in decimal), next to the item.
pub const VERSION_FIELD: &str = "v";

/// The field of a stream entry that holds the W3C trace context (`traceparent`) of the span
/// that appended it, written only when that batch was traced (see `engine_core::trace`).
pub const TRACE_FIELD: &str = "traceparent";

/// A connection to a Redis server or a Redis Cluster, for the stream stages.
///
/// An address `redis+cluster://` connects with the `redis` crate's cluster client, which
/// follows `MOVED` and `ASK` redirections; an error that may come from a change of the
/// cluster's layout (a failover, a node gone) drops the whole connection, so the next
/// command starts from the seed nodes with a fresh slot map.
///
/// Each command runs on one synchronous connection; an error that breaks it (the server went
/// away, a reply timed out) drops the connection, and the next command connects again. The
/// stages retry such errors with a backoff, so a restarted server is picked up again.
///
/// Blocking reads (`XREADGROUP ... BLOCK`) wait for their blocking time plus the response
/// timeout: a socket timeout shorter than the blocking time would break every idle read
/// (redis-rs issue #1924).
///
/// # Examples
///
/// ```no_run
/// use engine::redis::{Broker, RedisBroker, StreamAddress};
///
/// let address = StreamAddress::parse("redis://127.0.0.1:6379/in")?;
/// let mut broker = RedisBroker::connect(&address)?;
/// broker.append("in", &[engine::core::protocol::to_bytes("hello").unwrap()], None)?;
/// # Ok::<(), engine::redis::Error>(())
/// ```
pub struct RedisBroker {
    client: Client,
    server: String,
    conn: Option<Conn>,
    /// The read timeout the connection's socket has now.
    read_timeout: Option<Duration>,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// How many replicas must confirm each write, and for how long a write waits for them.
    replicas: Option<(u32, Duration)>,
    /// Which of several partitions a blocking read on a cluster waits on next.
    turn: usize,
    /// Until when reads of several streams on a cluster go one command at a time (a slot
    /// was being migrated).
    one_by_one_until: Option<std::time::Instant>,
    /// The slot map as last read on a cluster connection, to send the appends of one flush
    /// to each master in one pipeline; dropped with the connection.
    slot_map: Option<Vec<cluster::SlotRange>>,
    /// On a cluster, the address, to connect to each master directly for the appends, and
    /// those connections, by `host:port`.
    node_address: Option<StreamAddress>,
    nodes: std::collections::HashMap<String, redis::Connection>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("server", &self.server)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to the server of `address`, or its cluster, once.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] when no connection can be made within the connect timeout (a
    /// TLS handshake that fails included), [`Error::Unauthorized`] when the server refuses
    /// the credentials, [`Error::InvalidAddress`] when the CA file (`ca=`) cannot be read,
    /// [`Error::TooFewReplicas`] when `replicas=` asks for more replicas than a master has.
    /// For a cluster, [`Error::NotACluster`] when a seed node answers but is not a cluster
    /// node, [`Error::SlotsUncovered`] when some slots have no master.
    pub fn connect(address: &StreamAddress) -> Result<Self> {
        let server = address.server();
        let invalid = |reason| Error::InvalidAddress {
            address: address.as_str().to_owned(),
            reason,
        };
        let client = if address.is_cluster() {
            cluster::check_seeds(address)?;
            Client::Cluster(cluster::client(address).map_err(invalid)?)
        } else {
            Client::Single(client(address).map_err(invalid)?)
        };
        let mut broker = Self {
            client,
            server,
            conn: None,
            read_timeout: None,
            connect_timeout: address.connect_timeout,
            response_timeout: address.response_timeout,
            replicas: address.replicas(),
            turn: 0,
            one_by_one_until: None,
            slot_map: None,
            node_address: address.is_cluster().then(|| address.clone()),
            nodes: std::collections::HashMap::new(),
        };
        // A server that wants a password and got none answers the first command only.
        let timeout = address.response_timeout;
        broker.run("PING", timeout, |conn| redis::cmd("PING").exec(conn))?;
        let fewest_replicas = if address.is_cluster() {
            Some(broker.check_slots()?)
        } else {
            None
        };
        if let Some((wanted, _)) = broker.replicas {
            let connected = match fewest_replicas {
                Some(fewest) => fewest,
                None => broker.connected_replicas()?,
            };
            if connected < wanted {
                return Err(Error::TooFewReplicas {
                    server: broker.server,
                    wanted,
                    connected,
                });
            }
        }
        Ok(broker)
    }

    /// How many replicas the server has connected (`INFO replication`).
    fn connected_replicas(&mut self) -> Result<u32> {
        let timeout = self.response_timeout;
        let info: String = self.run("INFO", timeout, |conn| {
            redis::cmd("INFO").arg("replication").query(conn)
        })?;
        let connected = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok());
        connected.ok_or_else(|| self.unexpected("INFO", "no count of connected replicas"))
    }

    /// With durability (`replicas=`), waits until the replicas confirm the writes sent so far
    /// on this connection (`WAIT`), on a cluster on the connection to the master of `key`
    /// (a key written); without, returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::NotReplicated`] when fewer replicas confirm within the timeout; a
    /// connection error.
    pub(crate) fn confirm(&mut self, command: &'static str, key: &str) -> Result<()> {
        let Some((wanted, timeout)) = self.replicas else {
            return Ok(());
        };
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let read_timeout = self.response_timeout + timeout;
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(timeout_ms);
        let confirmed: i64 =
            self.run("WAIT", read_timeout, |conn| conn.on_master_of(key, &wait))?;
        let confirmed = u32::try_from(confirmed).unwrap_or(0);
        if confirmed >= wanted {
            return Ok(());
        }
        tracing::warn!(
            server = %self.server,
            command,
            wanted,
            confirmed,
            "a write was not confirmed by enough replicas in time"
        );
        Err(Error::NotReplicated {
            server: self.server.clone(),
            command,
            wanted,
            confirmed,
            timeout,
        })
    }

    /// The connection, made again if the last one broke, with the given read timeout.
    fn connection(&mut self, read_timeout: Duration) -> Result<&mut Conn> {
        if self.conn.is_none() {
            let conn = self.client.connect(self.connect_timeout).map_err(|err| {
                if is_auth_error(&err) {
                    Error::Unauthorized {
                        server: self.server.clone(),
                        source: Box::new(err),
                    }
                } else {
                    Error::Unreachable {
                        server: self.server.clone(),
                        source: Box::new(err),
                    }
                }
            })?;
            conn.set_write_timeout(Some(self.response_timeout))
                .map_err(|err| self.lost("connect", err))?;
            self.read_timeout = None;
            self.slot_map = None;
            self.conn = Some(conn);
        }
        if self.read_timeout != Some(read_timeout) {
            let set = self
                .conn
                .as_ref()
                .map(|conn| conn.set_read_timeout(Some(read_timeout)));
            if let Some(Err(err)) = set {
                self.conn = None;
                return Err(self.lost("connect", err));
            }
            self.read_timeout = Some(read_timeout);
        }
        Ok(self
            .conn
            .as_mut()
            .expect("the connection was made just above"))
    }

    /// Runs `f` on the connection; drops the connection when the error broke it, or, on a
    /// cluster, when it may come from a change of layout (the next command then starts from
    /// a fresh slot map).
    fn run<T>(
        &mut self,
        command: &'static str,
        read_timeout: Duration,
        f: impl FnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let conn = self.connection(read_timeout)?;
        let cluster = conn.is_cluster();
        let result = f(conn);
        result.map_err(|err| {
            let err = classify(&self.server, command, err, cluster);
            if err.breaks_connection() || (cluster && err.is_retryable()) {
                self.conn = None;
            }
            err
        })
    }

    /// Whether the connection is to a cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    fn lost(&self, command: &'static str, err: RedisError) -> Error {
        Error::ConnectionLost {
            server: self.server.clone(),
            command,
            source: Box::new(err),
        }
    }

    fn unexpected(&mut self, command: &'static str, reason: impl Into<String>) -> Error {
        // A reply we cannot read may leave the connection out of step: start afresh.
        self.conn = None;
        Error::UnexpectedReply {
            server: self.server.clone(),
            command,
            reason: reason.into(),
        }
    }
}

/// The fields of one stream entry, as `(name, value)` pairs, in order.
pub(crate) type Fields = Vec<(String, Vec<u8>)>;

/// The `redis` client of `address`: TLS with the CA file of `ca=`, if any, and credentials.
pub(crate) fn client(address: &StreamAddress) -> std::result::Result<redis::Client, String> {
    let info = address.connection_info();
    match address.ca_file() {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|err| format!("cannot read the CA file {}: {err}", path.display()))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(info, certificates)
        }
        None => redis::Client::open(info),
    }
    .map_err(|err| err.to_string())
}

/// Whether the server refused the credentials (or wants some), when connecting.
fn is_auth_error(err: &RedisError) -> bool {
    err.kind() == ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// Sorts a `redis` error into the crate's errors; `cluster` when it came from a cluster
/// connection, where a redirection the client gave up following, a write to a master that
/// became a replica, and a slot map that cannot be made right now are passing states.
fn classify(server: &str, command: &'static str, err: RedisError, cluster: bool) -> Error {
    let server = server.to_owned();
    if is_auth_error(&err) {
        return Error::Unauthorized {
            server,
            source: Box::new(err),
        };
    }
    let passing = cluster
        && match err.kind() {
            ErrorKind::Server(
                ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::ReadOnly,
            ) => true,
            ErrorKind::Client => !err.to_string().contains("routed"),
            _ => false,
        };
    // A blocking read whose stream was deleted while it waited (`UNBLOCKED`, Redis 7): on a
    // cluster, `MIGRATE` moving the stream to another master; the next read finds it there.
    let unblocked = err.code() == Some("UNBLOCKED");
    if passing || unblocked {
        return Error::ConnectionLost {
            server,
            command,
            source: Box::new(err),
        };
    }
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown,
        ) => Error::Busy {
            server,
            command,
            source: Box::new(err),
        },
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::Client => Error::Refused {
            server,
            command,
            source: Box::new(err),
        },
        ErrorKind::UnexpectedReturnType => Error::UnexpectedReply {
            server,
            command,
            reason: err.to_string(),
        },
        _ => Error::ConnectionLost {
            server,
            command,
            source: Box::new(err),
        },
    }
}

impl Connector for StreamAddress {
    type Broker = RedisBroker;

    fn connect(&self) -> Result<RedisBroker> {
        RedisBroker::connect(self)
    }
}
