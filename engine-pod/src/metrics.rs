//! The pod's beans as Prometheus metrics: a `prometheus_client` [`Collector`] read at scrape
//! time from the beans' slots (state, restarts, uptime), which the status bean serves at
//! `GET /metrics` and a program can register into its own registry.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::shared::PodShared;
use crate::state::{BeanState, BeanStatus};

/// Every state a bean can be in: `engine_bean_state` has one sample per state and bean.
const STATES: [BeanState; 9] = [
    BeanState::Pending,
    BeanState::Starting,
    BeanState::Ready,
    BeanState::Running,
    BeanState::Restarting,
    BeanState::Stopping,
    BeanState::Finished,
    BeanState::Failed,
    BeanState::Cancelled,
];

/// The pod's per-bean metrics, a `prometheus_client` collector (see
/// [`PodHandle::metrics`](crate::PodHandle::metrics)):
///
/// | metric | type | labels | value |
/// | --- | --- | --- | --- |
/// | `engine_bean_state` | gauge | `id`, `label`, `core`, `state` | 1 for the bean's state, 0 for every other state |
/// | `engine_bean_restarts_total` | counter | `id`, `label`, `core` | times the bean was restarted |
/// | `engine_bean_uptime_seconds` | gauge | `id`, `label`, `core` | time since its current run started (0 when not running) |
///
/// A bean without a label has `label=""`. The values are read from the pod at each scrape;
/// the beans pay nothing between scrapes.
///
/// ```
/// use engine::pod::{BeanContext, BeanSpec, Pod, PodConfig, bean_fn};
/// use prometheus_client::registry::Registry;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("worker", bean_fn(|ctx: BeanContext| async move { ctx.stopping().await }))
///     .label("workers"));
/// let handle = pod.start();
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(handle.metrics()));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"engine_bean_restarts_total{id="1",label="workers",core="worker"} 0"#));
/// handle.stop();
/// handle.wait().await;
/// # });
/// ```
#[derive(Clone)]
pub struct PodMetrics {
    shared: Arc<PodShared>,
}

impl fmt::Debug for PodMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodMetrics").finish_non_exhaustive()
    }
}

impl PodMetrics {
    pub(crate) fn new(shared: Arc<PodShared>) -> Self {
        Self { shared }
    }
}

type Labels = [(&'static str, String); 3];

fn labels(bean: &BeanStatus) -> Labels {
    [
        ("id", bean.id.to_string()),
        ("label", bean.label.clone().unwrap_or_default()),
        ("core", bean.core.to_string()),
    ]
}

impl Collector for PodMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let beans = self.shared.status();
        let mut metric = encoder.encode_descriptor(
            "engine_bean_state",
            "The bean's state: 1 for the state it is in, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for bean in &beans {
            let [id, label, core] = labels(bean);
            for state in STATES {
                let labels = [
                    id.clone(),
                    label.clone(),
                    core.clone(),
                    ("state", state.as_str().to_owned()),
                ];
                let value = i64::from(bean.state == state);
                ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "engine_bean_restarts",
            "Times the bean was restarted.",
            None,
            MetricType::Counter,
        )?;
        for bean in &beans {
            ConstCounter::new(u64::from(bean.restarts))
                .encode(metric.encode_family(&labels(bean))?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "engine_bean_uptime_seconds",
            "Time since the bean's current run started (0 when it is not running).",
            None,
            MetricType::Gauge,
        )?;
        for bean in &beans {
            ConstGauge::new(bean.uptime_secs).encode(metric.encode_family(&labels(bean))?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_listed_once() {
        let names: std::collections::HashSet<_> = STATES.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), STATES.len());
        // A state added to the enum must be added here: this match fails to compile then.
        for state in STATES {
            match state {
                BeanState::Pending
                | BeanState::Starting
                | BeanState::Ready
                | BeanState::Running
                | BeanState::Restarting
                | BeanState::Stopping
                | BeanState::Finished
                | BeanState::Failed
                | BeanState::Cancelled => {}
            }
        }
    }
}
