//! Stages on several machines, connected through Redis Streams.
//!
//! A [`StreamSink`] is a [`Backend`](engine_core::Backend) that appends items to a stream; a
//! [`StreamSource`] is a [`TrackedFrontend`](engine_core::plumbing::TrackedFrontend) that reads a
//! stream through a consumer group. Put a sink at the end of one machine's pipeline and
//! sources at the start of several others, and the stream spreads the items over them, with
//! at-least-once delivery:
//!
//! - **Acknowledged when finished.** A source acknowledges an entry (`XACK`, then `XDEL`)
//!   only once its item is [finished](engine_core::plumbing::Outcome::is_finished): processed,
//!   filtered, or failed under the skip policy. A sink writes its buffer in
//!   [`Backend::flush`](engine_core::Backend::flush), before the engine settles the tickets,
//!   so an item is acknowledged upstream only once it is in the next stream. An item dropped
//!   by an abort, or in a process that died, is delivered again.
//! - **Healing at once.** On start and after every connection error, a source first reads
//!   its own pending list again (`XPENDING` for itself, then `XCLAIM` of what is not in its
//!   pipeline), and only then reads new entries: entries delivered in a reply that was lost
//!   when the server crashed come back as soon as the source reconnects.
//! - **Redelivery.** Each source sweeps (`XAUTOCLAIM`) for entries pending longer than
//!   [`SourceOptions::claim_idle`], such as those of a dead consumer, and takes them over.
//!   Consumers unseen for [an hour](DEFAULT_REMOVE_IDLE_CONSUMERS) with nothing pending are
//!   removed from the group ([`SourceOptions::remove_consumers_idle_for`]).
//! - **Dead letters.** An entry delivered more than [`SourceOptions::max_deliveries`] times,
//!   or one that does not decode, goes to the dead-letter stream (`{<stream>}:dead`) with the
//!   reason, and is acknowledged, instead of looping for ever. [`DeadLetters`] lists them and
//!   moves chosen ones back to the stream (`engine dlq list|show|replay`).
//! - **Backpressure.** A sink appends only while the stream holds fewer unfinished entries
//!   than its [bound](SinkOptions::bound) ([`DEFAULT_BOUND`] unless set) (an atomic check-and-add script) and
//!   otherwise waits, so memory in Redis stays bounded; the stream is never trimmed.
//! - **Connections.** Each stage connects in `setup` (an unreachable server fails the run at
//!   once, with [`Error::Unreachable`]), and reconnects with a backoff when the server goes
//!   away, for [`SinkOptions::retry_for`]. Blocking reads wait longer than their block time.
//!
//! - **Order per key.** A [keyed](StreamSink::keyed) sink hashes each item's key (XXH3) to
//!   one of `P` partition streams, `<stream>:p<i>` ([`partition_of`]); a [`KeyedSource`]
//!   reads only the partitions it holds a lease on, renewed by a heartbeat, each consumer
//!   aiming for `ceil(P / live consumers)`. A dead consumer's partitions, pending entries
//!   first, move to the survivors when its leases run out ([`DEFAULT_LEASE`]); a new one
//!   gets its share from owners that give partitions up only once all they read from them
//!   is acknowledged.
//! - **Effects at most once.** [`StreamSource::with_ids`] hands out [`Delivered`] items
//!   carrying their stable [`ItemId`] (stream and entry id); a [`DedupSink`]
//!   ([`StreamSink::dedup`]) records each id in the same script as the append, so an item
//!   delivered again within the window is appended once.
//! - **TLS and auth.** `rediss://` connects with TLS (rustls, through the `redis` crate),
//!   trusting the system's roots or the CA file of `?ca=<path>`; `user:password@` (or
//!   `:password@`) authenticates. A refused password is [`Error::Unauthorized`]; the
//!   password is never shown in a log line, an error or an address's `Display`/`Debug`.
//!
//! - **Redis Cluster.** `redis+cluster://h1:7000,h2:7001/<stream>` (and `rediss+cluster://`)
//!   names a cluster by seed nodes. Every key of a stream, or of one partition of a keyed
//!   stream, is in one hash slot, and every script declares its keys; a keyed stream's
//!   partitions are named so that they spread evenly over the masters (the names are
//!   recorded on the server, `{<stream>}:placement`, so every producer and consumer agrees);
//!   redirections are followed, and an error that may come from a failover makes the next
//!   command start again from the seeds.
//! - **Durability.** Redis replicates asynchronously, so a failover can lose writes the
//!   master confirmed. With `replicas=N` ([`StreamAddress::with_replicas`]) every write
//!   waits until `N` replicas confirm it (`WAIT`): a sink's batch is reported written, and
//!   so acknowledged upstream, only then, and a source's acknowledgements are replicated
//!   before the next batch. A write not confirmed in time fails with
//!   [`Error::NotReplicated`] instead of hanging; its batch is not acknowledged upstream.
//!   Without it (the default), at-least-once and order per key hold while the master
//!   lives; a failover can lose what the master confirmed last, including items a sink
//!   reported written (and a source then acknowledged upstream), and undo acknowledgements
//!   (repeats). With it, an item a sink reported written survives the failover of its
//!   master to a confirming replica; acknowledgements lost with a failover still mean
//!   repeats, which a [`DedupSink`] absorbs.
//!
//! Items are encoded with [`engine_core::protocol::to_bytes`] (postcard) in the entry field
//! `d` ([`PAYLOAD_FIELD`]), next to the protocol version in `v` ([`VERSION_FIELD`]); a source
//! dead-letters an entry of another version, with a reason that names both, and goes on.
//! An entry appended within a traced batch also carries its W3C `traceparent`
//! ([`TRACE_FIELD`]), and the item a source reads from it continues that trace
//! (see `engine_core::trace`); without a trace hook, no entry has the field.
//! Streams are named by a [`StreamAddress`]:
//! `redis[s]://[user:password@]host:port/<stream>?group=<group>`.
//!
//! The broker sits behind the [`Broker`] and [`Connector`] traits; [`RedisBroker`] is the
//! Redis implementation, and another broker (NATS JetStream) can follow without changing the
//! stages.
//!
//! # Example
//!
//! A producer machine appends numbers to the stream `numbers`; each consumer machine runs the
//! second engine, and the consumers share the numbers through the group `adders`:
//!
//! ```no_run
//! use engine::redis::{SinkOptions, StreamAddress, StreamSink, StreamSource};
//! use engine::threads::Engine;
//!
//! let address = StreamAddress::parse("redis://127.0.0.1:6379/numbers?group=adders")?;
//!
//! // The producer: at most 10,000 unfinished numbers in the stream at once.
//! let sink = StreamSink::<u64>::new(address.clone()).options(SinkOptions::new().bound(10_000));
//! Engine::builder(1..=1_000_000_u64).backend(sink).run()?;
//!
//! // A consumer: runs until Ctrl-C; `run` returns once its last acknowledgements are sent.
//! let source = StreamSource::<u64>::new(address);
//! let engine = Engine::builder(source)
//!     .transport(|n: u64| n * 2)
//!     .backend(|n: u64| println!("{n}"))
//!     .build()?;
//! let _signals = engine::core::install_signal_handler(engine.stop_handle())?;
//! let report = engine.run()?;
//! eprintln!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `examples/redis_scale_out.rs` for one producer and two consumer processes checking
//! that every item is processed exactly once, and `cargo xtask bench redis` for throughput
//! against a hand-written loop.
//!
//! With the `testing` feature, `testing::Server` starts a throwaway `redis-server` on a free
//! port, for tests, benchmarks and examples.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod address;
mod broker;
mod dead_letters;
mod dedup;
mod delivered;
mod entry_id;
mod error;
mod keyed_source;
mod keys;
mod lease;
#[cfg(feature = "metrics")]
mod metrics;
mod partition;
mod reason;
mod redis_broker;
mod retry;
mod sink;
mod sink_options;
mod source;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod writer;

