//! Parsing a stream address with the `url` crate:
//! `redis[s]://[user:password@]host[:port]/<stream>?key=value`, or for a Redis Cluster
//! `redis[s]+cluster://[user:password@]host[:port],host[:port].../<stream>?key=value`, with
//! the password redacted from what is shown.
//!
//! A URL has one host, so a cluster's list of seeds is cut out first (the text between the
//! `://` or the credentials' `@` and the path): the address is parsed with a placeholder
//! host in its place, and each seed is parsed as a URL of its own, `redis://<seed>`. Percent-
//! decoding is the `percent-encoding` crate's (the one `url` uses), checked: a `%` not
//! followed by two hex digits, or bytes that are not UTF-8, are an error.

use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use url::{Host, Url};

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_REPLICAS_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT, StreamAddress,
};

/// The most partitions a keyed stream may have.
const MAX_PARTITIONS: u32 = 1024;

const FORM: &str = "expected redis[s]://[user:password@]host[:port]/<stream>[?group=<group>] \
                    or redis[s]+cluster://[user:password@]host[:port],host[:port].../<stream>";

/// The host parsed in the place of an address's seed list (`.invalid` is reserved: RFC 2606).
const PLACEHOLDER: &str = "seeds.invalid";

/// An address cut around its list of seeds, the one part a URL parser cannot read.
#[derive(Debug, Clone, Copy)]
struct Seeds<'a> {
    /// `scheme://` and the credentials with their `@`, if any.
    head: &'a str,
    /// `host[:port]`, or for a cluster `host[:port],host[:port]...`.
    hosts: &'a str,
    /// The path, query and fragment.
    tail: &'a str,
}

impl<'a> Seeds<'a> {
    /// Cuts `address`, or `None` if it has no `://`.
    fn cut(address: &'a str) -> Option<Self> {
        let start = address.find("://")? + "://".len();
        let end = address[start..]
            .find(['/', '?', '#'])
            .map_or(address.len(), |i| start + i);
        let hosts = address[start..end]
            .rfind('@')
            .map_or(start, |at| start + at + 1);
        Some(Self {
            head: &address[..hosts],
            hosts: &address[hosts..end],
            tail: &address[end..],
        })
    }

    /// The address with the placeholder host for its seeds, parsed.
    fn url(&self) -> Option<Url> {
        Url::parse(&format!("{}{PLACEHOLDER}{}", self.head, self.tail)).ok()
    }
}

/// `address` with the password of its `user:password@` part replaced by `***`.
pub(super) fn redact(address: &str) -> String {
    let Some(seeds) = Seeds::cut(address) else {
        return address.to_owned();
    };
    if !seeds.head.ends_with('@') {
        return address.to_owned();
    }
    let scheme = &seeds.head[..seeds.head.find("://").unwrap_or(0)];
    // A lone `secret@` is a password to redis-rs as well: hide it too.
    let userinfo = match seeds.url() {
        Some(url) if url.password().is_some() => format!("{}:***", url.username()),
        _ => "***".to_owned(),
    };
    format!("{scheme}://{userinfo}@{}{}", seeds.hosts, seeds.tail)
}

/// Parses a whole address: the scheme, the credentials, the server, the stream and the
/// options.
pub(super) fn parse(address: &str) -> std::result::Result<StreamAddress, String> {
    let seeds = Seeds::cut(address).ok_or_else(|| FORM.to_owned())?;
    let url = seeds.url().ok_or_else(|| FORM.to_owned())?;
    let scheme = url.scheme();
    let (tls, cluster) = match scheme {
        "redis" => (false, false),
        "rediss" => (true, false),
        "redis+cluster" => (false, true),
        "rediss+cluster" => (true, true),
        other => return Err(format!("unsupported scheme {other:?}; {FORM}")),
    };
    let stream = match url.path().strip_prefix('/') {
        Some(path) => decode(path, "the stream name")?,
        None => String::new(),
    };
    if stream.is_empty() {
        return Err(format!("no stream name; {FORM}"));
    }
    let username = Some(decode(url.username(), "the user name")?).filter(|u| !u.is_empty());
    let password = match url.password() {
        Some(password) => Some(decode(password, "the password")?).filter(|p| !p.is_empty()),
        None => None,
    };
    let nodes = seeds
        .hosts
        .split(',')
        .map(node)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if nodes.len() > 1 && !cluster {
        return Err(format!(
            "several nodes are a Redis Cluster's seeds: use {scheme}+cluster://"
        ));
    }
    let mut parsed = StreamAddress {
        original: redact(address),
        tls,
        ca: None,
        username,
        password,
        nodes,
        cluster,
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
        replicas: 0,
        replicas_timeout: DEFAULT_REPLICAS_TIMEOUT,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        response_timeout: DEFAULT_RESPONSE_TIMEOUT,
    };
    // The query is percent-encoded, not form-encoded: a `+` stays a plus (a file path in
    // `ca=` may hold one), so it is escaped before the form decoder would make it a space.
    let query = url.query().unwrap_or("");
    check_escapes(query, "the options")?;
    let query = query.replace('+', "%2B");
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        set_option(&mut parsed, &key, value.into_owned())?;
    }
    if parsed.cluster && parsed.db != 0 {
        return Err("a Redis Cluster has database 0 only".to_owned());
    }
    Ok(parsed)
}

