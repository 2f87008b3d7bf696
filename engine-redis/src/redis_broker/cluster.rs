//! What a broker does only on a Redis Cluster: checking the seeds and the slot map at the
//! start, placing a keyed stream's partitions evenly over the masters, and the commands that
//! would span slots on one server (a heartbeat, a read of several partitions), split per slot.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Value;
use redis::cluster::{ClusterClient, ClusterClientBuilder, cluster_pipe};

use super::parse::parse_read_streams;
use super::{RedisBroker, client as single_client};
use crate::address::StreamAddress;
use crate::broker::{Beat, Delivery, Leases};
use crate::error::{Error, Result};
use crate::keys::{key_of, slot};
use crate::partition::partition_stream;

/// How many times the cluster client follows a redirection or retries a node before the
/// error comes to the broker, which then starts again from the seeds.
const CLIENT_RETRIES: u32 = 3;

/// The longest a blocking read waits on one partition of several, on a cluster: blocking
/// reads cannot span slots, so the source reads each partition in turn while all are empty.
/// Entries arriving meanwhile in another partition wait up to this long: short, so that a
/// burst's last entries are not held back (the benchmark's keyed cluster case, against one
/// server: 0.68 with 100 ms, 0.70 to 1.00 with 10 ms, on a loaded 2-core machine); at the
/// price of a non-blocking read of every partition this often while the stream is idle.
const BLOCK_ONE_OF_SEVERAL: Duration = Duration::from_millis(10);

/// How long a reader of several streams reads them one command at a time after a pipelined
/// read met a slot in migration (`ASK`), which only a command sent alone follows.
const ONE_BY_ONE: Duration = Duration::from_secs(5);

/// The slots of a cluster.
const SLOTS: u32 = 16384;

/// Renews, takes or gives up one partition's lease: `KEYS[1]` is the lease, `ARGV[1]` the
/// consumer, `ARGV[2]` the lease time (ms), `ARGV[3]` `release`, `renew` or `take`.
/// Returns 1 when the consumer holds the lease after the call, 2 when it is free, else 0.
const LEASE: &str = r"
local owner = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if owner == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  if ARGV[3] == 'take' then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
  end
  return 2
end
return 0
";

/// Renews a consumer's membership and counts the live members: `KEYS[1]` is the member set,
/// `ARGV` the consumer, the lease time (ms), and 1 to leave. Returns the live count.
const MEMBERS: &str = r"
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
return redis.call('ZCARD', KEYS[1])
";

/// The membership script, hashed once per process.
static MEMBERS_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(MEMBERS));

/// The cluster client of `address`: every seed, TLS with the CA file of `ca=`, credentials,
/// and the address's timeouts.
pub(super) fn client(address: &StreamAddress) -> std::result::Result<ClusterClient, String> {
    let mut builder = ClusterClientBuilder::new(address.node_infos())
        .connection_timeout(address.connect_timeout)
        .response_timeout(address.response_timeout)
        .retries(CLIENT_RETRIES)
        .min_retry_wait(5)
        .max_retry_wait(200);
    if let Some(path) = address.ca_file() {
        let pem = std::fs::read(path)
            .map_err(|err| format!("cannot read the CA file {}: {err}", path.display()))?;
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
    }
    builder.build().map_err(|err| err.to_string())
}

/// Checks that every seed of `address` that answers is a cluster node (`cluster_enabled:1`);
/// seeds that do not answer are left to the cluster client.
///
/// # Errors
///
/// [`Error::NotACluster`] naming the first seed that is a plain server.
pub(super) fn check_seeds(address: &StreamAddress) -> Result<()> {
    for seed in address.seeds() {
        let Ok(client) = single_client(&seed) else {
            continue;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(address.connect_timeout) else {
            continue;
        };
        let _ = conn.set_read_timeout(Some(address.response_timeout));
        // A user not allowed `INFO` cannot be checked; the cluster client then says more.
        let Ok(info) = redis::cmd("INFO").arg("cluster").query::<String>(&mut conn) else {
            continue;
        };
        let enabled = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("cluster_enabled:"));
        if enabled == Some("0") {
            return Err(Error::NotACluster {
                server: address.server(),
                node: seed.server(),
            });
        }
    }
    Ok(())
}

/// One range of slots and the master serving it, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotRange {
    from: u16,
    to: u16,
    /// The master, as `host:port`.
    master: String,
    replicas: u32,
}

