//! The keyed source: reads the partitions of a keyed stream that this consumer holds leases
//! on, so that each partition is read by one live consumer at a time, in order.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use engine_core::plumbing::{Outcome, Ticket, TrackedFrontend, TrackedItem};
use engine_core::{StageContext, StageError};
use serde::de::DeserializeOwned;

use crate::address::StreamAddress;
use crate::broker::{Broker, Connector, Delivery, EntryId};
use crate::delivered::{EntryTicket, ItemId, WithIds};
use crate::error::{Error, Result};
use crate::lease::{Keeper, Leave, OnOwnership, Ownership, Table};
use crate::retry::Backoff;
use crate::source::{
    Settlement, SourceOptions, consumer_frontend, default_consumer, fatal, remove_idle_consumers,
};
use crate::writer::check_partitions;

mod acker;
mod read;

use acker::Acker;
use read::Next;

/// What became of an entry of a keyed stream, for the acknowledging thread.
#[derive(Debug)]
struct Completion {
    partition: u32,
    id: EntryId,
    /// `None` when finished; otherwise the error to record, if any.
    unfinished: Option<Option<String>>,
}

/// The ticket of an item of a [`KeyedSource`]: acknowledges the entry in its partition
/// stream once the item is [finished](Outcome::is_finished).
#[derive(Debug)]
pub struct KeyedTicket {
    partition: u32,
    id: EntryId,
    stream: Arc<str>,
    completions: Sender<Completion>,
}

impl KeyedTicket {
    /// The partition the item came from.
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl EntryTicket for KeyedTicket {
    fn item_id(&self) -> ItemId {
        ItemId::new(Arc::clone(&self.stream), self.id)
    }
}

impl Ticket for KeyedTicket {
    fn complete(self, outcome: Outcome<'_>) {
        let unfinished = if outcome.is_finished() {
            None
        } else if let Outcome::Failed { stage, error, .. } = outcome {
            Some(Some(format!("{stage}: {error:#}")))
        } else {
            Some(None)
        };
        // If the source is gone the entry stays pending for the partition's next owner.
        let _ = self.completions.send(Completion {
            partition: self.partition,
            id: self.id,
            unfinished,
        });
    }
}

/// A [`TrackedFrontend`] that reads a keyed stream (written by a
/// [keyed](crate::StreamSink::keyed) sink): its `P` partition streams `<stream>:p<i>`,
/// shared by the consumers of a group so that each partition is read by exactly one live
/// consumer at a time, and each key's items are handed out in the order they were written.
///
/// - **Leases.** A partition is owned through a lease on the server (the key
///   `{<stream>:p<i>}:lease:<group>`, set with `PX`), which a keeper thread renews every third
///   of the [lease time](SourceOptions::lease) in one script that also renews this
///   consumer's membership (`{<stream>}:members:<group>`, scored with its expiry) and counts
///   the live consumers. Entries of a partition are handed out only while its lease is
///   surely held (90% of the lease time after the last renewal was sent).
/// - **Fair shares.** Each consumer aims for `ceil(P / live consumers)` partitions: it takes
///   free leases up to that share, and gives up what is above it between batches: it reads
///   no more from such a partition, and releases the lease only once every entry it read
///   from it is finished and acknowledged. So adding a consumer rebalances the partitions
///   without processing any item twice.
/// - **Takeover.** A consumer that dies loses its leases when they run out (the lease time
///   after its last heartbeat); a survivor with room takes the partition and first claims
///   every entry pending in it (`XAUTOCLAIM` from the start, in id order), delivering them
///   again before any new entry. Items the dead consumer had processed but not acknowledged
///   are processed again (at-least-once; a [`DedupSink`](crate::DedupSink) removes the
///   repeats).
/// - **Order.** Within a partition, entries are handed out in stream order. The engine must
///   keep that order up to the last stage: with several transport threads, build it with
///   `ordered(true)` (`engine_threads::EngineBuilder::ordered`, one backend thread), or use
///   one transport thread. A keyed source never hands out a partition's entries while
///   another consumer may: a pipeline that holds an item for longer than the lease time
///   while the server is unreachable is the one case where two owners can overlap.
/// - **Acknowledgement and dead letters** are as for a [`StreamSource`](crate::StreamSource):
///   entries are acknowledged and deleted once finished; an entry delivered more than
///   [`max_deliveries`](SourceOptions::max_deliveries) times, of another protocol version, or
///   that does not decode, goes to the partition's dead-letter stream,
///   `{<stream>:p<i>}:dead` (so `engine dlq ... redis://host/<stream>:p<i>` reads it). There is
///   no idle sweep: the owner of a partition claims its pending entries when it takes it.
///
/// [`on_ownership`](Self::on_ownership) reports each partition taken, given up or lost.
///
/// # Examples
///
/// ```no_run
/// use engine::redis::{KeyedSource, StreamAddress};
/// use engine::threads::Engine;
///
/// let address = StreamAddress::parse("redis://127.0.0.1:6379/payments?partitions=8")?;
/// let source = KeyedSource::<(String, u64)>::new(address);
/// let engine = Engine::builder(source)
///     .transport(|(account, amount): (String, u64)| format!("{account}: {amount}"))
///     .transport_threads(4)
///     .ordered(true) // Each account's payments reach the backend in order.
///     .backend(|line: String| println!("{line}"))
///     .build()?;
/// let _signals = engine::core::install_signal_handler(engine.stop_handle())?;
/// engine.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct KeyedSource<T, C: Connector = StreamAddress> {
    config: Config<C>,
    /// The connections, threads and buffer, from the first setup on: made in one place,
    /// [`Running::start`], from the configuration and the stage context.
    running: Option<Running<C::Broker>>,
    _items: PhantomData<fn() -> T>,
}

