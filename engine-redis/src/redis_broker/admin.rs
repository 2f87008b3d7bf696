//! What the dead-letter tools and the metrics read from Redis besides the stages' commands:
//! group information, ranges of a stream, and replaying dead letters.

use std::sync::LazyLock;

use redis::Value;

use super::parse::parse_range;
use super::{Fields, RedisBroker};
use crate::broker::EntryId;
use crate::error::Result;

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
        self.confirm("EVALSHA (replay)", stream)?;
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