pub use address::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_REPLICAS_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT, StreamAddress,
};
pub use broker::{
    Appended, Batch, Beat, Broker, Claimed, Connector, DeadLetter, DedupKey, Delivery, EntryId,
    Leases, ParseEntryIdError, Pending,
};
pub use dead_letters::{DeadEntry, DeadLetters, Replayed};
pub use dedup::{DEFAULT_DEDUP_WINDOW, DedupSink};
pub use delivered::{Delivered, EntryTicket, ItemId, WithIds};
pub use error::{Error, Result};
pub use keyed_source::{KeyedSource, KeyedTicket};
pub use lease::{DEFAULT_LEASE, Ownership};
#[cfg(feature = "metrics")]
pub use metrics::StreamMetrics;
pub use partition::{partition_of, partition_stream};
pub use redis_broker::{PAYLOAD_FIELD, RedisBroker, TRACE_FIELD, VERSION_FIELD};
pub use sink::StreamSink;
pub use sink_options::{DEFAULT_BOUND, DEFAULT_RETRY_FOR, SinkOptions};
pub use source::{
    DEFAULT_BATCH, DEFAULT_BLOCK, DEFAULT_CLAIM_IDLE, DEFAULT_MAX_DELIVERIES,
    DEFAULT_REMOVE_IDLE_CONSUMERS, Settlement, SourceOptions, StreamSource, StreamTicket,
};

/// The `redis` crate this crate is built on (1.x), for programs that talk to the same server
/// directly: to inspect streams, or to write a hand-made baseline.
#[doc(no_inline)]
pub use redis;