/// The host and port of one seed, `host[:port]` (an IPv6 host in brackets), parsed as the
/// URL `redis://<seed>`.
fn node(seed: &str) -> std::result::Result<(String, u16), String> {
    let not_a_port = || {
        // The text after the host's last `:`, for the message.
        let port = seed.rsplit_once(':').map_or("", |(_, port)| port);
        format!("{port:?} is not a port number")
    };
    let url = Url::parse(&format!("redis://{seed}")).map_err(|e| match e {
        url::ParseError::InvalidPort => not_a_port(),
        url::ParseError::EmptyHost => format!("no host; {FORM}"),
        url::ParseError::InvalidIpv6Address => format!("{seed:?} is not an IPv6 host"),
        other => format!("bad host {seed:?}: {other}"),
    })?;
    if !url.username().is_empty() || url.password().is_some() || !url.path().is_empty() {
        return Err(format!("bad host {seed:?}"));
    }
    let host = match url.host() {
        Some(Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(format!("no host; {FORM}")),
    };
    match url.port() {
        None => Ok((host, DEFAULT_PORT)),
        Some(0) => Err(not_a_port()),
        Some(port) => Ok((host, port)),
    }
}

/// Sets the option `key` of the query to `value` (decoded).
fn set_option(
    parsed: &mut StreamAddress,
    key: &str,
    value: String,
) -> std::result::Result<(), String> {
    let name = |what: &str| {
        if value.is_empty() {
            Err(format!("{key} needs a {what}"))
        } else {
            Ok(value.clone())
        }
    };
    let millis = |value: &str| positive(key, value).map(Duration::from_millis);
    match key {
        "group" => parsed.group = name("group name")?,
        "consumer" => parsed.consumer = Some(name("consumer name")?),
        "dead" => parsed.dead = Some(name("stream name")?),
        "db" => parsed.db = number(key, &value)?,
        "ca" if parsed.tls => parsed.ca = Some(PathBuf::from(name("file path")?)),
        "ca" => return Err("ca is for TLS: use rediss://".to_owned()),
        "bound" if value == "none" => parsed.bound = Some(None),
        "bound" => parsed.bound = Some(Some(positive(key, &value)?)),
        "max_deliveries" => parsed.max_deliveries = Some(positive(key, &value)?),
        "claim_idle_ms" => parsed.claim_idle = Some(millis(&value)?),
        "block_ms" => parsed.block = Some(millis(&value)?),
        "remove_idle_ms" => parsed.remove_idle = Some(millis(&value)?),
        "partitions" => {
            let n = positive(key, &value)?;
            parsed.partitions = Some(
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= MAX_PARTITIONS)
                    .ok_or_else(|| format!("partitions is at most {MAX_PARTITIONS}"))?,
            );
        }
        "lease_ms" => parsed.lease = Some(millis(&value)?),
        "replicas" => {
            parsed.replicas = u32::try_from(number(key, &value)?)
                .map_err(|_| format!("{key} is too large ({value})"))?;
        }
        "replicas_timeout_ms" => parsed.replicas_timeout = millis(&value)?,
        other => {
            return Err(format!(
                "unknown option {other:?} (known: group, consumer, dead, db, ca, bound, \
                 max_deliveries, claim_idle_ms, block_ms, remove_idle_ms, partitions, \
                 lease_ms, replicas, replicas_timeout_ms)"
            ));
        }
    }
    Ok(())
}

fn number(key: &str, value: &str) -> std::result::Result<i64, String> {
    value
        .parse()
        .ok()
        .filter(|n: &i64| *n >= 0)
        .ok_or_else(|| format!("{key} must be a number, not {value:?}"))
}

fn positive(key: &str, value: &str) -> std::result::Result<u64, String> {
    value
        .parse()
        .ok()
        .filter(|n: &u64| *n > 0)
        .ok_or_else(|| format!("{key} must be a positive number, not {value:?}"))
}

