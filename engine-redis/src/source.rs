//! The stream source: a tracked frontend that reads a stream through a consumer group and
//! acknowledges each entry only once the pipeline has finished with it.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use engine_core::plumbing::{Outcome, Ticket, TrackedFrontend, TrackedItem, lock};
use engine_core::{StageContext, StageError, protocol};
use serde::de::DeserializeOwned;

use crate::address::StreamAddress;
use crate::broker::{Broker, Connector, DeadLetter, Delivery, EntryId};
use crate::delivered::{EntryTicket, ItemId, WithIds};
use crate::error::{Chain, Error, Result};
use crate::retry::{Backoff, retrying};
use crate::sink::DEFAULT_RETRY_FOR;

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

/// The most completions the acknowledging thread settles in one round trip.
const MAX_SETTLE_BATCH: usize = 8192;

/// The options of a [`StreamSource`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine_redis::SourceOptions;
///
/// let options = SourceOptions::new()
///     .max_deliveries(3)
///     .claim_idle(Duration::from_secs(5))
///     .block(Duration::from_millis(100));
/// assert_eq!(options.get_max_deliveries(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOptions {
    batch: usize,
    block: Duration,
    claim_idle: Duration,
    sweep_every: Option<Duration>,
    max_deliveries: u64,
    retry_for: Duration,
    drain_timeout: Duration,
    remove_idle: Option<Duration>,
    pub(crate) lease: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            block: DEFAULT_BLOCK,
            claim_idle: DEFAULT_CLAIM_IDLE,
            sweep_every: None,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            retry_for: DEFAULT_RETRY_FOR,
            drain_timeout: Duration::from_secs(30),
            remove_idle: Some(DEFAULT_REMOVE_IDLE_CONSUMERS),
            lease: crate::lease::DEFAULT_LEASE,
        }
    }
}

