//! The broker behind the stream stages, as a small trait: what a sink and a source need from
//! a log-structured broker with consumer groups. [`RedisBroker`](crate::RedisBroker) is the
//! one implementation; another (NATS JetStream) can follow without touching the stages.

use std::fmt;
use std::time::Duration;

pub use crate::entry_id::{EntryId, ParseEntryIdError};
use crate::error::Result;

/// One entry handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The entry's id.
    pub id: EntryId,
    /// The encoded item, or `None` if the entry has no item field (it was not written by a
    /// stream sink).
    pub payload: Option<Vec<u8>>,
    /// The protocol version the entry was written with (its `v` field), or `None` if it has
    /// none (written by hand, or by a build older than versioned entries).
    pub version: Option<String>,
    /// The W3C trace context the entry was written with (its `traceparent` field,
    /// [`TRACE_FIELD`](crate::TRACE_FIELD)), if any: the item's spans on this side link to
    /// the producer's (see `engine_core::trace`).
    pub trace: Option<String>,
    /// How many times the entry was delivered, this time included.
    pub deliveries: u64,
}

impl Delivery {
    /// This entry as a dead letter, dead for `reason`.
    pub fn dead_letter<'a>(&'a self, reason: &'a str) -> DeadLetter<'a> {
        DeadLetter {
            id: self.id,
            payload: self.payload.as_deref(),
            version: self.version.as_deref(),
            deliveries: self.deliveries,
            reason,
        }
    }
}

/// What one pass of [`Broker::claim`] returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Where the next call continues, or `None` when the pass over the pending entries is
    /// complete.
    pub next: Option<EntryId>,
    /// The entries claimed, with their delivery counts.
    pub deliveries: Vec<Delivery>,
}

/// An entry pending for a consumer, as the broker's pending list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The entry's id.
    pub id: EntryId,
    /// How many times it was delivered so far.
    pub deliveries: u64,
    /// How long ago it was last delivered (or kept alive).
    pub idle: Duration,
}

/// An entry moved to the dead-letter stream.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// The entry's id in its stream.
    pub id: EntryId,
    /// The entry's item, as it was in the stream.
    pub payload: Option<&'a [u8]>,
    /// The protocol version the entry was written with, if it says.
    pub version: Option<&'a str>,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// Why it is dead: the last error, or why there is none.
    pub reason: &'a str,
}

/// Where an appended item's id is recorded, so that it is appended once: the ids of its
/// source stream for one time bucket (a minute of entry ids), kept under one key that
/// expires as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupKey {
    /// The name the ids are recorded under, relative to the stream appended to: on Redis,
    /// a hash of bitmaps at the key `{<stream>}:<set>`, in the stream's hash slot (so that
    /// a keyed stream's partition and its records share a slot).
    pub set: std::sync::Arc<str>,
    /// The item's entry id in its source stream.
    pub id: EntryId,
    /// When the key may be forgotten, in milliseconds since the Unix epoch.
    pub expire_at_ms: u64,
}

/// One stream's share of an append: payloads to add to `stream`, in order.
///
/// With `dedup_keys` (one per payload), the append is idempotent: a payload whose id is
/// recorded already is skipped instead of appended (see [`Broker::append_batches`]).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The stream appended to.
    pub stream: &'a str,
    /// The encoded items.
    pub payloads: &'a [Vec<u8>],
    /// Where the id of each payload is recorded, if the append deduplicates.
    pub dedup_keys: Option<&'a [DedupKey]>,
}

/// What [`Broker::append_batches`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// For each batch, how many of its first payloads are done with: appended, or skipped
    /// as duplicates.
    pub taken: Vec<usize>,
    /// How many payloads were skipped as duplicates, in all batches.
    pub duplicates: usize,
}

/// One heartbeat of a keyed consumer: what [`Broker::beat`] sends.
#[derive(Debug, Clone, Copy)]
pub struct Beat<'a> {
    /// The set of live consumers of the group.
    pub members: &'a str,
    /// The lease key of each partition, in partition order.
    pub leases: &'a [String],
    /// This consumer.
    pub consumer: &'a str,
    /// How long a lease, and this consumer's membership, last without another beat.
    pub ttl: Duration,
    /// Partitions whose leases this consumer gives up (if it holds them), first.
    pub release: &'a [u32],
    /// Whether the consumer leaves: gives up every lease and its membership, and takes none.
    pub leave: bool,
}

