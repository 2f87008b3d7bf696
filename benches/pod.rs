//! The pod: starting and cleanly stopping 10,000 beans (time per bean, memory per bean)
//! against the same number of plain tokio tasks doing the same wait, and TCP echo throughput of
//! the built-in server against a hand-written tokio echo server.
//!
//! Run with `cargo xtask bench pod`.

#![allow(clippy::print_stdout, reason = "a benchmark prints its table")]

mod harness;

use std::time::{Duration, Instant};

use engine_pod::{BeanContext, BeanSpec, Pod, PodConfig, bean_fn};
use tokio_util::sync::CancellationToken;

const BEANS: usize = 10_000;
const ROUNDS: usize = 5;

/// Resident memory of this process, in bytes (Linux), for memory per bean.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Starts `BEANS` beans that wait for the stop, waits until all run, stops the pod.
async fn pod_round() -> (Duration, Option<u64>) {
    let before = rss();
    let started = Instant::now();
    let mut pod = Pod::new(PodConfig::default());
    let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..BEANS {
        let running_tx = running_tx.clone();
        pod.add(BeanSpec::new(
            "waiter",
            bean_fn(move |ctx: BeanContext| {
                let running_tx = running_tx.clone();
                async move {
                    let _ = running_tx.send(());
                    ctx.stopping().await;
                }
            }),
        ));
    }
    let handle = pod.start();
    for _ in 0..BEANS {
        running.recv().await.expect("beans run");
    }
    let during = rss();
    handle.stop();
    let report = handle.wait().await;
    assert!(report.is_success() && !report.forced);
    let per_bean = before
        .zip(during)
        .map(|(b, d)| d.saturating_sub(b) / BEANS as u64);
    (started.elapsed(), per_bean)
}

/// The same with plain tasks and one cancellation token each.
async fn tasks_round() -> Duration {
    let started = Instant::now();
    let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
    let tokens: Vec<CancellationToken> = (0..BEANS).map(|_| CancellationToken::new()).collect();
    let handles: Vec<_> = tokens
        .iter()
        .map(|token| {
            let (token, running_tx) = (token.clone(), running_tx.clone());
            tokio::spawn(async move {
                let _ = running_tx.send(());
                token.cancelled().await;
            })
        })
        .collect();
    for _ in 0..BEANS {
        running.recv().await.expect("tasks run");
    }
    for token in tokens.iter().rev() {
        token.cancel();
    }
    for handle in handles {
        handle.await.expect("task");
    }
    started.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    harness::header("pod: start and stop 10,000 beans (beans/s)");
    let mut memory = Vec::new();
    let (engine, baseline) = harness::compare(
        ROUNDS,
        BEANS as u64,
        || {
            let (took, per_bean) = runtime.block_on(pod_round());
            memory.extend(per_bean);
            took
        },
        || runtime.block_on(tasks_round()),
    );
    harness::row("pod beans vs plain tokio tasks", &engine, &baseline);
    // Later rounds reuse memory the allocator kept, so only the first (warm-up) round
    // measures growth.
    if let Some(first) = memory.first() {
        println!("memory per running bean: about {first} bytes (resident growth, first round)");
    }
}
