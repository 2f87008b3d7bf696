//! Appending to streams on Redis: a pipeline of `XADD`s, or, with a bound or deduplication,
//! one call of a check-and-add script per flush.

use std::collections::HashMap;
use std::sync::LazyLock;

use engine_core::protocol::PROTOCOL_VERSION;
use redis::{ErrorKind, ServerErrorKind};

use super::{PAYLOAD_FIELD, RedisBroker, TRACE_FIELD, VERSION_FIELD};
use crate::broker::{Appended, Batch, DedupKey};
use crate::error::Result;
use crate::keys::key_of;

/// Appends batches to streams, atomically: `KEYS` are the streams, then (with
/// deduplication) the id hashes; `ARGV[1]` is the bound (negative: none), `ARGV[2]` the
/// protocol version, `ARGV[3]` 1 to deduplicate (`0t` or `1t`: and the entries carry the
/// trace context that is the last of `ARGV`, in the field `traceparent`).
///
/// With deduplication, `ARGV[4]` is the number `m` of id hashes (the last `m` keys), each
/// followed by its expiry (ms since the epoch), its number of fields `f` and the `f` field
/// names. Then for each stream: the number of payloads `n`; with deduplication, the number
/// of runs and each run as (hash number, field number, first bit, length), hash 0 for
/// payloads without ids; then the `n` payloads. The item of a run's `i`-th payload (from 0)
/// is bit `first + i` of its field: a field is a bitmap, bit `b` in byte `b / 8` (from 0),
/// value `2^(b % 8)`. The fields are read with one `HMGET` per hash (in chunks) and the
/// changed ones written back with one `HSET`, not one call per item. The script builds no
/// key name: every key it touches is in `KEYS`, as Redis Cluster requires.
///
/// A stream at its bound takes no more. A payload whose bit is set already (by an earlier
/// call or an earlier payload of this one) is skipped (taken, but not appended). Each hash
/// then expires at its time. Returns the number taken of each stream, then the number
/// skipped.
const APPEND: &str = r"
-- Whether bits from..to of a bitmap (a table of byte values) are all clear.
local function all_clear(map, from, to)
  local lo, hi = math.floor(from / 8) + 1, math.floor(to / 8) + 1
  for i = lo, math.min(hi, #map) do
    local byte = map[i]
    if byte ~= 0 then
      local a, z = 0, 7
      if i == lo then a = from % 8 end
      if i == hi then z = to % 8 end
      if bit.band(byte, bit.lshift(bit.lshift(1, z - a + 1) - 1, a)) ~= 0 then return false end
    end
  end
  return true
end
-- Sets bits from..to of a bitmap.
local function set_range(map, from, to)
  local lo, hi = math.floor(from / 8) + 1, math.floor(to / 8) + 1
  for i = #map + 1, hi do map[i] = 0 end
  for i = lo, hi do
    local a, z = 0, 7
    if i == lo then a = from % 8 end
    if i == hi then z = to % 8 end
    map[i] = bit.bor(map[i], bit.lshift(bit.lshift(1, z - a + 1) - 1, a))
  end
end
local bound = tonumber(ARGV[1])
local version = ARGV[2]
local dedup = string.sub(ARGV[3], 1, 1) == '1'
local traced = string.sub(ARGV[3], 2, 2) == 't'
local function add(stream, payload)
  if traced then
    redis.call('XADD', stream, '*', 'v', version, 'traceparent', ARGV[#ARGV], 'd', payload)
  else
    redis.call('XADD', stream, '*', 'v', version, 'd', payload)
  end
end
local at = 4
local streams = #KEYS
local hashes, expiries, names, maps, dirty = {}, {}, {}, {}, {}
if dedup then
  local m = tonumber(ARGV[4])
  streams = #KEYS - m
  at = 5
  for j = 1, m do
    hashes[j] = KEYS[streams + j]
    expiries[j] = ARGV[at]
    local f = tonumber(ARGV[at + 1])
    local first = at + 2
    local fields, bitmaps = {}, {}
    for s = 0, f - 1, 4000 do
      local e = math.min(s + 3999, f - 1)
      local got = redis.call('HMGET', hashes[j], unpack(ARGV, first + s, first + e))
      for t = 1, e - s + 1 do
        fields[s + t] = ARGV[first + s + t - 1]
        if got[t] then bitmaps[s + t] = {string.byte(got[t], 1, -1)} else bitmaps[s + t] = {} end
      end
    end
    names[j], maps[j], dirty[j] = fields, bitmaps, {}
    at = first + f
  end
end
local out = {}
local skipped = 0
for k = 1, streams do
  local stream = KEYS[k]
  local n = tonumber(ARGV[at])
  at = at + 1
  local runs = {}
  if dedup then
    local q = tonumber(ARGV[at])
    at = at + 1
    for r = 1, q do
      runs[r] = {tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])}
      at = at + 4
    end
  else
    runs[1] = {0, 0, 0, n}
  end
  local first = at
  at = first + n
  local room = n
  if bound >= 0 then room = bound - redis.call('XLEN', stream) end
  local taken = 0
  local r, off = 1, 0
  -- A run at a time (as much of it as there is room for): all appended when none of its
  -- ids is recorded (the usual case), each checked otherwise.
  while taken < n and room > 0 do
    local run = runs[r]
    while off == run[4] do
      r = r + 1
      run = runs[r]
      off = 0
    end
    local j = run[1]
    local count = math.min(run[4] - off, room)
    local map, from
    if j > 0 then
      map, from = maps[j][run[2]], run[3] + off
      dirty[j][run[2]] = true
    end
    if j == 0 or all_clear(map, from, from + count - 1) then
      for t = first + taken, first + taken + count - 1 do
        add(stream, ARGV[t])
      end
      if j > 0 then set_range(map, from, from + count - 1) end
      room = room - count
      taken = taken + count
      off = off + count
    else
      for b = from, from + count - 1 do
        local i = math.floor(b / 8) + 1
        local mask = bit.lshift(1, b % 8)
        local byte = map[i] or 0
        if bit.band(byte, mask) ~= 0 then
          skipped = skipped + 1
        else
          for z = #map + 1, i - 1 do map[z] = 0 end
          map[i] = bit.bor(byte, mask)
          add(stream, ARGV[first + taken])
          room = room - 1
        end
        taken = taken + 1
      end
      off = off + count
    end
  end
  out[k] = taken
end
for j = 1, #hashes do
  local args = {}
  for f in pairs(dirty[j]) do
    args[#args + 1] = names[j][f]
    args[#args + 1] = string.char(unpack(maps[j][f]))
  end
  for c = 1, #args, 4000 do
    redis.call('HSET', hashes[j], unpack(args, c, math.min(c + 3999, #args)))
  end
  redis.call('PEXPIREAT', hashes[j], expiries[j])
end
out[streams + 1] = skipped
return out
";

/// The append script, hashed once per process.
static APPEND_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(APPEND));

/// The ids of one entry-id millisecond share a field, one bit per sequence number below
/// this (a field of at most 512 bytes); an id with a larger sequence number has a field of
/// its own.
const BITMAP_SEQS: u64 = 4096;

impl RedisBroker {
    /// [`Broker::append_batches`](crate::Broker::append_batches) on Redis: in one call on one
    /// server; on a cluster, one call per hash slot (see `append_per_master`).
    pub(super) fn append_all(
        &mut self,
        batches: &[Batch<'_>],
        bound: Option<u64>,
    ) -> Result<Appended> {
        if self.is_cluster() {
            self.append_per_master(batches, bound)
        } else {
            self.append_slot(batches, bound)
        }
    }

    /// Appends batches of streams in one hash slot (or on one server), in one call.
    pub(super) fn append_slot(
        &mut self,
        batches: &[Batch<'_>],
        bound: Option<u64>,
    ) -> Result<Appended> {
        let total: usize = batches.iter().map(|batch| batch.payloads.len()).sum();
        if total == 0 {
            return Ok(Appended {
                taken: vec![0; batches.len()],
                duplicates: 0,
            });
        }
        let timeout = self.response_timeout;
        let dedup = batches.iter().any(|batch| batch.dedup_keys.is_some());
        // The span of the batch being appended, if it was traced (never without a trace
        // hook): the entries carry its context.
        let trace = engine_core::trace::current_batch().map(|t| t.to_string());
        // On a cluster the script even without a bound: one command, which the `redis` crate
        // follows through a slot migration (`ASK`), where it would resend a pipeline
        // without `ASKING` after its first command, appending that one again and again.
        if bound.is_none() && !dedup && !self.is_cluster() {
            let mut pipe = redis::pipe();
            for batch in batches {
                for payload in batch.payloads {
                    let add = pipe
                        .cmd("XADD")
                        .arg(batch.stream)
                        .arg("*")
                        .arg(VERSION_FIELD)
                        .arg(PROTOCOL_VERSION);
                    if let Some(trace) = &trace {
                        add.arg(TRACE_FIELD).arg(trace);
                    }
                    add.arg(PAYLOAD_FIELD).arg(payload.as_slice()).ignore();
                }
            }
            self.run("XADD", timeout, |conn| pipe.exec(conn))?;
            self.confirm("XADD", batches[0].stream)?;
            return Ok(Appended {
                taken: batches.iter().map(|batch| batch.payloads.len()).collect(),
                duplicates: 0,
            });
        }
        let call = append_call(batches, bound, trace.as_deref());
        let reply: Vec<i64> = self.run("EVALSHA (append)", timeout, |conn| {
            match call.query(&mut *conn) {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    APPEND_SCRIPT.load(&mut *conn)?;
                    call.query(conn)
                }
                other => other,
            }
        })?;
        self.confirm("EVALSHA (append)", batches[0].stream)?;
        self.append_counts(batches, &reply)
    }

    /// What one call of the append script on `batches` did, from its reply.
    pub(super) fn append_counts(
        &mut self,
        batches: &[Batch<'_>],
        reply: &[i64],
    ) -> Result<Appended> {
        let counts: Option<Vec<usize>> = reply.iter().map(|n| usize::try_from(*n).ok()).collect();
        match counts {
            Some(mut counts)
                if counts.len() == batches.len() + 1
                    && counts
                        .iter()
                        .zip(batches)
                        .all(|(n, batch)| *n <= batch.payloads.len()) =>
            {
                let duplicates = counts.pop().unwrap_or(0);
                Ok(Appended {
                    taken: counts,
                    duplicates,
                })
            }
            _ => Err(self.unexpected("EVALSHA (append)", format!("counts {reply:?}"))),
        }
    }
}

/// One call of the append script on `batches` (streams of one hash slot): `EVALSHA` with
/// its keys and arguments; `trace` is the context the entries carry, if any.
pub(super) fn append_call(
    batches: &[Batch<'_>],
    bound: Option<u64>,
    trace: Option<&str>,
) -> redis::Cmd {
    let dedup = batches
        .iter()
        .any(|batch| batch.dedup_keys.is_some())
        .then(|| DedupArgs::of(batches));
    let mut call = redis::cmd("EVALSHA");
    call.arg(APPEND_SCRIPT.get_hash());
    // The streams' keys first, then the id hashes'.
    let hashes = dedup.as_ref().map_or(0, |args| args.hashes.len());
    call.arg(batches.len() + hashes);
    for batch in batches {
        call.arg(batch.stream);
    }
    for hash in dedup.iter().flat_map(|args| &args.hashes) {
        call.arg(key_of(hash.stream, hash.set));
    }
    call.arg(bound.map_or(-1, |bound| i64::try_from(bound).unwrap_or(i64::MAX)))
        .arg(PROTOCOL_VERSION)
        .arg(match (dedup.is_some(), trace.is_some()) {
            (false, false) => "0",
            (true, false) => "1",
            (false, true) => "0t",
            (true, true) => "1t",
        });
    match &dedup {
        Some(args) => args.push_to(&mut call, batches),
        None => {
            for batch in batches {
                call.arg(batch.payloads.len());
                for payload in batch.payloads {
                    call.arg(payload.as_slice());
                }
            }
        }
    }
    if let Some(trace) = trace {
        call.arg(trace);
    }
    call
}

/// One id hash of a deduplicating append: its key, expiry and fields, numbered from 1 in the
/// order first seen.
struct IdHash<'a> {
    /// The stream the hash goes with, and its name relative to it ([`DedupKey::set`]).
    stream: &'a str,
    set: &'a str,
    expire_at_ms: u64,
    fields: Vec<String>,
    /// The number of each field, by name.
    numbers: HashMap<Field, usize>,
}

/// The field an id is recorded in: the bitmap of its millisecond, or its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Millisecond(u64),
    Own(crate::broker::EntryId),
}

/// A run of payloads whose ids are consecutive bits of one field: (hash number, field number,
/// first bit, length); hash 0 for payloads without ids.
type Run = (usize, usize, u64, usize);

/// The arguments of the append script with deduplication: the id hashes with their fields,
/// and each batch's runs.
struct DedupArgs<'a> {
    hashes: Vec<IdHash<'a>>,
    runs: Vec<Vec<Run>>,
}

impl<'a> DedupArgs<'a> {
    fn of(batches: &[Batch<'a>]) -> Self {
        let mut args = Self {
            hashes: Vec::new(),
            runs: Vec::with_capacity(batches.len()),
        };
        for batch in batches {
            let keys = batch.dedup_keys.unwrap_or(&[]);
            let mut runs: Vec<Run> = Vec::new();
            for i in 0..batch.payloads.len() {
                let (hash, field, bit) = match keys.get(i) {
                    None => (0, 0, 0),
                    Some(key) => args.place(batch.stream, key),
                };
                match runs.last_mut() {
                    Some((h, f, first, len))
                        if *h == hash
                            && (hash == 0 || (*f == field && *first + *len as u64 == bit)) =>
                    {
                        *len += 1;
                    }
                    _ => runs.push((hash, field, bit, 1)),
                }
            }
            args.runs.push(runs);
        }
        args
    }

    /// The hash number, field number and bit of an item's id.
    fn place(&mut self, stream: &'a str, key: &'a DedupKey) -> (usize, usize, u64) {
        let set: &str = &key.set;
        let h = match self
            .hashes
            .iter()
            .rposition(|hash| hash.set == set && hash.stream == stream)
        {
            Some(h) => h,
            None => {
                self.hashes.push(IdHash {
                    stream,
                    set,
                    expire_at_ms: key.expire_at_ms,
                    fields: Vec::new(),
                    numbers: HashMap::new(),
                });
                self.hashes.len() - 1
            }
        };
        let hash = &mut self.hashes[h];
        hash.expire_at_ms = hash.expire_at_ms.max(key.expire_at_ms);
        let (field, bit) = if key.id.seq < BITMAP_SEQS {
            (Field::Millisecond(key.id.ms), key.id.seq)
        } else {
            (Field::Own(key.id), 0)
        };
        let next = hash.fields.len();
        let number = *hash.numbers.entry(field).or_insert(next);
        if number == next {
            hash.fields.push(match field {
                Field::Millisecond(ms) => ms.to_string(),
                Field::Own(id) => id.to_string(),
            });
        }
        (h + 1, number + 1, bit)
    }

    /// The arguments after the flags: the hashes' (their keys are in the call already),
    /// then each batch's runs and payloads.
    fn push_to(&self, call: &mut redis::Cmd, batches: &[Batch<'_>]) {
        call.arg(self.hashes.len());
        for hash in &self.hashes {
            call.arg(hash.expire_at_ms).arg(hash.fields.len());
            for field in &hash.fields {
                call.arg(field.as_str());
            }
        }
        for (batch, runs) in batches.iter().zip(&self.runs) {
            call.arg(batch.payloads.len()).arg(runs.len());
            for (hash, field, first, len) in runs {
                call.arg(*hash).arg(*field).arg(*first).arg(*len);
            }
            for payload in batch.payloads {
                call.arg(payload.as_slice());
            }
        }
    }
}
