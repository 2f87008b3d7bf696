//! What one look at a running engine or pod shows, read from its `/metrics` (or from the
//! engine's own statistics); two looks in a row give the rates and the bottleneck
//! (`verdict.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};

/// One look at a running engine's stages and a pod's beans.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    /// The engine's time since its start (0 if the metrics had none).
    pub elapsed: Duration,
    /// Whether the engine still runs (true if the metrics did not say).
    pub running: bool,
    /// The stages, in pipeline order.
    pub stages: Vec<StageSample>,
    /// The pod's beans, by id.
    pub beans: Vec<BeanSample>,
}

/// One stage in a [`Snapshot`]: its counts and times, summed over its threads.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct StageSample {
    /// The stage's name.
    pub name: String,
    /// `frontend`, `transport` or `backend`.
    pub kind: String,
    /// Threads of the stage.
    pub threads: u64,
    /// Items received.
    pub items_in: f64,
    /// Items passed on (or processed, at the last stage).
    pub items_out: f64,
    /// Items filtered out.
    pub filtered: f64,
    /// Items failed.
    pub failed: f64,
    /// Items dropped at a forced stop.
    pub dropped: f64,
    /// Seconds its threads spent working, together.
    pub busy_seconds: f64,
    /// Seconds its threads waited for room in a full next queue, together.
    pub blocked_seconds: f64,
    /// Seconds its threads waited for input (an empty input queue, or a frontend's marked
    /// read of its source), together; not in `busy_seconds`.
    pub waiting_input_seconds: f64,
    /// An async stage's futures in flight now (0 for other stages).
    pub in_flight: f64,
    /// An async stage's limit of futures in flight now (0 for other stages).
    pub concurrency_limit: f64,
    /// Items in its input queue.
    pub queue_depth: f64,
    /// The most items its input queue holds.
    pub queue_capacity: f64,
}

impl StageSample {
    /// A stage with no counts yet.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            ..Self::default()
        }
    }

    /// Items the stage has finished with: passed on, filtered or failed.
    pub fn handled(&self) -> f64 {
        self.items_out + self.filtered + self.failed
    }
}

/// One bean of a pod in a [`Snapshot`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct BeanSample {
    /// The bean's id.
    pub id: String,
    /// Its label, if any.
    pub label: String,
    /// Its registered name.
    pub core: String,
    /// Its state (`running`, `ready`, `failed`, ...).
    pub state: String,
    /// Times it was restarted.
    pub restarts: f64,
    /// Seconds since it (re)started.
    pub uptime_seconds: f64,
}

/// Why a scrape could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The text is not the Prometheus text format.
    #[error("not Prometheus metrics: {0}")]
    Format(#[from] std::io::Error),
}

fn value(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        Value::Histogram(_) | Value::Summary(_) => 0.0,
    }
}

impl Snapshot {
    /// A snapshot of `stages` (no beans), taken `at`: how a program builds one from an
    /// engine's own statistics.
    pub fn new(at: Instant, elapsed: Duration, running: bool, stages: Vec<StageSample>) -> Self {
        Self {
            at,
            elapsed,
            running,
            stages,
            beans: Vec::new(),
        }
    }

