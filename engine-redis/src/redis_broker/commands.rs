//! The [`Broker`] commands on Redis: groups, reads, heartbeats, acknowledgements, claims
//! and dead letters, each one request, a pipeline or a script.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{RedisError, Value};

use super::parse::{
    parse_autoclaim, parse_entries, parse_pending, parse_pending_owners, parse_read_streams,
};
use super::{PAYLOAD_FIELD, RedisBroker, VERSION_FIELD};
use crate::broker::{
    Appended, Batch, Beat, Broker, Claimed, DeadLetter, Delivery, EntryId, Leases, Pending,
};
use crate::error::{Error, Result};
use crate::keys::{error_key, slot};

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

/// The consumer removal script, hashed once per process.
static REMOVE_IDLE_CONSUMERS_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(REMOVE_IDLE_CONSUMERS));

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

    fn partition_streams(&mut self, stream: &str, partitions: u32) -> Result<Vec<String>> {
        if self.is_cluster() {
            self.placement(stream, partitions)
        } else {
            Ok((0..partitions)
                .map(|i| crate::partition::partition_stream(stream, i))
                .collect())
        }
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
        let read = self.read_streams(&[stream], group, consumer, count, block)?;
        Ok(read
            .into_iter()
            .flat_map(|(_, deliveries)| deliveries)
            .collect())
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
        if self.is_cluster() && streams.len() > 1 {
            return self.read_per_slot(streams, group, consumer, count, block);
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
        if self.is_cluster() {
            return self.beat_per_slot(beat);
        }
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
        let mut cmds = Vec::new();
        if !finished.is_empty() {
            let ids: Vec<String> = finished.iter().map(EntryId::to_string).collect();
            let mut ack = redis::cmd("XACK");
            ack.arg(stream).arg(group).arg(&ids);
            let mut del = redis::cmd("XDEL");
            del.arg(stream).arg(&ids);
            cmds.extend([ack, del]);
        }
        for (id, reason) in failed {
            let mut set = redis::cmd("SET");
            set.arg(error_key(stream, *id))
                .arg(reason)
                .arg("EX")
                .arg(ERROR_TTL_SECS);
            cmds.push(set);
        }
        let timeout = self.response_timeout;
        // Acknowledging, deleting and recording an error twice is as once.
        self.run("XACK", timeout, |conn| conn.query_idempotent(&cmds))?;
        self.confirm("XACK", stream)
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

    fn idle_pending(
        &mut self,
        stream: &str,
        group: &str,
        min_idle: Duration,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<(String, Pending)>> {
        let timeout = self.response_timeout;
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let reply: Value = self.run("XPENDING", timeout, |conn| {
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg("IDLE")
                .arg(min_idle_ms)
                .arg(start)
                .arg("+")
                .arg(count.max(1))
                .query(conn)
        })?;
        parse_pending_owners(reply).map_err(|reason| self.unexpected("XPENDING", reason))
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
        // On a cluster, a dead-letter stream of another slot (`dead=`) is written apart.
        let apart = self.is_cluster() && slot(dead_stream) != slot(stream);
        let mut adds = redis::pipe();
        for letter in letters {
            let id = letter.id.to_string();
            let add = adds
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
        let timeout = self.response_timeout;
        let mut pipe = if apart {
            self.run("XADD (dead letter)", timeout, |conn| adds.exec(conn))?;
            self.confirm("XADD (dead letter)", dead_stream)?;
            redis::pipe()
        } else {
            adds
        };
        let ids: Vec<String> = letters.iter().map(|l| l.id.to_string()).collect();
        pipe.cmd("XACK").arg(stream).arg(group).arg(&ids).ignore();
        pipe.cmd("XDEL").arg(stream).arg(&ids).ignore();
        let keys: Vec<String> = letters.iter().map(|l| error_key(stream, l.id)).collect();
        pipe.cmd("DEL").arg(&keys).ignore();
        self.run("XADD (dead letter)", timeout, |conn| pipe.exec(conn))?;
        self.confirm("XADD (dead letter)", stream)
    }
}