/// Reads `CLUSTER SLOTS`: `[[from, to, [host, port, id, ...], [replica...]...]...]`.
fn parse_slots(reply: &Value) -> std::result::Result<Vec<SlotRange>, String> {
    let Value::Array(ranges) = reply else {
        return Err("CLUSTER SLOTS is not an array".to_owned());
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => u16::try_from(*n).ok(),
        _ => None,
    };
    let node = |v: Option<&Value>| match v {
        Some(Value::Array(parts)) => {
            let host = match parts.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return None,
            };
            Some(crate::address::host_port(&host, int(parts.get(1))?))
        }
        _ => None,
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(parts) = range else {
                return Err("a slot range is not an array".to_owned());
            };
            match (int(parts.first()), int(parts.get(1)), node(parts.get(2))) {
                (Some(from), Some(to), Some(master)) if from <= to => Ok(SlotRange {
                    from,
                    to,
                    master,
                    replicas: u32::try_from(parts.len().saturating_sub(3)).unwrap_or(u32::MAX),
                }),
                _ => Err("a slot range is not [from, to, master...]".to_owned()),
            }
        })
        .collect()
}

/// The name of partition `index` of `stream` with placement suffix `n`: `<stream>:p<i>`, or
/// `<stream>:p<i>.<n>` (a name in another slot).
fn placed_name(stream: &str, index: u32, n: u32) -> String {
    match n {
        0 => partition_stream(stream, index),
        n => format!("{}.{n}", partition_stream(stream, index)),
    }
}

/// The placement suffix of each partition, so that partition `i` is served by master
/// `i % masters` (the masters in slot order): the first `n` whose name falls there.
fn place(stream: &str, partitions: u32, ranges: &[SlotRange]) -> Vec<u32> {
    let mut masters: Vec<(u16, &str)> = Vec::new();
    for range in ranges {
        match masters.iter_mut().find(|(_, m)| *m == range.master) {
            Some((first, _)) => *first = (*first).min(range.from),
            None => masters.push((range.from, &range.master)),
        }
    }
    masters.sort_unstable();
    let master_of = |slot: u16| {
        ranges
            .iter()
            .find(|r| (r.from..=r.to).contains(&slot))
            .map(|r| r.master.as_str())
    };
    (0..partitions)
        .map(|i| {
            let Some((_, target)) = masters.get(i as usize % masters.len().max(1)) else {
                return 0;
            };
            // About `masters` tries each; the bound only guards against a broken slot map.
            (0..100_000)
                .find(|n| master_of(slot(&placed_name(stream, i, *n))) == Some(*target))
                .unwrap_or(0)
        })
        .collect()
}

impl RedisBroker {
    /// Checks that every slot has a master (`CLUSTER SLOTS`), and returns the fewest
    /// replicas any master has.
    ///
    /// # Errors
    ///
    /// [`Error::SlotsUncovered`]; a connection error.
    pub(super) fn check_slots(&mut self) -> Result<u32> {
        let ranges = self.slot_ranges()?;
        let covered: u32 = ranges
            .iter()
            .map(|r| u32::from(r.to) - u32::from(r.from) + 1)
            .sum();
        if covered < SLOTS {
            return Err(Error::SlotsUncovered {
                server: self.server.clone(),
                uncovered: SLOTS - covered,
            });
        }
        Ok(ranges.iter().map(|r| r.replicas).min().unwrap_or(0))
    }

    /// The master (`host:port`) serving each of `keys`, from one read of the slot map; on a
    /// single server, `None` for each.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a slot map that cannot be read.
    #[cfg(feature = "metrics")]
    pub(crate) fn masters_of(&mut self, keys: &[String]) -> Result<Vec<Option<String>>> {
        if !self.is_cluster() {
            return Ok(vec![None; keys.len()]);
        }
        let ranges = self.slot_ranges()?;
        Ok(keys
            .iter()
            .map(|key| {
                let slot = slot(key);
                ranges
                    .iter()
                    .find(|r| (r.from..=r.to).contains(&slot))
                    .map(|r| r.master.clone())
            })
            .collect())
    }

    /// The master (`host:port`) of each slot, from the slot map read last on this
    /// connection (read now if none was); `None` for a slot it does not cover.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a slot map that cannot be read.
    pub(super) fn masters_of_slots(
        &mut self,
        slots: impl Iterator<Item = u16>,
    ) -> Result<Vec<Option<String>>> {
        let ranges = match self.slot_map.take() {
            Some(ranges) if self.conn.is_some() => ranges,
            _ => self.slot_ranges()?,
        };
        let masters = slots
            .map(|slot| {
                ranges
                    .iter()
                    .find(|r| (r.from..=r.to).contains(&slot))
                    .map(|r| r.master.clone())
            })
            .collect();
        self.slot_map = Some(ranges);
        Ok(masters)
    }

