//! A threaded engine as a bean: the engine runs on a thread of its own, and the pod's stop
//! request drains it (a graceful stop); cancelling the bean at the stop deadline aborts it.

use std::fmt;
use std::sync::Arc;

use engine_core::{RunReport, StageError, StopHandle};
use engine_threads::EngineError;

use crate::bean::{Bean, BeanFuture};
use crate::context::BeanContext;

type Runner = dyn Fn(BeanContext, StopHandle) -> Result<RunReport, EngineError> + Send + Sync;

/// A bean that runs a threaded engine; see [`engine_bean`].
pub struct EngineBean(Arc<Runner>);

impl fmt::Debug for EngineBean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineBean")
    }
}

/// Makes a bean of a function that builds and runs a threaded engine under the given stop
/// handle (pass it to [`EngineBuilder::stop_handle`](engine_threads::EngineBuilder::stop_handle)).
/// The run's report is logged when it ends; a stage failure fails the bean.
///
/// ```
/// use engine_pod::{BeanSpec, Pod, PodConfig, engine_bean};
/// use engine_threads::Engine;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("numbers", engine_bean(|_ctx, stop| {
///     Engine::builder(0..1000_u64)
///         .transport(|x: u64| x * 2)
///         .backend(|_: u64| {})
///         .stop_handle(&stop)
///         .run()
/// })));
/// assert!(pod.start().wait().await.is_success());
/// # });
/// ```
pub fn engine_bean(
    run: impl Fn(BeanContext, StopHandle) -> Result<RunReport, EngineError> + Send + Sync + 'static,
) -> EngineBean {
    EngineBean(Arc::new(run))
}

impl Bean for EngineBean {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let run = Arc::clone(&self.0);
        let stop = StopHandle::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = ctx.id();
        let spawned = {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("bean-{id}-engine"))
                .spawn(move || {
                    let result =
                        engine_core::catch_panic(|| run(ctx, stop).map_err(StageError::new));
                    let _ = tx.send(result);
                })
        };
        Box::pin(async move {
            spawned.map_err(StageError::new)?;
            // Aborts the engine if the pod cancels this bean at its stop deadline.
            let _abort_on_cancel = AbortOnDrop(stop.clone());
            let mut rx = rx;
            let result = tokio::select! {
                result = &mut rx => result,
                () = ctx.stopping() => {
                    stop.stop();
                    rx.await
                }
            };
            let report = result.unwrap_or_else(|_| {
                Err(StageError::msg(
                    "the engine's thread ended without a result",
                ))
            })?;
            tracing::info!(bean = %id, "engine ended\n{report}");
            Ok(())
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

/// Stops an engine at once when dropped before the engine ended.
struct AbortOnDrop(StopHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.stop_now();
    }
}
