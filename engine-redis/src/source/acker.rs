//! The acknowledging thread of a stream source: settles completions in batches on a
//! connection of its own, and keeps the items in the pipeline from being claimed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use engine_core::plumbing::lock;

use super::{Completion, MAX_SETTLE_BATCH, Settlement};
use crate::broker::{Broker, EntryId};
use crate::error::Chain;
use crate::retry::retrying;

/// The thread that settles completions in batches, on a connection of its own, so that
/// acknowledgements never wait behind a blocking read.
pub(super) struct Acker<B> {
    pub(super) broker: B,
    pub(super) stream: String,
    pub(super) group: String,
    pub(super) completions: Receiver<Completion>,
    pub(super) in_flight: Arc<Mutex<HashSet<EntryId>>>,
    pub(super) settlement: Settlement,
    pub(super) retry_for: Duration,
    /// The consumer the entries are pending for.
    pub(super) consumer: String,
    /// How often to say that the items in the pipeline are still being worked on.
    pub(super) heartbeat: Duration,
}

impl<B: Broker> Acker<B> {
    pub(super) fn run(mut self) {
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
