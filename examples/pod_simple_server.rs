//! The simple server scaffold (the origin's `os_aio_pod.contrib.simple.Server`): a server in
//! three steps, `startup`, `run` and `cleanup`, with an `on_stop` hook called when the pod is
//! told to stop (Ctrl+C, SIGTERM, or `PodHandle::stop` as here). The server records each step;
//! the example checks they came in the order startup, run, on_stop, cleanup.
//!
//! Run with `cargo run --example pod_simple_server`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, ensure};
use engine::pod::{
    BeanContext, BeanFuture, BeanSpec, BeanState, Pod, PodConfig, Simple, SimpleServer,
};
use tokio::sync::mpsc;

/// A server that records the steps it goes through.
struct Recorder {
    steps: Arc<Mutex<Vec<&'static str>>>,
    /// Told once `run` has started, so that `main` stops the pod while the server serves.
    running: mpsc::UnboundedSender<()>,
}

impl Recorder {
    fn record(&self, step: &'static str, ctx: &BeanContext) {
        println!("bean {} ({}): {step}", ctx.id(), ctx.core());
        self.steps.lock().expect("not poisoned").push(step);
    }
}

impl SimpleServer for Recorder {
    fn startup(self: Arc<Self>, ctx: BeanContext) -> BeanFuture {
        Box::pin(async move {
            self.record("startup", &ctx);
            Ok(())
        })
    }

    fn run(self: Arc<Self>, ctx: BeanContext) -> BeanFuture {
        Box::pin(async move {
            self.record("run", &ctx);
            let _ = self.running.send(());
            // Serve until the pod asks this bean to stop.
            ctx.stopping().await;
            Ok(())
        })
    }

    fn cleanup(self: Arc<Self>, ctx: BeanContext) -> BeanFuture {
        Box::pin(async move {
            self.record("cleanup", &ctx);
            Ok(())
        })
    }

    fn on_stop(&self, ctx: &BeanContext) {
        self.record("on_stop", ctx);
    }
}

fn main() -> Result<()> {
    let steps = Arc::new(Mutex::new(Vec::new()));
    let (running, mut is_running) = mpsc::unbounded_channel();
    let server = Recorder {
        steps: Arc::clone(&steps),
        running,
    };
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("recorder", Simple::new(server)).label("servers"));

    let report = tokio::runtime::Runtime::new()?.block_on(async {
        let handle = pod.start();
        // `None` would mean the bean ended (and dropped its sender) without running.
        is_running
            .recv()
            .await
            .context("the server ended before it ran")?;
        let status = handle.status();
        println!("while serving: {:?}", status[0].state);
        ensure!(status[0].state == BeanState::Running, "{status:?}");
        // What Ctrl+C would do.
        handle.stop();
        Ok(handle.wait().await)
    })?;

    // Stopped gracefully: the one bean ran its steps to the end.
    let states: Vec<BeanState> = report.beans.iter().map(|b| b.state).collect();
    println!("after the stop: {states:?}");
    ensure!(report.stopped && !report.forced, "{report:?}");
    ensure!(states == [BeanState::Finished], "{report:?}");
    let steps = steps.lock().expect("not poisoned").clone();
    ensure!(
        steps == ["startup", "run", "on_stop", "cleanup"],
        "unexpected steps: {steps:?}"
    );
    Ok(())
}
