//! Appending on a Redis Cluster: the calls of one flush (one per hash slot) grouped by
//! master and sent to every master at once, on a direct connection to each, so that a flush
//! over many partitions costs one round trip, not one per partition.

use redis::{Connection, ErrorKind, RedisError, Value};

use super::RedisBroker;
use super::append::append_call;
use crate::broker::{Appended, Batch};
use crate::error::Result;
use crate::keys::slot;

impl RedisBroker {
    /// Appends batches on a cluster: one call of the append script per hash slot, the calls
    /// to one master in one pipeline on a connection of its own, every master's pipeline
    /// written before any reply is read (one round trip in all, not one per slot).
    ///
    /// A call a master refused (its slot moved or in migration, the script not loaded there
    /// yet, the cluster down) did not run: it goes again alone on the cluster connection,
    /// which follows redirections. An error after some slots were written returns what was
    /// taken so far (the rest 0), so that the caller retries only the rest; a connection
    /// lost before a call's reply leaves that call unknown, and it goes again (at least
    /// once, as for a lost reply on one server). With `replicas=`, the calls go one after
    /// another on the cluster connection, each with its `WAIT`.
    pub(super) fn append_per_master(
        &mut self,
        batches: &[Batch<'_>],
        bound: Option<u64>,
    ) -> Result<Appended> {
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            let slot = slot(batch.stream);
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        if groups.len() <= 1 {
            return self.append_slot(batches, bound);
        }
        if self.replicas.is_some() {
            // A `WAIT` counts the writes of the connection it is sent on: each slot's call
            // and its `WAIT` on the cluster connection, in turn.
            let groups = groups.into_iter().map(|(_, members)| members);
            return self.append_in_turn(batches, groups, bound, nothing(batches), false);
        }
        // The slots by master, as the slot map last read says; a slot that moved since is
        // refused by the master it is sent to, and goes again alone.
        let masters = self.masters_of_slots(groups.iter().map(|(slot, _)| *slot))?;
        let mut by_master: Vec<(String, Vec<Vec<usize>>)> = Vec::new();
        let mut again = Vec::new();
        for ((_, members), master) in groups.into_iter().zip(masters) {
            let Some(master) = master else {
                again.push(members);
                continue;
            };
            match by_master.iter_mut().find(|(m, _)| *m == master) {
                Some((_, slots)) => slots.push(members),
                None => by_master.push((master, vec![members])),
            }
        }
        let trace = engine_core::trace::current_batch().map(|t| t.to_string());
        let mut out = nothing(batches);
        // Every master's calls are written before any reply is read.
        let mut sent = Vec::new();
        let mut failed = None;
        for (master, slots) in by_master {
            let mut pipe = redis::pipe();
            for members in &slots {
                let group: Vec<Batch<'_>> = members.iter().map(|i| batches[*i]).collect();
                pipe.add_command(append_call(&group, bound, trace.as_deref()));
            }
            match self
                .node(&master)
                .and_then(|conn| conn.send_packed_command(&pipe.get_packed_pipeline()))
            {
                Ok(()) => sent.push((master, slots)),
                Err(err) => {
                    // Nothing of it may have reached the master, or all: unknown.
                    self.nodes.remove(&master);
                    failed.get_or_insert(err);
                }
            }
        }
        let mut written = false;
        for (master, slots) in sent {
            for members in slots {
                let conn = self.nodes.get_mut(&master).expect("sent on it just above");
                let reply = match conn.recv_response() {
                    Ok(reply) => reply,
                    Err(err) => {
                        // This call and the master's later ones may or may not have run.
                        self.nodes.remove(&master);
                        failed.get_or_insert(err);
                        break;
                    }
                };
                if let Value::ServerError(_) = reply {
                    // Refused: a redirection, the script not loaded there, the cluster down.
                    again.push(members);
                    continue;
                }
                let group: Vec<Batch<'_>> = members.iter().map(|i| batches[*i]).collect();
                let appended = redis::from_redis_value::<Vec<i64>>(reply)
                    .map_err(|err| self.unexpected("EVALSHA (append)", err.to_string()))
                    .and_then(|counts| self.append_counts(&group, &counts));
                let appended = match appended {
                    Ok(appended) => appended,
                    Err(error) => {
                        // Replies may be left unread: start afresh on every master.
                        self.nodes.clear();
                        return Err(error);
                    }
                };
                for (i, taken) in members.iter().zip(appended.taken) {
                    out.taken[*i] = taken;
                }
                out.duplicates += appended.duplicates;
                written = true;
            }
        }
        if let Some(err) = failed {
            let error = self.lost("EVALSHA (append)", err);
            return if written { Ok(out) } else { Err(error) };
        }
        if !again.is_empty() {
            // Some slots moved, or were refused: read the slot map again next time.
            self.slot_map = None;
        }
        self.append_in_turn(batches, again, bound, out, written)
    }

    /// Appends the slot groups `groups` of `batches` one call after another on the cluster
    /// connection, each call following its redirection, after `out` (`written`: some of it
    /// was written); a retryable error after something was written returns what was taken
    /// so far.
    fn append_in_turn(
        &mut self,
        batches: &[Batch<'_>],
        groups: impl IntoIterator<Item = Vec<usize>>,
        bound: Option<u64>,
        mut out: Appended,
        mut written: bool,
    ) -> Result<Appended> {
        for members in groups {
            let group: Vec<Batch<'_>> = members.iter().map(|i| batches[*i]).collect();
            match self.append_slot(&group, bound) {
                Ok(appended) => {
                    for (i, taken) in members.iter().zip(appended.taken) {
                        out.taken[*i] = taken;
                    }
                    out.duplicates += appended.duplicates;
                    written = true;
                }
                Err(error) if written && error.is_retryable() => return Ok(out),
                Err(error) => return Err(error),
            }
        }
        Ok(out)
    }

    /// The direct connection to the master `host:port`, made if there is none, with the
    /// address's credentials and TLS.
    fn node(&mut self, master: &str) -> redis::RedisResult<&mut Connection> {
        if !self.nodes.contains_key(master) {
            let invalid = |reason: String| {
                RedisError::from((ErrorKind::InvalidClientConfig, "a master's address", reason))
            };
            let (host, port) = master
                .rsplit_once(':')
                .and_then(|(host, port)| {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    Some((host, port.parse().ok()?))
                })
                .ok_or_else(|| invalid(master.to_owned()))?;
            let address = self
                .node_address
                .as_ref()
                .expect("a cluster's broker has its address")
                .node(host, port);
            let conn = super::client(&address)
                .map_err(invalid)?
                .get_connection_with_timeout(self.connect_timeout)?;
            conn.set_read_timeout(Some(self.response_timeout))?;
            conn.set_write_timeout(Some(self.response_timeout))?;
            self.nodes.insert(master.to_owned(), conn);
        }
        Ok(self.nodes.get_mut(master).expect("made just above"))
    }
}

/// An append of `batches` that took nothing yet.
fn nothing(batches: &[Batch<'_>]) -> Appended {
    Appended {
        taken: vec![0; batches.len()],
        duplicates: 0,
    }
}
