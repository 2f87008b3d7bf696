//! A started stream source: its connection, its buffer and its acknowledging thread, made in
//! one place from the configuration and the stage context, and how it hands out entries.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use engine_core::plumbing::lock;
use engine_core::{StageContext, StageError};
use serde::de::DeserializeOwned;

use super::{Acker, Completion, Config, StreamTicket, decode, default_consumer, fatal};

mod recover;

use crate::broker::{Broker, Connector, DeadLetter, Delivery, EntryId};
use crate::error::{Chain, Error, Result};
use crate::retry::{Backoff, retrying};
pub(crate) use recover::remove_idle_consumers;

/// A started source: its connection and what it holds.
pub(super) struct Running<B> {
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

impl<B: Broker + 'static> Running<B> {
    /// Connects, creates the group and starts the acknowledging thread.
    pub(super) fn start<C: Connector<Broker = B>>(
        cfg: &Config<C>,
        ctx: &StageContext,
    ) -> Result<Self> {
        if let Some(partitions) = cfg.keyed {
            return Err(Error::InvalidAddress {
                address: cfg.stream.clone(),
                reason: format!(
                    "the stream is keyed (partitions={partitions}): read it with a KeyedSource"
                ),
            });
        }
        let mut consumer = cfg.consumer.clone().unwrap_or_else(default_consumer);
        if ctx.instances() > 1 {
            consumer = format!("{consumer}-{}", ctx.index());
        }
        let mut broker = cfg.connector.connect()?;
        broker.create_group(&cfg.stream, &cfg.group)?;
        let acks = cfg.connector.connect()?;
        let (completions, rx) = crossbeam_channel::unbounded();
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let acker = Acker {
            broker: acks,
            stream: cfg.stream.clone(),
            group: cfg.group.clone(),
            completions: rx,
            in_flight: Arc::clone(&in_flight),
            settlement: cfg.settlement.clone(),
            retry_for: cfg.options.retry_for,
            consumer: consumer.clone(),
            heartbeat: (cfg.options.claim_idle / 3).max(Duration::from_millis(10)),
        };
        let acker = std::thread::Builder::new()
            .name(format!("{}-acks", ctx.stage()))
            .spawn(move || acker.run())
            .map_err(|source| Error::Unreachable {
                server: broker.server().to_owned(),
                source: Box::new(source),
            })?;
        tracing::debug!(
            stream = %cfg.stream,
            group = %cfg.group,
            consumer = %consumer,
            server = broker.server(),
            "reading the stream"
        );
        Ok(Self {
            broker,
            stream: Arc::from(cfg.stream.as_str()),
            consumer,
            buffer: VecDeque::new(),
            completions,
            acker: Some(acker),
            in_flight,
            next_sweep: Instant::now(),
            cursor: EntryId::ZERO,
            recover: true,
            read_backoff: None,
        })
    }

    /// Hands one delivery to the pipeline, or dead-letters it if it was written with another
    /// protocol version or does not decode.
    ///
    /// An entry without a version field (written by hand, or by a build older than versioned
    /// entries) is taken for the current version: it is handed out if it decodes.
    fn hand_out<T: DeserializeOwned, C>(
        &mut self,
        cfg: &Config<C>,
        delivery: Delivery,
        ctx: &StageContext,
    ) -> Result<Option<(StreamTicket, T)>, StageError> {
        let decoded = decode::<T>(&cfg.stream, &delivery);
        match decoded {
            Ok(item) => {
                lock(&self.in_flight).insert(delivery.id);
                cfg.settlement.issue();
                let ticket = StreamTicket {
                    id: delivery.id,
                    stream: Arc::clone(&self.stream),
                    completions: self.completions.clone(),
                };
                Ok(Some((ticket, item)))
            }
            Err(error) => {
                let reason = error.dead_letter_reason();
                let letter = delivery.dead_letter(&reason);
                self.bury(cfg, &[letter], ctx).map_err(fatal)?;
                Err(StageError::new(error))
            }
        }
    }