    /// Reads the metrics an engine (`engine_*`) and a pod (`engine_bean_*`) serve, from the
    /// Prometheus or OpenMetrics text of a scrape taken `at`.
    ///
    /// # Errors
    ///
    /// [`ParseError`] if the text is not in the Prometheus text format.
    pub fn parse(text: &str, at: Instant) -> Result<Self, ParseError> {
        let lines = text
            .lines()
            .filter(|l| !l.starts_with("# EOF") && !l.starts_with("# UNIT"))
            .map(|l| Ok(l.to_owned()));
        let scrape = Scrape::parse(lines)?;
        let mut snapshot = Snapshot {
            at,
            elapsed: Duration::ZERO,
            running: true,
            stages: Vec::new(),
            beans: Vec::new(),
        };
        // Stages keep the order they first appear in: the pipeline's.
        let mut order: Vec<(String, String)> = Vec::new();
        let mut stages: BTreeMap<(String, String), StageSample> = BTreeMap::new();
        let mut beans: BTreeMap<String, BeanSample> = BTreeMap::new();
        for sample in &scrape.samples {
            let v = value(&sample.value);
            let name = sample.metric.trim_end_matches("_total");
            match name {
                "engine_elapsed_seconds" => snapshot.elapsed = Duration::from_secs_f64(v.max(0.0)),
                "engine_running" => snapshot.running = v != 0.0,
                _ if name.starts_with("engine_bean_") => {
                    let Some(id) = sample.labels.get("id") else {
                        continue;
                    };
                    let bean = beans.entry(id.to_owned()).or_insert_with(|| BeanSample {
                        id: id.to_owned(),
                        label: sample.labels.get("label").unwrap_or("").to_owned(),
                        core: sample.labels.get("core").unwrap_or("").to_owned(),
                        ..BeanSample::default()
                    });
                    match name {
                        "engine_bean_state" if v != 0.0 => {
                            bean.state = sample.labels.get("state").unwrap_or("").to_owned();
                        }
                        "engine_bean_restarts" => bean.restarts = v,
                        "engine_bean_uptime_seconds" => bean.uptime_seconds = v,
                        _ => {}
                    }
                }
                _ => {
                    let (Some(stage), Some(kind)) =
                        (sample.labels.get("stage"), sample.labels.get("kind"))
                    else {
                        continue;
                    };
                    let key = (stage.to_owned(), kind.to_owned());
                    if !stages.contains_key(&key) {
                        order.push(key.clone());
                    }
                    let s = stages
                        .entry(key)
                        .or_insert_with(|| StageSample::new(stage, kind));
                    match name {
                        "engine_items_in" => s.items_in += v,
                        "engine_items_out" => s.items_out += v,
                        "engine_items_filtered" => s.filtered += v,
                        "engine_items_failed" => s.failed += v,
                        "engine_items_dropped" => s.dropped += v,
                        "engine_busy_seconds" => s.busy_seconds += v,
                        "engine_blocked_seconds" => s.blocked_seconds += v,
                        "engine_waiting_input_seconds" => s.waiting_input_seconds += v,
                        "engine_stage_in_flight" => s.in_flight = v,
                        "engine_stage_concurrency_limit" => s.concurrency_limit = v,
                        "engine_queue_depth" => s.queue_depth = v,
                        "engine_queue_capacity" => s.queue_capacity = v,
                        "engine_stage_threads" => s.threads = v as u64,
                        _ => {}
                    }
                }
            }
        }
        snapshot.stages = order
            .into_iter()
            .filter_map(|key| stages.remove(&key))
            .collect();
        snapshot.beans = beans.into_values().collect();
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{bottleneck, rates};

    const TEXT: &str = r#"# HELP engine_items_in Items a stage thread received.
# TYPE engine_items_in counter
engine_items_in_total{stage="frontend",kind="frontend",thread="0"} 100
engine_items_in_total{stage="parse",kind="transport",thread="0"} 60
engine_items_in_total{stage="parse",kind="transport",thread="1"} 40
engine_items_in_total{stage="sink",kind="backend",thread="0"} 90
# TYPE engine_items_out counter
engine_items_out_total{stage="parse",kind="transport",thread="0"} 55
engine_items_out_total{stage="parse",kind="transport",thread="1"} 35
engine_items_out_total{stage="sink",kind="backend",thread="0"} 80
# TYPE engine_busy_seconds counter
engine_busy_seconds_total{stage="parse",kind="transport",thread="0"} 0.5
engine_busy_seconds_total{stage="parse",kind="transport",thread="1"} 0.5
engine_busy_seconds_total{stage="sink",kind="backend",thread="0"} 1.9
# TYPE engine_blocked_seconds counter
engine_blocked_seconds_total{stage="parse",kind="transport",thread="0"} 1.2
# TYPE engine_waiting_input_seconds counter
engine_waiting_input_seconds_total{stage="frontend",kind="frontend",thread="0"} 1.5
# TYPE engine_stage_in_flight gauge
engine_stage_in_flight{stage="parse",kind="transport"} 812
# TYPE engine_stage_concurrency_limit gauge
engine_stage_concurrency_limit{stage="parse",kind="transport"} 1024
# TYPE engine_queue_depth gauge
engine_queue_depth{stage="sink",kind="backend"} 512
# TYPE engine_queue_capacity gauge
engine_queue_capacity{stage="sink",kind="backend"} 1024
# TYPE engine_stage_threads gauge
engine_stage_threads{stage="parse",kind="transport"} 2
engine_stage_threads{stage="sink",kind="backend"} 1
# TYPE engine_elapsed_seconds gauge
engine_elapsed_seconds 2.0
# TYPE engine_running gauge
engine_running 1
# TYPE engine_bean_restarts counter
engine_bean_restarts_total{id="1",label="web",core="http"} 3
# TYPE engine_bean_state gauge
engine_bean_state{id="1",label="web",core="http",state="running"} 1
engine_bean_state{id="1",label="web",core="http",state="failed"} 0
# EOF
"#;

    #[test]
    fn a_scrape_reads_as_stages_in_pipeline_order_and_beans() {
        let snap = Snapshot::parse(TEXT, Instant::now()).unwrap();
        let names: Vec<&str> = snap.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["frontend", "parse", "sink"]);
        let parse = &snap.stages[1];
        assert_eq!(
            (parse.items_in, parse.items_out, parse.threads),
            (100.0, 90.0, 2)
        );
        assert_eq!((parse.in_flight, parse.concurrency_limit), (812.0, 1024.0));
        assert_eq!(snap.stages[0].waiting_input_seconds, 1.5);
        assert_eq!(snap.elapsed, Duration::from_secs(2));
        assert!(snap.running);
        assert_eq!(snap.beans.len(), 1);
        assert_eq!(
            (snap.beans[0].state.as_str(), snap.beans[0].restarts),
            ("running", 3.0)
        );
    }

    #[test]
    fn the_busiest_stage_is_the_bottleneck_and_the_blocked_one_is_backpressured() {
        let snap = Snapshot::parse(TEXT, Instant::now()).unwrap();
        let rates = rates(None, &snap);
        let sink = rates.iter().find(|r| r.name == "sink").unwrap();
        assert!((sink.busy - 0.95).abs() < 1e-9);
        assert!((sink.queue_fill - 0.5).abs() < 1e-9);
        assert!((sink.out_per_second - 40.0).abs() < 1e-9);
        assert!(
            rates
                .iter()
                .find(|r| r.name == "parse")
                .unwrap()
                .backpressured
        );
        assert!(!sink.backpressured);
        assert_eq!(bottleneck(&rates).unwrap().name, "sink");
    }

    #[test]
    fn text_that_is_not_metrics_is_an_error_or_empty() {
        let snap = Snapshot::parse("hello world", Instant::now());
        assert!(snap.map(|s| s.stages.is_empty()).unwrap_or(true));
    }
}