/// What a keyed source is given before it starts.
struct Config<C> {
    connector: C,
    stream: String,
    group: String,
    partitions: Option<u32>,
    consumer: Option<String>,
    options: SourceOptions,
    settlement: Settlement,
    on_ownership: Option<OnOwnership>,
}

impl<T> KeyedSource<T, StreamAddress> {
    /// A source reading the keyed stream of `address` (its `partitions=` partitions) through
    /// its group, with the address's tuning keys (`lease_ms=`, `max_deliveries=`,
    /// `block_ms=`). Without `partitions=` (or [`partitions`](Self::partitions)), the setup
    /// fails with [`Error::InvalidAddress`].
    pub fn new(address: StreamAddress) -> Self {
        let options = SourceOptions::from_address(&address);
        let (stream, group) = (address.stream().to_owned(), address.group().to_owned());
        let consumer = address.consumer().map(str::to_owned);
        let partitions = address.partitions;
        let mut source = Self::with_connector(address, stream, group).options(options);
        source.config.partitions = partitions;
        source.config.consumer = consumer;
        source
    }
}

impl<T, C: Connector> KeyedSource<T, C> {
    /// A source reading the keyed stream `stream` through `group` on the broker `connector`
    /// connects to; give the partition count with [`partitions`](Self::partitions).
    pub fn with_connector(
        connector: C,
        stream: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        Self {
            config: Config {
                connector,
                stream: stream.into(),
                group: group.into(),
                partitions: None,
                consumer: None,
                options: SourceOptions::new(),
                settlement: Settlement::new(),
                on_ownership: None,
            },
            running: None,
            _items: PhantomData,
        }
    }