    fn slot_ranges(&mut self) -> Result<Vec<SlotRange>> {
        let timeout = self.response_timeout;
        let reply: Value = self.run("CLUSTER SLOTS", timeout, |conn| {
            redis::cmd("CLUSTER").arg("SLOTS").query(conn)
        })?;
        parse_slots(&reply).map_err(|reason| self.unexpected("CLUSTER SLOTS", reason))
    }

    /// The partition streams of a keyed stream on a cluster, named so that they spread evenly
    /// over the masters: the placement recorded on the server (`{<stream>}:placement`), or
    /// one chosen from the slot map now and recorded, unless another consumer or producer
    /// recorded one first.
    pub(super) fn placement(&mut self, stream: &str, partitions: u32) -> Result<Vec<String>> {
        let key = key_of(stream, "placement");
        let timeout = self.response_timeout;
        let get = |key: &str| redis::cmd("GET").arg(key).clone();
        let mut recorded: Option<String> =
            self.run("GET", timeout, |conn| get(&key).query(conn))?;
        if recorded.is_none() {
            let ranges = self.slot_ranges()?;
            let chosen: Vec<String> = place(stream, partitions, &ranges)
                .iter()
                .map(u32::to_string)
                .collect();
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(chosen.join(" ")).arg("NX");
            self.run("SET NX", timeout, |conn| set.exec(conn))?;
            recorded = self.run("GET", timeout, |conn| get(&key).query(conn))?;
        }
        let suffixes: Option<Vec<u32>> = recorded
            .as_deref()
            .map(|text| text.split(' ').map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        match suffixes {
            Some(suffixes) if suffixes.len() == partitions as usize => Ok((0..partitions)
                .zip(suffixes)
                .map(|(i, n)| placed_name(stream, i, n))
                .collect()),
            _ => Err(self.unexpected(
                "GET",
                format!("{key} holds {recorded:?}, not {partitions} placements"),
            )),
        }
    }

    /// A heartbeat on a cluster, where the member set and each lease live in slots of their
    /// own: the membership first, then every lease renewed (or given up) in one pipeline
    /// over the masters, then free leases taken up to the fair share. Each step is atomic
    /// for its key; the fair share is as of the membership step.
    pub(super) fn beat_per_slot(&mut self, beat: &Beat<'_>) -> Result<Leases> {
        let timeout = self.response_timeout;
        let ttl_ms = u64::try_from(beat.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut members = MEMBERS_SCRIPT.key(beat.members);
        members
            .arg(beat.consumer)
            .arg(ttl_ms)
            .arg(u8::from(beat.leave));
        let live: u32 = self.run("EVALSHA (members)", timeout, |conn| members.invoke(conn))?;
        let ops: Vec<(usize, &str)> = (0..beat.leases.len())
            .map(|i| {
                let release = beat.leave || beat.release.iter().any(|p| *p as usize == i);
                (i, if release { "release" } else { "renew" })
            })
            .collect();
        let states = self.leases(beat, ttl_ms, &ops)?;
        if beat.leave {
            return Ok(Leases::default());
        }
        let live = live.max(1);
        let partitions = u32::try_from(beat.leases.len()).expect("few partitions");
        let fair = partitions.div_ceil(live);
        let mut held: Vec<u32> = (0..partitions)
            .filter(|i| states[*i as usize] == 1)
            .collect();
        let wanted = (fair as usize).saturating_sub(held.len());
        let take: Vec<(usize, &str)> = (0..beat.leases.len())
            .filter(|i| states[*i] == 2)
            .take(wanted)
            .map(|i| (i, "take"))
            .collect();
        let taken = self.leases(beat, ttl_ms, &take)?;
        held.extend(
            take.iter()
                .zip(taken)
                .filter(|(_, state)| *state == 1)
                .map(|((i, _), _)| u32::try_from(*i).expect("few partitions")),
        );
        Ok(Leases { live, fair, held })
    }

    /// Runs the lease script on the leases of `ops` with their operations, in one pipeline
    /// over the masters, and returns each lease's state.
    fn leases(&mut self, beat: &Beat<'_>, ttl_ms: u64, ops: &[(usize, &str)]) -> Result<Vec<i64>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<redis::Cmd> = ops
            .iter()
            .map(|(i, op)| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(LEASE)
                    .arg(1)
                    .arg(&beat.leases[*i])
                    .arg(beat.consumer)
                    .arg(ttl_ms)
                    .arg(*op);
                cmd
            })
            .collect();
        let timeout = self.response_timeout;
        // Renewing, taking or giving up a lease twice is as once: the lease script is safe
        // to run again when a slot in migration redirects it.
        let replies = self.run("EVAL (lease)", timeout, |conn| conn.query_idempotent(&cmds))?;
        let states: Option<Vec<i64>> = replies
            .iter()
            .map(|reply| match reply {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect();
        let Some(states) = states else {
            return Err(self.unexpected("EVAL (lease)", format!("replies {replies:?}")));
        };
        let mut all = vec![0; beat.leases.len()];
        for ((i, _), state) in ops.iter().zip(states) {
            all[*i] = state;
        }
        Ok(all)
    }

    /// Reads new entries from several streams on a cluster, where one read cannot span
    /// slots: a read of every stream at once without blocking (one pipeline over the
    /// masters), and, when all are empty, a blocking read of one of them in turn, for at
    /// most [`BLOCK_ONE_OF_SEVERAL`].
    pub(super) fn read_per_slot(
        &mut self,
        streams: &[&str],
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<(usize, Vec<Delivery>)>> {
        let read = |stream: &str, block: Option<u64>| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(group)
                .arg(consumer)
                .arg("COUNT")
                .arg(count.max(1));
            if let Some(block_ms) = block {
                cmd.arg("BLOCK").arg(block_ms);
            }
            cmd.arg("STREAMS").arg(stream).arg(">");
            cmd
        };
        let mut pipe = cluster_pipe();
        for stream in streams {
            pipe.add_command(read(stream, None));
        }
        let timeout = self.response_timeout;
        let one_by_one = self
            .one_by_one_until
            .is_some_and(|until| Instant::now() < until);
        let mut redirected = false;
        let replies: Result<Vec<Value>> = self.run("XREADGROUP", timeout, |conn| {
            let conn = conn.cluster().expect("a read per slot is for a cluster");
            if one_by_one {
                return streams
                    .iter()
                    .map(|stream| read(stream, None).query(&mut *conn))
                    .collect();
            }
            let replies = pipe.query(conn);
            redirected = replies
                .as_ref()
                .is_err_and(redis::RedisError::is_cluster_error);
            replies
        });
        if redirected {
            // A slot in migration: the reads that did run delivered entries that are now
            // lost with the pipeline's reply; the caller claims them again (as for any lost
            // reply). Until the migration is likely over, read one stream at a time.
            self.one_by_one_until = Some(Instant::now() + ONE_BY_ONE);
        }
        let replies = replies?;
        let mut out = Vec::new();
        for reply in replies {
            let parsed = parse_read_streams(reply, streams)
                .map_err(|reason| self.unexpected("XREADGROUP", reason))?;
            out.extend(parsed.into_iter().filter(|(_, d)| !d.is_empty()));
        }
        if !out.is_empty() {
            return Ok(out);
        }
        self.turn = (self.turn + 1) % streams.len();
        let stream = streams[self.turn];
        let block = block.min(BLOCK_ONE_OF_SEVERAL);
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let cmd = read(stream, Some(block_ms));
        let reply: Value = self.run("XREADGROUP", block + timeout, |conn| cmd.query(conn))?;
        let parsed = parse_read_streams(reply, streams)
            .map_err(|reason| self.unexpected("XREADGROUP", reason))?;
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: u16, to: u16, master: &str) -> SlotRange {
        SlotRange {
            from,
            to,
            master: master.to_owned(),
            replicas: 1,
        }
    }

    #[test]
    fn partitions_spread_evenly_over_the_masters() {
        let ranges = [
            range(10923, 16383, "c:3"),
            range(0, 5460, "a:1"),
            range(5461, 10922, "b:2"),
        ];
        let suffixes = place("orders", 12, &ranges);
        let mut counts = std::collections::HashMap::new();
        for (i, n) in suffixes.iter().enumerate() {
            let name = placed_name("orders", i as u32, *n);
            let s = slot(&name);
            let master = &ranges
                .iter()
                .find(|r| (r.from..=r.to).contains(&s))
                .unwrap()
                .master;
            let expected = ["a:1", "b:2", "c:3"][i % 3];
            assert_eq!(master, expected, "{name}");
            *counts.entry(master.clone()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|n| *n == 4), "{counts:?}");
        assert_eq!(placed_name("s", 3, 0), "s:p3");
        assert_eq!(placed_name("s", 3, 7), "s:p3.7");
    }

    #[test]
    fn reads_cluster_slots() {
        let node = |port| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(5460),
            node(7000),
            node(7003),
        ])]);
        assert_eq!(
            parse_slots(&reply).unwrap(),
            [SlotRange {
                from: 0,
                to: 5460,
                master: "127.0.0.1:7000".to_owned(),
                replicas: 1
            }]
        );
        assert!(parse_slots(&Value::Nil).is_err());
    }
}
