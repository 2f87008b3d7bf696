//! A throwaway Redis Cluster on loopback: `redis-server` nodes with `cluster-enabled yes`,
//! joined by `redis-cli --cluster create`, whose nodes a test can kill and start again.

use std::fmt;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{POLL_INTERVAL, Server, ServerError, ServerOptions, find_program};
use crate::StreamAddress;

/// How a [`Cluster`] is started.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use engine::redis::testing::{Cluster, ClusterOptions};
///
/// let cluster = Cluster::start_with(
///     ClusterOptions::new().masters(3).replicas(0).node_timeout(Duration::from_secs(1)),
/// )?;
/// assert_eq!(cluster.masters()?.len(), 3);
/// # Ok::<(), engine::redis::testing::ServerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    masters: usize,
    replicas: usize,
    node_timeout: Duration,
    ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas: 1,
            node_timeout: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

impl ClusterOptions {
    /// 3 masters, 1 replica each, a node timeout of 2 s, 60 s to form.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many masters share the slots (at least 3, as `redis-cli` requires).
    #[must_use]
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// How many replicas each master has.
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// How long a node may be unreachable before the others take it for failed
    /// (`cluster-node-timeout`): a killed master's replica takes over shortly after.
    #[must_use]
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// How long the cluster may take to form, and [`Cluster::wait_ok`] waits by default.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// A throwaway Redis Cluster of `redis-server` processes on `127.0.0.1`, each in a temporary
/// directory of its own; dropping it kills every node and removes the directories.
///
/// Nodes keep no data on disk (a killed node comes back empty), but keep their cluster
/// configuration (`nodes.conf`), so a node started again rejoins with its identity: a master
/// killed long enough for its replica to take over comes back as that replica's replica.
///
/// # Examples
///
/// ```no_run
/// use engine::redis::testing::Cluster;
///
/// let mut cluster = Cluster::start()?; // 3 masters, 1 replica each.
/// let masters = cluster.masters()?;
/// cluster.kill(masters[0])?;
/// cluster.wait_ok(None)?; // A replica took over.
/// assert!(!cluster.masters()?.contains(&masters[0]));
/// cluster.restart(masters[0])?;
/// cluster.wait_ok(None)?; // And the old master follows it.
/// # Ok::<(), engine::redis::testing::ServerError>(())
/// ```
pub struct Cluster {
    nodes: Vec<Server>,
    options: ClusterOptions,
}

impl Cluster {
    /// Starts a cluster of 3 masters with 1 replica each.
    ///
    /// # Errors
    ///
    /// As [`start_with`](Self::start_with).
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with(ClusterOptions::new())
    }

