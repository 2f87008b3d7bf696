//! The stream source: a tracked frontend that reads a stream through a consumer group and
//! acknowledges each entry only once the pipeline has finished with it.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_core::plumbing::{TrackedFrontend, TrackedItem};
use engine_core::{StageContext, StageError, protocol};
use serde::de::DeserializeOwned;

use crate::address::StreamAddress;
use crate::broker::{Connector, Delivery};
use crate::delivered::WithIds;
use crate::error::{Error, Result};

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
mod running;
mod settlement;
mod ticket;

use acker::Acker;
pub use options::SourceOptions;
use running::Running;
pub(crate) use running::remove_idle_consumers;
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
///   own pending list again ([`Broker::own_pending`](crate::Broker::own_pending), then [`Broker::claim_ids`](crate::Broker::claim_ids) for what is
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
/// use engine::redis::{StreamAddress, StreamSource};
/// use engine::threads::Engine;
///
/// let address = StreamAddress::parse("redis://127.0.0.1:6379/numbers?group=adders")?;
/// let source = StreamSource::<u64>::new(address);
/// let engine = Engine::builder(source).backend(|n: u64| println!("{n}")).build()?;
/// let _signals = engine::core::install_signal_handler(engine.stop_handle())?; // Ctrl-C stops.
/// let report = engine.run()?; // After a stop: the last acknowledgements are sent.
/// eprintln!("{report}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamSource<T, C: Connector = StreamAddress> {
    config: Config<C>,
    /// The connection and what it holds, from the first setup on: made in one place,
    /// [`Running::start`], from the configuration and the stage context.
    running: Option<Running<C::Broker>>,
    _items: PhantomData<fn() -> T>,
}

/// What a source is given before it starts.
struct Config<C> {
    connector: C,
    stream: String,
    group: String,
    consumer: Option<String>,
    dead_stream: String,
    options: SourceOptions,
    settlement: Settlement,
    /// The partition count of the address, if it names a keyed stream.
    keyed: Option<u32>,
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
        source.config.consumer = consumer;
        source.config.keyed = keyed;
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
            config: Config {
                connector,
                dead_stream: crate::keys::dead_letter_stream(&stream),
                stream,
                group: group.into(),
                consumer: None,
                options: SourceOptions::new(),
                settlement: Settlement::new(),
                keyed: None,
            },
            running: None,
            _items: PhantomData,
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: SourceOptions) -> Self {
        self.config.options = options;
        self
    }

    /// Reads as the consumer `name` (default: a name made from the host, the process id and
    /// the start time). With several frontend threads, `-<thread>` is appended.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.config.consumer = Some(name.into());
        self
    }

    /// Sends dead letters to `stream` (default `<stream>:dead`).
    #[must_use]
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.config.dead_stream = stream.into();
        self
    }

    /// Counts this source's items in `settlement`, shared with other sources.
    #[must_use]
    pub fn with_settlement(mut self, settlement: &Settlement) -> Self {
        self.config.settlement = settlement.clone();
        self
    }

    /// The settlement of this source's items: wait on it before the program exits.
    pub fn settlement(&self) -> Settlement {
        self.config.settlement.clone()
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.config.stream
    }

    /// Hands out each item with its stable id, as a [`Delivered`](crate::Delivered) (the
    /// stream and the entry id), so that stage code can deduplicate its side effects, and a
    /// [`DedupSink`](crate::DedupSink) can append each item at most once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use engine::redis::{Delivered, StreamAddress, StreamSource};
    /// use engine::threads::Engine;
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
}

consumer_frontend!(StreamSource, StreamTicket);

impl<T, C: Connector> fmt::Debug for StreamSource<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("connector", &self.config.connector)
            .field("stream", &self.config.stream)
            .field("group", &self.config.group)
            .field("consumer", &self.config.consumer)
            .field("dead_stream", &self.config.dead_stream)
            .field("options", &self.config.options)
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
        (_, None) => Err(bad_entry(crate::reason::no_payload(crate::PAYLOAD_FIELD))),
        (_, Some(bytes)) => {
            let item = protocol::from_bytes::<T>(bytes)
                .map_err(|error| bad_entry(crate::reason::decode_failed(&error)))?;
            // The item is handed out next: the engine's frontend takes its trace context.
            if engine_core::trace::enabled() {
                let parent = delivery.trace.as_deref().and_then(|t| t.parse().ok());
                engine_core::trace::set_item_parent(parent);
            }
            Ok(item)
        }
    }
}

/// The [`TrackedFrontend`] of a stream consumer (`StreamSource`, `KeyedSource`): its running
/// state is made in one place, `Running::start(&config, ctx)` of the module it is used in, at
/// setup or by the first `produce` after a failed setup, and `cleanup` finishes it.
macro_rules! consumer_frontend {
    ($source:ident, $ticket:ty) => {
        impl<T: DeserializeOwned, C: Connector> TrackedFrontend for $source<T, C> {
            type Item = T;
            type Ticket = $ticket;

            fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
                self.running = Some(Running::start(&self.config, ctx)?);
                Ok(())
            }

            /// Entries may carry a `traceparent`, which the items continue.
            fn gives_trace_parents(&self) -> bool {
                true
            }

            fn produce(
                &mut self,
                ctx: &StageContext,
            ) -> Result<Option<TrackedItem<Self>>, StageError> {
                let cfg = &self.config;
                $crate::source::started(&mut self.running, || Running::start(cfg, ctx))?
                    .produce(cfg, ctx)
            }

            /// A read ends within the [`block`](SourceOptions::block) time, and `cleanup`
            /// waits up to the [`drain_timeout`](SourceOptions::drain_timeout) for the last
            /// acknowledgements: an engine waits that long after a stop, so that they are sent
            /// when `run` returns.
            fn stop_grace(&self) -> Duration {
                self.config.options.stop_grace()
            }

            fn cleanup(&mut self, _ctx: &StageContext) {
                if let Some(running) = self.running.take() {
                    running.finish(&self.config);
                }
            }
        }
    };
}
pub(crate) use consumer_frontend;

/// The running state, started (once, by a `produce` after a failed setup) if it is not.
pub(crate) fn started<R>(
    running: &mut Option<R>,
    start: impl FnOnce() -> Result<R>,
) -> Result<&mut R> {
    match running {
        Some(running) => Ok(running),
        None => Ok(running.insert(start()?)),
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
