//! What `engine run` shows while it runs: the metrics server (`--metrics-addr`) and the
//! progress line on a terminal.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use engine::observe::{MetricsServer, Position, Progress, Snapshot};
use engine::threads::{EngineHandle, Stats};
use prometheus_client::registry::Registry;

/// The observing options of `engine run`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) metrics_public: bool,
    pub(crate) metrics_linger: Duration,
    /// `Some(true)` for `--progress`, `Some(false)` for `--no-progress`, `None` to show it on
    /// a terminal.
    pub(crate) progress: Option<bool>,
    /// Whether the input is standard input (whose position in a file gives the progress).
    pub(crate) stdin: bool,
    /// The Redis streams read or written, whose consumer groups the metrics show.
    #[cfg(feature = "redis")]
    pub(crate) streams: Vec<engine::redis::StreamAddress>,
    /// The counts of the Redis source of `--from`, if any (the first of `streams`).
    #[cfg(feature = "redis")]
    pub(crate) source: Option<engine::redis::Settlement>,
}

/// The views of one run, until [`finish`](Self::finish).
pub(crate) struct Observed {
    server: Option<MetricsServer>,
    progress: Option<Progress>,
    linger: Duration,
    stop: engine::core::StopHandle,
}

impl Observed {
    /// Starts the metrics server and the progress line the options ask for.
    pub(crate) fn start(options: &Options, handle: &EngineHandle) -> anyhow::Result<Self> {
        let server = match options.metrics_addr {
            Some(addr) => {
                let mut registry = Registry::default();
                registry.register_collector(Box::new(handle.metrics()));
                #[cfg(feature = "redis")]
                for (i, stream) in options.streams.iter().enumerate() {
                    let mut metrics = engine::redis::StreamMetrics::new(stream);
                    if let (0, Some(source)) = (i, &options.source) {
                        metrics = metrics.with_source(source);
                    }
                    registry.register_collector(Box::new(metrics));
                }
                let server = MetricsServer::builder(Arc::new(registry))
                    .addr(addr)
                    .allow_public(options.metrics_public)
                    .start()?;
                eprintln!(
                    "metrics on http://{0}/metrics, dashboard on http://{0}/",
                    server.local_addr()
                );
                Some(server)
            }
            None => None,
        };
        let show = options
            .progress
            .unwrap_or_else(|| std::io::stderr().is_terminal());
        let progress = show.then(|| {
            let stats = handle.stats_reader();
            let stdin = options.stdin;
            Progress::start(Duration::from_millis(200), move || {
                (
                    snapshot(&stats.read()),
                    stdin.then(stdin_position).flatten(),
                )
            })
        });
        Ok(Self {
            server,
            progress,
            linger: options.metrics_linger,
            stop: handle.stop_handle().clone(),
        })
    }

    /// Clears the progress line, and keeps serving the final metrics for the linger time,
    /// or until Ctrl-C.
    pub(crate) fn finish(mut self) {
        if let Some(progress) = self.progress.take() {
            progress.finish();
        }
        if self.server.is_some() && !self.linger.is_zero() && !self.stop.is_stopping() {
            let _ = self
                .stop
                .wait_for_level(engine::core::StopLevel::Graceful, Some(self.linger));
        }
    }
}

/// The engine's statistics as the progress line reads them: [`engine::snapshot_of`], with
/// the time each stage waited for input (which decides whether the run is source-bound) and
/// an async stage's futures in flight.
fn snapshot(stats: &Stats) -> Snapshot {
    let mut snapshot = engine::snapshot_of(stats);
    for (sample, stage) in snapshot.stages.iter_mut().zip(&stats.stages) {
        sample.waiting_input_seconds = stage
            .threads
            .iter()
            .map(|t| t.waiting_for_input.as_secs_f64())
            .sum();
        sample.in_flight = stage.in_flight as f64;
        sample.concurrency_limit = stage.concurrency_limit as f64;
    }
    snapshot
}

/// How far through its file standard input is, when it is a regular file: the file's offset
/// against its length, read from `/proc`, so the reader pays nothing.
fn stdin_position() -> Option<Position> {
    let meta = std::fs::metadata("/proc/self/fd/0").ok()?;
    if !meta.is_file() {
        return None;
    }
    let info = std::fs::read_to_string("/proc/self/fdinfo/0").ok()?;
    let done = info
        .lines()
        .find_map(|l| l.strip_prefix("pos:"))
        .and_then(|p| p.trim().parse().ok())?;
    Some(Position {
        done,
        total: meta.len(),
    })
}
