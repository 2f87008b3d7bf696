//! The stream source: a tracked frontend that reads a stream through a consumer group and
//! acknowledges each entry only once the pipeline has finished with it.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use engine_core::plumbing::{TrackedFrontend, TrackedItem, lock};
use engine_core::{StageContext, StageError, protocol};
use serde::de::DeserializeOwned;

use crate::address::StreamAddress;
use crate::broker::{Broker, Connector, DeadLetter, Delivery, EntryId};
use crate::delivered::WithIds;
use crate::error::{Chain, Error, Result};
use crate::retry::{Backoff, retrying};

/// How many times an entry may be delivered before it goes to the dead-letter stream, by
/// default.
pub const DEFAULT_MAX_DELIVERIES: u64 = 5;

/// How long an entry must have been pending (unacknowledged) before another consumer claims
/// it, by default.
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);

/// How long one read waits for new entries, by default: also how long a stop may take to be
/// noticed while the stream is silent.
pub const DEFAULT_BLOCK: Duration = Duration::from_millis(500);

/// How long a consumer of the group must have been unseen, with nothing pending, before a
/// source removes it from the group (`XGROUP DELCONSUMER`), by default.
pub const DEFAULT_REMOVE_IDLE_CONSUMERS: Duration = Duration::from_secs(3600);

/// How many entries one read asks for, by default.
pub const DEFAULT_BATCH: usize = 512;

mod acker;
mod options;
mod recover;
mod settlement;
mod ticket;

use acker::Acker;
pub use options::SourceOptions;
pub use settlement::Settlement;
use ticket::Completion;
pub use ticket::StreamTicket;

/// The most completions the acknowledging thread settles in one round trip.
const MAX_SETTLE_BATCH: usize = 8192;

/// A [`TrackedFrontend`] that reads a stream through a consumer group (`XREADGROUP ...
/// BLOCK`) and decodes each entry's `d` field as a `T` ([`engine_core::protocol::from_bytes`]).
///
/// - **Acknowledgement.** Each item carries a [`StreamTicket`]. An item that is processed,
///   filtered, or failed under [`ErrorPolicy::Skip`](engine_core::ErrorPolicy::Skip) is
///   acknowledged and deleted from the stream (`XACK` + `XDEL`, batched on a thread of the
///   source's own), so the stream's length is the count of unfinished entries. An item
///   dropped by an abort, or failed under `ErrorPolicy::Stop`, stays pending and is
///   delivered again; the error is recorded for its dead letter.
/// - **Healing.** At the start and after any error on its connection, the source reads its
///   own pending list again ([`Broker::own_pending`], then [`Broker::claim_ids`] for what is
///   not in its pipeline) before it reads new entries, so entries delivered in a reply that
///   never arrived are handed out as soon as the connection is back.
/// - **Redelivery.** A sweep (`XAUTOCLAIM`), at the start and then every
///   [`sweep_every`](SourceOptions::sweep_every), claims entries pending for longer than
///   [`claim_idle`](SourceOptions::claim_idle), such as those of a consumer that died. After a
///   complete sweep, consumers unseen for
///   [`remove_consumers_idle_for`](SourceOptions::remove_consumers_idle_for) with nothing
///   pending are removed from the group (`XGROUP DELCONSUMER`).
/// - **Dead letters.** A claimed entry delivered more than
///   [`max_deliveries`](SourceOptions::max_deliveries) times, an entry written with another
///   protocol version (its `v` field, [`VERSION_FIELD`](crate::VERSION_FIELD)), or an entry
///   that does not decode as a `T`, goes to the dead-letter stream (`<stream>:dead` by
///   default) with the fields `id`, `stream`, `deliveries`, `reason`, `v` and `d`, and is
///   acknowledged. The reason of another version names both versions. An entry without a
///   `v` field (written by hand, or by a build older than versioned entries) is taken for
///   the current version. An entry that is dead-lettered on arrival is also counted as a
///   failed item ([`Error::OtherVersion`], [`Error::BadEntry`]).
/// - **Connections.** The source connects in `setup` (a server that cannot be reached fails
///   the run at once with [`Error::Unreachable`]), creates the group if missing (at the start
///   of the stream, so entries added before any consumer are read), and later retries a lost
///   connection with a backoff for [`retry_for`](SourceOptions::retry_for).
///
/// It never ends by itself: it ends when the run is stopped, within one
/// [`block`](SourceOptions::block) time, and its cleanup sends the last acknowledgements. Its
/// [`stop_grace`](engine_core::plumbing::TrackedFrontend::stop_grace) tells the engine to wait for
/// that, so they are sent when `run` returns.
///
/// # Examples
///
/// ```no_run
/// use engine_redis::{StreamAddress, StreamSource};
/// use engine_threads::Engine;
///
/// let address = StreamAddress::parse("redis://127.0.0.1:6379/numbers?group=adders")?;
/// let source = StreamSource::<u64>::new(address);
/// let engine = Engine::builder(source).backend(|n: u64| println!("{n}")).build()?;
/// let _signals = engine_core::install_signal_handler(engine.stop_handle())?; // Ctrl-C stops.
/// let report = engine.run()?; // After a stop: the last acknowledgements are sent.
/// eprintln!("{report}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamSource<T, C: Connector = StreamAddress> {
    connector: C,
    stream: String,
    group: String,
    consumer: Option<String>,
    dead_stream: String,
    options: SourceOptions,
    settlement: Settlement,
    running: Option<Running<C::Broker>>,
    /// The partition count of the address, if it names a keyed stream.
    keyed: Option<u32>,
    _items: PhantomData<fn() -> T>,
}

