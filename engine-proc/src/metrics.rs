//! The worker processes of a pool or a placed stage as Prometheus metrics (feature
//! `metrics`), read at scrape time from counters the drivers keep per batch.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::counters::SlotSnapshot;

/// Where worker metrics come from: a pool's workers, or a placed stage's current ones.
pub(crate) trait SlotSource: Send + Sync + 'static {
    /// The pool's or stage's name, and each worker slot.
    fn read(&self) -> (String, Vec<SlotSnapshot>);
}

/// A pool's or placed stage's worker processes, for a `prometheus_client` registry.
///
/// Per worker slot (label `worker`, the slot's index; label `pool`, the pool's or stage's
/// name): `engine_worker_tasks` (tasks run; for a placed stage, batches),
/// `engine_worker_failures`, `engine_worker_deaths`, `engine_worker_respawns`,
/// `engine_worker_recycles` (counters), `engine_worker_up` (gauge: 1 while a live process
/// holds the slot) and `engine_worker_memory_bytes` (gauge: the resident memory of the
/// process holding the slot, read from `/proc` at each scrape; absent for a slot no process
/// holds, and where there is no `/proc`). Register it with
/// [`Registry::register_collector`](prometheus_client::registry::Registry::register_collector).
#[derive(Clone)]
pub struct WorkerMetrics {
    source: Arc<dyn SlotSource>,
}

impl fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    pub(crate) fn new(source: Arc<dyn SlotSource>) -> Self {
        Self { source }
    }
}

type Labels = [(&'static str, String); 2];
/// A slot counter as a metric: its name, its help, and how to read it.
type SlotCounter = (&'static str, &'static str, fn(&SlotSnapshot) -> u64);

impl Collector for WorkerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let (name, slots) = self.source.read();
        let labels: Vec<Labels> = (0..slots.len())
            .map(|i| [("pool", name.clone()), ("worker", i.to_string())])
            .collect();
        let counters: [SlotCounter; 5] = [
            (
                "engine_worker_tasks",
                "Tasks a worker slot ran (batches, for a placed stage).",
                |s| s.tasks,
            ),
            (
                "engine_worker_failures",
                "Tasks that failed in a worker slot.",
                |s| s.failed,
            ),
            (
                "engine_worker_deaths",
                "Worker processes of a slot that died.",
                |s| s.deaths,
            ),
            (
                "engine_worker_respawns",
                "Worker processes started again in a slot after a death.",
                |s| s.respawns,
            ),
            (
                "engine_worker_recycles",
                "Worker processes of a slot replaced while well.",
                |s| s.recycles,
            ),
        ];
        for (metric, help, read) in counters {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for (slot, labels) in slots.iter().zip(&labels) {
                ConstCounter::new(read(slot)).encode(family.encode_family(labels)?)?;
            }
        }
        let mut up = encoder.encode_descriptor(
            "engine_worker_up",
            "1 while a live worker process holds the slot.",
            None,
            MetricType::Gauge,
        )?;
        for (slot, labels) in slots.iter().zip(&labels) {
            ConstGauge::new(i64::from(slot.up)).encode(up.encode_family(labels)?)?;
        }
        let mut memory = encoder.encode_descriptor(
            "engine_worker_memory_bytes",
            "Resident memory of the worker process holding the slot.",
            None,
            MetricType::Gauge,
        )?;
        for (slot, labels) in slots.iter().zip(&labels) {
            if let Some(bytes) = slot.memory {
                let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                ConstGauge::new(bytes).encode(memory.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}
