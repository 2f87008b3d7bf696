//! How a stream source takes entries back: the sweep for entries left pending by dead
//! consumers, its own pending list after a lost connection, dead letters for entries
//! delivered too often, and the removal of idle consumers.

use std::time::{Duration, Instant};

use engine_core::StageContext;
use engine_core::plumbing::lock;

use super::super::Config;
use super::Running;
use crate::broker::{Broker, DeadLetter, Delivery, EntryId};
use crate::error::{Chain, Result};
use crate::retry::retrying;

impl<B: Broker + 'static> Running<B> {
    /// Claims entries left pending too long (by dead consumers, mostly); dead-letters those
    /// delivered too often. After a complete pass, removes consumers idle for too long.
    ///
    /// The idle entries are listed first, with their owners, and only those this source is
    /// not working on itself are claimed: `XAUTOCLAIM` would also claim (and count a
    /// delivery of) an item of its own pipeline whose keep-alive was late.
    pub(super) fn sweep<C>(&mut self, cfg: &Config<C>, ctx: &StageContext) -> Result<()> {
        let (broker, stream, group, consumer, in_flight) = (
            &mut self.broker,
            &cfg.stream,
            &cfg.group,
            &self.consumer,
            &self.in_flight,
        );
        let (idle, count) = (cfg.options.claim_idle, cfg.options.batch);
        let after = (self.cursor != EntryId::ZERO).then_some(self.cursor);
        let (listed, last, stale) =
            retrying("claiming", cfg.options.retry_for, Some(ctx.stop()), || {
                // Locked while listing: an entry settled meanwhile is either not listed or
                // still known as in the pipeline.
                let in_flight = lock(in_flight);
                let rows = broker.idle_pending(stream, group, idle, after, count)?;
                let last = rows.last().map(|(_, row)| row.id);
                let listed = rows.len();
                let stale: Vec<_> = rows
                    .into_iter()
                    .filter(|(owner, row)| owner != consumer || !in_flight.contains(&row.id))
                    .map(|(_, row)| row)
                    .collect();
                Ok((listed, last, stale))
            })?;
        let claimed = if stale.is_empty() {
            Vec::new()
        } else {
            let ids: Vec<EntryId> = stale.iter().map(|row| row.id).collect();
            let recover = &mut self.recover;
            let mut claimed =
                retrying("claiming", cfg.options.retry_for, Some(ctx.stop()), || {
                    let claimed = broker.claim_ids(stream, group, consumer, idle, &ids);
                    // Entries claimed in a reply that was lost are pending for us: read them
                    // again.
                    *recover |= claimed.is_err();
                    claimed
                })?;
            for delivery in &mut claimed {
                if let Some(row) = stale.iter().find(|row| row.id == delivery.id) {
                    delivery.deliveries = row.deliveries + 1;
                }
            }
            claimed
        };
        let complete = match last {
            Some(last) if listed >= count => {
                self.cursor = last;
                false
            }
            _ => {
                self.cursor = EntryId::ZERO;
                self.next_sweep = Instant::now() + cfg.options.sweep_interval();
                true
            }
        };
        for delivery in &claimed {
            tracing::debug!(stream = %cfg.stream, id = %delivery.id, deliveries = delivery.deliveries, "claimed a pending entry");
        }
        cfg.settlement.add_reclaimed(claimed.len() as u64);
        self.take_over(cfg, claimed, ctx)?;
        if complete && let Some(idle) = cfg.options.remove_idle {
            self.remove_idle_consumers(cfg, idle);
        }
        Ok(())
    }

    /// Reads this consumer's own pending list again and takes over what is not in the
    /// pipeline: entries delivered in a reply that was lost when the connection broke (the
    /// server logged the delivery, then died before it answered), or left by an earlier run
    /// under the same consumer name. Runs at the start and after every connection error,
    /// before any new entry is read, so healing takes no longer than the reconnect.
    pub(super) fn recover_own<C>(&mut self, cfg: &Config<C>, ctx: &StageContext) -> Result<()> {
        let mut after = None;
        loop {
            let (broker, stream, group, consumer, in_flight, buffer) = (
                &mut self.broker,
                &cfg.stream,
                &cfg.group,
                &self.consumer,
                &self.in_flight,
                &self.buffer,
            );
            let count = cfg.options.batch;
            let (listed, last, lost) = retrying(
                "re-reading pending entries",
                cfg.options.retry_for,
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
                        // Still in the pipeline, or about to be handed out: not lost.
                        .filter(|row| !in_flight.contains(&row.id))
                        .filter(|row| !buffer.iter().any(|queued| queued.id == row.id))
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
                    cfg.options.retry_for,
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
                        stream = %cfg.stream,
                        consumer = %self.consumer,
                        entries = deliveries.len(),
                        "took back entries delivered to this consumer and never handed out"
                    );
                }
                cfg.settlement.add_recovered(deliveries.len() as u64);
                self.take_over(cfg, deliveries, ctx)?;
            }
            match last {
                Some(last) if listed >= count => after = Some(last),
                _ => return Ok(()),
            }
        }
    }

    /// Queues claimed entries to be handed out, and dead-letters those delivered more than
    /// the limit.
    fn take_over<C>(
        &mut self,
        cfg: &Config<C>,
        claimed: Vec<Delivery>,
        ctx: &StageContext,
    ) -> Result<()> {
        let (dead, live): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .partition(|delivery| delivery.deliveries > cfg.options.max_deliveries);
        self.buffer.extend(live);
        if dead.is_empty() {
            return Ok(());
        }
        let mut reasons = Vec::with_capacity(dead.len());
        for delivery in &dead {
            let broker = &mut self.broker;
            let last = retrying(
                "reading errors",
                cfg.options.retry_for,
                Some(ctx.stop()),
                || broker.last_error(&cfg.stream, delivery.id),
            )?;
            reasons.push(crate::reason::delivered_too_often(
                delivery.deliveries,
                cfg.options.max_deliveries,
                last.as_deref(),
            ));
        }
        let letters: Vec<DeadLetter<'_>> = dead
            .iter()
            .zip(&reasons)
            .map(|(delivery, reason)| delivery.dead_letter(reason))
            .collect();
        self.bury(cfg, &letters, ctx)
    }

    /// Removes consumers unseen for `idle` with nothing pending. Best effort: a failure is
    /// logged, and the next complete sweep tries again.
    fn remove_idle_consumers<C>(&mut self, cfg: &Config<C>, idle: Duration) {
        let removed = remove_idle_consumers(
            &mut self.broker,
            &cfg.stream,
            &cfg.group,
            &self.consumer,
            idle,
        );
        // The reply may have been lost with the connection.
        self.recover |= !removed;
    }
}

/// Removes the consumers of `group` on `stream` unseen for `idle` with nothing pending (not
/// `consumer`, this one), and logs them. Best effort: a failure is logged and returns false,
/// and the next sweep tries again.
pub(crate) fn remove_idle_consumers<B: Broker>(
    broker: &mut B,
    stream: &str,
    group: &str,
    consumer: &str,
    idle: Duration,
) -> bool {
    match broker.remove_idle_consumers(stream, group, consumer, idle) {
        Ok(removed) => {
            for name in removed {
                tracing::info!(
                    stream = %stream,
                    group = %group,
                    consumer = %name,
                    idle = ?idle,
                    "removed a consumer idle with nothing pending"
                );
            }
            true
        }
        Err(error) => {
            tracing::warn!(
                stream = %stream,
                error = %Chain(&error),
                "cannot remove idle consumers"
            );
            false
        }
    }
}