/// A started source: its connection and what it holds.
struct Running<B> {
    broker: B,
    /// The stream's name, shared with the tickets for their items' ids.
    stream: Arc<str>,
    consumer: String,
    buffer: VecDeque<Delivery>,
    completions: Sender<Completion>,
    acker: Option<JoinHandle<()>>,
    /// Entries handed to the pipeline and not settled yet, which a sweep must not hand out
    /// again.
    in_flight: Arc<Mutex<HashSet<EntryId>>>,
    next_sweep: Instant,
    cursor: EntryId,
    /// Whether the source's own pending list must be read again before new entries: at the
    /// start, and after any error on the connection (a reply may have been lost with entries
    /// in it).
    recover: bool,
    /// The backoff of failing reads, until one succeeds.
    read_backoff: Option<Backoff>,
}

impl<T> StreamSource<T, StreamAddress> {
    /// A source reading the stream of `address` through its group, with the address's
    /// tuning keys (`max_deliveries=`, `claim_idle_ms=`, `block_ms=`) if it has them.
    ///
    /// An address with `partitions=` names a keyed stream: read it with a
    /// [`KeyedSource`](crate::KeyedSource); this source fails its setup with
    /// [`Error::InvalidAddress`].
    pub fn new(address: StreamAddress) -> Self {
        let options = SourceOptions::from_address(&address);
        let keyed = address.partitions;
        let (stream, group) = (address.stream().to_owned(), address.group().to_owned());
        let consumer = address.consumer().map(str::to_owned);
        let dead = address.dead_letter_stream();
        let mut source = Self::with_connector(address, stream, group)
            .options(options)
            .dead_letter_stream(dead);
        source.consumer = consumer;
        source.keyed = keyed;
        source
    }
}

impl<T, C: Connector> StreamSource<T, C> {
    /// A source reading `stream` through `group` on the broker `connector` connects to.
    pub fn with_connector(
        connector: C,
        stream: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        let stream = stream.into();
        Self {
            connector,
            dead_stream: format!("{stream}:dead"),
            stream,
            group: group.into(),
            consumer: None,
            options: SourceOptions::new(),
            settlement: Settlement::new(),
            running: None,
            keyed: None,
            _items: PhantomData,
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: SourceOptions) -> Self {
        self.options = options;
        self
    }

    /// Reads as the consumer `name` (default: a name made from the host, the process id and
    /// the start time). With several frontend threads, `-<thread>` is appended.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Sends dead letters to `stream` (default `<stream>:dead`).
    #[must_use]
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.dead_stream = stream.into();
        self
    }

    /// Counts this source's items in `settlement`, shared with other sources.
    #[must_use]
    pub fn with_settlement(mut self, settlement: &Settlement) -> Self {
        self.settlement = settlement.clone();
        self
    }

