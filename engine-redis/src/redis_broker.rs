//! The Redis Streams broker: one synchronous connection, made again after it breaks, with
//! read timeouts longer than any blocking read.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use redis::{Connection, ErrorKind, RedisError, ServerErrorKind, Value};

use crate::address::StreamAddress;
use crate::broker::{
    Appended, Batch, Beat, Broker, Claimed, Connector, DeadLetter, Delivery, EntryId, Leases,
    Pending,
};
use crate::error::{Error, Result};

mod append;

/// The field of a stream entry that holds the encoded item.
pub const PAYLOAD_FIELD: &str = "d";

/// The field of a stream entry that holds the protocol version it was written with
/// ([`engine_core::protocol::PROTOCOL_VERSION`], in decimal), next to the item.
pub const VERSION_FIELD: &str = "v";

/// How long an error recorded for a failed entry is kept, for its dead letter.
const ERROR_TTL_SECS: u64 = 7 * 24 * 3600;

/// One heartbeat of a keyed consumer: `KEYS[1]` is the member set, the other keys the
/// partitions' leases; `ARGV[1]` the consumer, `ARGV[2]` the lease time in ms, `ARGV[3]` 1 to
/// leave, the other arguments the partitions to give up. Members are scored with the server
/// time at which they are presumed dead. Returns `live, fair, held partitions...`.
const BEAT: &str = r"
local me = ARGV[1]
local ttl = tonumber(ARGV[2])
for i = 4, #ARGV do
  local key = KEYS[tonumber(ARGV[i]) + 2]
  if key and redis.call('GET', key) == me then redis.call('DEL', key) end
