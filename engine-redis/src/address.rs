//! Stream addresses: `redis://host:port/<stream>?group=<group>`, parsed and checked up front so
//! that a typo is an error at start, not a surprise later.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// The consumer group used when an address names none.
pub const DEFAULT_GROUP: &str = "engine";

/// The port used when an address names none.
pub const DEFAULT_PORT: u16 = 6379;

/// How long a connection attempt may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a reply may take by default (beyond the blocking time of a blocking read).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a stream lives: the server, the stream's name, and how to read it.
///
/// The form is `redis[s]://[user:password@]host[:port]/<stream>[?key=value&...]`:
///
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
/// - `dead=<stream>`: the dead-letter stream (default `<stream>:dead`).
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
///
/// Unknown keys are an error, so that a misspelt option is not silently ignored.
///
/// # Examples
///
/// ```
/// use engine_redis::StreamAddress;
///
/// let address = StreamAddress::parse("redis://127.0.0.1:6379/in?group=workers")?;
/// assert_eq!(address.stream(), "in");
/// assert_eq!(address.group(), "workers");
/// assert_eq!(address.dead_letter_stream(), "in:dead");
/// assert_eq!(address.server(), "redis://127.0.0.1:6379");
///
/// let defaults = StreamAddress::parse("redis://localhost/jobs%3Anew")?;
/// assert_eq!((defaults.stream(), defaults.group()), ("jobs:new", "engine"));
///
/// assert!(StreamAddress::parse("redis://localhost:6379").is_err()); // No stream.
/// assert!(StreamAddress::parse("redis://localhost/in?grup=x").is_err()); // Unknown key.
/// # Ok::<(), engine_redis::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StreamAddress {
    /// The address as given, with the password replaced by `***`.
    original: String,
    tls: bool,
    ca: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    host: String,
    port: u16,
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
    /// # use engine_redis::StreamAddress;
    /// let a = StreamAddress::parse("rediss://app:s3cret@db.example/in?group=g")?;
    /// assert_eq!(a.as_str(), "rediss://app:***@db.example/in?group=g");
    /// # Ok::<(), engine_redis::Error>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The server, as `redis://host:port` (`rediss://` with TLS), without the user or the
    /// password: safe to log.
    pub fn server(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
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
    /// let address = engine_redis::StreamAddress::parse("redis://h/in?partitions=8")?;
    /// assert_eq!(address.partitions(), Some(8));
    /// # Ok::<(), engine_redis::Error>(())
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

    /// The dead-letter stream: the `dead=` key, or `<stream>:dead`.
    pub fn dead_letter_stream(&self) -> String {
        self.dead
            .clone()
            .unwrap_or_else(|| format!("{}:dead", self.stream))
    }

    /// The same server and options with another stream (and the default dead-letter stream
    /// for it, unless one was given).
    ///
    /// ```
    /// # use engine_redis::StreamAddress;
    /// let out = StreamAddress::parse("redis://127.0.0.1/in")?.with_stream("out");
    /// assert_eq!((out.stream(), out.dead_letter_stream().as_str()), ("out", "out:dead"));
    /// # Ok::<(), engine_redis::Error>(())
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

    /// What the `redis` crate connects to: the server, TLS, credentials and database.
    pub(crate) fn connection_info(&self) -> redis::ConnectionInfo {
        use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
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

/// The most partitions a keyed stream may have.
const MAX_PARTITIONS: u32 = 1024;

const FORM: &str = "expected redis[s]://[user:password@]host[:port]/<stream>[?group=<group>]";

/// `address` with the password of its `user:password@` part replaced by `***`.
fn redact(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            // A lone `secret@` is a password to redis-rs as well: hide it too.
            let user = if hidden.is_empty() { "***" } else { user };
            format!("{scheme}://{user}{hidden}@{hostport}{tail}")
        }
        None => address.to_owned(),
    }
}