    /// The settlement of this source's items: wait on it before the program exits.
    pub fn settlement(&self) -> Settlement {
        self.settlement.clone()
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Hands out each item with its stable id, as a [`Delivered`](crate::Delivered) (the
    /// stream and the entry id), so that stage code can deduplicate its side effects, and a
    /// [`DedupSink`](crate::DedupSink) can append each item at most once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use engine_redis::{Delivered, StreamAddress, StreamSource};
    /// use engine_threads::Engine;
    ///
    /// let address = StreamAddress::parse("redis://127.0.0.1:6379/payments")?;
    /// let source = StreamSource::<u64>::new(address).with_ids();
    /// Engine::builder(source)
    ///     .backend(|paid: Delivered<u64>| println!("{} once per {}", paid.item, paid.id))
    ///     .run()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_ids(self) -> WithIds<Self> {
        WithIds::new(self)
    }

    /// Connects, creates the group and starts the acknowledging thread.
    fn start(&mut self, ctx: &StageContext) -> Result<()> {
        if let Some(partitions) = self.keyed {
            return Err(Error::InvalidAddress {
                address: self.stream.clone(),
                reason: format!(
                    "the stream is keyed (partitions={partitions}): read it with a KeyedSource"
                ),
            });
        }
        let mut consumer = self.consumer.clone().unwrap_or_else(default_consumer);
        if ctx.instances() > 1 {
            consumer = format!("{consumer}-{}", ctx.index());
        }
        let mut broker = self.connector.connect()?;
        broker.create_group(&self.stream, &self.group)?;
        let acks = self.connector.connect()?;
        let (completions, rx) = crossbeam_channel::unbounded();
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let acker = Acker {
            broker: acks,
            stream: self.stream.clone(),
            group: self.group.clone(),
            completions: rx,
            in_flight: Arc::clone(&in_flight),
            settlement: self.settlement.clone(),
            retry_for: self.options.retry_for,
            consumer: consumer.clone(),
            heartbeat: (self.options.claim_idle / 3).max(Duration::from_millis(10)),
        };
        let acker = std::thread::Builder::new()
            .name(format!("{}-acks", ctx.stage()))
            .spawn(move || acker.run())
            .map_err(|source| Error::Unreachable {
                server: broker.server().to_owned(),
                source: Box::new(source),
            })?;
        tracing::debug!(
            stream = %self.stream,
            group = %self.group,
            consumer = %consumer,
            server = broker.server(),
            "reading the stream"
        );
        self.running = Some(Running {
            broker,
            stream: Arc::from(self.stream.as_str()),
            consumer,
            buffer: VecDeque::new(),
            completions,
            acker: Some(acker),
            in_flight,
            next_sweep: Instant::now(),
            cursor: EntryId::ZERO,
            recover: true,
            read_backoff: None,
        });
        Ok(())
    }
}

impl<T: DeserializeOwned, C: Connector> StreamSource<T, C> {
    /// Hands one delivery to the pipeline, or dead-letters it if it was written with another
    /// protocol version or does not decode.
    ///
    /// An entry without a version field (written by hand, or by a build older than versioned
    /// entries) is taken for the current version: it is handed out if it decodes.
    fn hand_out(
        &mut self,
        delivery: Delivery,
        ctx: &StageContext,
    ) -> Result<Option<TrackedItem<Self>>, StageError> {
        let decoded = decode::<T>(&self.stream, &delivery);
        let running = self
            .running
            .as_mut()
            .expect("a source hands out once started");
        match decoded {
            Ok(item) => {
                lock(&running.in_flight).insert(delivery.id);
                self.settlement.issue();
                let ticket = StreamTicket {
                    id: delivery.id,
                    stream: Arc::clone(&running.stream),
                    completions: running.completions.clone(),
                };
                Ok(Some((ticket, item)))
            }
            Err(error) => {
                let reason = error.dead_letter_reason();
                let letter = delivery.dead_letter(&reason);
                self.bury(&[letter], ctx).map_err(fatal)?;
                Err(StageError::new(error))
            }
        }
    }

    /// Sends entries to the dead-letter stream.
    fn bury(&mut self, letters: &[DeadLetter<'_>], ctx: &StageContext) -> Result<()> {
        let running = self.running.as_mut().expect("a source buries once started");
        for letter in letters {
            tracing::warn!(
                stream = %self.stream,
                id = %letter.id,
                deliveries = letter.deliveries,
                reason = letter.reason,
                dead_letter_stream = %self.dead_stream,
                "entry moved to the dead-letter stream"
            );
        }
        let (broker, stream, group, dead, recover) = (
            &mut running.broker,
            &self.stream,
            &self.group,
            &self.dead_stream,
            &mut running.recover,
        );
        let buried = retrying(
            "dead-lettering",
            self.options.retry_for,
            Some(ctx.stop()),
            || {
                let buried = broker.dead_letter(stream, group, dead, letters);
                *recover |= buried.is_err();
                buried
            },
        );
        if buried.is_ok() {
            self.settlement.add_dead_lettered(letters.len() as u64);
        }
        buried
    }
}

impl<T: DeserializeOwned, C: Connector> TrackedFrontend for StreamSource<T, C> {
    type Item = T;
    type Ticket = StreamTicket;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.start(ctx)?;
        Ok(())
    }

