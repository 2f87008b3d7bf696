//! The engine's live statistics as Prometheus metrics (feature `metrics`), read at scrape time
//! from the counters the engine keeps anyway: nothing is added to the hot path.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::stats::{StageStats, Stats, StatsSource};

/// A running (or finished) engine's metrics, for a `prometheus_client` registry.
///
/// Register it with [`Registry::register_collector`]; every scrape reads the engine's
/// counters, which it publishes after each batch, so the values are at most one batch old,
/// and exact once the run has ended. The metrics, all with the labels `stage` and `kind`
/// (and `thread` where they are per thread):
///
/// | metric | type | what |
/// |---|---|---|
/// | `engine_items_in`, `_out`, `_filtered`, `_failed`, `_dropped` | counter, per thread | the run report's counts |
/// | `engine_busy_seconds` | counter, per thread | time a thread spent working |
/// | `engine_blocked_seconds` | counter, per thread | time a thread waited for room in a full next queue: backpressure |
/// | `engine_waiting_input_seconds` | counter, per thread | time a thread waited for input: an empty input queue, or a frontend's marked read of its source ([`waiting_for_input`](engine_core::waiting_for_input)); not in `engine_busy_seconds` |
/// | `engine_queue_depth`, `engine_queue_capacity` | gauge | items in the stage's input queue, and the most it holds |
/// | `engine_stage_threads` | gauge | threads of the stage |
/// | `engine_stage_in_flight`, `engine_stage_concurrency_limit` | gauge | an async stage's futures running now, and the most it allows now (fixed or adaptive); only for async stages |
/// | `engine_elapsed_seconds`, `engine_running` | gauge, no labels | time since the start; 1 while the run lasts, 0 after |
///
/// [`Registry::register_collector`]: prometheus_client::registry::Registry::register_collector
///
/// ```
/// use engine::threads::Engine;
/// use prometheus_client::registry::Registry;
///
/// let handle = Engine::builder(0..1000_u64).backend(|_: u64| {}).spawn()?;
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(handle.metrics()));
/// let report = handle.join()?;
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains(r#"engine_items_out_total{stage="backend",kind="backend",thread="0"} 1000"#));
/// assert!(text.contains("engine_running 0"));
/// # drop(report);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct EngineMetrics {
    source: Arc<StatsSource>,
}

impl fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineMetrics").finish_non_exhaustive()
    }
}

impl EngineMetrics {
    pub(crate) fn new(source: Arc<StatsSource>) -> Self {
        Self { source }
    }
}

