//! A bean with its context: beans find each other by label, send named signals to a label,
//! wait for each other, and read the pod's status (the origin's `pass_context` beans).
//!
//! Run with `cargo run --example pod_context`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use anyhow::{Result, ensure};
use engine::pod::{BeanContext, BeanSpec, BeanState, Pod, PodConfig, Target, bean_fn};

/// A worker: waits for a "job" signal and ends with what it was given.
async fn worker(ctx: BeanContext) -> Result<(), engine::core::StageError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    ctx.on_signal("job", move |event| {
        let _ = tx.send(event.payload.clone());
    });
    let job = rx
        .recv()
        .await
        .ok_or_else(|| engine::core::StageError::msg("no job"))?;
    println!("worker {} got job {job}", ctx.id());
    Ok(())
}

/// The boss: finds the workers by label, signals them, and waits for each to finish.
async fn boss(ctx: BeanContext) -> Result<(), engine::core::StageError> {
    let workers = ctx.beans_labelled("workers");
    // Handlers are registered when each worker starts; send until all have one.
    while ctx.send_signal("job", Target::Label("workers".into()), "sweep".into()) < workers.len() {
        tokio::task::yield_now().await;
    }
    for id in workers {
        let state = ctx.wait_for(id).await;
        println!("boss {} saw worker {id} end: {state:?}", ctx.id());
        if state != Some(BeanState::Finished) {
            return Err(engine::core::StageError::msg(format!(
                "worker {id} did not finish"
            )));
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut pod = Pod::new(PodConfig::default());
    for _ in 0..3 {
        pod.add(BeanSpec::new("worker", bean_fn(worker)).label("workers"));
    }
    pod.add(BeanSpec::new("boss", bean_fn(boss)).label("boss"));
    let report = tokio::runtime::Runtime::new()?.block_on(pod.run());
    for bean in &report.beans {
        println!(
            "{} {:?} {:?}: {:?}",
            bean.id, bean.label, bean.core, bean.state
        );
    }
    ensure!(report.is_success(), "{report:?}");
    ensure!(report.beans.len() == 4);
    ensure!(report.beans.iter().all(|b| b.state == BeanState::Finished));
    Ok(())
}
