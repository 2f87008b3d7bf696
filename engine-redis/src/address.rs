//! Stream addresses: `redis://host:port/<stream>?group=<group>`, parsed and checked up front so
//! that a typo is an error at start, not a surprise later.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

mod parse;

use parse::{parse, redact};

/// The consumer group used when an address names none.
pub const DEFAULT_GROUP: &str = "engine";

/// The port used when an address names none.
pub const DEFAULT_PORT: u16 = 6379;

/// How long a connection attempt may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a reply may take by default (beyond the blocking time of a blocking read).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writes wait for replicas by default, with `replicas=` (`WAIT`), before their
/// batch fails.
pub const DEFAULT_REPLICAS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a stream lives: the server, the stream's name, and how to read it.
///
/// The form is `redis[s]://[user:password@]host[:port]/<stream>[?key=value&...]`, or for a
/// Redis Cluster `redis[s]+cluster://[user:password@]host[:port],host[:port].../<stream>...`:
///
/// - `redis+cluster://` names a Redis Cluster by one or more of its nodes (seeds; the
///   others are found from them). Every key of a stream, or of one partition of a keyed
///   stream, lives in one hash slot, and a keyed stream's partitions are spread evenly over
///   the masters (see [`KeyedSource`](crate::KeyedSource)). A seed that is not a cluster
///   node is [`Error::NotACluster`](crate::Error::NotACluster), and a cluster with slots no
///   master serves is [`Error::SlotsUncovered`](crate::Error::SlotsUncovered), at the start.
///   A cluster has database 0 only.
/// - `rediss://` connects with TLS (rustls). The server's certificate is checked against the
///   system's roots, or against the CA certificate (PEM) of `ca=<path>`: what a private CA
///   or a throwaway self-signed test certificate needs.
/// - `user:password@` authenticates (`AUTH`; an ACL user, or `:password@` for the default
///   user), percent-encoded. The password is never shown: [`Display`](fmt::Display),
///   [`Debug`](fmt::Debug), [`as_str`](Self::as_str) and every error show `***` instead.
///
/// - The path is the stream's name (percent-encoded if it holds `?`, `#`, `%` or spaces). It
///   is not a database number, as in plain Redis URLs; give that as `db=<n>`.
/// - `group=<name>`: the consumer group a source reads through (default
///   [`DEFAULT_GROUP`], `engine`). It is created at the start of the stream if missing.
/// - `consumer=<name>`: this reader's consumer name in the group (default: made from the
///   process id and a start time, so that each process is a consumer of its own). With
///   several frontend threads, `-<thread>` is appended.
/// - `dead=<stream>`: the dead-letter stream (default `{<stream>}:dead`, in the stream's
///   hash slot).
/// - `db=<n>`: the database number (default 0).
/// - Tuning, for the command line: `bound=<n>` (a sink keeps at most `n` unfinished entries
///   in the stream; `bound=none` for no bound), `max_deliveries=<n>`, `claim_idle_ms=<ms>`, `block_ms=<ms>`,
///   `remove_idle_ms=<ms>` (remove consumers unseen that long with nothing pending); see
///   [`SinkOptions`](crate::SinkOptions) and [`SourceOptions`](crate::SourceOptions).
/// - `partitions=<P>` (at most 1024): a keyed stream of `P` partition streams,
///   `<stream>:p0`.. (see [`StreamSink::keyed`](crate::StreamSink::keyed) and
///   [`KeyedSource`](crate::KeyedSource)); `lease_ms=<ms>`: how long a keyed source's lease
///   on a partition lasts without renewal (default
///   [`DEFAULT_LEASE`](crate::DEFAULT_LEASE)).
/// - `replicas=<n>`: durability. Every write (a sink's batch, a source's acknowledgements,
///   dead letters) counts as done only once `n` replicas confirm it (`WAIT`), within
///   `replicas_timeout_ms=<ms>` (default [`DEFAULT_REPLICAS_TIMEOUT`]); a write that is not
///   confirmed in time fails with [`Error::NotReplicated`](crate::Error::NotReplicated), and
///   a sink's batch that failed so is not acknowledged upstream. A server with fewer
///   connected replicas is [`Error::TooFewReplicas`](crate::Error::TooFewReplicas) at the
///   start. See [`with_replicas`](Self::with_replicas).
///
/// Unknown keys are an error, so that a misspelt option is not silently ignored.
///
/// # Examples
///
/// ```
/// use engine::redis::StreamAddress;
///
/// let address = StreamAddress::parse("redis://127.0.0.1:6379/in?group=workers")?;
/// assert_eq!(address.stream(), "in");
/// assert_eq!(address.group(), "workers");
/// assert_eq!(address.dead_letter_stream(), "{in}:dead");
/// assert_eq!(address.server(), "redis://127.0.0.1:6379");
///
/// let defaults = StreamAddress::parse("redis://localhost/jobs%3Anew")?;
/// assert_eq!((defaults.stream(), defaults.group()), ("jobs:new", "engine"));
///
/// assert!(StreamAddress::parse("redis://localhost:6379").is_err()); // No stream.
/// assert!(StreamAddress::parse("redis://localhost/in?grup=x").is_err()); // Unknown key.
/// # Ok::<(), engine::redis::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StreamAddress {
    /// The address as given, with the password replaced by `***`.
    original: String,
    tls: bool,
    ca: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    /// The server's host and port; for a cluster, every seed node.
    nodes: Vec<(String, u16)>,
    /// `redis+cluster://`: the nodes are seeds of a Redis Cluster.
    cluster: bool,
    db: i64,
    stream: String,
    group: String,
    consumer: Option<String>,
    dead: Option<String>,
    /// `bound=`: `Some(None)` for `bound=none`.
    pub(crate) bound: Option<Option<u64>>,
    pub(crate) max_deliveries: Option<u64>,
    pub(crate) claim_idle: Option<Duration>,
    pub(crate) remove_idle: Option<Duration>,
    pub(crate) block: Option<Duration>,
    /// `partitions=`: a keyed stream of that many partitions.
    pub(crate) partitions: Option<u32>,
    /// `lease_ms=`: how long a keyed source's lease on a partition lasts.
    pub(crate) lease: Option<Duration>,
    /// `replicas=`: how many replicas must confirm each write; 0 for none.
    pub(crate) replicas: u32,
    /// `replicas_timeout_ms=`: how long a write waits for them.
    pub(crate) replicas_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
}

