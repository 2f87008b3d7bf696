//! A running engine, from [`Engine::spawn`](crate::Engine::spawn): stop it, watch it, join
//! it.

use std::sync::Arc;
use std::thread::JoinHandle;

use engine_core::{RunReport, StopHandle};

use crate::error::EngineError;
use crate::stats::{Stats, StatsReader, StatsSource};

/// A running engine, from [`Engine::spawn`](crate::Engine::spawn).
#[derive(Debug)]
pub struct EngineHandle {
    pub(crate) stop: StopHandle,
    pub(crate) stats: Arc<StatsSource>,
    pub(crate) coordinator: JoinHandle<Result<RunReport, EngineError>>,
}

impl EngineHandle {
    /// Stops gracefully: the frontend stops producing and what was accepted drains.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Aborts: queued items are dropped and counted as such.
    pub fn stop_now(&self) {
        self.stop.stop_now();
    }

    /// The engine's stop handle.
    pub fn stop_handle(&self) -> &StopHandle {
        &self.stop
    }

    /// A snapshot of the engine's counts, rates and queue depths.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// A reader of the same snapshots for another thread (a progress line, a metrics
    /// server), which stays valid after [`join`](Self::join) with the final counts.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(Arc::clone(&self.stats))
    }

    /// The engine's live statistics as Prometheus metrics, for a `prometheus_client`
    /// registry (feature `metrics`); they stay readable, with the final counts, after the run.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(&self) -> crate::EngineMetrics {
        crate::EngineMetrics::new(Arc::clone(&self.stats))
    }

    /// Whether the run has ended (`join` will not block).
    pub fn is_finished(&self) -> bool {
        self.coordinator.is_finished()
    }

    /// Waits for the run to end and returns its report.
    ///
    /// # Errors
    ///
    /// As [`Engine::run`](crate::Engine::run).
    ///
    /// # Panics
    ///
    /// Only if the engine's own coordinating thread panicked, which is a bug.
    pub fn join(self) -> Result<RunReport, EngineError> {
        match self.coordinator.join() {
            Ok(result) => result,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }
}