fn parse(address: &str) -> std::result::Result<StreamAddress, String> {
    let Some((scheme, rest)) = address.split_once("://") else {
        return Err(FORM.to_owned());
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "redis" => false,
        "rediss" => true,
        other => return Err(format!("unsupported scheme {other:?}; {FORM}")),
    };
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let Some((authority, path)) = rest.split_once('/') else {
        return Err(format!("no stream name; {FORM}"));
    };
    let stream = decode(path)?;
    if stream.is_empty() {
        return Err(format!("no stream name; {FORM}"));
    }
    let (username, password, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (decode(user)?, Some(decode(password)?)),
                None => (decode(userinfo)?, None),
            };
            let user = (!user.is_empty()).then_some(user);
            (user, password.filter(|p| !p.is_empty()), hostport)
        }
        None => (None, None, authority),
    };
    let (host, port) = split_host_port(hostport)?;
    let mut parsed = StreamAddress {
        original: redact(address),
        tls,
        ca: None,
        username,
        password,
        host,
        port,
        db: 0,
        stream,
        group: DEFAULT_GROUP.to_owned(),
        consumer: None,
        dead: None,
        bound: None,
        max_deliveries: None,
        claim_idle: None,
        remove_idle: None,
        block: None,
        partitions: None,
        lease: None,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        response_timeout: DEFAULT_RESPONSE_TIMEOUT,
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value)?;
        let name = |what: &str| {
            if value.is_empty() {
                Err(format!("`{key}` needs a {what}"))
            } else {
                Ok(value.clone())
            }
        };
        match key {
            "group" => parsed.group = name("group name")?,
            "consumer" => parsed.consumer = Some(name("consumer name")?),
            "dead" => parsed.dead = Some(name("stream name")?),
            "db" => parsed.db = number(key, &value)?,
            "ca" if tls => parsed.ca = Some(PathBuf::from(name("file path")?)),
            "ca" => return Err("`ca` is for TLS: use rediss://".to_owned()),
            "bound" if value == "none" => parsed.bound = Some(None),
            "bound" => parsed.bound = Some(Some(positive(key, &value)?)),
            "max_deliveries" => parsed.max_deliveries = Some(positive(key, &value)?),
            "claim_idle_ms" => {
                parsed.claim_idle = Some(Duration::from_millis(positive(key, &value)?));
            }
            "block_ms" => parsed.block = Some(Duration::from_millis(positive(key, &value)?)),
            "remove_idle_ms" => {
                parsed.remove_idle = Some(Duration::from_millis(positive(key, &value)?));
            }
            "partitions" => {
                let n = positive(key, &value)?;
                parsed.partitions = Some(
                    u32::try_from(n)
                        .ok()
                        .filter(|n| *n <= MAX_PARTITIONS)
                        .ok_or_else(|| format!("`partitions` is at most {MAX_PARTITIONS}"))?,
                );
            }
            "lease_ms" => parsed.lease = Some(Duration::from_millis(positive(key, &value)?)),
            other => {
                return Err(format!(
                    "unknown option {other:?} (known: group, consumer, dead, db, ca, bound, \
                     max_deliveries, claim_idle_ms, block_ms, remove_idle_ms, partitions, \
                     lease_ms)"
                ));
            }
        }
    }
    Ok(parsed)
}

fn split_host_port(hostport: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        // An IPv6 literal: `[::1]:6379`.
        let Some((host, after)) = rest.split_once(']') else {
            return Err("unclosed `[` in the host".to_owned());
        };
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {after:?} after the host"))?,
            ),
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host; {FORM}"));
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("{port:?} is not a port number"))?,
    };
    Ok((host.to_owned(), port))
}

fn number(key: &str, value: &str) -> std::result::Result<i64, String> {
    value
        .parse()
        .ok()
        .filter(|n: &i64| *n >= 0)
        .ok_or_else(|| format!("`{key}` must be a number, not {value:?}"))
}

fn positive(key: &str, value: &str) -> std::result::Result<u64, String> {
    value
        .parse()
        .ok()
        .filter(|n: &u64| *n > 0)
        .ok_or_else(|| format!("`{key}` must be a positive number, not {value:?}"))
}

