//! Parsing a stream address: `redis[s]://[user:password@]host[:port]/<stream>?key=value`,
//! with the password redacted from what is shown.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_REPLICAS_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT, StreamAddress,
};

/// The most partitions a keyed stream may have.
const MAX_PARTITIONS: u32 = 1024;

const FORM: &str = "expected redis[s]://[user:password@]host[:port]/<stream>[?group=<group>] \
                    or redis[s]+cluster://[user:password@]host[:port],host[:port].../<stream>";

/// `address` with the password of its `user:password@` part replaced by `***`.
pub(super) fn redact(address: &str) -> String {
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

/// Parses a whole address: the scheme, the credentials, the server, the stream and the
/// options.
pub(super) fn parse(address: &str) -> std::result::Result<StreamAddress, String> {
    let Some((scheme, rest)) = address.split_once("://") else {
        return Err(FORM.to_owned());
    };
    let (tls, cluster) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (false, false),
        "rediss" => (true, false),
        "redis+cluster" => (false, true),
        "rediss+cluster" => (true, true),
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
    let (username, password, hostports) = credentials(authority)?;
    let nodes = hostports
        .split(',')
        .map(split_host_port)
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
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        set_option(&mut parsed, key, decode(value)?)?;
    }
    if parsed.cluster && parsed.db != 0 {
        return Err("a Redis Cluster has database 0 only".to_owned());
    }
    Ok(parsed)
}

/// The user, the password and the `host[:port]` of an address's authority,
/// `[user[:password]@]host[:port]`.
fn credentials(
    authority: &str,
) -> std::result::Result<(Option<String>, Option<String>, &str), String> {
    let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
        return Ok((None, None, authority));
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (decode(user)?, Some(decode(password)?)),
        None => (decode(userinfo)?, None),
    };
    let user = (!user.is_empty()).then_some(user);
    Ok((user, password.filter(|p| !p.is_empty()), hostport))
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

fn split_host_port(hostport: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        // An IPv6 literal: `[::1]:6379`.
        let Some((host, after)) = rest.split_once(']') else {
            return Err("unclosed [ in the host".to_owned());
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
        .ok_or_else(|| format!("{key} must be a number, not {value:?}"))
}

fn positive(key: &str, value: &str) -> std::result::Result<u64, String> {
    value
        .parse()
        .ok()
        .filter(|n: &u64| *n > 0)
        .ok_or_else(|| format!("{key} must be a positive number, not {value:?}"))
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
