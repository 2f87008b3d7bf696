//! The acknowledging thread of a keyed source: settles completions per partition stream, and
//! counts them off the partitions' outstanding entries.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::Completion;
use crate::broker::{Broker, EntryId};
use crate::error::Chain;
use crate::lease::Table;
use crate::retry::retrying;
use crate::source::Settlement;

/// Settles the completions of a keyed source, per partition stream, on its own connection.
pub(super) struct Acker<B> {
    pub(super) broker: B,
    pub(super) streams: Vec<String>,
    pub(super) group: String,
    pub(super) completions: Receiver<Completion>,
    pub(super) table: Arc<Table>,
    pub(super) settlement: Settlement,
    pub(super) retry_for: Duration,
}

/// The most completions settled in one round.
const MAX_SETTLE_BATCH: usize = 8192;

impl<B: Broker> Acker<B> {
    pub(super) fn run(mut self) {
        let partitions = self.streams.len();
        let mut finished: Vec<Vec<EntryId>> = vec![Vec::new(); partitions];
        let mut failed: Vec<Vec<(EntryId, String)>> = vec![Vec::new(); partitions];
        let mut counts = vec![0_u64; partitions];
        loop {
            let first = match self.completions.recv_timeout(Duration::from_secs(3600)) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut next = Some(first);
            let mut n = 0;
            while let Some(completion) = next {
                let p = completion.partition as usize;
                match completion.unfinished {
                    None => finished[p].push(completion.id),
                    Some(Some(reason)) => failed[p].push((completion.id, reason)),
                    Some(None) => {}
                }
                counts[p] += 1;
                n += 1;
                next = if n < MAX_SETTLE_BATCH {
                    self.completions.try_recv().ok()
                } else {
                    None
                };
            }
            for p in 0..partitions {
                if counts[p] == 0 {
                    continue;
                }
                let (broker, stream, group) = (&mut self.broker, &self.streams[p], &self.group);
                let (done, bad) = (&finished[p], &failed[p]);
                if let Err(error) = retrying("acknowledging", self.retry_for, None, || {
                    broker.settle(stream, group, done, bad)
                }) {
                    tracing::error!(stream = %stream, entries = done.len(), error = %Chain(&error), "cannot acknowledge entries; they will be delivered again");
                }
                finished[p].clear();
                failed[p].clear();
                self.table
                    .settled(u32::try_from(p).expect("few partitions"), counts[p]);
                counts[p] = 0;
            }
            self.settlement.settle(n as u64);
        }
    }
}
