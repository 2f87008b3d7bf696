//! How a keyed source reads: what to do next, taking a partition over (its pending entries
//! first), reading the owned partitions, and handing entries out while the lease holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::{StageContext, StageError};

use serde::de::DeserializeOwned;

use super::{Config, KeyedTicket, Running};
use crate::broker::{Broker, DeadLetter, Delivery, EntryId};
use crate::error::{Chain, Error, Result};
use crate::retry::{Backoff, retrying};
use crate::source::{decode, fatal};

/// What the frontend does next.
pub(super) enum Next {
    /// Claim the pending entries of a newly taken partition.
    TakeOver(u32),
    /// Read new entries from these partitions.
    Read(Vec<u32>),
    /// Nothing to read: wait for the keeper.
    Wait,
}

impl<B: Broker + 'static> Running<B> {
    /// Chooses what to do, from the table.
    pub(super) fn next(&mut self) -> Next {
        let now = Instant::now();
        let slots = self.table.lock();
        let mut read = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let partition = u32::try_from(i).expect("few partitions");
            if !slot.owned(now) {
                continue;
            }
            if slot.fresh {
                // Only once nothing of ours is outstanding there: what is pending is then
                // exactly what nobody is working on.
                if slot.outstanding == 0 {
                    return Next::TakeOver(partition);
                }
            } else if !slot.releasing {
                read.push(partition);
            }
        }
        if read.is_empty() {
            Next::Wait
        } else {
            Next::Read(read)
        }
    }

    /// Claims every entry pending in `partition`, in id order, and queues them first.
    pub(super) fn take_over<C>(
        &mut self,
        cfg: &Config<C>,
        partition: u32,
        ctx: &StageContext,
    ) -> Result<()> {
        let (retry_for, count, limit) = (
            cfg.options.get_retry_for(),
            cfg.options.get_batch(),
            cfg.options.get_max_deliveries(),
        );
        let group = cfg.group.clone();
        let stream = self.streams[partition as usize].clone();
        let mut from = EntryId::ZERO;
        let mut claimed = Vec::new();
        loop {
            let (broker, consumer) = (&mut self.broker, &self.consumer);
            let pass = retrying("claiming a partition", retry_for, Some(ctx.stop()), || {
                broker.claim(&stream, &group, consumer, Duration::ZERO, from, count)
            })?;
            claimed.extend(pass.deliveries);
            match pass.next {
                Some(next) => from = next,
                None => break,
            }
        }
        let (dead, live): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .partition(|delivery| delivery.deliveries > limit);
        if !live.is_empty() {
            tracing::info!(stream = %stream, entries = live.len(), "took over the pending entries of a partition");
        }
        {
            let mut slots = self.table.lock();
            let slot = &mut slots[partition as usize];
            slot.outstanding += live.len() as u64;
            slot.fresh = false;
        }
        self.buffer
            .extend(live.into_iter().map(|delivery| (partition, delivery)));
        let reasons: Vec<String> = dead
            .iter()
            .map(|d| crate::reason::delivered_too_often(d.deliveries, limit, None))
            .collect();
        let letters: Vec<DeadLetter<'_>> = dead
            .iter()
            .zip(&reasons)
            .map(|(delivery, reason)| delivery.dead_letter(reason))
            .collect();
        self.bury(cfg, partition, &letters, ctx)
    }

    /// Sends entries of `partition` to its dead-letter stream.
    fn bury<C>(
        &mut self,
        cfg: &Config<C>,
        partition: u32,
        letters: &[DeadLetter<'_>],
        ctx: &StageContext,
    ) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let (retry_for, group) = (cfg.options.get_retry_for(), cfg.group.clone());
        let (stream, dead) = (
            &self.streams[partition as usize],
            &self.dead[partition as usize],
        );
        for letter in letters {
            tracing::warn!(stream = %stream, id = %letter.id, reason = letter.reason, dead_letter_stream = %dead, "entry moved to the dead-letter stream");
        }
        let broker = &mut self.broker;
        retrying("dead-lettering", retry_for, Some(ctx.stop()), || {
            broker.dead_letter(stream, &group, dead, letters)
        })
    }

    /// Reads new entries from `partitions`, in one request.
    pub(super) fn read<C>(
        &mut self,
        cfg: &Config<C>,
        partitions: &[u32],
        ctx: &StageContext,
    ) -> Result<(), StageError> {
        let (count, block, retry_for) = (
            cfg.options.get_batch(),
            cfg.options.get_block(),
            cfg.options.get_retry_for(),
        );
        let group = cfg.group.clone();
        let streams: Vec<&str> = partitions
            .iter()
            .map(|p| self.streams[*p as usize].as_str())
            .collect();
        // A read waits for the stream: the engine counts it as waiting for input, not work.
        let read = engine_core::waiting_for_input(|| {
            self.broker
                .read_streams(&streams, &group, &self.consumer, count, block)
        });
        match read {
            Ok(read) => {
                if self.read_backoff.take().is_some() {
                    tracing::info!(stream = %cfg.stream, "reading: the broker is back");
                }
                let mut slots = self.table.lock();
                for (index, deliveries) in read {
                    let partition = partitions[index];
                    slots[partition as usize].outstanding += deliveries.len() as u64;
                    self.buffer
                        .extend(deliveries.into_iter().map(|d| (partition, d)));
                }
                Ok(())
            }
            Err(error) if error.is_retryable() => {
                // The lost reply may have delivered entries: claim them again, once the
                // pipeline holds nothing of these partitions.
                {
                    let mut slots = self.table.lock();
                    for p in partitions {
                        slots[*p as usize].fresh = true;
                    }
                }
                let backoff = self.read_backoff.get_or_insert_with(|| {
                    tracing::warn!(error = %Chain(&error), "reading: retrying");
                    Backoff::new(retry_for)
                });
                match backoff.pause(error, Some(ctx.stop())) {
                    Ok(()) | Err(Error::Aborted) => Ok(()),
                    Err(error) => Err(fatal(error)),
                }
            }
            Err(error) => Err(fatal(error)),
        }
    }

    /// Hands one delivery out, or dead-letters it; `None` when its partition is no longer
    /// owned: the delivery and every other buffered entry of the partition stay pending, for
    /// the next owner, or for this consumer to claim again in order if its lease held after
    /// all.
    pub(super) fn hand_out<T: DeserializeOwned, C>(
        &mut self,
        cfg: &Config<C>,
        partition: u32,
        delivery: Delivery,
        ctx: &StageContext,
    ) -> Result<Option<(KeyedTicket, T)>, StageError> {
        {
            let mut slots = self.table.lock();
            let slot = &mut slots[partition as usize];
            if !slot.owned(Instant::now()) {
                // A heartbeat whose reply is late lets the lease lapse here only: when it
                // comes, the keeper may find the lease still (or again) this consumer's, and
                // the partition is owned again without a take-over. The entries dropped now
                // are pending for this consumer, where no read of new entries finds them:
                // claim them again first, so nothing stays stuck there. The later entries go
                // with them, so that the partition's order holds.
                let before = self.buffer.len();
                self.buffer.retain(|(p, _)| *p != partition);
                let dropped = 1 + (before - self.buffer.len()) as u64;
                slot.outstanding = slot.outstanding.saturating_sub(dropped);
                slot.fresh = true;
                drop(slots);
                self.table.changed.notify_all();
                return Ok(None);
            }
        }
        let stream = Arc::clone(&self.names[partition as usize]);
        match decode::<T>(&stream, &delivery) {
            Ok(item) => {
                cfg.settlement.issue();
                let ticket = KeyedTicket {
                    partition,
                    id: delivery.id,
                    stream,
                    completions: self.completions.clone(),
                };
                Ok(Some((ticket, item)))
            }
            Err(error) => {
                let reason = error.dead_letter_reason();
                let letter = delivery.dead_letter(&reason);
                self.bury(cfg, partition, &[letter], ctx).map_err(fatal)?;
                self.table.settled(partition, 1);
                Err(StageError::new(error))
            }
        }
    }
}