impl StreamAddress {
    /// Parses an address of the form `redis://host:port/<stream>?group=<group>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`], saying what is wrong and what the expected form is.
    pub fn parse(address: &str) -> Result<Self> {
        parse(address).map_err(|reason| Error::InvalidAddress {
            address: redact(address),
            reason,
        })
    }

    /// The address as it was given, with the password (if any) replaced by `***`: safe to
    /// log.
    ///
    /// ```
    /// # use engine::redis::StreamAddress;
    /// let a = StreamAddress::parse("rediss://app:s3cret@db.example/in?group=g")?;
    /// assert_eq!(a.as_str(), "rediss://app:***@db.example/in?group=g");
    /// # Ok::<(), engine::redis::Error>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The server, as `redis://host:port` (`rediss://` with TLS), or a cluster, as
    /// `redis+cluster://host:port,host:port` (its seed nodes), without the user or the
    /// password: safe to log.
    pub fn server(&self) -> String {
        let scheme = match (self.tls, self.cluster) {
            (false, false) => "redis",
            (true, false) => "rediss",
            (false, true) => "redis+cluster",
            (true, true) => "rediss+cluster",
        };
        let nodes: Vec<String> = self.nodes.iter().map(|(h, p)| host_port(h, *p)).collect();
        format!("{scheme}://{}", nodes.join(","))
    }

    /// Whether the address names a Redis Cluster by its seed nodes (`redis+cluster://`).
    ///
    /// ```
    /// use engine::redis::StreamAddress;
    ///
    /// let a = StreamAddress::parse("redis+cluster://h1:7000,h2:7001,h3/orders?partitions=12")?;
    /// assert!(a.is_cluster());
    /// assert_eq!(a.server(), "redis+cluster://h1:7000,h2:7001,h3:6379");
    /// assert!(!StreamAddress::parse("redis://h1/orders")?.is_cluster());
    /// # Ok::<(), engine::redis::Error>(())
    /// ```
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Whether the connection uses TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The CA certificate file the server's certificate is checked against (`ca=`), if any.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The partition count of a keyed stream (`partitions=`), if the address names one.
    ///
    /// ```
    /// let address = engine::redis::StreamAddress::parse("redis://h/in?partitions=8")?;
    /// assert_eq!(address.partitions(), Some(8));
    /// # Ok::<(), engine::redis::Error>(())
    /// ```
    pub fn partitions(&self) -> Option<u32> {
        self.partitions
    }

    /// The consumer group sources read through.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The consumer name given in the address, if any.
    pub fn consumer(&self) -> Option<&str> {
        self.consumer.as_deref()
    }