type Labels = [(&'static str, String); 2];
/// A count of the run report as a metric: its name, its help, and how to read it.
type CountMetric = (&'static str, &'static str, fn(&engine_core::Counts) -> u64);
type ThreadLabels = [(&'static str, String); 3];

fn stage_labels(stage: &StageStats) -> Labels {
    [
        ("stage", stage.name.clone()),
        ("kind", stage.kind.as_str().to_owned()),
    ]
}

fn thread_labels(stage: &StageStats, thread: usize) -> ThreadLabels {
    let [name, kind] = stage_labels(stage);
    [name, kind, ("thread", thread.to_string())]
}

/// Writes one counter family with a value per stage thread.
fn per_thread<V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder<'_>,
    stats: &Stats,
    (name, help): (&str, &str),
    value: impl Fn(&crate::stats::ThreadSnapshot) -> V,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for stage in &stats.stages {
        for (index, thread) in stage.threads.iter().enumerate() {
            let labels = thread_labels(stage, index);
            ConstCounter::new(value(thread)).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Writes one gauge family with a value per stage.
fn per_stage<'s>(
    encoder: &mut DescriptorEncoder<'_>,
    stages: impl IntoIterator<Item = &'s StageStats>,
    (name, help): (&str, &str),
    value: impl Fn(&StageStats) -> i64,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for stage in stages {
        ConstGauge::new(value(stage)).encode(metric.encode_family(&stage_labels(stage))?)?;
    }
    Ok(())
}

/// The run report's counts as metrics: name, help, and how to read each.
const COUNTS: [CountMetric; 5] = [
    ("engine_items_in", "Items a stage thread received.", |c| {
        c.input
    }),
    (
        "engine_items_out",
        "Items a stage thread passed on (or processed, at the last stage).",
        |c| c.output,
    ),
    (
        "engine_items_filtered",
        "Items a stage thread filtered out.",
        |c| c.filtered,
    ),
    (
        "engine_items_failed",
        "Items a stage thread failed on.",
        |c| c.failed,
    ),
    (
        "engine_items_dropped",
        "Items a stage thread dropped at a forced stop.",
        |c| c.dropped,
    ),
];

/// Writes the per-thread families: the counts, and the busy and blocked times.
fn encode_threads(encoder: &mut DescriptorEncoder<'_>, stats: &Stats) -> fmt::Result {
    for (name, help, read) in COUNTS {
        per_thread(encoder, stats, (name, help), |t| read(&t.counts) as f64)?;
    }
    per_thread(
        encoder,
        stats,
        ("engine_busy_seconds", "Time a stage thread spent working."),
        |t| t.busy.as_secs_f64(),
    )?;
    per_thread(
        encoder,
        stats,
        (
            "engine_blocked_seconds",
            "Time a stage thread waited for room in a full next queue (backpressure).",
        ),
        |t| t.blocked.as_secs_f64(),
    )?;
    per_thread(
        encoder,
        stats,
        (
            "engine_waiting_input_seconds",
            "Time a stage thread waited for input (not counted as busy).",
        ),
        |t| t.waiting_for_input.as_secs_f64(),
    )
}

/// Writes the per-stage families: queue depth and capacity, threads.
fn encode_stages(encoder: &mut DescriptorEncoder<'_>, stats: &Stats) -> fmt::Result {
    per_stage(
        encoder,
        &stats.stages,
        (
            "engine_queue_depth",
            "Items waiting in the stage's input queue.",
        ),
        |s| s.queued as i64,
    )?;
    per_stage(
        encoder,
        &stats.stages,
        (
            "engine_queue_capacity",
            "The most items the stage's input queue holds.",
        ),
        |s| s.capacity as i64,
    )?;
    per_stage(
        encoder,
        &stats.stages,
        ("engine_stage_threads", "Threads of the stage."),
        |s| s.threads.len() as i64,
    )?;
    // Only async stages have a limit of futures at once.
    let limited: Vec<&StageStats> = stats
        .stages
        .iter()
        .filter(|s| s.concurrency_limit > 0)
        .collect();
    if limited.is_empty() {
        return Ok(());
    }
    per_stage(
        encoder,
        limited.iter().copied(),
        (
            "engine_stage_in_flight",
            "Futures of an async stage running now.",
        ),
        |s| s.in_flight as i64,
    )?;
    per_stage(
        encoder,
        limited.iter().copied(),
        (
            "engine_stage_concurrency_limit",
            "The most futures an async stage runs at once now (fixed or adaptive).",
        ),
        |s| s.concurrency_limit as i64,
    )
}

/// Writes the run's own gauges: elapsed time, and whether it still runs.
fn encode_run(encoder: &mut DescriptorEncoder<'_>, stats: &Stats) -> fmt::Result {
    let elapsed = encoder.encode_descriptor(
        "engine_elapsed_seconds",
        "Time since the engine started.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(stats.elapsed.as_secs_f64()).encode(elapsed)?;
    let running = encoder.encode_descriptor(
        "engine_running",
        "1 while the run lasts, 0 once it has ended.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(i64::from(!stats.finished)).encode(running)
}

impl Collector for EngineMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = self.source.snapshot();
        encode_threads(&mut encoder, &stats)?;
        encode_stages(&mut encoder, &stats)?;
        encode_run(&mut encoder, &stats)
    }
}