    fn produce(&mut self, ctx: &StageContext) -> Result<Option<TrackedItem<Self>>, StageError> {
        if self.running.is_none() {
            self.start(ctx)?;
        }
        loop {
            let running = self.running.as_mut().expect("started above");
            if let Some(delivery) = running.buffer.pop_front() {
                return self.hand_out(delivery, ctx);
            }
            if ctx.is_stopping() {
                return Ok(None);
            }
            if Instant::now() >= running.next_sweep {
                match self.sweep(ctx) {
                    Err(Error::Aborted) => return Ok(None),
                    other => other.map_err(fatal)?,
                }
                continue;
            }
            // After the sweep (whose claims are handed out first, so that they are known as
            // in the pipeline), before any new entry.
            if running.recover {
                match self.recover_own(ctx) {
                    Err(Error::Aborted) => return Ok(None),
                    other => other.map_err(fatal)?,
                }
                self.running.as_mut().expect("started above").recover = false;
                continue;
            }
            let (broker, stream, group, consumer) = (
                &mut running.broker,
                &self.stream,
                &self.group,
                &running.consumer,
            );
            let (count, block) = (self.options.batch, self.options.block);
            // One attempt at a time: after a failure, the own pending list is read again
            // (the lost reply may have delivered entries) before the next read of new ones.
            match broker.read(stream, group, consumer, count, block) {
                Ok(deliveries) => {
                    if running.read_backoff.take().is_some() {
                        tracing::info!(stream = %self.stream, "reading: the broker is back");
                    }
                    running.buffer.extend(deliveries);
                }
                Err(error) if error.is_retryable() => {
                    running.recover = true;
                    let retry_for = self.options.retry_for;
                    let backoff = running.read_backoff.get_or_insert_with(|| {
                        tracing::warn!(error = %Chain(&error), "reading: retrying");
                        Backoff::new(retry_for)
                    });
                    match backoff.pause(error, Some(ctx.stop())) {
                        Ok(()) => {}
                        Err(Error::Aborted) => return Ok(None),
                        Err(error) => return Err(fatal(error)),
                    }
                }
                Err(error) => return Err(fatal(error)),
            }
        }
    }

    /// A read ends within the [`block`](SourceOptions::block) time, and `cleanup` waits up
    /// to the [`drain_timeout`](SourceOptions::drain_timeout) for the last acknowledgements:
    /// an engine waits that long after a stop, so that they are sent when `run` returns.
    fn stop_grace(&self) -> Duration {
        self.options
            .block
            .saturating_add(self.options.drain_timeout)
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        let settled = self.settlement.wait(self.options.drain_timeout);
        drop(running.completions);
        if !settled {
            tracing::warn!(
                stream = %self.stream,
                outstanding = self.settlement.outstanding(),
                "items still in the pipeline at cleanup; they will be delivered again"
            );
            return;
        }
        if let Some(acker) = running.acker.take() {
            let _ = acker.join();
        }
    }
}

impl<T, C: Connector> fmt::Debug for StreamSource<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("connector", &self.connector)
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("dead_stream", &self.dead_stream)
            .field("options", &self.options)
            .field("started", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

/// Decodes the item of an entry of `stream`, checking its protocol version.
///
/// An entry without a version field (written by hand, or by a build older than versioned
/// entries) is taken for the current version: it is handed out if it decodes.
pub(crate) fn decode<T: DeserializeOwned>(stream: &str, delivery: &Delivery) -> Result<T> {
    let expected = protocol::PROTOCOL_VERSION;
    let bad_entry = |reason: String| Error::BadEntry {
        stream: stream.to_owned(),
        id: delivery.id.to_string(),
        reason,
    };
    match (&delivery.version, &delivery.payload) {
        (Some(found), _) if found.trim() != expected.to_string() => Err(Error::OtherVersion {
            stream: stream.to_owned(),
            id: delivery.id.to_string(),
            found: found.clone(),
            expected,
        }),
        (_, None) => Err(bad_entry(format!(
            "the entry has no `{}` field",
            crate::PAYLOAD_FIELD
        ))),
        (_, Some(bytes)) => {
            protocol::from_bytes::<T>(bytes).map_err(|e| bad_entry(Chain(&e).to_string()))
        }
    }
}

/// A source that cannot go on: the run should end rather than retry for ever.
pub(crate) fn fatal(error: Error) -> StageError {
    StageError::new(error).fatal()
}

/// A consumer name unique to this process: host, process id and start time.
pub(crate) fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "engine".to_owned());
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() % 1_000_000);
    format!("{host}-{}-{started}", std::process::id())
}
