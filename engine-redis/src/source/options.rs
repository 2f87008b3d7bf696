//! The options of a stream source: batch and block time, claiming, dead letters, retries,
//! draining, idle consumers and leases.

use std::time::Duration;

use super::{
    DEFAULT_BATCH, DEFAULT_BLOCK, DEFAULT_CLAIM_IDLE, DEFAULT_MAX_DELIVERIES,
    DEFAULT_REMOVE_IDLE_CONSUMERS,
};
use crate::address::StreamAddress;
use crate::sink_options::DEFAULT_RETRY_FOR;

/// The options of a [`StreamSource`](crate::StreamSource).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine::redis::SourceOptions;
///
/// let options = SourceOptions::new()
///     .max_deliveries(3)
///     .claim_idle(Duration::from_secs(5))
///     .block(Duration::from_millis(100));
/// assert_eq!(options.get_max_deliveries(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOptions {
    pub(crate) batch: usize,
    pub(crate) block: Duration,
    pub(crate) claim_idle: Duration,
    pub(crate) sweep_every: Option<Duration>,
    pub(crate) max_deliveries: u64,
    pub(crate) retry_for: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) remove_idle: Option<Duration>,
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
    /// handed to its pipeline ([`Broker::keep_alive`](crate::Broker::keep_alive)), so a slow pipeline does not get its
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
    /// consumer removed while idle is created again by its next read. A
    /// [`KeyedSource`](crate::KeyedSource) does the same in the group of every partition, at
    /// the start and then every [`sweep_every`](Self::sweep_every).
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

    /// How long an engine waits for a stopped source: a read ends within the block time,
    /// and the cleanup waits up to the drain timeout for the last acknowledgements.
    pub(crate) fn stop_grace(&self) -> Duration {
        self.block.saturating_add(self.drain_timeout)
    }

    pub(crate) fn sweep_interval(&self) -> Duration {
        self.sweep_every
            .unwrap_or(self.claim_idle / 2)
            .max(Duration::from_millis(10))
    }
}
