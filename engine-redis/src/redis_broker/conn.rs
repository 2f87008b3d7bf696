//! One connection of a [`RedisBroker`](super::RedisBroker): to a single server, or to a
//! Redis Cluster through the `redis` crate's cluster client, behind one type so that every
//! command is written once.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Connection, ConnectionLike, FromRedisValue, RedisResult, Value};

use crate::keys::slot;

/// What makes connections: a client of one server or of a cluster.
pub(crate) enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl Client {
    /// Makes a connection; a cluster's connects to the first seed that answers, reads the
    /// slot map from it, and connects to every master.
    pub(super) fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        match self {
            Self::Single(client) => client
                .get_connection_with_timeout(timeout)
                .map(Conn::Single),
            Self::Cluster(client) => client
                .get_connection()
                .map(|conn| Conn::Cluster(Box::new(conn))),
        }
    }
}

/// A connection to one server, or to a cluster.
pub(crate) enum Conn {
    Single(Connection),
    // Boxed: a cluster connection is several times the size of a single one.
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    /// Whether it is a cluster's.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    pub(super) fn set_read_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match self {
            Self::Single(conn) => conn.set_read_timeout(timeout),
            Self::Cluster(conn) => conn.set_read_timeout(timeout),
        }
    }

    pub(super) fn set_write_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match self {
            Self::Single(conn) => conn.set_write_timeout(timeout),
            Self::Cluster(conn) => conn.set_write_timeout(timeout),
        }
    }

    /// Runs `cmd` (which names no key, as `WAIT`) on the connection to the master of `key`'s
    /// slot; on a single server, on the connection.
    pub(crate) fn on_master_of<T: FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match self {
            Self::Single(conn) => cmd.query(conn),
            Self::Cluster(conn) => {
                let route = Route::new(slot(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = conn.route_command(cmd, routing)?;
                T::from_redis_value(value).map_err(Into::into)
            }
        }
    }

    /// Runs `cmds` in one pipeline (per master, on a cluster), and returns each reply.
    ///
    /// On a cluster, a slot being migrated answers `ASK` for the keys already moved, and the
    /// `redis` crate (1.8) follows `ASK` only for a command sent alone: in a pipeline it
    /// comes back as the pipeline's error (or, in a pipeline of one slot, is followed by the
    /// first command only). The commands are then run again one at a time, each following
    /// its redirection: so `cmds` must be safe to run twice (renewing a lease, `XACK`).
    pub(super) fn query_idempotent(&mut self, cmds: &[Cmd]) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(conn) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone());
                }
                pipe.query(conn)
            }
            Self::Cluster(conn) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone());
                }
                match pipe.query(conn) {
                    Err(err) if err.is_cluster_error() => {
                        cmds.iter().map(|cmd| cmd.query(&mut **conn)).collect()
                    }
                    other => other,
                }
            }
        }
    }

    /// A cluster connection, for the commands only a cluster has.
    pub(super) fn cluster(&mut self) -> Option<&mut ClusterConnection> {
        match self {
            Self::Single(_) => None,
            Self::Cluster(conn) => Some(&mut **conn),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Self::Single(conn) => conn.req_command(cmd),
            Self::Cluster(conn) => conn.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }

    // A cluster connection sends a whole pipeline to the node of its first command: right
    // here, since every pipeline of this crate touches one hash slot (a stream and its keys).
    fn supports_pipelining(&self) -> bool {
        true
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Self::Single(conn) => conn.check_connection(),
            Self::Cluster(conn) => conn.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Self::Single(conn) => conn.is_open(),
            Self::Cluster(conn) => conn.is_open(),
        }
    }
}
