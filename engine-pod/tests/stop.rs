//! One stop mechanism: every bean's stop handle is a child of the pod's, each run's a child
//! of the bean's; the pod notices any bean's end at once, whatever the start order.

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use engine_core::StopHandle;
use engine_pod::{
    BeanContext, BeanId, BeanSpec, BeanState, Pod, PodConfig, Restart, RestartPolicy, bean_fn,
};
use tokio::time::timeout;

mod common;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_later_beans_end_and_restart_are_handled_while_an_earlier_bean_runs_on() {
    let mut pod = Pod::new(PodConfig::default());
    // Bean 1 runs until the pod stops.
    pod.add(BeanSpec::new(
        "forever",
        bean_fn(|ctx: BeanContext| async move { ctx.stopping().await }),
    ));
    let (failing, runs) = common::failing("fails at once");
    let policy = RestartPolicy::new(Restart::OnFailure)
        .limit(1, Duration::from_secs(60))
        .backoff(Duration::from_millis(1), Duration::from_millis(1));
    pod.add(BeanSpec::new("failing", failing).restart(policy));
    let started = Instant::now();
    let handle = pod.start();
    let failed = handle
        .wait_status(started + PATIENCE, |beans| {
            beans[1].state == BeanState::Failed
        })
        .await;
    let took = started.elapsed();
    assert!(failed, "{:?}", handle.status());
    let status = handle.status();
    assert_eq!(status[1].restarts, 1, "restarted once under on-failure");
    assert_eq!(status[0].state, BeanState::Running, "bean 1 still runs");
    // Measured in the tens of microseconds; the bound only guards against waiting on bean 1.
    assert!(took < Duration::from_secs(2), "{took:?}");
    eprintln!("bean 2 failed, restarted and failed again {took:?} after the start");

    // The driver has noticed bean 2's end (it holds its spec), so a restart request starts
    // it again while bean 1 still runs.
    handle.restart_bean(BeanId(2)).unwrap();
    let again = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans[1].state == BeanState::Failed && beans[1].restarts == 3
        })
        .await;
    assert!(again, "{:?}", handle.status());
    assert_eq!(runs.load(SeqCst), 4);
    assert_eq!(handle.status()[0].state, BeanState::Running);

    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert_eq!(report.beans[0].state, BeanState::Finished);
}

#[tokio::test]
async fn bean_stop_handles_are_children_of_the_pods() {
    let stop = StopHandle::new();
    let (handles_tx, mut handles) = tokio::sync::mpsc::unbounded_channel::<StopHandle>();
    let mut pod = Pod::new(PodConfig::default());
    for _ in 0..3 {
        let handles_tx = handles_tx.clone();
        pod.add(BeanSpec::new(
            "waiter",
            bean_fn(move |ctx: BeanContext| {
                let handles_tx = handles_tx.clone();
                async move {
                    handles_tx.send(ctx.stop_handle().clone()).unwrap();
                    // A blocking wait on the run's handle, as an engine or a thread would.
                    let run = ctx.stop_handle().clone();
                    tokio::task::spawn_blocking(move || run.wait())
                        .await
                        .unwrap();
                }
            }),
        ));
    }
    let handle = pod.with_stop_handle(&stop).start();
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(timeout(PATIENCE, handles.recv()).await.unwrap().unwrap());
    }
    // Stopping one bean's run reaches neither the pod nor the other beans.
    handle.stop_bean(BeanId(1)).unwrap();
    assert!(!stop.is_stopping());
    let stopped: Vec<bool> = runs.iter().map(StopHandle::is_stopping).collect();
    assert_eq!(stopped.iter().filter(|s| **s).count(), 1, "{stopped:?}");
    // Stopping the pod's handle reaches every run's.
    stop.stop();
    assert!(runs.iter().all(StopHandle::is_stopping));
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.stopped && !report.forced, "{report:?}");
    assert!(report.beans.iter().all(|b| b.state == BeanState::Finished));
}