    /// Sends entries to the dead-letter stream.
    fn bury<C>(
        &mut self,
        cfg: &Config<C>,
        letters: &[DeadLetter<'_>],
        ctx: &StageContext,
    ) -> Result<()> {
        for letter in letters {
            tracing::warn!(
                stream = %cfg.stream,
                id = %letter.id,
                deliveries = letter.deliveries,
                reason = letter.reason,
                dead_letter_stream = %cfg.dead_stream,
                "entry moved to the dead-letter stream"
            );
        }
        let (broker, stream, group, dead, recover) = (
            &mut self.broker,
            &cfg.stream,
            &cfg.group,
            &cfg.dead_stream,
            &mut self.recover,
        );
        let buried = retrying(
            "dead-lettering",
            cfg.options.retry_for,
            Some(ctx.stop()),
            || {
                let buried = broker.dead_letter(stream, group, dead, letters);
                *recover |= buried.is_err();
                buried
            },
        );
        if buried.is_ok() {
            cfg.settlement.add_dead_lettered(letters.len() as u64);
        }
        buried
    }

    /// The next item: what is buffered, else what the sweep or the own pending list gives
    /// back when they are due, else a read of new entries; `None` when the run stops.
    pub(super) fn produce<T: DeserializeOwned, C>(
        &mut self,
        cfg: &Config<C>,
        ctx: &StageContext,
    ) -> Result<Option<(StreamTicket, T)>, StageError> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return self.hand_out(cfg, delivery, ctx);
            }
            if ctx.is_stopping() {
                return Ok(None);
            }
            if Instant::now() >= self.next_sweep {
                match self.sweep(cfg, ctx) {
                    Err(Error::Aborted) => return Ok(None),
                    other => other.map_err(fatal)?,
                }
                continue;
            }
            // After the sweep (whose claims are handed out first, so that they are known as
            // in the pipeline), before any new entry.
            if self.recover {
                match self.recover_own(cfg, ctx) {
                    Err(Error::Aborted) => return Ok(None),
                    other => other.map_err(fatal)?,
                }
                self.recover = false;
                continue;
            }
            if let Err(error) = self.read(cfg, ctx) {
                return match error {
                    Error::Aborted => Ok(None),
                    error => Err(fatal(error)),
                };
            }
        }
    }

    /// Reads new entries into the buffer, once. After a failure, the own pending list is
    /// read again (the lost reply may have delivered entries) before the next read of new
    /// ones, after a backoff.
    fn read<C>(&mut self, cfg: &Config<C>, ctx: &StageContext) -> Result<()> {
        let (count, block) = (cfg.options.batch, cfg.options.block);
        // A read waits for the stream: the engine counts it as waiting for input, not work.
        let read = engine_core::waiting_for_input(|| {
            self.broker
                .read(&cfg.stream, &cfg.group, &self.consumer, count, block)
        });
        match read {
            Ok(deliveries) => {
                if self.read_backoff.take().is_some() {
                    tracing::info!(stream = %cfg.stream, "reading: the broker is back");
                }
                // An entry handed out already can come back as new when the server lost its
                // delivery (a restart from an older snapshot): the pipeline still has it, and
                // its completion settles this delivery too.
                let in_flight = lock(&self.in_flight);
                self.buffer.extend(
                    deliveries
                        .into_iter()
                        .filter(|delivery| !in_flight.contains(&delivery.id)),
                );
                Ok(())
            }
            Err(error) if error.is_retryable() => {
                self.recover = true;
                let retry_for = cfg.options.retry_for;
                let backoff = self.read_backoff.get_or_insert_with(|| {
                    tracing::warn!(error = %Chain(&error), "reading: retrying");
                    Backoff::new(retry_for)
                });
                backoff.pause(error, Some(ctx.stop()))
            }
            Err(error) => Err(error),
        }
    }

    /// Waits for the items still in the pipeline to be settled, for at most the drain
    /// timeout, and then for the last acknowledgements to be sent.
    pub(super) fn finish<C>(mut self, cfg: &Config<C>) {
        let settled = cfg.settlement.wait(cfg.options.drain_timeout);
        drop(self.completions);
        if !settled {
            tracing::warn!(
                stream = %cfg.stream,
                outstanding = cfg.settlement.outstanding(),
                "items still in the pipeline at cleanup; they will be delivered again"
            );
            return;
        }
        if let Some(acker) = self.acker.take() {
            let _ = acker.join();
        }
    }
}
