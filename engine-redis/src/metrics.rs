//! A Redis stream's consumer groups as Prometheus metrics (feature `metrics`): what the
//! server says at scrape time (`XINFO GROUPS`, `XLEN` of the dead-letter stream), for the
//! stream or each partition of a keyed stream, with the node serving it on a cluster.

use std::fmt;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::address::StreamAddress;
use crate::broker::Broker;
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
/// (entries in its dead-letter stream) and `engine_redis_up` (label `stream`: 1 if the
/// server answered the scrape). A scrape that cannot reach the server reports
/// `engine_redis_up 0` and nothing else; the next one tries again.
///
/// For a keyed stream (`partitions=<P>` in the address), the group and dead-letter metrics
/// are per partition: `stream` is the partition stream (`<stream>:p<i>`, as its sinks and
/// sources name it), and on a cluster a `node` label names the master serving it
/// (`host:port`), so that a partition that lags, and the node it lags on, can be told apart.
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

    /// What the server says of the stream, or of each of its partitions.
    fn read(&self) -> Option<Vec<Scraped>> {
        let mut broker = engine_core::plumbing::lock(&self.broker);
        if broker.is_none() {
            *broker = RedisBroker::connect(&self.address).ok();
        }
        let answer = Self::ask(broker.as_mut()?, &self.address);
        match answer {
            Ok(scraped) => Some(scraped),
            Err(error) => {
                tracing::debug!("metrics: {error}");
                *broker = None;
                None
            }
        }
    }

    fn ask(broker: &mut RedisBroker, address: &StreamAddress) -> crate::Result<Vec<Scraped>> {
        let streams: Vec<(String, String)> = match address.partitions {
            Some(partitions) => broker
                .partition_streams(address.stream(), partitions.max(1))?
                .into_iter()
                .map(|stream| {
                    let dead = crate::keys::dead_letter_stream(&stream);
                    (stream, dead)
                })
                .collect(),
            None => vec![(address.stream().to_owned(), address.dead_letter_stream())],
        };
        let names: Vec<String> = streams.iter().map(|(stream, _)| stream.clone()).collect();
        let nodes = broker.masters_of(&names)?;
        streams
            .into_iter()
            .zip(nodes)
            .map(|((stream, dead_stream), node)| {
                let (groups, dead) = broker.group_info(&stream, &dead_stream)?;
                Ok(Scraped {
                    stream,
                    node,
                    groups,
                    dead,
                })
            })
            .collect()
    }
}

/// What a scrape found of one stream (or partition).
struct Scraped {
    stream: String,
    /// The master serving it, on a cluster.
    node: Option<String>,
    groups: Vec<redis::streams::StreamInfoGroup>,
    /// The length of its dead-letter stream.
    dead: u64,
}

impl Scraped {
    /// The labels of its metrics, with `group` if given.
    fn labels(&self, group: Option<&str>) -> Vec<(&'static str, String)> {
        let mut labels = vec![("stream", self.stream.clone())];
        if let Some(group) = group {
            labels.push(("group", group.to_owned()));
        }
        if let Some(node) = &self.node {
            labels.push(("node", node.clone()));
        }
        labels
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
        let scraped = self.read();
        let mut up = encoder.encode_descriptor(
            "engine_redis_up",
            "1 if the Redis server answered this scrape.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(scraped.is_some()))
            .encode(up.encode_family(&[("stream", stream)])?)?;
        let Some(scraped) = scraped else {
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
            for one in &scraped {
                for group in &one.groups {
                    let labels = one.labels(Some(&group.name));
                    ConstGauge::new(read(group)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "engine_redis_dead_letters",
            "Entries in the stream's dead-letter stream.",
            None,
            MetricType::Gauge,
        )?;
        for one in &scraped {
            ConstGauge::new(i64::try_from(one.dead).unwrap_or(i64::MAX))
                .encode(family.encode_family(&one.labels(None))?)?;
        }
        Ok(())
    }
}