/// Fails if `text` has a `%` that is not followed by two hex digits (a decoder would keep it
/// as it is). `what` names the part in the message, which never shows a secret.
fn check_escapes(text: &str, what: &str) -> std::result::Result<(), String> {
    let bad = text.match_indices('%').any(|(at, _)| {
        !text
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if bad {
        Err(format!("bad percent-encoding in {what}"))
    } else {
        Ok(())
    }
}

/// Percent-decodes `text` as UTF-8; `what` names the part in the message.
fn decode(text: &str, what: &str) -> std::result::Result<String, String> {
    check_escapes(text, what)?;
    percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| format!("{what} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

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
    fn cluster_addresses() {
        let a = StreamAddress::parse(
            "rediss+cluster://app:s3cret@h1:7000,[::1]:7001,h3/orders?partitions=12&ca=/tmp/c",
        )
        .unwrap();
        assert!(a.is_cluster() && a.is_tls());
        assert_eq!(a.server(), "rediss+cluster://h1:7000,[::1]:7001,h3:6379");
        assert_eq!((a.stream(), a.partitions()), ("orders", Some(12)));
        let infos = a.node_infos();
        assert_eq!(infos.len(), 3);
        for info in &infos {
            let settings = info.redis_settings();
            assert_eq!(
                (settings.username(), settings.password()),
                (Some("app"), Some("s3cret"))
            );
        }
        for shown in [a.as_str().to_owned(), format!("{a:?}"), a.to_string()] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert_eq!(
            a.as_str(),
            "rediss+cluster://app:***@h1:7000,[::1]:7001,h3/orders?partitions=12&ca=/tmp/c"
        );
        assert_eq!(
            a.to_string(),
            "rediss+cluster://h1:7000,[::1]:7001,h3:6379/orders"
        );
        let one = StreamAddress::parse("redis+cluster://h1/s").unwrap();
        assert!(one.is_cluster() && !one.is_tls());
        for bad in [
            "redis://h1,h2/s",
            "rediss://h1:1,h2:2/s",
            "redis+cluster://h1,/s",
            "redis+cluster://,h1/s",
            "redis+cluster://h1:0,h2/s",
            "redis+cluster://h1/s?db=1",
            "redis+cluster:///s",
            "redis+cluster://h1,h2",
            "redis+sentinel://h1/s",
        ] {
            let err = StreamAddress::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidAddress { .. }), "{bad}");
        }
        let err = StreamAddress::parse("redis+cluster://u:hunter2@h1,h2:x/s").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        assert!(err.to_string().contains("\"x\" is not a port"), "{err}");
        let err = StreamAddress::parse("redis://u:hunter2@h1,h2/s").unwrap_err();
        assert!(err.to_string().contains("redis+cluster://"), "{err}");
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let a =
            StreamAddress::parse("redis://us%65r%3Aname:p%40ss%3Aw%2Ford%20%C3%A9@h/s").unwrap();
        let settings = a.connection_info().redis_settings().clone();
        assert_eq!(
            (settings.username(), settings.password()),
            (Some("user:name"), Some("p@ss:w/ord é"))
        );
        assert_eq!(a.as_str(), "redis://us%65r%3Aname:***@h/s");
        // An `@` in the password need not be encoded: the last one ends the credentials.
        let raw = StreamAddress::parse("redis://app:p@ss@h:7000/s").unwrap();
        let settings = raw.connection_info().redis_settings().clone();
        assert_eq!(
            (settings.username(), settings.password()),
            (Some("app"), Some("p@ss"))
        );
        assert_eq!(raw.server(), "redis://h:7000");
        assert_eq!(raw.as_str(), "redis://app:***@h:7000/s");
        // A lone `secret@` is hidden too, and a bad escape in a secret does not show it.
        assert_eq!(redact("redis://secret@h/s"), "redis://***@h/s");
        for bad in [
            "redis://u:hunter2%zz@h/s",
            "redis://u:hunter2%ff@h/s",
            "redis://%g1@h/s",
        ] {
            let err = StreamAddress::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidAddress { .. }), "{bad}");
            assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        }
    }

    #[test]
    fn options_are_percent_decoded_and_keep_plus_signs() {
        let a = StreamAddress::parse("rediss://h/s?ca=/tmp/a+b%20c.pem&group=g%26h").unwrap();
        assert_eq!(a.ca_file(), Some(std::path::Path::new("/tmp/a+b c.pem")));
        assert_eq!(a.group(), "g&h");
        assert!(StreamAddress::parse("redis://h/s?group=%zz").is_err());
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
