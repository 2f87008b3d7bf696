//! A threaded engine as a bean: the engine runs on a thread of its own under the bean's stop
//! handle (a child of the pod's), so the pod's stop drains it and the pod's stop deadline
//! aborts it, with no wiring by the user.

use std::fmt;
use std::sync::{Arc, Mutex};

use engine_core::plumbing::{TrackedFrontend, lock};
use engine_core::{RunReport, StageError, StopHandle};

use engine_threads::{EngineBuilder, EngineError, Stages};

use crate::bean::{Bean, BeanFuture, on_thread};
use crate::context::BeanContext;

type Runner = dyn Fn(&BeanContext) -> Result<RunReport, EngineError> + Send + Sync;

/// A bean that runs a threaded engine; see [`engine_bean`].
pub struct EngineBean {
    run: Arc<Runner>,
    last: LastReport,
}

impl fmt::Debug for EngineBean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBean").finish_non_exhaustive()
    }
}

/// The report of an [`EngineBean`]'s last run, as a cloneable handle.
#[derive(Debug, Clone, Default)]
pub struct LastReport(Arc<Mutex<Option<RunReport>>>);

impl LastReport {
    /// The report of the last run that ended, if any.
    pub fn get(&self) -> Option<RunReport> {
        lock(&self.0).clone()
    }

    fn set(&self, report: RunReport) {
        *lock(&self.0) = Some(report);
    }
}

/// Makes a bean of a function that builds a threaded engine; the bean runs it on a thread of
/// its own under the run's stop handle ([`BeanContext::stop_handle`], a child of the pod's),
/// set on the builder by the bean itself, so the pod's stop always reaches the engine: a
/// graceful stop drains it, the stop deadline aborts it. (A `stop_handle` set by `build` is
/// replaced.) The run's report is logged when it ends and kept in
/// [`EngineBean::last_report`]; a stage failure fails the bean.
///
/// An async stage of the engine runs on the pod's runtime when given
/// [`BeanContext::runtime`]: `Async::map(f).runtime(ctx.runtime())`, so the pod builds no
/// second runtime.
///
/// ```
/// use engine::pod::{BeanSpec, Pod, PodConfig, engine_bean};
/// use engine::threads::Engine;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bean = engine_bean(|_ctx| {
///     Engine::builder(0..1000_u64)
///         .transport(|x: u64| x * 2)
///         .backend(|_: u64| {})
/// });
/// let report = bean.last_report();
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("numbers", bean));
/// assert!(pod.start().wait().await.is_success());
/// assert_eq!(report.get().expect("the run ended").processed(), 1000);
/// # });
/// ```
pub fn engine_bean<F, T, B>(
    build: impl Fn(&BeanContext) -> EngineBuilder<F, T, B> + Send + Sync + 'static,
) -> EngineBean
where
    F: TrackedFrontend + 'static,
    F::Item: Send + 'static,
    (T, B): Stages<F>,
{
    EngineBean {
        run: Arc::new(move |ctx: &BeanContext| build(ctx).stop_handle(ctx.stop_handle()).run()),
        last: LastReport::default(),
    }
}

impl EngineBean {
    /// A handle on the report of the last run.
    pub fn last_report(&self) -> LastReport {
        self.last.clone()
    }
}

impl Bean for EngineBean {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let run = Arc::clone(&self.run);
        let last = self.last.clone();
        let id = ctx.id();
        let stop = ctx.stop_handle().clone();
        let name = format!("bean-{id}-engine");
        let ended = on_thread(name, move || run(&ctx).map_err(StageError::new));
        Box::pin(async move {
            // Aborts the engine if the bean's future is dropped before the engine ended.
            let mut abort_on_cancel = AbortOnDrop(Some(stop));
            let report = ended.await;
            abort_on_cancel.0 = None;
            let report = report?;
            tracing::info!(bean = %id, "engine ended\n{report}");
            last.set(report);
            Ok(())
        })
    }
}

/// Stops an engine at once when dropped before the engine ended.
struct AbortOnDrop(Option<StopHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = &self.0 {
            stop.stop_now();
        }
    }
}
