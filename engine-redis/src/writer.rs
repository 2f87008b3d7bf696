//! What a sink writes with: a buffer per target stream (one, or one per partition of a keyed
//! stream), sent in one round trip per flush, waiting for room under the bound and for the
//! broker to come back.

use std::time::{Duration, Instant};

use engine_core::StageContext;

use crate::broker::{Batch, Broker, Connector, DedupKey};
use crate::error::{Chain, Error, Result};
use crate::partition::{partition_stream, partitions_key};
use crate::retry::{Backoff, retrying};
use crate::sink::SinkOptions;

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
        if self.broker.is_none() {
            let connector = &self.connector;
            let broker = retrying(
                "connecting",
                self.options.retry_for,
                Some(ctx.stop()),
                || connector.connect(),
            )?;
            self.broker = Some(broker);
        }
        let broker = self.broker.as_mut().expect("connected just above");
        let mut written = vec![0_usize; self.streams.len()];
        let mut backoff = Backoff::new(self.options.retry_for);
        // Waiting for room has no time limit, and polls quickly: consumers free room fast.
        let mut full = Backoff::with_delays(Duration::MAX, FULL_FIRST_DELAY, FULL_MAX_DELAY);
        let mut full_since = None;
        let mut warned = false;
        loop {
            let mut batches = Vec::new();
            let mut targets = Vec::new();
            for (i, stream) in self.streams.iter().enumerate() {
                let (payloads, from) = (&self.payloads[i], written[i]);
                if from < payloads.len() {
                    targets.push(i);
                    batches.push(Batch {
                        stream,
                        payloads: &payloads[from..],
                        dedup_keys: dedup.then(|| &self.dedup_keys[i][from..]),
                    });
                }
            }
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
                        full_since = None;
                        full.reset();
                        continue;
                    }
                    let since = *full_since.get_or_insert_with(|| {
                        tracing::debug!(stream = %self.stream, "stream full; waiting for room");
                        Instant::now()
                    });
                    if since.elapsed() >= FULL_WARN_AFTER {
                        tracing::warn!(
                            stream = %self.stream,
                            bound = self.options.bound,
                            "the stream has been at its bound for {FULL_WARN_AFTER:?}: are its \
                             consumers deleting what they finish? (`SinkOptions::unbounded` \
                             for a stream read by others)"
                        );
                        full_since = Some(Instant::now());
                    }
                    full.pause(Error::Aborted, Some(ctx.stop()))?;
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
