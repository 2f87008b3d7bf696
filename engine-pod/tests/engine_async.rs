//! An engine bean's async stage runs on the pod's own runtime: no second runtime is built.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use engine::pod::{BeanSpec, Pod, PodConfig, engine_bean};
use engine::threads::{Async, Engine};

/// The names of this process's threads.
fn thread_names() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("a Linux /proc")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn an_engine_beans_async_stage_runs_on_the_pods_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pod-runtime")
        .enable_all()
        .build()
        .unwrap();
    let ran_on = Arc::new(Mutex::new(BTreeSet::new()));
    let threads_during = Arc::new(Mutex::new(BTreeSet::new()));
    let (seen, during) = (Arc::clone(&ran_on), Arc::clone(&threads_during));
    let bean = engine_bean(move |ctx| {
        let (seen, during) = (Arc::clone(&seen), Arc::clone(&during));
        Engine::builder(0..10_000_u64)
            .transport(
                Async::map(move |x: u64| {
                    let (seen, during) = (Arc::clone(&seen), Arc::clone(&during));
                    async move {
                        tokio::task::yield_now().await;
                        if x == 5_000 {
                            *during.lock().unwrap() = thread_names();
                        }
                        let name = std::thread::current().name().unwrap_or("?").to_owned();
                        seen.lock().unwrap().insert(name);
                        x * 2
                    }
                })
                .concurrency(512)
                .runtime(ctx.runtime()),
            )
            .backend(|_: u64| {})
    });
    let report = bean.last_report();
    runtime.block_on(async move {
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("doubler", bean));
        assert!(pod.start().wait().await.is_success());
    });
    let report = report.get().expect("the run ended");
    assert_eq!(report.processed(), 10_000);
    assert_eq!(
        *ran_on.lock().unwrap(),
        BTreeSet::from(["pod-runtime".to_owned()]),
        "the futures ran off the pod's runtime"
    );
    let names = threads_during.lock().unwrap().clone();
    assert!(names.contains("pod-runtime"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("engine-async")),
        "a second runtime was built: {names:?}"
    );
}
