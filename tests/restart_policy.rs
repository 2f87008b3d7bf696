//! One restart policy value drives a pool's workers, a router's workers and a pod's bean, and
//! each obeys its limit: two restarts within the window, then the thing stays down.

#![allow(clippy::print_stdout, reason = "a test runner reports")]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::core::{Restart, RestartPolicy, StageContext, StageError, StopHandle, Transport};
use engine::pod::{BeanContext, BeanSpec, BeanState, Pod, PodConfig, bean_fn};
use engine::proc::{ExitHow, Handlers, Pool, Router, TaskError};
use serde::{Deserialize, Serialize};

/// The one policy of this test: on failure, at most 2 restarts a minute, quickly.
fn policy() -> RestartPolicy {
    RestartPolicy::new(Restart::OnFailure)
        .limit(2, Duration::from_secs(60))
        .backoff(Duration::from_millis(1), Duration::from_millis(4))
}

/// Ends its worker process on every task.
#[derive(Clone, Serialize, Deserialize)]
struct Fatal;

impl Transport for Fatal {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, _: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        std::process::exit(3)
    }
}

fn a_pool_slot_is_restarted_up_to_the_limit_then_given_up() {
    let mut pool = Pool::builder()
        .workers(1, Fatal)
        .retries(0)
        .restart(policy())
        .start()
        .unwrap();
    // One task at a time: each kills the worker it runs in.
    for task in 0..3 {
        pool.submit(task);
        let (_, result) = pool.recv().unwrap();
        assert!(
            matches!(
                result,
                Err(TaskError::WorkerDied {
                    how: ExitHow::Code(3),
                    ..
                })
            ),
            "task {task}: {result:?}"
        );
    }
    // The third death was past the limit: no worker is left.
    pool.submit(3);
    let (_, result) = pool.recv().unwrap();
    assert!(matches!(result, Err(TaskError::NoWorkers(_))), "{result:?}");
    let (_, stats) = pool.shutdown();
    assert_eq!((stats.worker_deaths, stats.respawns), (3, 2));
}

/// A router worker that crashes as soon as it starts.
fn crasher(h: &mut Handlers) {
    h.on_start(|_| std::process::abort());
}

fn a_router_worker_is_restarted_up_to_the_limit_then_stays_gone() {
    let stop = StopHandle::new();
    let _deadline = stop.stop_now_after(Duration::from_secs(30)).unwrap();
    let report = Router::builder()
        .worker("crasher", crasher)
        .restart(policy())
        .stop_handle(&stop)
        .run()
        .unwrap();
    let crasher = report.worker("crasher").unwrap();
    assert_eq!(crasher.restarts, 2, "{crasher:?}");
    assert!(crasher.ended_early, "{crasher:?}");
    // Signal 6 is SIGABRT: the last start crashed too.
    assert_eq!(crasher.exit, ExitHow::Signal(6), "{crasher:?}");
}

fn a_pod_bean_is_restarted_up_to_the_limit_then_fails() {
    let runs = Arc::new(Mutex::new(0_u32));
    let counted = Arc::clone(&runs);
    let failing = bean_fn(move |_ctx: BeanContext| {
        let runs = Arc::clone(&counted);
        async move {
            *runs.lock().unwrap() += 1;
            Err::<(), _>(StageError::msg("always fails"))
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(async {
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("failing", failing).restart(policy()));
        tokio::time::timeout(Duration::from_secs(30), pod.run())
            .await
            .unwrap()
    });
    let bean = &report.beans[0];
    assert_eq!((bean.state, bean.restarts), (BeanState::Failed, 2));
    assert_eq!(*runs.lock().unwrap(), 3, "one run and two restarts");
}

fn main() {
    engine::proc::init();
    let tests: &[(&str, fn())] = &[
        (
            "a_pool_slot_is_restarted_up_to_the_limit_then_given_up",
            a_pool_slot_is_restarted_up_to_the_limit_then_given_up,
        ),
        (
            "a_router_worker_is_restarted_up_to_the_limit_then_stays_gone",
            a_router_worker_is_restarted_up_to_the_limit_then_stays_gone,
        ),
        (
            "a_pod_bean_is_restarted_up_to_the_limit_then_fails",
            a_pod_bean_is_restarted_up_to_the_limit_then_fails,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        let ok = catch_unwind(AssertUnwindSafe(test)).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        tests.len() - failed
    );
    std::process::exit(i32::from(failed > 0));
}