end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], me)
  for k = 2, #KEYS do
    if redis.call('GET', KEYS[k]) == me then redis.call('DEL', KEYS[k]) end
  end
  return {0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + ttl, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
local live = redis.call('ZCARD', KEYS[1])
local partitions = #KEYS - 1
local fair = math.ceil(partitions / live)
local held = {}
local free = {}
for k = 2, #KEYS do
  local owner = redis.call('GET', KEYS[k])
  if owner == me then
    redis.call('PEXPIRE', KEYS[k], ttl)
    held[#held + 1] = k - 2
  elseif not owner then
    free[#free + 1] = k - 2
  end
end
for _, i in ipairs(free) do
  if #held >= fair then break end
  redis.call('SET', KEYS[i + 2], me, 'PX', ttl)
  held[#held + 1] = i
end
local out = {live, fair}
for _, i in ipairs(held) do out[#out + 1] = i end
return out
";

/// The heartbeat script, hashed once per process.
static BEAT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BEAT));

/// Removes the consumers of a group that have nothing pending and have not been seen for a
/// while, atomically (a consumer cannot read between the check and the removal, so no
/// pending entry is ever dropped): `KEYS[1]` is the stream, `ARGV[1]` the group, `ARGV[2]`
/// the consumer to keep, `ARGV[3]` the idle time in milliseconds. Returns the removed names.
const REMOVE_IDLE_CONSUMERS: &str = r"
local removed = {}
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then return removed end
local limit = tonumber(ARGV[3])
for _, fields in ipairs(consumers) do
  local name, pending, idle
  for i = 1, #fields, 2 do
    local key = fields[i]
    if key == 'name' then name = fields[i + 1]
    elseif key == 'pending' then pending = fields[i + 1]
    elseif key == 'idle' then idle = fields[i + 1] end
  end
  if name and name ~= ARGV[2] and pending == 0 and idle and idle >= limit then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed[#removed + 1] = name
  end
end
return removed
";

/// A connection to a Redis server, for the stream stages.
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
/// use engine_redis::{Broker, RedisBroker, StreamAddress};
///
/// let address = StreamAddress::parse("redis://127.0.0.1:6379/in")?;
/// let mut broker = RedisBroker::connect(&address)?;
/// broker.append("in", &[engine_core::protocol::to_bytes("hello").unwrap()], None)?;
/// # Ok::<(), engine_redis::Error>(())
/// ```
pub struct RedisBroker {
    client: redis::Client,
    server: String,
    conn: Option<Connection>,
    /// The read timeout the connection's socket has now.
    read_timeout: Option<Duration>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// The consumer removal script, hashed once per process.
static REMOVE_IDLE_CONSUMERS_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(REMOVE_IDLE_CONSUMERS));

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("server", &self.server)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to the server of `address`, once.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] when no connection can be made within the connect timeout (a
    /// TLS handshake that fails included), [`Error::Unauthorized`] when the server refuses
    /// the credentials, [`Error::InvalidAddress`] when the CA file (`ca=`) cannot be read.
    pub fn connect(address: &StreamAddress) -> Result<Self> {
        let server = address.server();
        let client = client(address).map_err(|reason| Error::InvalidAddress {
            address: address.as_str().to_owned(),
            reason,
        })?;
        let mut broker = Self {
            client,
            server,
            conn: None,
            read_timeout: None,
            connect_timeout: address.connect_timeout,
            response_timeout: address.response_timeout,
        };
        // A server that wants a password and got none answers the first command only.
        let timeout = address.response_timeout;
        broker.run("PING", timeout, |conn| redis::cmd("PING").exec(conn))?;
        Ok(broker)
    }

    /// The connection, made again if the last one broke, with the given read timeout.
    fn connection(&mut self, read_timeout: Duration) -> Result<&mut Connection> {
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(self.connect_timeout)
                .map_err(|err| {
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

    /// Runs `f` on the connection; drops the connection when the error broke it.
    fn run<T>(
        &mut self,
        command: &'static str,
        read_timeout: Duration,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let conn = self.connection(read_timeout)?;
        let result = f(conn);
        result.map_err(|err| {
            let err = classify(&self.server, command, err);
            if err.breaks_connection() {
                self.conn = None;
            }
            err
        })
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

impl RedisBroker {
    /// `XINFO GROUPS` of `stream` (no groups if the stream does not exist), and the length
    /// of `dead_stream`.
    #[cfg(feature = "metrics")]
    pub(crate) fn group_info(
        &mut self,
        stream: &str,
        dead_stream: &str,
    ) -> Result<(Vec<redis::streams::StreamInfoGroup>, u64)> {
        let timeout = self.response_timeout;
        let groups: Option<redis::streams::StreamInfoGroupsReply> =
            self.run("XINFO", timeout, |conn| {
                match redis::cmd("XINFO").arg("GROUPS").arg(stream).query(conn) {
                    Ok(reply) => Ok(Some(reply)),
                    // No such stream yet: no groups.
                    Err(err) if err.code() == Some("ERR") => Ok(None),
                    Err(err) => Err(err),
                }
            })?;
        let dead: u64 = self.run("XLEN", timeout, |conn| {
            redis::cmd("XLEN").arg(dead_stream).query(conn)
        })?;
        Ok((groups.map(|g| g.groups).unwrap_or_default(), dead))
    }

    /// Up to `count` entries of `stream` with ids above `after` (or from the start), in
    /// order, with all their fields.
    pub(crate) fn range(
        &mut self,
        stream: &str,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<(EntryId, Fields)>> {
        let timeout = self.response_timeout;
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: Value = self.run("XRANGE", timeout, |conn| {
            redis::cmd("XRANGE")
                .arg(stream)
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(count.max(1))
                .query(conn)
        })?;
        parse_range(reply).map_err(|reason| self.unexpected("XRANGE", reason))
    }

    /// Moves the entries `ids` of `dead_stream` back to `stream` (their `v` and `d` fields,
    /// as new entries), atomically for each, and returns `(dead id, new id)` for those
    /// moved; ids not in `dead_stream`, or without an item, are left out.
    pub(crate) fn replay(
        &mut self,
        stream: &str,
        dead_stream: &str,
        ids: &[EntryId],
    ) -> Result<Vec<(EntryId, EntryId)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = self.response_timeout;
        let mut invocation = REPLAY_SCRIPT.key(dead_stream);
        invocation.key(stream);
        for id in ids {
            invocation.arg(id.to_string());
        }
        let moved: Vec<String> =
            self.run("EVALSHA (replay)", timeout, |conn| invocation.invoke(conn))?;
        let mut out = Vec::with_capacity(moved.len() / 2);
        for pair in moved.chunks(2) {
            match (
                pair.first().and_then(|id| id.parse().ok()),
                pair.get(1).and_then(|id| id.parse().ok()),
            ) {
                (Some(old), Some(new)) => out.push((old, new)),
                _ => return Err(self.unexpected("EVALSHA (replay)", "not pairs of entry ids")),
            }
        }
        Ok(out)
    }
}

/// Moves dead letters back: `KEYS[1]` is the dead-letter stream, `KEYS[2]` the stream, the
/// arguments the ids. Returns `dead id, new id` for each entry moved.
const REPLAY: &str = r"
local out = {}
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 1 then
    local fields = found[1][2]
    local args = {}
    for i = 1, #fields, 2 do
      if fields[i] == 'v' or fields[i] == 'd' then
        args[#args + 1] = fields[i]
        args[#args + 1] = fields[i + 1]
      end
    end
    if #args > 0 then
      local new = redis.call('XADD', KEYS[2], '*', unpack(args))
      redis.call('XDEL', KEYS[1], id)
      out[#out + 1] = id
      out[#out + 1] = new
    end
  end
end
return out
";

/// The replay script, hashed once per process.
static REPLAY_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REPLAY));

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

/// Sorts a `redis` error into the crate's errors.
fn classify(server: &str, command: &'static str, err: RedisError) -> Error {
    let server = server.to_owned();
    if is_auth_error(&err) {
        return Error::Unauthorized {
            server,
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

impl Broker for RedisBroker {
    fn server(&self) -> &str {
        &self.server
    }

    fn append_batches(&mut self, batches: &[Batch<'_>], bound: Option<u64>) -> Result<Appended> {
        self.append_all(batches, bound)
    }

    fn record_partitions(&mut self, key: &str, partitions: u32) -> Result<u32> {
        let timeout = self.response_timeout;
        let (_, recorded): ((), Option<String>) = self.run("SET NX", timeout, |conn| {
            redis::pipe()
                .cmd("SET")
                .arg(key)
                .arg(partitions)
                .arg("NX")
                .ignore()
                .cmd("GET")
                .arg(key)
                .query::<(Option<String>,)>(conn)
                .map(|(got,)| ((), got))
        })?;
        recorded
            .as_deref()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| {
                self.unexpected(
                    "GET",
                    format!("{key} holds {recorded:?}, not a partition count"),
                )
            })
    }

    fn create_group(&mut self, stream: &str, group: &str) -> Result<()> {
        let timeout = self.response_timeout;
        let created = self.run("XGROUP CREATE", timeout, |conn| {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .exec(conn)
        });
        match created {
            Err(Error::Refused { source, .. })
                if source
                    .downcast_ref::<RedisError>()
                    .and_then(RedisError::code)
                    == Some("BUSYGROUP") =>
            {
                Ok(())
            }
            other => other,
        }
    }

    fn read(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        let timeout = block + self.response_timeout;
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Value = self.run("XREADGROUP", timeout, |conn| {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg(consumer)
                .arg("COUNT")
                .arg(count.max(1))
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query(conn)
        })?;
        parse_read(reply).map_err(|reason| self.unexpected("XREADGROUP", reason))
    }

    fn read_streams(
        &mut self,
        streams: &[&str],
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<(usize, Vec<Delivery>)>> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = block + self.response_timeout;
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Value = self.run("XREADGROUP", timeout, |conn| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(group)
                .arg(consumer)
                .arg("COUNT")
                .arg(count.max(1))
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(streams);
            for _ in streams {
                cmd.arg(">");
            }
            cmd.query(conn)
        })?;
        parse_read_streams(reply, streams).map_err(|reason| self.unexpected("XREADGROUP", reason))
    }

    fn beat(&mut self, beat: &Beat<'_>) -> Result<Leases> {
        let timeout = self.response_timeout;
        let mut invocation = BEAT_SCRIPT.key(beat.members);
        for lease in beat.leases {
            invocation.key(lease.as_str());
        }
        let ttl_ms = u64::try_from(beat.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        invocation
            .arg(beat.consumer)
            .arg(ttl_ms)
            .arg(u8::from(beat.leave));
        for partition in beat.release {
            invocation.arg(*partition);
        }
        let reply: Vec<i64> =
            self.run("EVALSHA (beat)", timeout, |conn| invocation.invoke(conn))?;
        let numbers: Option<Vec<u32>> = reply.iter().map(|n| u32::try_from(*n).ok()).collect();
        match numbers.as_deref() {
            Some([live, fair, held @ ..]) => Ok(Leases {
                live: *live,
                fair: *fair,
                held: held.to_vec(),
            }),
            _ => Err(self.unexpected("EVALSHA (beat)", format!("{reply:?}"))),
        }
    }

    fn settle(
        &mut self,
        stream: &str,
        group: &str,
        finished: &[EntryId],
        failed: &[(EntryId, String)],
    ) -> Result<()> {
        if finished.is_empty() && failed.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if !finished.is_empty() {
            let ids: Vec<String> = finished.iter().map(EntryId::to_string).collect();
            pipe.cmd("XACK").arg(stream).arg(group).arg(&ids).ignore();
            pipe.cmd("XDEL").arg(stream).arg(&ids).ignore();
        }
        for (id, reason) in failed {
            pipe.cmd("SET")
                .arg(error_key(stream, *id))
                .arg(reason)
                .arg("EX")
                .arg(ERROR_TTL_SECS)
                .ignore();
        }
        let timeout = self.response_timeout;
        self.run("XACK", timeout, |conn| pipe.exec(conn))
    }

    fn claim(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        from: EntryId,
        count: usize,
    ) -> Result<Claimed> {
        let timeout = self.response_timeout;
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let reply: Value = self.run("XAUTOCLAIM", timeout, |conn| {
            redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(group)
                .arg(consumer)
                .arg(min_idle_ms)
                .arg(from.to_string())
                .arg("COUNT")
                .arg(count.max(1))
                .query(conn)
        })?;
        let (next, mut deliveries) =
            parse_autoclaim(reply).map_err(|reason| self.unexpected("XAUTOCLAIM", reason))?;
        if let (Some(first), Some(last)) = (deliveries.first(), deliveries.last()) {
            // The claim counted a delivery; read the counts back for the dead-letter limit.
            let (first, last) = (first.id.to_string(), last.id.to_string());
            let reply: Value = self.run("XPENDING", timeout, |conn| {
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(group)
                    .arg(first)
                    .arg(last)
                    .arg(deliveries.len())
                    .arg(consumer)
                    .query(conn)
            })?;
            let counts =
                parse_pending(reply).map_err(|reason| self.unexpected("XPENDING", reason))?;
            for delivery in &mut deliveries {
                if let Some(pending) = counts.iter().find(|p| p.id == delivery.id) {
                    delivery.deliveries = pending.deliveries;
                }
            }
        }
        Ok(Claimed { next, deliveries })
    }

    fn own_pending(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<Pending>> {
        let timeout = self.response_timeout;
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: Value = self.run("XPENDING", timeout, |conn| {
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg(start)
                .arg("+")
                .arg(count.max(1))
                .arg(consumer)
                .query(conn)
        })?;
        parse_pending(reply).map_err(|reason| self.unexpected("XPENDING", reason))
    }

    fn claim_ids(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        ids: &[EntryId],
    ) -> Result<Vec<Delivery>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = self.response_timeout;
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let reply: Value = self.run("XCLAIM", timeout, |conn| {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(stream).arg(group).arg(consumer).arg(min_idle_ms);
            for id in ids {
                cmd.arg(id.to_string());
            }
            cmd.query(conn)
        })?;
        parse_entries(reply, 1).map_err(|reason| self.unexpected("XCLAIM", reason))
    }

    fn remove_idle_consumers(
        &mut self,
        stream: &str,
        group: &str,
        keep: &str,
        idle: Duration,
    ) -> Result<Vec<String>> {
        let timeout = self.response_timeout;
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = REMOVE_IDLE_CONSUMERS_SCRIPT.key(stream);
        invocation.arg(group).arg(keep).arg(idle_ms);
        self.run("EVALSHA (remove idle consumers)", timeout, |conn| {
            invocation.invoke(conn)
        })
    }

    fn last_error(&mut self, stream: &str, id: EntryId) -> Result<Option<String>> {
        let timeout = self.response_timeout;
        let reply: Option<Vec<u8>> = self.run("GET", timeout, |conn| {
            redis::cmd("GET").arg(error_key(stream, id)).query(conn)
        })?;
        Ok(reply.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn keep_alive(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[EntryId],
    ) -> Result<()> {
        let timeout = self.response_timeout;
        for chunk in ids.chunks(1024) {
            let _: Value = self.run("XCLAIM", timeout, |conn| {
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(stream).arg(group).arg(consumer).arg(0);
                for id in chunk {
                    cmd.arg(id.to_string());
                }
                cmd.arg("JUSTID").query(conn)
            })?;
        }
        Ok(())
    }

    fn dead_letter(
        &mut self,
        stream: &str,
        group: &str,
        dead_stream: &str,
        letters: &[DeadLetter<'_>],
    ) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for letter in letters {
            let id = letter.id.to_string();
            let add = pipe
                .cmd("XADD")
                .arg(dead_stream)
                .arg("*")
                .arg("id")
                .arg(&id)
                .arg("stream")
                .arg(stream)
                .arg("deliveries")
                .arg(letter.deliveries)
                .arg("reason")
                .arg(letter.reason);
            if let Some(version) = letter.version {
                add.arg(VERSION_FIELD).arg(version);
            }
            if let Some(payload) = letter.payload {
                add.arg(PAYLOAD_FIELD).arg(payload);
            }
            add.ignore();
        }
        let ids: Vec<String> = letters.iter().map(|l| l.id.to_string()).collect();
        pipe.cmd("XACK").arg(stream).arg(group).arg(&ids).ignore();
        pipe.cmd("XDEL").arg(stream).arg(&ids).ignore();
        let keys: Vec<String> = letters.iter().map(|l| error_key(stream, l.id)).collect();
        pipe.cmd("DEL").arg(&keys).ignore();
        let timeout = self.response_timeout;
        self.run("XADD (dead letter)", timeout, |conn| pipe.exec(conn))
    }
}

/// The key holding the last recorded error of an entry.
fn error_key(stream: &str, id: EntryId) -> String {
    format!("{stream}:error:{id}")
}

type Parsed<T> = std::result::Result<T, String>;

/// Reads the reply of `XREADGROUP` on one stream: nil, or `[[stream, [entry...]]]` (RESP2),
/// or `{stream: [entry...]}` (RESP3).
fn parse_read(reply: Value) -> Parsed<Vec<Delivery>> {
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for stream in streams {
                let Value::Array(pair) = stream else {
                    return Err("a stream is not a [name, entries] pair".to_owned());
                };
                let entries = pair.into_iter().nth(1).ok_or("a stream has no entries")?;
                out.extend(parse_entries(entries, 1)?);
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (_, entries) in streams {
                out.extend(parse_entries(entries, 1)?);
            }
            Ok(out)
        }
        other => Err(format!("expected a list of streams, got {}", kind(&other))),
    }
}

/// Reads the reply of `XREADGROUP` on several streams, with the index of each stream among
/// `names`.
fn parse_read_streams(reply: Value, names: &[&str]) -> Parsed<Vec<(usize, Vec<Delivery>)>> {
    let index = |name: &Value| -> Parsed<usize> {
        let name = match name {
            Value::BulkString(bytes) => bytes.as_slice(),
            Value::SimpleString(text) => text.as_bytes(),
            _ => return Err("a stream name is not a string".to_owned()),
        };
        names
            .iter()
            .position(|n| n.as_bytes() == name)
            .ok_or_else(|| "a stream that was not asked for".to_owned())
    };
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for stream in streams {
                let Value::Array(pair) = stream else {
                    return Err("a stream is not a [name, entries] pair".to_owned());
                };
                let mut pair = pair.into_iter();
                let name = pair.next().ok_or("a stream has no name")?;
                let entries = pair.next().ok_or("a stream has no entries")?;
                out.push((index(&name)?, parse_entries(entries, 1)?));
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (name, entries) in streams {
                out.push((index(&name)?, parse_entries(entries, 1)?));
            }
            Ok(out)
        }
        other => Err(format!("expected a list of streams, got {}", kind(&other))),
    }
}

/// Reads the reply of `XAUTOCLAIM`: `[next, [entry...], [deleted id...]]`.
fn parse_autoclaim(reply: Value) -> Parsed<(Option<EntryId>, Vec<Delivery>)> {
    let Value::Array(parts) = reply else {
        return Err(format!("expected an array, got {}", kind(&reply)));
    };
    let mut parts = parts.into_iter();
    let next = parts.next().ok_or("no cursor")?;
    let next = id_of(&next).ok_or("the cursor is not an entry id")?;
    let entries = parts.next().ok_or("no entries")?;
    let deliveries = parse_entries(entries, 1)?;
    Ok(((next != EntryId::ZERO).then_some(next), deliveries))
}

/// Reads the entries of a stream reply: `[[id, [field, value, ...]] ...]`. An entry whose
/// fields are nil (deleted) is skipped; one without the payload field has no payload.
fn parse_entries(entries: Value, deliveries: u64) -> Parsed<Vec<Delivery>> {
    let Value::Array(entries) = entries else {
        return Err(format!(
            "expected a list of entries, got {}",
            kind(&entries)
        ));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else {
            return Err("an entry is not an [id, fields] pair".to_owned());
        };
        let mut entry = entry.into_iter();
        let id = entry
            .next()
            .as_ref()
            .and_then(id_of)
            .ok_or("an entry has no valid id")?;
        let (payload, version) = match entry.next() {
            Some(Value::Array(fields)) => payload_of(fields),
            Some(Value::Map(fields)) => payload_of(fields.into_iter().flat_map(|(k, v)| [k, v])),
            Some(Value::Nil) | None => continue,
            Some(other) => return Err(format!("entry fields are {}", kind(&other))),
        };
        out.push(Delivery {
            id,
            payload,
            version,
            deliveries,
        });
    }
    Ok(out)
}

/// Reads the reply of `XRANGE`: `[[id, [field, value, ...]] ...]`.
fn parse_range(reply: Value) -> Parsed<Vec<(EntryId, Fields)>> {
    let Value::Array(entries) = reply else {
        return Err(format!("expected a list of entries, got {}", kind(&reply)));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else {
            return Err("an entry is not an [id, fields] pair".to_owned());
        };
        let mut entry = entry.into_iter();
        let id = entry
            .next()
            .as_ref()
            .and_then(id_of)
            .ok_or("an entry has no valid id")?;
        let values: Vec<Value> = match entry.next() {
            Some(Value::Array(fields)) => fields,
            Some(Value::Map(fields)) => fields.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return Err("an entry has no fields".to_owned()),
        };
        let mut fields = Vec::with_capacity(values.len() / 2);
        let mut values = values.into_iter();
        while let (Some(name), Some(value)) = (values.next(), values.next()) {
            let bytes = |value: Value| match value {
                Value::BulkString(bytes) => Some(bytes),
                Value::SimpleString(text) => Some(text.into_bytes()),
                Value::Int(n) => Some(n.to_string().into_bytes()),
                _ => None,
            };
            if let (Some(name), Some(value)) = (bytes(name), bytes(value)) {
                fields.push((String::from_utf8_lossy(&name).into_owned(), value));
            }
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// The payload and version fields' values among an entry's `field, value` pairs.
fn payload_of(fields: impl IntoIterator<Item = Value>) -> (Option<Vec<u8>>, Option<String>) {
    let (mut payload, mut version) = (None, None);
    let mut fields = fields.into_iter();
    while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
        let Value::BulkString(name) = &field else {
            continue;
        };
        if name == PAYLOAD_FIELD.as_bytes() {
            payload = match value {
                Value::BulkString(bytes) => Some(bytes),
                _ => None,
            };
        } else if name == VERSION_FIELD.as_bytes() {
            version = match value {
                Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                Value::Int(n) => Some(n.to_string()),
                _ => None,
            };
        }
    }
    (payload, version)
}

/// Reads the reply of the extended `XPENDING`: `[[id, consumer, idle, deliveries] ...]`.
fn parse_pending(reply: Value) -> Parsed<Vec<Pending>> {
    let Value::Array(rows) = reply else {
        return Err(format!("expected an array, got {}", kind(&reply)));
    };
    rows.into_iter()
        .map(|row| {
            let Value::Array(row) = row else {
                return Err("a pending row is not an array".to_owned());
            };
            let id = row
                .first()
                .and_then(id_of)
                .ok_or("a pending row has no id")?;
            let number = |at: usize, what: &str| match row.get(at) {
                Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| format!("a negative {what}")),
                _ => Err(format!("a pending row has no {what}")),
            };
            Ok(Pending {
                id,
                idle: Duration::from_millis(number(2, "idle time")?),
                deliveries: number(3, "delivery count")?,
            })
        })
        .collect()
}

fn id_of(value: &Value) -> Option<EntryId> {
    match value {
        Value::BulkString(bytes) => EntryId::from_bytes(bytes),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => "a string",
        Value::Array(_) | Value::Set(_) => "an array",
        Value::Map(_) => "a map",
        Value::ServerError(_) => "an error",
        _ => "an unexpected value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn parses_readgroup_replies() {
        assert_eq!(parse_read(Value::Nil).unwrap(), vec![]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"in"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-2"),
                    Value::Array(vec![bulk(b"d"), bulk(b"\x01x")]),
                ]),
                Value::Array(vec![
                    bulk(b"1-3"),
                    Value::Array(vec![bulk(b"other"), bulk(b"")]),
                ]),
                Value::Array(vec![bulk(b"1-4"), Value::Nil]),
            ]),
        ])]);
        let got = parse_read(reply).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, EntryId::new(1, 2));
        assert_eq!(got[0].payload.as_deref(), Some(&b"\x01x"[..]));
        assert_eq!(got[1].payload, None);
    }

    #[test]
    fn rejects_malformed_replies_without_panicking() {
        for bad in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk(b"in")])]),
            Value::Array(vec![Value::Array(vec![bulk(b"in"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk(b"in"),
                Value::Array(vec![Value::Array(vec![bulk(b"nope"), Value::Nil])]),
            ])]),
        ] {
            assert!(parse_read(bad).is_err());
        }
        assert!(parse_autoclaim(Value::Nil).is_err());
        assert!(parse_pending(Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn parses_autoclaim_and_pending() {
        let reply = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"5-1"),
                Value::Array(vec![bulk(b"d"), bulk(b"x")]),
            ])]),
            Value::Array(vec![]),
        ]);
        let (next, got) = parse_autoclaim(reply).unwrap();
        assert_eq!(next, None);
        assert_eq!(got[0].id, EntryId::new(5, 1));
        let pending = Value::Array(vec![Value::Array(vec![
            bulk(b"5-1"),
            bulk(b"me"),
            Value::Int(10),
            Value::Int(4),
        ])]);
        assert_eq!(
            parse_pending(pending).unwrap(),
            vec![Pending {
                id: EntryId::new(5, 1),
                deliveries: 4,
                idle: Duration::from_millis(10)
            }]
        );
    }
}