/// What a [`Broker::beat`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    /// How many consumers of the group are live (this one included).
    pub live: u32,
    /// The fair share: `ceil(partitions / live)`.
    pub fair: u32,
    /// The partitions this consumer holds after the beat, renewed or newly taken.
    pub held: Vec<u32>,
}

/// What the stream stages need from a broker: append, read through a consumer group,
/// acknowledge, reclaim what dead consumers left, and dead-letter.
///
/// Implementations keep one connection and make it again after an error that broke it
/// ([`Error::is_retryable`](crate::Error::is_retryable)); the stages retry such errors
/// with a backoff. Every method sends one request (or one pipeline) where the broker allows.
pub trait Broker: Send {
    /// The server, safe to log (no password).
    fn server(&self) -> &str;

    /// Appends `payloads` to `stream`, in order. With a `bound`, appends only while the
    /// stream holds fewer than `bound` entries, as one atomic check-and-add, and returns how
    /// many of the first payloads were appended (0 when the stream is full); without one,
    /// appends them all.
    ///
    /// # Errors
    ///
    /// A connection or server error; with a bound nothing was appended, without one any
    /// prefix may have been.
    fn append(&mut self, stream: &str, payloads: &[Vec<u8>], bound: Option<u64>) -> Result<usize> {
        let batch = Batch {
            stream,
            payloads,
            dedup_keys: None,
        };
        let appended = self.append_batches(&[batch], bound)?;
        Ok(appended.taken.first().copied().unwrap_or(0))
    }

