//! The producer / consumers flow (the origin's `os_aio_pod.contrib.pcflow.Server`): one
//! producer feeding a bounded queue shared by `consumer_num = 10` consumers, each item
//! consumed exactly once. The producer makes 0..1000; the consumers add them up. The bean
//! ends on its own once every item is consumed.
//!
//! Run with `cargo run --example pod_pcflow`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, ensure};
use engine::pod::{
    BeanContext, BeanFuture, BeanSpec, BeanState, Flow, PcFlow, Pod, PodConfig, Producer,
};

/// How many items the producer makes: 0, 1, ..., `ITEMS - 1`.
const ITEMS: u64 = 1000;

/// A flow summing what it produced.
#[derive(Debug, Default)]
struct Sum {
    total: AtomicU64,
}

impl Flow for Sum {
    type Item = u64;

    fn produce(self: Arc<Self>, _ctx: BeanContext, out: Producer<u64>) -> BeanFuture {
        Box::pin(async move {
            for n in 0..ITEMS {
                if out.send(n).await.is_err() {
                    break; // The flow is stopping.
                }
            }
            Ok(())
        })
    }

    fn consume(self: Arc<Self>, item: u64, _ctx: BeanContext) -> BeanFuture {
        Box::pin(async move {
            self.total.fetch_add(item, Ordering::Relaxed);
            Ok(())
        })
    }
}

fn main() -> Result<()> {
    let flow = PcFlow::new(Sum::default());
    let (sum, stats) = (Arc::clone(flow.flow()), flow.stats());
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("sum", flow).params(toml::toml! { consumer_num = 10 }));

    let report = tokio::runtime::Runtime::new()?.block_on(pod.run());

    let total = sum.total.load(Ordering::Relaxed);
    println!(
        "produced {}, consumed {}, failed {}: sum {total}",
        stats.produced(),
        stats.consumed(),
        stats.failed()
    );
    ensure!(report.is_success(), "{report:?}");
    ensure!(
        !report.stopped,
        "the flow should end on its own: {report:?}"
    );
    ensure!(report.beans.len() == 1);
    ensure!(report.beans[0].state == BeanState::Finished, "{report:?}");
    ensure!(total == ITEMS * (ITEMS - 1) / 2, "sum {total}");
    ensure!(stats.produced() == ITEMS, "{stats:?}");
    ensure!(stats.consumed() == ITEMS, "{stats:?}");
    ensure!(stats.failed() == 0, "{stats:?}");
    Ok(())
}
