//! Dead letters inspected and replayed: the entries a source moved to a stream's dead-letter
//! stream, with their reasons, listed, shown one by one, and moved back for another try.

use std::fmt;

use crate::address::StreamAddress;
use crate::broker::Broker;
use crate::broker::EntryId;
use crate::error::Result;
use crate::redis_broker::{Fields, PAYLOAD_FIELD, RedisBroker, VERSION_FIELD};

/// How many entries one round trip reads or replays.
const PAGE: usize = 512;

/// One entry of a dead-letter stream, as a [`StreamSource`](crate::StreamSource) wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadEntry {
    /// The entry's id in the dead-letter stream: what [`DeadLetters::replay`] takes.
    pub id: EntryId,
    /// The entry's id in its stream, when it was dead-lettered (field `id`).
    pub original_id: Option<EntryId>,
    /// The stream it came from (field `stream`).
    pub stream: Option<String>,
    /// How many times it had been delivered (field `deliveries`).
    pub deliveries: Option<u64>,
    /// Why it is dead (field `reason`).
    pub reason: String,
    /// The protocol version it was written with (field `v`), if it said.
    pub version: Option<String>,
    /// The encoded item (field `d`), if it had one.
    pub payload: Option<Vec<u8>>,
}

impl DeadEntry {
    fn from_fields(id: EntryId, fields: Fields) -> Self {
        let mut entry = Self {
            id,
            original_id: None,
            stream: None,
            deliveries: None,
            reason: String::new(),
            version: None,
            payload: None,
        };
        for (name, value) in fields {
            let text = || String::from_utf8_lossy(&value).into_owned();
            match name.as_str() {
                "id" => entry.original_id = text().parse().ok(),
                "stream" => entry.stream = Some(text()),
                "deliveries" => entry.deliveries = text().parse().ok(),
                "reason" => entry.reason = text(),
                VERSION_FIELD => entry.version = Some(text()),
                PAYLOAD_FIELD => entry.payload = Some(value),
                _ => {}
            }
        }
        entry
    }
}

/// What [`DeadLetters::replay`] moved: a dead letter and the new entry made from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The id the entry had in the dead-letter stream (now deleted there).
    pub dead: EntryId,
    /// The id of the new entry in the stream.
    pub new: EntryId,
}

/// The dead-letter stream of a stream: list its entries, show one, and replay chosen ones
/// (move them back to the stream, as new entries with their item and protocol version, so
/// that consumers try them again with a fresh delivery count).
///
/// The stream and its dead-letter stream come from a [`StreamAddress`]
/// (`<stream>:dead` unless `dead=` says otherwise). `engine dlq list|show|replay` is the
/// command line over this.
///
/// # Examples
///
/// ```no_run
/// use engine::redis::{DeadLetters, StreamAddress};
///
/// let address = StreamAddress::parse("redis://127.0.0.1:6379/jobs")?;
/// let mut letters = DeadLetters::connect(&address)?;
/// for letter in letters.list()? {
///     println!("{} {}", letter.id, letter.reason);
/// }
/// let replayed = letters.replay_all()?;
/// println!("{} entries back in `jobs`", replayed.len());
/// # Ok::<(), engine::redis::Error>(())
/// ```
pub struct DeadLetters {
    broker: RedisBroker,
    stream: String,
    dead_stream: String,
}

impl DeadLetters {
    /// Connects to the server of `address`.
    ///
    /// # Errors
    ///
    /// As [`RedisBroker::connect`].
    pub fn connect(address: &StreamAddress) -> Result<Self> {
        Ok(Self {
            broker: RedisBroker::connect(address)?,
            stream: address.stream().to_owned(),
            dead_stream: address.dead_letter_stream(),
        })
    }

    /// The dead letters of every stream `address` names: for a keyed stream
    /// (`partitions=<P>`), one for each partition, whose entries go to
    /// `{<stream>:p<i>}:dead` (named as its sinks and sources name them, so on a cluster
    /// `<stream>:p<i>.<n>` where the placement says so), replayed to the partition; else
    /// the stream's own, as [`connect`](Self::connect).
    ///
    /// # Errors
    ///
    /// As [`RedisBroker::connect`]; a connection or server error reading the placement.
    pub fn connect_each(address: &StreamAddress) -> Result<Vec<Self>> {
        let Some(partitions) = address.partitions else {
            return Ok(vec![Self::connect(address)?]);
        };
        let mut broker = RedisBroker::connect(address)?;
        let streams = broker.partition_streams(address.stream(), partitions.max(1))?;
        let mut each = Vec::with_capacity(streams.len());
        for stream in streams {
            let dead_stream = crate::keys::dead_letter_stream(&stream);
            // A connection each: a `DeadLetters` owns its broker.
            let broker = RedisBroker::connect(address)?;
            each.push(Self {
                broker,
                stream,
                dead_stream,
            });
        }
        Ok(each)
    }

    /// The stream replayed entries go back to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The dead-letter stream.
    pub fn dead_letter_stream(&self) -> &str {
        &self.dead_stream
    }

    /// Every entry of the dead-letter stream, oldest first.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that cannot be read.
    pub fn list(&mut self) -> Result<Vec<DeadEntry>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.broker.range(&self.dead_stream, after, PAGE)?;
            let full = page.len() >= PAGE;
            after = page.last().map(|(id, _)| *id);
            out.extend(
                page.into_iter()
                    .map(|(id, fields)| DeadEntry::from_fields(id, fields)),
            );
            if !full {
                return Ok(out);
            }
        }
    }

    /// The entry `id` of the dead-letter stream, if there is one.
    ///
    /// # Errors
    ///
    /// A connection or server error, or a reply that cannot be read.
    pub fn get(&mut self, id: EntryId) -> Result<Option<DeadEntry>> {
        let before = (id != EntryId::ZERO).then(|| {
            if id.seq > 0 {
                EntryId::new(id.ms, id.seq - 1)
            } else {
                EntryId::new(id.ms - 1, u64::MAX)
            }
        });
        let page = self.broker.range(&self.dead_stream, before, 1)?;
        Ok(page
            .into_iter()
            .find(|(found, _)| *found == id)
            .map(|(id, fields)| DeadEntry::from_fields(id, fields)))
    }

    /// Moves the dead letters `ids` back to the stream, each in one atomic step (appended
    /// to the stream, deleted from the dead-letter stream), and returns what was moved. Ids
    /// not in the dead-letter stream, and letters without an item, are left out of the
    /// answer (and in the dead-letter stream).
    ///
    /// The sink's bound does not apply: a replay appends whatever the stream's length.
    ///
    /// # Errors
    ///
    /// A connection or server error; the letters moved before it stay moved.
    pub fn replay(&mut self, ids: &[EntryId]) -> Result<Vec<Replayed>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PAGE) {
            let moved = self.broker.replay(&self.stream, &self.dead_stream, chunk)?;
            out.extend(moved.into_iter().map(|(dead, new)| Replayed { dead, new }));
        }
        Ok(out)
    }

    /// Moves every dead letter back to the stream (those there when the call starts), as
    /// [`replay`](Self::replay) does.
    ///
    /// # Errors
    ///
    /// As [`replay`](Self::replay).
    pub fn replay_all(&mut self) -> Result<Vec<Replayed>> {
        let ids: Vec<EntryId> = self.list()?.into_iter().map(|entry| entry.id).collect();
        self.replay(&ids)
    }
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("broker", &self.broker)
            .field("stream", &self.stream)
            .field("dead_stream", &self.dead_stream)
            .finish()
    }
}
