//! What a sink writes with: a buffer per target stream (one, or one per partition of a keyed
//! stream), sent in one round trip per flush, waiting for room under the bound and for the
//! broker to come back.

use std::time::{Duration, Instant};

use engine_core::StageContext;

use crate::broker::{Batch, Broker, Connector, DedupKey};
use crate::error::{Chain, Error, Result};
use crate::partition::{partition_stream, partitions_key};
use crate::retry::{Backoff, retrying};
use crate::sink_options::SinkOptions;

/// How long a sink waits for room under its bound before it warns (once per wait) that the
/// consumers may not be deleting what they finish.
const FULL_WARN_AFTER: Duration = Duration::from_secs(30);

/// The first pause when the stream is at its bound.
const FULL_FIRST_DELAY: Duration = Duration::from_millis(1);
/// The longest pause when the stream is at its bound.
const FULL_MAX_DELAY: Duration = Duration::from_millis(20);

/// The buffers and connection of one sink instance.
pub(crate) struct Writer<C: Connector> {
    pub(crate) connector: C,
    /// The stream written to (for a keyed stream, the name its partitions are named after).
    pub(crate) stream: String,
    pub(crate) options: SinkOptions,
    /// The streams written to: the stream itself, or its partitions.
    streams: Vec<String>,
    broker: Option<C::Broker>,
    payloads: Vec<Vec<Vec<u8>>>,
    dedup_keys: Vec<Vec<DedupKey>>,
    /// Entries appended by this instance, and payloads skipped as duplicates.
    pub(crate) appended: u64,
    pub(crate) duplicates: u64,
}

impl<C: Connector> Writer<C> {
    pub(crate) fn new(connector: C, stream: String, options: SinkOptions) -> Self {
        let mut writer = Self {
            connector,
            stream,
            options,
            streams: Vec::new(),
            broker: None,
            payloads: Vec::new(),
            dedup_keys: Vec::new(),
            appended: 0,
            duplicates: 0,
        };
        writer.set_partitions(None);
        writer
    }

    /// Writes to the partitions of a keyed stream, or (`None`) to the stream itself.
    pub(crate) fn set_partitions(&mut self, partitions: Option<u32>) {
        self.streams = match partitions {
            None => vec![self.stream.clone()],
            Some(p) => (0..p.max(1))
                .map(|i| partition_stream(&self.stream, i))
                .collect(),
        };
        self.payloads = vec![Vec::new(); self.streams.len()];
        self.dedup_keys = vec![Vec::new(); self.streams.len()];
    }

    /// The number of partitions, if the stream is keyed.
    pub(crate) fn partitions(&self) -> Option<u32> {
        (self.streams.first() != Some(&self.stream))
            .then(|| u32::try_from(self.streams.len()).expect("at most u32::MAX partitions"))
    }

    /// Connects, and for a keyed stream checks that its partition count is the one recorded
    /// on the server (recording it if none is).
    pub(crate) fn connect(&mut self) -> Result<()> {
        let mut broker = self.connector.connect()?;
        if let Some(partitions) = self.partitions() {
            check_partitions(&mut broker, &self.stream, partitions)?;
            // On a cluster, the partitions have names that spread them over the masters.
            self.streams = broker.partition_streams(&self.stream, partitions)?;
        }
        self.broker = Some(broker);
        Ok(())
    }

    /// Buffers one encoded item for partition `partition` (0 when not keyed), with its
    /// deduplication key if the sink deduplicates.
    pub(crate) fn push(&mut self, partition: u32, payload: Vec<u8>, dedup_key: Option<DedupKey>) {
        let i = partition as usize;
        self.payloads[i].push(payload);
        if let Some(key) = dedup_key {
            self.dedup_keys[i].push(key);
        }
    }

    /// Drops what is buffered.
    pub(crate) fn clear(&mut self) {
        self.payloads.iter_mut().for_each(Vec::clear);
        self.dedup_keys.iter_mut().for_each(Vec::clear);
    }