    /// The dead-letter stream: the `dead=` key, or `{<stream>}:dead` (in the stream's hash
    /// slot: braces around the name, unless it has braces of its own).
    pub fn dead_letter_stream(&self) -> String {
        self.dead
            .clone()
            .unwrap_or_else(|| crate::keys::dead_letter_stream(&self.stream))
    }

    /// The same server and options with another stream (and the default dead-letter stream
    /// for it, unless one was given).
    ///
    /// ```
    /// # use engine::redis::StreamAddress;
    /// let out = StreamAddress::parse("redis://127.0.0.1/in")?.with_stream("out");
    /// assert_eq!((out.stream(), out.dead_letter_stream().as_str()), ("out", "{out}:dead"));
    /// # Ok::<(), engine::redis::Error>(())
    /// ```
    #[must_use]
    pub fn with_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// The same address with another consumer group.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The same address with a fixed consumer name.
    #[must_use]
    pub fn with_consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = Some(consumer.into());
        self
    }

    /// The same address with other timeouts: `connect` for each connection attempt (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]) and `response` for each reply (default
    /// [`DEFAULT_RESPONSE_TIMEOUT`]). A blocking read waits for its blocking time plus
    /// `response`, so that a slow reply is not mistaken for a dead server, and a dead server
    /// is noticed.
    ///
    /// A zero duration is taken as one millisecond.
    #[must_use]
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        let at_least = Duration::from_millis(1);
        self.connect_timeout = connect.max(at_least);
        self.response_timeout = response.max(at_least);
        self
    }

    /// The same address with durability: every write counts as done only once `replicas`
    /// replicas confirm it (Redis `WAIT`), within `timeout` (a zero duration is taken as one
    /// millisecond); 0 replicas for none, the default.
    ///
    /// Redis replicates asynchronously: without this, a write the master confirmed can be
    /// missing on the replica that takes over after a failover. With it, what a sink
    /// reported as written, and what a source acknowledged, is on `replicas` replicas too.
    /// Each batch costs one more round trip, and waits for the slowest of those replicas.
    ///
    /// ```
    /// use std::time::Duration;
    /// use engine::redis::StreamAddress;
    ///
    /// let a = StreamAddress::parse("redis://h/in?replicas=1&replicas_timeout_ms=500")?;
    /// assert_eq!(a.replicas(), Some((1, Duration::from_millis(500))));
    /// let b = StreamAddress::parse("redis://h/in")?.with_replicas(2, Duration::from_secs(1));
    /// assert_eq!(b.replicas(), Some((2, Duration::from_secs(1))));
    /// assert_eq!(StreamAddress::parse("redis://h/in")?.replicas(), None);
    /// # Ok::<(), engine::redis::Error>(())
    /// ```
    #[must_use]
    pub fn with_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = replicas;
        self.replicas_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many replicas must confirm each write, and how long a write waits for them; `None`
    /// without durability.
    pub fn replicas(&self) -> Option<(u32, Duration)> {
        (self.replicas > 0).then_some((self.replicas, self.replicas_timeout))
    }

    /// What the `redis` crate connects to: the server (a cluster's first seed node), TLS,
    /// credentials and database.
    pub(crate) fn connection_info(&self) -> redis::ConnectionInfo {
        self.node_infos()
            .into_iter()
            .next()
            .expect("an address has at least one node")
    }

    /// Each node of the address as an address of its own, of one server (no cluster).
    pub(crate) fn seeds(&self) -> Vec<Self> {
        self.nodes
            .iter()
            .map(|node| Self {
                nodes: vec![node.clone()],
                cluster: false,
                ..self.clone()
            })
            .collect()
    }

    /// The node `host:port` (of this address's cluster) as an address of its own, of one
    /// server, with this address's credentials and TLS.
    pub(crate) fn node(&self, host: &str, port: u16) -> Self {
        Self {
            nodes: vec![(host.to_owned(), port)],
            cluster: false,
            ..self.clone()
        }
    }

    /// What the `redis` crate connects to, for each node of the address.
    pub(crate) fn node_infos(&self) -> Vec<redis::ConnectionInfo> {
        self.nodes
            .iter()
            .map(|(host, port)| self.node_info(host, *port))
            .collect()
    }

    fn node_info(&self, host: &str, port: u16) -> redis::ConnectionInfo {
        use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let mut settings = RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        addr.into_connection_info()
            .expect("a connection address always converts")
            .set_redis_settings(settings)
    }
}

/// `host:port`, with brackets around an IPv6 host.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Debug for StreamAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the original string: it may hold a password.
        f.debug_struct("StreamAddress")
            .field("server", &self.server())
            .field("user", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for StreamAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.server(), self.stream)
    }
}

impl FromStr for StreamAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}