    /// Appends each batch to its stream, in order, in one round trip, and returns how many of
    /// each batch's first payloads were taken.
    ///
    /// With a `bound`, a batch is appended only while its stream holds fewer than `bound`
    /// entries (0 taken when it is full), atomically. A batch with
    /// [`dedup_keys`](Batch::dedup_keys) deduplicates: each payload's id is checked and
    /// recorded under its key in the same atomic step as the append (`HMGET`, `XADD` and
    /// `HSET` in one script on Redis, the keys expiring at their `expire_at_ms`): a payload
    /// whose id is recorded already, or comes twice, is skipped and counted in
    /// [`Appended::duplicates`].
    ///
    /// # Errors
    ///
    /// A connection or server error; with a bound or a window nothing was appended, without
    /// either any prefix of each batch may have been.
    fn append_batches(&mut self, batches: &[Batch<'_>], bound: Option<u64>) -> Result<Appended>;

    /// Records `partitions` as the partition count of a keyed stream under `key`, unless a
    /// count is recorded already, and returns the recorded count.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a recorded value that is not a count.
    fn record_partitions(&mut self, key: &str, partitions: u32) -> Result<u32>;

    /// The partition streams of the keyed stream `stream` with `partitions` partitions, in
    /// partition order: by default `<stream>:p<i>` ([`partition_stream`](crate::partition_stream)).
    /// A broker of several nodes may name them so that they spread over its nodes, and must
    /// then give every producer and consumer the same names (on a Redis Cluster, a
    /// placement recorded on the server; see [`KeyedSource`](crate::KeyedSource)).
    ///
    /// # Errors
    ///
    /// A connection or server error, or a recorded placement that cannot be read.
    fn partition_streams(&mut self, stream: &str, partitions: u32) -> Result<Vec<String>> {
        Ok((0..partitions)
            .map(|i| crate::partition::partition_stream(stream, i))
            .collect())
    }

    /// Creates the consumer group at the start of the stream (and the stream) if missing.
    ///
    /// # Errors
    ///
    /// A connection or server error.
    fn create_group(&mut self, stream: &str, group: &str) -> Result<()>;

    /// Reads up to `count` entries never delivered to the group, waiting up to `block` for
    /// the first. The entries become pending for `consumer` until settled.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that is not a list of entries.
    fn read(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>>;

    /// Reads up to `count` new entries from each of `streams` in one request, waiting up to
    /// `block` for the first, and returns them with the index of their stream. The entries
    /// become pending for `consumer` until settled.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that is not a list of entries.
    fn read_streams(
        &mut self,
        streams: &[&str],
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<(usize, Vec<Delivery>)>>;

    /// One heartbeat of a keyed consumer, as one atomic step: gives up the leases of
    /// [`Beat::release`], renews this consumer's membership and the leases it holds, counts
    /// the live consumers, and takes free leases up to the fair share. With
    /// [`Beat::leave`], gives up everything instead.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that cannot be read.
    fn beat(&mut self, beat: &Beat<'_>) -> Result<Leases>;

    /// Settles entries: acknowledges and deletes the `finished` ones, so that the stream's
    /// length counts only unfinished entries, and records the error of each `failed` one
    /// (left pending, to be delivered again) for its dead letter.
    ///
    /// # Errors
    ///
    /// A connection or server error; then nothing or a part was settled, and settling again
    /// is harmless.
    fn settle(
        &mut self,
        stream: &str,
        group: &str,
        finished: &[EntryId],
        failed: &[(EntryId, String)],
    ) -> Result<()>;

    /// Claims for `consumer` up to `count` pending entries idle for at least `min_idle`,
    /// starting at `from`, and returns them with their delivery counts (this claim counted).
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that cannot be read.
    fn claim(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        from: EntryId,
        count: usize,
    ) -> Result<Claimed>;

    /// Lists the entries pending for `consumer` itself (its own pending list), in id order,
    /// from the first id above `after` (or from the start), at most `count` of them.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that cannot be read.
    fn own_pending(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<Pending>>;

    /// Lists the entries of `group` pending for at least `min_idle`, whoever they are pending
    /// for, in id order, from the first id above `after` (or from the start), at most
    /// `count` of them, each with the consumer it is pending for. Nothing is claimed: the
    /// caller chooses what to [`claim_ids`](Self::claim_ids), leaving out what it still
    /// works on itself.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that cannot be read.
    fn idle_pending(
        &mut self,
        stream: &str,
        group: &str,
        min_idle: Duration,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<(String, Pending)>>;

    /// Claims `ids` for `consumer` (delivering them again, which counts a delivery), except
    /// those idle for less than `min_idle` (someone else touched them since they were
    /// listed), and returns their entries. Entries deleted from the stream meanwhile are
    /// dropped from the pending list and left out. The delivery counts of the returned
    /// entries are left at 1: the caller knows them from [`own_pending`](Self::own_pending).
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that cannot be read.
    fn claim_ids(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        ids: &[EntryId],
    ) -> Result<Vec<Delivery>>;

    /// Removes from `group` the consumers, other than `keep`, that have nothing pending and
    /// have not been seen for at least `idle`, in one atomic step (a consumer that reads in
    /// between is not removed), and returns their names.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that cannot be read.
    fn remove_idle_consumers(
        &mut self,
        stream: &str,
        group: &str,
        keep: &str,
        idle: Duration,
    ) -> Result<Vec<String>>;

    /// Says that `consumer` is still working on `ids`, which it holds pending: their idle
    /// time starts again, so that a sweep elsewhere does not take them for entries of a dead
    /// consumer. No delivery is counted (`XCLAIM ... JUSTID` on Redis).
    ///
    /// # Errors
    ///
    /// A connection or server error.
    fn keep_alive(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[EntryId],
    ) -> Result<()>;

    /// The error recorded by [`settle`](Self::settle) for an entry, if any.
    ///
    /// # Errors
    ///
    /// A connection or server error.
    fn last_error(&mut self, stream: &str, id: EntryId) -> Result<Option<String>>;

    /// Appends `letters` to `dead_stream`, then acknowledges and deletes them from `stream`.
    ///
    /// # Errors
    ///
    /// A connection or server error; then some letters may be in the dead-letter stream and
    /// still pending in `stream` (at-least-once, as everywhere).
    fn dead_letter(
        &mut self,
        stream: &str,
        group: &str,
        dead_stream: &str,
        letters: &[DeadLetter<'_>],
    ) -> Result<()>;
}

/// Makes connections to a broker: what a stream stage keeps, so that each stage instance (and
/// a source's acknowledging thread) connects on its own thread.
///
/// [`StreamAddress`](crate::StreamAddress) is the connector of [`RedisBroker`](crate::RedisBroker).
pub trait Connector: Clone + Send + Sync + fmt::Debug + 'static {
    /// The broker connected to.
    type Broker: Broker + 'static;

    /// Connects once, without retrying.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`](crate::Error::Unreachable) when no connection can be made.
    fn connect(&self) -> Result<Self::Broker>;
}