    /// The stream's partition count (0 is taken as 1); it must be the producers'.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.config.partitions = Some(partitions.max(1));
        self
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: SourceOptions) -> Self {
        self.config.options = options;
        self
    }

    /// Reads as the consumer `name` (default: from the host, the process id and the start
    /// time). With several frontend threads, `-<thread>` is appended: each thread is a
    /// consumer with a share of its own.
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.config.consumer = Some(name.into());
        self
    }

    /// Counts this source's items in `settlement`, shared with other sources.
    #[must_use]
    pub fn with_settlement(mut self, settlement: &Settlement) -> Self {
        self.config.settlement = settlement.clone();
        self
    }

    /// The settlement of this source's items.
    pub fn settlement(&self) -> Settlement {
        self.config.settlement.clone()
    }

    /// Calls `f` (on the keeper thread) each time this consumer takes, gives up or loses a
    /// partition: to log ownership, or check it.
    #[must_use]
    pub fn on_ownership(mut self, f: impl Fn(&Ownership) + Send + Sync + 'static) -> Self {
        self.config.on_ownership = Some(Arc::new(f));
        self
    }

    /// Hands out each item with its stable id (its partition stream and entry id), as for
    /// [`StreamSource::with_ids`](crate::StreamSource::with_ids).
    pub fn with_ids(self) -> WithIds<Self> {
        WithIds::new(self)
    }
}

/// A started keyed source.
struct Running<B> {
    broker: B,
    consumer: String,
    /// The partition streams, and their names shared with the tickets.
    streams: Vec<String>,
    names: Vec<Arc<str>>,
    dead: Vec<String>,
    table: Arc<Table>,
    buffer: VecDeque<(u32, Delivery)>,
    completions: Sender<Completion>,
    acker: Option<JoinHandle<()>>,
    keeper: Option<(Sender<Leave>, JoinHandle<()>)>,
    read_backoff: Option<Backoff>,
    /// When to remove the consumers unseen for a while with nothing pending, next.
    next_idle_sweep: Instant,
}