    /// Appends the buffers, waiting for room under the bound and for the broker to come back.
    pub(crate) fn write(&mut self, dedup: bool, ctx: &StageContext) -> Result<()> {
        if self.payloads.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let connector = &self.connector;
        let broker = match &mut self.broker {
            Some(broker) => broker,
            None => self.broker.insert(retrying(
                "connecting",
                self.options.retry_for,
                Some(ctx.stop()),
                || connector.connect(),
            )?),
        };
        let mut written = vec![0_usize; self.streams.len()];
        let mut backoff = Backoff::new(self.options.retry_for);
        let mut full = FullWait::new();
        let mut warned = false;
        loop {
            let (targets, batches) = unwritten(
                &self.streams,
                &self.payloads,
                dedup.then_some(self.dedup_keys.as_slice()),
                &written,
            );
            if batches.is_empty() {
                return Ok(());
            }
            match broker.append_batches(&batches, self.options.bound) {
                Ok(appended) => {
                    let taken: usize = appended.taken.iter().sum();
                    self.duplicates += appended.duplicates as u64;
                    self.appended += (taken - appended.duplicates.min(taken)) as u64;
                    for (i, n) in targets.iter().zip(&appended.taken) {
                        written[*i] += n;
                    }
                    backoff.reset();
                    if taken > 0 {
                        full.reset();
                    } else {
                        full.pause(&self.stream, self.options.bound, ctx)?;
                    }
                }
                Err(error) if error.is_retryable() => {
                    if !warned {
                        tracing::warn!(
                            stream = %self.stream,
                            error = %Chain(&error),
                            "append failed; retrying"
                        );
                        warned = true;
                    }
                    backoff.pause(error, Some(ctx.stop()))?;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// What is left to append after `written` payloads of each stream: the streams' numbers
/// and their batches.
fn unwritten<'a>(
    streams: &'a [String],
    payloads: &'a [Vec<Vec<u8>>],
    dedup_keys: Option<&'a [Vec<DedupKey>]>,
    written: &[usize],
) -> (Vec<usize>, Vec<Batch<'a>>) {
    let mut targets = Vec::new();
    let mut batches = Vec::new();
    for (i, stream) in streams.iter().enumerate() {
        let (payloads, from) = (&payloads[i], written[i]);
        if from < payloads.len() {
            targets.push(i);
            batches.push(Batch {
                stream,
                payloads: &payloads[from..],
                dedup_keys: dedup_keys.map(|keys| &keys[i][from..]),
            });
        }
    }
    (targets, batches)
}

/// Waiting for room under the bound: no time limit, quick polls (consumers free room fast),
/// and a warning every [`FULL_WARN_AFTER`] of waiting.
struct FullWait {
    backoff: Backoff,
    since: Option<Instant>,
}

impl FullWait {
    fn new() -> Self {
        Self {
            backoff: Backoff::with_delays(Duration::MAX, FULL_FIRST_DELAY, FULL_MAX_DELAY),
            since: None,
        }
    }

    /// There is room again.
    fn reset(&mut self) {
        self.since = None;
        self.backoff.reset();
    }

    /// Pauses before the next try of a stream at its bound.
    fn pause(&mut self, stream: &str, bound: Option<u64>, ctx: &StageContext) -> Result<()> {
        let since = *self.since.get_or_insert_with(|| {
            tracing::debug!(stream = %stream, "stream full; waiting for room");
            Instant::now()
        });
        if since.elapsed() >= FULL_WARN_AFTER {
            tracing::warn!(
                stream = %stream,
                bound = bound,
                "the stream has been at its bound for {FULL_WARN_AFTER:?}: are its \
                 consumers deleting what they finish? (`SinkOptions::unbounded` \
                 for a stream read by others)"
            );
            self.since = Some(Instant::now());
        }
        self.backoff.pause(Error::Aborted, Some(ctx.stop()))
    }
}

/// Checks that the keyed stream `stream` has `partitions` partitions, recording the count if
/// nobody has yet.
///
/// # Errors
///
/// [`Error::Partitions`] when another count is recorded; a broker error.
pub(crate) fn check_partitions<B: Broker>(
    broker: &mut B,
    stream: &str,
    partitions: u32,
) -> Result<()> {
    let recorded = broker.record_partitions(&partitions_key(stream), partitions)?;
    if recorded == partitions {
        Ok(())
    } else {
        Err(Error::Partitions {
            stream: stream.to_owned(),
            recorded,
            given: partitions,
        })
    }
}
