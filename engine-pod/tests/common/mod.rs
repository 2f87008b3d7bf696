//! What the pod's behaviour tests share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use engine_core::StageError;
use engine_pod::{Bean, BeanContext, bean_fn};

/// A bean whose every run fails at once with `message`, and the count of its runs.
pub(crate) fn failing(message: &'static str) -> (impl Bean, Arc<AtomicU32>) {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let bean = bean_fn(move |_ctx: BeanContext| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Err::<(), _>(StageError::msg(message)) }
    });
    (bean, runs)
}