impl<B: Broker + 'static> Running<B> {
    /// Connects, creates the group on every partition, and starts the acknowledging and
    /// keeper threads.
    fn start<C: Connector<Broker = B>>(cfg: &Config<C>, ctx: &StageContext) -> Result<Self> {
        let Some(partitions) = cfg.partitions else {
            return Err(Error::InvalidAddress {
                address: cfg.stream.clone(),
                reason: "a keyed source needs the partition count (partitions=<P>)".to_owned(),
            });
        };
        let mut consumer = cfg.consumer.clone().unwrap_or_else(default_consumer);
        if ctx.instances() > 1 {
            consumer = format!("{consumer}-{}", ctx.index());
        }
        let mut broker = cfg.connector.connect()?;
        check_partitions(&mut broker, &cfg.stream, partitions)?;
        let streams = broker.partition_streams(&cfg.stream, partitions)?;
        for stream in &streams {
            broker.create_group(stream, &cfg.group)?;
        }
        let table = Arc::new(Table::new(partitions));
        let (completions, rx) = crossbeam_channel::unbounded();
        let acker = Acker {
            broker: cfg.connector.connect()?,
            streams: streams.clone(),
            group: cfg.group.clone(),
            completions: rx,
            table: Arc::clone(&table),
            settlement: cfg.settlement.clone(),
            retry_for: cfg.options.get_retry_for(),
        };
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let keeper = Keeper::parts(
            cfg.connector.connect()?,
            &cfg.stream,
            &cfg.group,
            consumer.clone(),
        )
        .finish(
            &streams,
            cfg.options.lease,
            Arc::clone(&table),
            stopped,
            cfg.on_ownership.clone(),
        );
        let spawn_error = |source: std::io::Error| Error::Unreachable {
            server: broker.server().to_owned(),
            source: Box::new(source),
        };
        let acker = std::thread::Builder::new()
            .name(format!("{}-acks", ctx.stage()))
            .spawn(move || acker.run())
            .map_err(spawn_error)?;
        let keeper = std::thread::Builder::new()
            .name(format!("{}-leases", ctx.stage()))
            .spawn(move || keeper.run())
            .map_err(spawn_error)?;
        tracing::debug!(stream = %cfg.stream, group = %cfg.group, consumer = %consumer, partitions, "reading the keyed stream");
        Ok(Self {
            broker,
            consumer,
            names: streams.iter().map(|s| Arc::from(s.as_str())).collect(),
            dead: streams
                .iter()
                .map(|s| crate::keys::dead_letter_stream(s))
                .collect(),
            streams,
            table,
            buffer: VecDeque::new(),
            completions,
            acker: Some(acker),
            keeper: Some((stop, keeper)),
            read_backoff: None,
            next_idle_sweep: Instant::now(),
        })
    }

    /// The next item: what is buffered, else the pending entries of a newly taken
    /// partition, else a read of the partitions held; `None` when the run stops.
    fn produce<T: DeserializeOwned, C>(
        &mut self,
        cfg: &Config<C>,
        ctx: &StageContext,
    ) -> Result<Option<(KeyedTicket, T)>, StageError> {
        loop {
            if let Some((partition, delivery)) = self.buffer.pop_front() {
                match self.hand_out(cfg, partition, delivery, ctx)? {
                    Some(item) => return Ok(Some(item)),
                    None => continue,
                }
            }
            if ctx.is_stopping() {
                return Ok(None);
            }
            if let Some(idle) = cfg.options.remove_idle
                && Instant::now() >= self.next_idle_sweep
            {
                self.remove_idle_consumers(cfg, idle);
                self.next_idle_sweep = Instant::now() + cfg.options.sweep_interval();
            }
            match self.next() {
                Next::TakeOver(partition) => match self.take_over(cfg, partition, ctx) {
                    Err(Error::Aborted) => return Ok(None),
                    other => other.map_err(fatal)?,
                },
                Next::Read(partitions) => self.read(cfg, &partitions, ctx)?,
                Next::Wait => {
                    let block = cfg.options.get_block();
                    let slots = self.table.lock();
                    // Woken by the keeper (a partition taken) or the acknowledging thread (a
                    // partition with nothing outstanding); the block time bounds a stop.
                    let _ = self
                        .table
                        .changed
                        .wait_timeout(slots, block)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
    }

    /// Removes, from the group of every partition, the consumers unseen for `idle` with
    /// nothing pending there, as a plain source does after each sweep: consumers of
    /// processes that are gone do not stay in the groups for ever.
    fn remove_idle_consumers<C>(&mut self, cfg: &Config<C>, idle: Duration) {
        for stream in &self.streams {
            remove_idle_consumers(&mut self.broker, stream, &cfg.group, &self.consumer, idle);
        }
    }

    /// Waits for the items still in the pipeline to be settled, for at most the drain
    /// timeout, then for the last acknowledgements, and leaves: cleanly (giving the leases
    /// up) when everything was settled.
    fn finish<C>(mut self, cfg: &Config<C>) {
        let settled = cfg.settlement.wait(cfg.options.get_drain_timeout());
        drop(self.completions);
        if let Some(acker) = self.acker.take()
            && settled
        {
            let _ = acker.join();
        }
        if let Some((stop, keeper)) = self.keeper.take() {
            let leave = if settled { Leave::Clean } else { Leave::Dirty };
            if !settled {
                tracing::warn!(stream = %cfg.stream, outstanding = cfg.settlement.outstanding(), "items still in the pipeline at cleanup; the leases are left to run out");
            }
            let _ = stop.send(leave);
            let _ = keeper.join();
        }
    }
}

consumer_frontend!(KeyedSource, KeyedTicket);

impl<T, C: Connector> fmt::Debug for KeyedSource<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedSource")
            .field("connector", &self.config.connector)
            .field("stream", &self.config.stream)
            .field("group", &self.config.group)
            .field("partitions", &self.config.partitions)
            .field("consumer", &self.config.consumer)
            .field("options", &self.config.options)
            .field("started", &self.running.is_some())
            .finish_non_exhaustive()
    }
}