/// Percent-decodes `text` as UTF-8.
fn decode(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_secrets() {
        let a = StreamAddress::parse("rediss://:top%2Fsecret@127.0.0.1:7000/in?ca=/tmp/ca.pem")
            .unwrap();
        assert!(a.is_tls());
        assert_eq!(a.ca_file(), Some(std::path::Path::new("/tmp/ca.pem")));
        assert_eq!(a.server(), "rediss://127.0.0.1:7000");
        let settings = a.connection_info().redis_settings().clone();
        assert_eq!(
            (settings.username(), settings.password()),
            (None, Some("top/secret"))
        );
        for shown in [a.as_str().to_owned(), format!("{a:?}"), a.to_string()] {
            assert!(!shown.contains("top"), "{shown}");
        }
        assert_eq!(a.as_str(), "rediss://:***@127.0.0.1:7000/in?ca=/tmp/ca.pem");
        // A bad address with a password: the error does not show it.
        let err = StreamAddress::parse("redis://u:hunter2@h/in?grup=x").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        assert!(
            err.to_string().contains("redis://u:***@h/in?grup=x"),
            "{err}"
        );
        let err = StreamAddress::parse("redis://hunter2@h:99999/in").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn parses_every_part() {
        let a = StreamAddress::parse(
            "redis://user:p%40ss@[::1]:7000/a%20b?group=g&consumer=c&dead=d&db=2&bound=10&\
             max_deliveries=3&claim_idle_ms=500&block_ms=50",
        )
        .unwrap();
        assert_eq!(a.stream(), "a b");
        assert_eq!((a.group(), a.consumer()), ("g", Some("c")));
        assert_eq!(a.dead_letter_stream(), "d");
        assert_eq!(a.server(), "redis://[::1]:7000");
        let info = a.connection_info();
        let settings = info.redis_settings();
        assert_eq!(
            (settings.username(), settings.password(), settings.db()),
            (Some("user"), Some("p@ss"), 2)
        );
        assert_eq!(a.as_str().matches("p%40ss").count(), 0, "{}", a.as_str());
        assert_eq!((a.bound, a.max_deliveries), (Some(Some(10)), Some(3)));
        let unbounded = StreamAddress::parse("redis://h/s?bound=none").unwrap();
        assert_eq!(unbounded.bound, Some(None));
        assert_eq!(a.claim_idle, Some(Duration::from_millis(500)));
        assert_eq!(a.block, Some(Duration::from_millis(50)));
        assert!(!format!("{a:?}").contains("p%40ss") && !format!("{a:?}").contains("p@ss"));
        assert_eq!(a.to_string(), "redis://[::1]:7000/a b");
    }

    #[test]
    fn rejects_what_it_cannot_use() {
        for bad in [
            "",
            "127.0.0.1:6379/in",
            "http://host/in",
            "redis://host/in?ca=/etc/ca.pem",
            "redis://host",
            "redis://host/",
            "redis:///in",
            "redis://host:0/in",
            "redis://host:99999/in",
            "redis://host:port/in",
            "redis://[::1/in",
            "redis://host/in?group=",
            "redis://host/in?bound=0",
            "redis://host/in?db=-1",
            "redis://host/in?colour=blue",
            "redis://host/%zz",
            "redis://host/%ff",
        ] {
            let err = StreamAddress::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidAddress { .. }), "{bad}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn builders_replace_parts() {
        let a = StreamAddress::parse("redis://h/in")
            .unwrap()
            .with_stream("out")
            .with_group("g")
            .with_consumer("me");
        assert_eq!(
            (a.stream(), a.group(), a.consumer()),
            ("out", "g", Some("me"))
        );
        assert_eq!(a.connection_info().redis_settings().password(), None);
        assert_eq!(
            "redis://h/x".parse::<StreamAddress>().unwrap().stream(),
            "x"
        );
    }
}
