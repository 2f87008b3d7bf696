//! A Redis stream's consumer groups as Prometheus metrics (feature `metrics`): what the
//! server says at scrape time (`XINFO GROUPS`, `XLEN` of the dead-letter stream).

use std::fmt;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::address::StreamAddress;
use crate::redis_broker::RedisBroker;
use crate::source::Settlement;

/// A group's gauge: its name, its help, and how to read it from `XINFO GROUPS`.
type GroupGauge = (
    &'static str,
    &'static str,
    fn(&redis::streams::StreamInfoGroup) -> i64,
);

/// A stream's consumer groups, for a `prometheus_client` registry: at each scrape it asks the
/// server, over a connection of its own.
///
/// Per group (labels `stream`, `group`): `engine_redis_pending` (entries delivered and not yet
/// acknowledged), `engine_redis_lag` (entries not yet delivered to the group, as `XINFO
/// GROUPS` reports it), `engine_redis_consumers`; per stream: `engine_redis_dead_letters`
/// (entries in its dead-letter stream) and `engine_redis_up` (1 if the server answered the
/// scrape). A scrape that cannot reach the server reports `engine_redis_up 0` and nothing
/// else; the next one tries again.
pub struct StreamMetrics {
    address: StreamAddress,
    broker: Mutex<Option<RedisBroker>>,
    /// The local sources' counts, if this process reads the stream.
    settlement: Option<Settlement>,
}

impl fmt::Debug for StreamMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMetrics")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl StreamMetrics {
    /// The metrics of the stream of `address` (the group named there and every other group
    /// of the stream).
    pub fn new(address: &StreamAddress) -> Self {
        Self {
            address: address.clone(),
            broker: Mutex::new(None),
            settlement: None,
        }
    }

    /// Adds the counts of this process's sources of the stream, through their settlement
    /// ([`StreamSource::settlement`](crate::StreamSource::settlement)):
    /// `engine_redis_reclaimed` (entries taken over from dead consumers) and
    /// `engine_redis_dead_lettered` (entries this process moved to the dead-letter stream).
    #[must_use]
    pub fn with_source(mut self, settlement: &Settlement) -> Self {
        self.settlement = Some(settlement.clone());
        self
    }

    fn read(&self) -> Option<(Vec<redis::streams::StreamInfoGroup>, u64)> {
        let mut broker = engine_core::plumbing::lock(&self.broker);
        if broker.is_none() {
            *broker = RedisBroker::connect(&self.address).ok();
        }
        let answer = broker
            .as_mut()?
            .group_info(self.address.stream(), &self.address.dead_letter_stream());
        match answer {
            Ok(info) => Some(info),
            Err(error) => {
                tracing::debug!("metrics: {error}");
                *broker = None;
                None
            }
        }
    }
}

impl Collector for StreamMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stream = self.address.stream().to_owned();
        if let Some(settlement) = &self.settlement {
            let labels = [("stream", stream.clone())];
            let local: [(&str, &str, u64); 2] = [
                (
                    "engine_redis_reclaimed",
                    "Entries this process's sources took over from other consumers.",
                    settlement.reclaimed(),
                ),
                (
                    "engine_redis_dead_lettered",
                    "Entries this process's sources moved to the dead-letter stream.",
                    settlement.dead_lettered(),
                ),
            ];
            for (name, help, value) in local {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let info = self.read();
        let up = encoder.encode_descriptor(
            "engine_redis_up",
            "1 if the Redis server answered this scrape.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(info.is_some())).encode(up)?;
        let Some((groups, dead)) = info else {
            return Ok(());
        };
        let per_group: [GroupGauge; 3] = [
            (
                "engine_redis_pending",
                "Entries delivered to the group and not acknowledged.",
                |g| g.pending as i64,
            ),
            (
                "engine_redis_lag",
                "Entries of the stream not yet delivered to the group.",
                |g| g.lag.map_or(-1, |l| l as i64),
            ),
            ("engine_redis_consumers", "Consumers in the group.", |g| {
                g.consumers as i64
            }),
        ];
        for (name, help, read) in per_group {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for group in &groups {
                let labels = [("stream", stream.clone()), ("group", group.name.clone())];
                ConstGauge::new(read(group)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "engine_redis_dead_letters",
            "Entries in the stream's dead-letter stream.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("stream", stream)];
        ConstGauge::new(i64::try_from(dead).unwrap_or(i64::MAX))
            .encode(family.encode_family(&labels)?)?;
        Ok(())
    }
}