impl SourceOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries one read (`XREADGROUP COUNT`) asks for (default [`DEFAULT_BATCH`];
    /// 0 is taken as 1).
    #[must_use]
    pub fn batch(mut self, entries: usize) -> Self {
        self.batch = entries.max(1);
        self
    }

    /// How long one read waits for new entries (`BLOCK`, default [`DEFAULT_BLOCK`]; at least
    /// 1 ms). A stop is noticed when the read returns, so this bounds how long a stop takes
    /// while the stream is silent.
    #[must_use]
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// How long an entry must have been pending before the sweep claims it (`XAUTOCLAIM`
    /// min-idle-time; default [`DEFAULT_CLAIM_IDLE`]).
    ///
    /// A live source says every third of this time that it still works on the items it
    /// handed to its pipeline ([`Broker::keep_alive`]), so a slow pipeline does not get its
    /// items taken over; entries it read but has not handed out yet (at most one read's
    /// [`batch`](Self::batch)) are not covered, so keep it well above what the pipeline
    /// takes to accept one batch.
    #[must_use]
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How often to sweep for entries left pending by dead consumers (default: half of
    /// [`claim_idle`](Self::claim_idle)). A sweep also runs when the source starts.
    #[must_use]
    pub fn sweep_every(mut self, every: Duration) -> Self {
        self.sweep_every = Some(every);
        self
    }

    /// How many deliveries an entry gets before it goes to the dead-letter stream (default
    /// [`DEFAULT_MAX_DELIVERIES`]; 0 is taken as 1). An entry claimed with a higher delivery
    /// count is dead-lettered, with the last error recorded for it, and acknowledged.
    #[must_use]
    pub fn max_deliveries(mut self, deliveries: u64) -> Self {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// The limit of deliveries.
    pub fn get_max_deliveries(&self) -> u64 {
        self.max_deliveries
    }

    /// How long to keep retrying when the broker is unreachable or busy before the source
    /// fails (default [`DEFAULT_RETRY_FOR`]).
    #[must_use]
    pub fn retry_for(mut self, budget: Duration) -> Self {
        self.retry_for = budget;
        self
    }

    /// How long `cleanup` waits for the items still in the pipeline to be finished and
    /// acknowledged (default 30 s).
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Removes from the group, after each complete sweep, the consumers that have had nothing
    /// pending and have not been seen (no read, no claim) for `idle` (default
    /// [`DEFAULT_REMOVE_IDLE_CONSUMERS`], one hour), so that consumers of processes that
    /// are gone do not stay in the group for ever. The check and the removal are one atomic
    /// step on the server, so a consumer with pending entries is never removed; a live
    /// consumer removed while idle is created again by its next read.
    #[must_use]
    pub fn remove_consumers_idle_for(mut self, idle: Duration) -> Self {
        self.remove_idle = Some(idle);
        self
    }

    /// How long a [`KeyedSource`](crate::KeyedSource)'s lease on a partition lasts without
    /// renewal (default [`DEFAULT_LEASE`](crate::DEFAULT_LEASE); at least 10 ms; a plain
    /// source has no leases). The lease is renewed every third of this; a consumer that dies
    /// loses its partitions this long after its last renewal.
    #[must_use]
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = ttl.max(Duration::from_millis(10));
        self
    }

    /// Never removes idle consumers from the group.
    #[must_use]
    pub fn keep_idle_consumers(mut self) -> Self {
        self.remove_idle = None;
        self
    }

    /// How long an idle consumer with nothing pending stays in the group, if it is removed.
    pub fn get_remove_idle(&self) -> Option<Duration> {
        self.remove_idle
    }

    pub(crate) fn get_batch(&self) -> usize {
        self.batch
    }

    pub(crate) fn get_block(&self) -> Duration {
        self.block
    }

    pub(crate) fn get_retry_for(&self) -> Duration {
        self.retry_for
    }

    pub(crate) fn get_drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// The options of `address`'s tuning keys, over the defaults.
    pub(crate) fn from_address(address: &StreamAddress) -> Self {
        let mut options = Self::new();
        if let Some(n) = address.max_deliveries {
            options = options.max_deliveries(n);
        }
        if let Some(idle) = address.claim_idle {
            options = options.claim_idle(idle);
        }
        if let Some(block) = address.block {
            options = options.block(block);
        }
        if let Some(idle) = address.remove_idle {
            options = options.remove_consumers_idle_for(idle);
        }
        if let Some(lease) = address.lease {
            options = options.lease(lease);
        }
        options
    }

    fn sweep_interval(&self) -> Duration {
        self.sweep_every
            .unwrap_or(self.claim_idle / 2)
            .max(Duration::from_millis(10))
    }
}

/// Counts the items a source handed out and how many of them are settled (acknowledged, or
/// left for redelivery).
///
/// The threaded engine waits for a source's cleanup (which sends the last acknowledgements)
/// before `run` returns, through the source's
/// [`stop_grace`](engine_core::plumbing::TrackedFrontend::stop_grace); the settlement is for watching
/// progress, and for an engine that does not wait for its frontends. Cloning shares the
/// counts; sources given the same settlement ([`StreamSource::with_settlement`]) share it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine_redis::Settlement;
///
/// let settlement = Settlement::new();
/// assert_eq!(settlement.outstanding(), 0);
/// assert!(settlement.wait(Duration::ZERO));
/// ```
#[derive(Clone, Default)]
pub struct Settlement(Arc<Tally>);

#[derive(Default)]
struct Tally {
    issued: AtomicU64,
    /// Entries this source took over from other consumers' pending lists.
    reclaimed: AtomicU64,
    /// Entries this source moved to the dead-letter stream.
    dead_lettered: AtomicU64,
    settled: Mutex<u64>,
    changed: Condvar,
}

impl Settlement {
    /// A settlement with nothing handed out.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries the sources of this settlement took over from other (dead)
    /// consumers' pending lists.
    pub fn reclaimed(&self) -> u64 {
        self.0.reclaimed.load(Ordering::Relaxed)
    }

    /// How many entries the sources of this settlement moved to the dead-letter stream.
    pub fn dead_lettered(&self) -> u64 {
        self.0.dead_lettered.load(Ordering::Relaxed)
    }

    /// How many items were handed out and are not settled yet.
    pub fn outstanding(&self) -> u64 {
        let settled = *self.settled();
        self.0.issued.load(Ordering::SeqCst).saturating_sub(settled)
    }

    /// Waits until every item handed out so far is settled, for at most `timeout`; returns
    /// whether they are.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut settled = self.settled();
        loop {
            if *settled >= self.0.issued.load(Ordering::SeqCst) {
                return true;
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            settled = self
                .0
                .changed
                .wait_timeout(settled, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn settled(&self) -> MutexGuard<'_, u64> {
        lock(&self.0.settled)
    }

    pub(crate) fn issue(&self) {
        self.0.issued.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn settle(&self, n: u64) {
        *self.settled() += n;
        self.0.changed.notify_all();
    }
}

impl fmt::Debug for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settlement")
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

/// What became of an entry, as sent to the acknowledging thread.
#[derive(Debug)]
enum Completion {
    /// Finished: acknowledge and delete.
    Finished(EntryId),
    /// Failed without being finished: leave pending, record the error.
    Failed(EntryId, String),
    /// Dropped: leave pending, to be delivered again.
    Released(EntryId),
}

/// The ticket of an item of a [`StreamSource`]: acknowledges the entry when the item is
/// [finished](Outcome::is_finished), and otherwise leaves it pending to be delivered again.
///
/// Acknowledgements are batched: the ticket hands the entry's id to the source's
/// acknowledging thread, which sends one `XACK` + `XDEL` per batch.
#[derive(Debug)]
pub struct StreamTicket {
    id: EntryId,
    stream: Arc<str>,
    completions: Sender<Completion>,
}

impl StreamTicket {
    /// The entry's id.
    pub fn id(&self) -> EntryId {
        self.id
    }
}

impl EntryTicket for StreamTicket {
    fn item_id(&self) -> ItemId {
        ItemId::new(Arc::clone(&self.stream), self.id)
    }
}

impl Ticket for StreamTicket {
    fn complete(self, outcome: Outcome<'_>) {
        let completion = if outcome.is_finished() {
            Completion::Finished(self.id)
        } else if let Outcome::Failed { stage, error, .. } = outcome {
            Completion::Failed(self.id, format!("{stage}: {error:#}"))
        } else {
            Completion::Released(self.id)
        };
        // If the source is gone the entry stays pending and is delivered again: what
        // at-least-once needs.
        let _ = self.completions.send(completion);
    }
}

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
            self.settlement
                .0
                .dead_lettered
                .fetch_add(letters.len() as u64, Ordering::Relaxed);
        }
        buried
    }

    /// Claims entries left pending too long (by dead consumers, mostly); dead-letters those
    /// delivered too often. After a complete pass, removes consumers idle for too long.
    fn sweep(&mut self, ctx: &StageContext) -> Result<()> {
        let running = self.running.as_mut().expect("a source sweeps once started");
        let (broker, stream, group, consumer, in_flight, recover) = (
            &mut running.broker,
            &self.stream,
            &self.group,
            &running.consumer,
            &running.in_flight,
            &mut running.recover,
        );
        let (idle, from, count) = (self.options.claim_idle, running.cursor, self.options.batch);
        let (next, claimed) =
            retrying("claiming", self.options.retry_for, Some(ctx.stop()), || {
                // The set stays locked while the claim runs, so that an entry the acknowledging
                // thread settles meanwhile is either not claimed or still known as ours.
                let in_flight = lock(in_flight);
                let claimed = broker.claim(stream, group, consumer, idle, from, count);
                // Entries claimed in a reply that was lost are pending for us: read them again.
                *recover |= claimed.is_err();
                let claimed = claimed?;
                let fresh: Vec<Delivery> = claimed
                    .deliveries
                    .into_iter()
                    // Ours, and still in the pipeline: the claim only refreshed it.
                    .filter(|delivery| !in_flight.contains(&delivery.id))
                    .collect();
                Ok((claimed.next, fresh))
            })?;
        let complete = next.is_none();
        match next {
            Some(next) => running.cursor = next,
            None => {
                running.cursor = EntryId::ZERO;
                running.next_sweep = Instant::now() + self.options.sweep_interval();
            }
        }
        for delivery in &claimed {
            tracing::debug!(stream = %self.stream, id = %delivery.id, deliveries = delivery.deliveries, "claimed a pending entry");
        }
        self.settlement
            .0
            .reclaimed
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        self.take_over(claimed, ctx)?;
        if complete && let Some(idle) = self.options.remove_idle {
            self.remove_idle_consumers(idle);
        }
        Ok(())
    }

    /// Reads this consumer's own pending list again and takes over what is not in the
    /// pipeline: entries delivered in a reply that was lost when the connection broke (the
    /// server logged the delivery, then died before it answered), or left by an earlier run
    /// under the same consumer name. Runs at the start and after every connection error,
    /// before any new entry is read, so healing takes no longer than the reconnect.
    fn recover_own(&mut self, ctx: &StageContext) -> Result<()> {
        let mut after = None;
        loop {
            let running = self
                .running
                .as_mut()
                .expect("a source recovers once started");
            let (broker, stream, group, consumer, in_flight) = (
                &mut running.broker,
                &self.stream,
                &self.group,
                &running.consumer,
                &running.in_flight,
            );
            let count = self.options.batch;
            let (listed, last, lost) = retrying(
                "re-reading pending entries",
                self.options.retry_for,
                Some(ctx.stop()),
                || {
                    // Locked while listing: an entry settled meanwhile is either not listed
                    // or still known as in the pipeline.
                    let in_flight = lock(in_flight);
                    let rows = broker.own_pending(stream, group, consumer, after, count)?;
                    let last = rows.last().map(|row| row.id);
                    let listed = rows.len();
                    let lost: Vec<_> = rows
                        .into_iter()
                        .filter(|row| !in_flight.contains(&row.id))
                        .collect();
                    Ok((listed, last, lost))
                },
            )?;
            if !lost.is_empty() {
                let ids: Vec<EntryId> = lost.iter().map(|row| row.id).collect();
                // Claimed only if nobody touched them since they were listed.
                let min_idle = lost.iter().map(|row| row.idle).min().unwrap_or_default();
                let mut deliveries = retrying(
                    "re-reading pending entries",
                    self.options.retry_for,
                    Some(ctx.stop()),
                    || broker.claim_ids(stream, group, consumer, min_idle, &ids),
                )?;
                for delivery in &mut deliveries {
                    if let Some(row) = lost.iter().find(|row| row.id == delivery.id) {
                        delivery.deliveries = row.deliveries + 1;
                    }
                }
                if !deliveries.is_empty() {
                    tracing::info!(
                        stream = %self.stream,
                        consumer = %running.consumer,
                        entries = deliveries.len(),
                        "took back entries delivered to this consumer and never handed out"
                    );
                }
                self.take_over(deliveries, ctx)?;
            }
            match last {
                Some(last) if listed >= count => after = Some(last),
                _ => return Ok(()),
            }
        }
    }

    /// Queues claimed entries to be handed out, and dead-letters those delivered more than
    /// the limit.
    fn take_over(&mut self, claimed: Vec<Delivery>, ctx: &StageContext) -> Result<()> {
        let running = self
            .running
            .as_mut()
            .expect("a source takes over once started");
        let (dead, live): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .partition(|delivery| delivery.deliveries > self.options.max_deliveries);
        running.buffer.extend(live);
        if dead.is_empty() {
            return Ok(());
        }
        let mut reasons = Vec::with_capacity(dead.len());
        for delivery in &dead {
            let broker = &mut running.broker;
            let last = retrying(
                "reading errors",
                self.options.retry_for,
                Some(ctx.stop()),
                || broker.last_error(&self.stream, delivery.id),
            )?;
            let limit = self.options.max_deliveries;
            reasons.push(match last {
                Some(error) => format!(
                    "delivered {} times (limit {limit}); last error: {error}",
                    delivery.deliveries
                ),
                None => format!(
                    "delivered {} times (limit {limit}) without being finished; no error was \
                     recorded (a consumer stopped or crashed with it)",
                    delivery.deliveries
                ),
            });
        }
        let letters: Vec<DeadLetter<'_>> = dead
            .iter()
            .zip(&reasons)
            .map(|(delivery, reason)| delivery.dead_letter(reason))
            .collect();
        self.bury(&letters, ctx)
    }

    /// Removes consumers unseen for `idle` with nothing pending. Best effort: a failure is
    /// logged, and the next complete sweep tries again.
    fn remove_idle_consumers(&mut self, idle: Duration) {
        let running = self.running.as_mut().expect("a source sweeps once started");
        match running.broker.remove_idle_consumers(
            &self.stream,
            &self.group,
            &running.consumer,
            idle,
        ) {
            Ok(removed) => {
                for name in removed {
                    tracing::info!(
                        stream = %self.stream,
                        group = %self.group,
                        consumer = %name,
                        idle = ?idle,
                        "removed a consumer idle with nothing pending"
                    );
                }
            }
            Err(error) => {
                running.recover = true;
                tracing::warn!(
                    stream = %self.stream,
                    error = %Chain(&error),
                    "cannot remove idle consumers"
                );
            }
        }
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

/// The thread that settles completions in batches, on a connection of its own, so that
/// acknowledgements never wait behind a blocking read.
struct Acker<B> {
    broker: B,
    stream: String,
    group: String,
    completions: Receiver<Completion>,
    in_flight: Arc<Mutex<HashSet<EntryId>>>,
    settlement: Settlement,
    retry_for: Duration,
    /// The consumer the entries are pending for.
    consumer: String,
    /// How often to say that the items in the pipeline are still being worked on.
    heartbeat: Duration,
}

impl<B: Broker> Acker<B> {
    fn run(mut self) {
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        let mut released = Vec::new();
        let mut next_beat = Instant::now() + self.heartbeat;
        loop {
            let first = match self.completions.recv_deadline(next_beat) {
                Ok(first) => Some(first),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if Instant::now() >= next_beat {
                self.keep_alive();
                next_beat = Instant::now() + self.heartbeat;
            }
            let Some(first) = first else { continue };
            let mut next = Some(first);
            let mut n = 0;
            while let Some(completion) = next {
                match completion {
                    Completion::Finished(id) => finished.push(id),
                    Completion::Failed(id, reason) => failed.push((id, reason)),
                    Completion::Released(id) => released.push(id),
                }
                n += 1;
                next = if n < MAX_SETTLE_BATCH {
                    self.completions.try_recv().ok()
                } else {
                    None
                };
            }
            let (broker, stream, group) = (&mut self.broker, &self.stream, &self.group);
            let settled = retrying("acknowledging", self.retry_for, None, || {
                broker.settle(stream, group, &finished, &failed)
            });
            if let Err(error) = settled {
                tracing::error!(
                    stream = %self.stream,
                    entries = finished.len(),
                    error = %Chain(&error),
                    "cannot acknowledge entries; they will be delivered again"
                );
            }
            {
                let mut in_flight = lock(&self.in_flight);
                for id in finished
                    .drain(..)
                    .chain(failed.drain(..).map(|(id, _)| id))
                    .chain(released.drain(..))
                {
                    in_flight.remove(&id);
                }
            }
            self.settlement.settle(n as u64);
        }
    }

    /// Tells the broker the items in the pipeline are still being worked on. A failure is
    /// logged; the next beat tries again.
    fn keep_alive(&mut self) {
        let ids: Vec<EntryId> = lock(&self.in_flight).iter().copied().collect();
        if ids.is_empty() {
            return;
        }
        if let Err(error) = self
            .broker
            .keep_alive(&self.stream, &self.group, &self.consumer, &ids)
        {
            tracing::warn!(
                stream = %self.stream,
                entries = ids.len(),
                error = %Chain(&error),
                "cannot say the entries in the pipeline are still being worked on"
            );
        }
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