    /// Starts a cluster with `options`, and returns once every node says `cluster_state:ok`
    /// and every replica is in sync with its master.
    ///
    /// # Errors
    ///
    /// [`ServerError::NotInstalled`] without `redis-server` or `redis-cli`; the errors of
    /// [`Server::start_with`] for a node; [`ServerError::Cluster`] if `redis-cli` cannot
    /// form the cluster or it does not settle within the ready timeout.
    pub fn start_with(options: ClusterOptions) -> Result<Self, ServerError> {
        if options.masters < 3 {
            return Err(ServerError::Cluster {
                action: "start".to_owned(),
                detail: format!(
                    "a cluster needs at least 3 masters, not {}",
                    options.masters
                ),
            });
        }
        let cli = find_program("redis-cli")?;
        let mut server = ServerOptions::new().ready_timeout(options.ready_timeout);
        server.cluster_node_timeout = Some(options.node_timeout);
        let count = options.masters * (1 + options.replicas);
        let nodes = (0..count)
            .map(|_| Server::start_with(server.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = Self { nodes, options };
        let output = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port())),
            )
            .args(["--cluster-replicas", &cluster.options.replicas.to_string()])
            .arg("--cluster-yes")
            .output()
            .map_err(|source| ServerError::Io {
                action: format!("run {}", cli.display()),
                source,
            })?;
        if !output.status.success() {
            let text =
                String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = text.lines().collect();
            return Err(ServerError::Cluster {
                action: "be created by redis-cli".to_owned(),
                detail: lines[lines.len().saturating_sub(10)..].join("\n"),
            });
        }
        cluster.wait_ok(None)?;
        Ok(cluster)
    }

    /// The ports of every node, masters and replicas, killed or not, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Server::port).collect()
    }

    /// The cluster's URL with every node as a seed:
    /// `redis+cluster://127.0.0.1:<port>,127.0.0.1:<port>,...`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The URL of `stream` on this cluster, to which a query (`?group=...`) may be added.
    pub fn stream_url(&self, stream: &str) -> String {
        format!("{}/{stream}", self.url())
    }

    /// The address of `stream` on this cluster, with the default group.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`](crate::Error::InvalidAddress) if `stream` is not a valid URL
    /// path.
    pub fn address(&self, stream: &str) -> crate::Result<StreamAddress> {
        StreamAddress::parse(&self.stream_url(stream))
    }

    /// A plain connection to the node on `port`, for the caller's own commands.
    ///
    /// # Errors
    ///
    /// The `redis` crate's error if no node of the cluster listens there or it does not
    /// answer.
    pub fn connection(&self, port: u16) -> redis::RedisResult<redis::Connection> {
        match self.nodes.iter().find(|node| node.port() == port) {
            Some(node) => node.connection(),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no node of the cluster has this port",
                port.to_string(),
            ))),
        }
    }

    /// The ports of the masters serving slots, as a running node sees them, in slot order.
    ///
    /// # Errors
    ///
    /// [`ServerError::Cluster`] when no node answers.
    pub fn masters(&self) -> Result<Vec<u16>, ServerError> {
        let view = self.view().map_err(|detail| ServerError::Cluster {
            action: "list its masters".to_owned(),
            detail,
        })?;
        let mut masters: Vec<(u16, u16)> = view
            .iter()
            .filter(|node| node.master && !node.failed)
            .filter_map(|node| Some((*node.slots.iter().map(|(from, _)| from).min()?, node.port)))
            .collect();
        masters.sort_unstable();
        Ok(masters.into_iter().map(|(_, port)| port).collect())
    }

    /// The master serving `slot` (0..16384), as a running node sees it.
    ///
    /// # Errors
    ///
    /// [`ServerError::Cluster`] when no node answers or none serves the slot.
    pub fn master_of_slot(&self, slot: u16) -> Result<u16, ServerError> {
        let view = self.view();
        view.as_ref()
            .ok()
            .and_then(|view| {
                let serves = |n: &&NodeLine| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot));
                view.iter().filter(|n| n.master && !n.failed).find(serves)
            })
            .map(|node| node.port)
            .ok_or_else(|| ServerError::Cluster {
                action: format!("find the master of slot {slot}"),
                detail: view
                    .err()
                    .unwrap_or_else(|| "no master serves it".to_owned()),
            })
    }

    /// Kills the node on `port` at once (`SIGKILL`, as in a crash).
    ///
    /// # Errors
    ///
    /// [`ServerError::Cluster`] if no node has that port.
    pub fn kill(&mut self, port: u16) -> Result<(), ServerError> {
        self.node(port)?.kill();
        Ok(())
    }

    /// Starts the node on `port` again (killed or not), on its port and directory, and
    /// returns once it answers; it rejoins the cluster ([`wait_ok`](Self::wait_ok) waits for
    /// that).
    ///
    /// # Errors
    ///
    /// [`ServerError::Cluster`] if no node has that port; as [`Server::restart`].
    pub fn restart(&mut self, port: u16) -> Result<(), ServerError> {
        self.node(port)?.start_again()
    }

    /// Whether the node on `port` runs (it was not killed, or was started again).
    pub fn is_running(&self, port: u16) -> bool {
        self.nodes
            .iter()
            .any(|node| node.port() == port && node.pid().is_some())
    }

    /// Waits until the cluster is whole again: every running node says `cluster_state:ok`,
    /// knows every node, sees no running node failed and no slot on a stopped one, and every
    /// running replica is in sync with its master. Waits `timeout`, or the ready timeout.
    ///
    /// # Errors
    ///
    /// [`ServerError::Cluster`] with what was still wrong when the time ran out.
    pub fn wait_ok(&self, timeout: Option<Duration>) -> Result<(), ServerError> {
        let timeout = timeout.unwrap_or(self.options.ready_timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let problem = match self.problem() {
                None => return Ok(()),
                Some(problem) => problem,
            };
            if Instant::now() >= deadline {
                return Err(ServerError::Cluster {
                    action: format!("settle within {timeout:?}"),
                    detail: problem,
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// What keeps the cluster from being whole, if anything.
    fn problem(&self) -> Option<String> {
        let running: Vec<&Server> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
        for node in &running {
            let port = node.port();
            let state = match query(node, "CLUSTER", "INFO") {
                Ok(text) => text,
                Err(err) => return Some(format!("node {port}: {err}")),
            };
            let known = self.nodes.len().to_string();
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_ok", "16384"),
                ("cluster_known_nodes", known.as_str()),
            ] {
                if field_of(&state, field) != Some(want) {
                    return Some(format!("node {port}: {field} is not {want}"));
                }
            }
            let view = match query(node, "CLUSTER", "NODES") {
                Ok(text) => parse_nodes(&text),
                Err(err) => return Some(format!("node {port}: {err}")),
            };
            for seen in &view {
                let runs = self.is_running(seen.port);
                if runs && seen.failed {
                    return Some(format!("node {port} sees node {} failed", seen.port));
                }
                if !runs && seen.master && !seen.slots.is_empty() {
                    return Some(format!("node {port} sees slots on stopped {}", seen.port));
                }
            }
            if let Some(problem) = self.replicas_unlisted(node, &view) {
                return Some(problem);
            }
            if view.iter().any(|seen| seen.myself && !seen.master) {
                match query(node, "INFO", "replication") {
                    Ok(text) if field_of(&text, "master_link_status") == Some("up") => {}
                    Ok(_) => return Some(format!("replica {port} is not in sync")),
                    Err(err) => return Some(format!("node {port}: {err}")),
                }
            }
        }
        None
    }

    /// Whether `node`'s slot map (`CLUSTER SLOTS`, what clients read) lists, with each range,
    /// every running replica that its view of the cluster gives the range's master: a node
    /// says `cluster_state:ok` before its slot map lists a new replica, and a client asking
    /// then would find too few replicas for `replicas=`.
    fn replicas_unlisted(&self, node: &Server, view: &[NodeLine]) -> Option<String> {
        let port = node.port();
        let ranges = match node.connection().and_then(|mut conn| {
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Vec<Vec<redis::Value>>>(&mut conn)
        }) {
            Ok(ranges) => ranges,
            Err(err) => return Some(format!("node {port}: {err}")),
        };
        for range in &ranges {
            let master_id = match range.get(2) {
                Some(redis::Value::Array(parts)) => match parts.get(2) {
                    Some(redis::Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
                    _ => continue,
                },
                _ => continue,
            };
            let expected = view
                .iter()
                .filter(|seen| !seen.master && seen.master_id.as_deref() == Some(&*master_id))
                .filter(|seen| self.is_running(seen.port) && !seen.failed)
                .count();
            let listed = range.len().saturating_sub(3);
            if listed < expected {
                return Some(format!(
                    "node {port} lists {listed} of {expected} replicas with a slot range"
                ));
            }
        }
        None
    }

    /// The nodes as the first running node that answers sees them.
    fn view(&self) -> Result<Vec<NodeLine>, String> {
        let mut last = "no node runs".to_owned();
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            match query(node, "CLUSTER", "NODES") {
                Ok(text) => return Ok(parse_nodes(&text)),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    fn node(&mut self, port: u16) -> Result<&mut Server, ServerError> {
        self.nodes
            .iter_mut()
            .find(|node| node.port() == port)
            .ok_or_else(|| ServerError::Cluster {
                action: format!("find a node on port {port}"),
                detail: "no node of the cluster has this port".to_owned(),
            })
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url())
            .field("options", &self.options)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    port: u16,
    /// The id of its master, for a replica.
    master_id: Option<String>,
    myself: bool,
    master: bool,
    /// Marked `fail` or `fail?`.
    failed: bool,
    /// Slot ranges served, inclusive.
    slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch>
/// <link> <slot ranges...>`.
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = fields.get(2)?.split(',').collect();
            let slots = fields
                .iter()
                .skip(8)
                .filter(|range| !range.starts_with('['))
                .filter_map(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    Some((from.parse().ok()?, to.parse().ok()?))
                })
                .collect();
            Some(NodeLine {
                port,
                master_id: fields
                    .get(3)
                    .filter(|m| **m != "-")
                    .map(|m| (*m).to_owned()),
                myself: flags.contains(&"myself"),
                master: flags.contains(&"master"),
                failed: flags.iter().any(|f| f.starts_with("fail")),
                slots,
            })
        })
        .collect()
}

/// The reply of `<command> <arg>` on `node`, as text.
fn query(node: &Server, command: &str, arg: &str) -> Result<String, String> {
    let mut conn = node.connection().map_err(|err| err.to_string())?;
    redis::cmd(command)
        .arg(arg)
        .query::<String>(&mut conn)
        .map_err(|err| err.to_string())
}

/// The value of `field:` in an `INFO`-style reply.
fn field_of<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cluster_nodes() {
        let text = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b2]\n\
                    b2 127.0.0.1:7001@17001,host master,fail - 0 0 2 connected 5461 5462-10922\n\
                    c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert!(nodes[0].myself && nodes[0].master && !nodes[0].failed);
        assert_eq!(nodes[0].slots, [(0, 5460)]);
        assert_eq!((nodes[1].port, nodes[1].failed), (7001, true));
        assert_eq!(nodes[1].slots, [(5461, 5461), (5462, 10922)]);
        assert!(!nodes[2].master && nodes[2].slots.is_empty());
        assert_eq!(nodes[2].master_id.as_deref(), Some("a1"));
        assert_eq!(nodes[0].master_id, None);
        assert_eq!(
            field_of("a:1\r\ncluster_state:ok\r\n", "cluster_state"),
            Some("ok")
        );
    }
}
