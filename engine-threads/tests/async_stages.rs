//! Async stages keep every promise of the engine: the same results as a blocking stage, in
//! order when asked, failed items counted with their own errors, at most K futures at once, a
//! graceful stop that waits for them and a stop now that drops them, and settings checked
//! before any item runs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Collect, PATIENCE};
use engine_core::{ErrorPolicy, StageContext, StageError};
use engine_threads::{Async, AsyncError, AsyncTransport, Engine, EngineError};

/// A delay of 0-5 ms that depends on the item only (a cheap hash).
fn delay(x: u64) -> Duration {
    let h = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    Duration::from_micros(h % 5_000)
}

fn is_odd(x: &u64) -> bool {
    x % 2 == 1
}

#[test]
fn random_delays_give_the_blocking_transports_items_unordered_and_its_sequence_ordered() {
    const N: u64 = 100_000;
    let slow = |x: u64| async move {
        tokio::time::sleep(delay(x)).await;
        is_odd(&x).then_some(x * 3)
    };
    let expected: Vec<u64> = (0..N).filter(is_odd).map(|x| x * 3).collect();

    let blocking = Collect::default();
    let report = Engine::builder(0..N)
        .filter_map(|x: u64| is_odd(&x).then_some(x * 3))
        .backend(blocking.clone())
        .run()
        .unwrap();
    report.check().unwrap();
    assert_eq!(blocking.sorted(), expected);

    let unordered = Collect::default();
    let report = Engine::builder(0..N)
        .transport(Async::filter_map(slow).concurrency(2048))
        .transport_threads(2)
        .backend(unordered.clone())
        .run()
        .unwrap();
    report.check().unwrap();
    assert_eq!((report.processed(), report.filtered()), (N / 2, N / 2));
    assert_eq!(unordered.sorted(), expected);

    let ordered = Collect::default();
    let report = Engine::builder(0..N)
        .transport(Async::filter_map(slow).concurrency(2048))
        .transport_threads(2)
        .ordered(true)
        .backend(ordered.clone())
        .run()
        .unwrap();
    report.check().unwrap();
    assert!(ordered.items() == expected, "ordered mode lost the order");
}

/// Errs on multiples of 5, panics on multiples of 7, hangs on multiples of 11.
async fn troubled(x: u64) -> Result<u64, StageError> {
    if x.is_multiple_of(5) {
        return Err(StageError::msg(format!("{x} refused")));
    }
    if x.is_multiple_of(7) {
        panic!("{x} panicked");
    }
    if x.is_multiple_of(11) {
        std::future::pending::<()>().await;
    }
    Ok(x)
}

#[test]
fn errors_panics_and_timeouts_fail_their_items_alone_with_their_own_errors() {
    const N: u64 = 2_000;
    let got = Collect::default();
    let report = Engine::builder(0..N)
        .transport(
            Async::try_map(troubled)
                .concurrency(4096)
                .timeout(Duration::from_millis(50)),
        )
        .backend(got.clone())
        .run()
        .unwrap();
    report.check().unwrap();
    let refused = (0..N).filter(|x| x % 5 == 0).count() as u64;
    let panicked = (0..N).filter(|x| x % 5 != 0 && x % 7 == 0).count() as u64;
    let hung = (0..N)
        .filter(|x| x % 5 != 0 && x % 7 != 0 && x % 11 == 0)
        .count() as u64;
    assert_eq!(report.failed(), refused + panicked + hung);
    assert_eq!(report.processed(), N - refused - panicked - hung);
    assert_eq!(report.dropped(), 0);

    for (policy_item, want) in [
        (5_u64, "5 refused"),
        (7, "panicked: 7 panicked"),
        (11, "did not finish within its timeout of 50ms"),
    ] {
        let error = Engine::builder(policy_item..policy_item + 1)
            .transport(Async::try_map(troubled).timeout(Duration::from_millis(50)))
            .backend(|_: u64| {})
            .error_policy(ErrorPolicy::Stop)
            .run()
            .unwrap_err();
        let EngineError::StageFailed { error, report, .. } = error else {
            panic!("not a stage failure: {error:?}");
        };
        assert!(error.to_string().contains(want), "{error} lacks {want:?}");
        assert_eq!(report.failed(), 1);
        report.check().unwrap();
    }
}

#[test]
fn never_more_than_k_futures_run_at_once() {
    const K: usize = 64;
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now2, most2) = (Arc::clone(&now), Arc::clone(&most));
    let report = Engine::builder(0..5_000_u64)
        .transport(
            Async::map(move |x: u64| {
                let (now, most) = (Arc::clone(&now2), Arc::clone(&most2));
                async move {
                    let at = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(at, Ordering::SeqCst);
                    tokio::time::sleep(delay(x) / 5).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    x
                }
            })
            .concurrency(K),
        )
        .transport_threads(3)
        .backend(|_: u64| {})
        .run()
        .unwrap();
    assert_eq!(report.processed(), 5_000);
    let most = most.load(Ordering::SeqCst);
    assert!(most <= K, "{most} futures ran at once, above {K}");
    assert!(
        most >= K / 2,
        "only {most} futures ran at once: the stage does not fill up"
    );
}

/// Items whose futures wait until the test opens the gate (a `Notify` that releases all).
fn gated(
    gate: &Arc<tokio::sync::Semaphore>,
    started: &Arc<AtomicU64>,
) -> engine_threads::AsyncStage<impl AsyncTransport<Input = u64, Output = u64> + Clone> {
    let (gate, started) = (Arc::clone(gate), Arc::clone(started));
    Async::map(move |x: u64| {
        let (gate, started) = (Arc::clone(&gate), Arc::clone(&started));
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            let _ = gate.acquire().await.expect("never closed");
            x
        }
    })
    .concurrency(1_000)
}

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn a_graceful_stop_waits_for_the_futures_in_flight() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let handle = Engine::builder(0_u64..)
        .transport(gated(&gate, &started))
        .backend(|_: u64| {})
        .spawn()
        .unwrap();
    wait_for("1,000 futures in flight", || {
        started.load(Ordering::SeqCst) >= 1_000
    });
    handle.stop();
    gate.add_permits(usize::MAX >> 4);
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.dropped(), 0);
    assert!(report.processed() >= 1_000, "{report:?}");
}

#[test]
fn a_stop_now_drops_the_futures_in_flight_and_returns_at_once() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let handle = Engine::builder(0_u64..)
        .transport(gated(&gate, &started))
        .backend(|_: u64| {})
        .spawn()
        .unwrap();
    wait_for("1,000 futures in flight", || {
        started.load(Ordering::SeqCst) >= 1_000
    });
    let t = Instant::now();
    handle.stop_now();
    let report = handle.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    report.check().unwrap();
    assert_eq!(report.processed(), 0);
    let transport = report
        .stage_of_kind(engine_core::StageKind::Transport)
        .unwrap();
    assert!(
        transport.counts.dropped >= 1_000,
        "the futures in flight are not counted dropped: {report:?}"
    );
}

#[test]
fn items_that_trickle_in_join_the_futures_already_waiting() {
    // One item at a time, each sent only once the one before runs: the thread, with batches
    // out that wait, must take each new item at once rather than wait for a batch to come
    // back first (then the second item would never start, and the first never finish).
    const N: u64 = 16;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let handle = Engine::builder(rx.into_iter())
        .transport(gated(&gate, &started))
        .transport_threads(1)
        .backend(|_: u64| {})
        .spawn()
        .unwrap();
    for i in 0..N {
        tx.send(i).unwrap();
        wait_for(&format!("the future of item {i} to start"), || {
            started.load(Ordering::SeqCst) > i
        });
    }
    gate.add_permits(N as usize);
    drop(tx);
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.processed(), N);
}

fn setup_error(
    stage: engine_threads::AsyncStage<impl AsyncTransport<Input = u64, Output = u64> + Clone>,
) -> AsyncError {
    let error = Engine::builder(0..10_u64)
        .transport(stage)
        .backend(|_: u64| {})
        .run()
        .unwrap_err();
    let EngineError::StageFailed {
        error,
        during_setup: true,
        ..
    } = error
    else {
        panic!("not a setup failure: {error:?}");
    };
    error
        .downcast_ref::<AsyncError>()
        .unwrap_or_else(|| panic!("not an AsyncError: {error}"))
        .clone()
}

#[test]
fn bad_settings_are_typed_errors_before_any_item_runs() {
    let double = || Async::map(|x: u64| async move { x * 2 });
    assert_eq!(
        setup_error(double().concurrency(0)),
        AsyncError::ZeroConcurrency
    );
    assert_eq!(
        setup_error(double().timeout(Duration::ZERO)),
        AsyncError::ZeroTimeout
    );
    assert_eq!(
        setup_error(double().runtime_threads(0)),
        AsyncError::ZeroRuntimeThreads
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    runtime.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(
        setup_error(double().runtime(handle)),
        AsyncError::RuntimeShutDown
    );
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(
        setup_error(double().runtime(current.handle().clone())),
        AsyncError::CurrentThreadRuntime
    );
}

#[test]
fn a_given_runtime_runs_the_futures_and_no_other_is_built() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("program-runtime")
        .enable_all()
        .build()
        .unwrap();
    let names = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let seen = Arc::clone(&names);
    let report = Engine::builder(0..1_000_u64)
        .transport(
            Async::map(move |x: u64| {
                let seen = Arc::clone(&seen);
                async move {
                    tokio::task::yield_now().await;
                    let name = std::thread::current().name().unwrap_or("?").to_owned();
                    *seen.lock().unwrap().entry(name).or_default() += 1;
                    x
                }
            })
            .runtime(runtime.handle().clone()),
        )
        .backend(|_: u64| {})
        .run()
        .unwrap();
    assert_eq!(report.processed(), 1_000);
    let names = names.lock().unwrap();
    assert_eq!(
        names.keys().collect::<Vec<_>>(),
        ["program-runtime"],
        "futures ran elsewhere: {names:?}"
    );
}

/// A stage with per-thread state from its factory, and setup and cleanup per thread.
struct Tagged {
    thread: usize,
    cleaned: Arc<AtomicUsize>,
}

impl AsyncTransport for Tagged {
    type Input = u64;
    type Output = (usize, u64);

    async fn transport(
        &self,
        x: u64,
        _: &StageContext,
    ) -> Result<Option<(usize, u64)>, StageError> {
        Ok(Some((self.thread, x)))
    }

    fn cleanup(&self, _: &StageContext) {
        self.cleaned.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn per_thread_state_comes_from_the_factory_and_cleanup_runs_per_thread() {
    let cleaned = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&cleaned);
    let got = Collect::default();
    let report = Engine::builder(0..10_000_u64)
        .transport(Async::transport_with(move |ctx| Tagged {
            thread: ctx.index(),
            cleaned: Arc::clone(&count),
        }))
        .transport_threads(3)
        .backend(got.clone())
        .run()
        .unwrap();
    assert_eq!(report.processed(), 10_000);
    assert_eq!(cleaned.load(Ordering::SeqCst), 3);
    let mut items: Vec<u64> = got.items().into_iter().map(|(_, x)| x).collect();
    items.sort_unstable();
    assert!(items == (0..10_000).collect::<Vec<_>>());
    assert!(got.items().iter().all(|(thread, _)| *thread < 3));
}

#[test]
fn an_async_backend_settles_each_item_when_its_future_finished() {
    let sum = Arc::new(AtomicU64::new(0));
    let add = Arc::clone(&sum);
    let report = Engine::builder(1..=1_000_u64)
        .backend(Async::for_each(move |x: u64| {
            let add = Arc::clone(&add);
            async move {
                tokio::time::sleep(delay(x)).await;
                add.fetch_add(x, Ordering::SeqCst);
            }
        }))
        .run()
        .unwrap();
    report.check().unwrap();
    assert_eq!(report.processed(), 1_000);
    assert_eq!(sum.load(Ordering::SeqCst), 500_500);
}

#[test]
fn the_statistics_show_the_futures_in_flight_and_the_limit() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let handle = Engine::builder(0..5_000_u64)
        .transport(gated(&gate, &started))
        .backend(|_: u64| {})
        .spawn()
        .unwrap();
    wait_for("1,000 futures in flight", || {
        let stats = handle.stats();
        let transport = &stats.stages[1];
        transport.in_flight == 1_000 && transport.concurrency_limit == 1_000
    });
    #[cfg(feature = "metrics")]
    {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(handle.metrics()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"engine_stage_in_flight{stage="transport",kind="transport"} 1000"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"engine_stage_concurrency_limit{stage="transport",kind="transport"} 1000"#
            ),
            "{text}"
        );
        assert!(!text.contains(r#"engine_stage_in_flight{stage="backend""#));
    }
    gate.add_permits(usize::MAX >> 4);
    let report = handle.join().unwrap();
    assert_eq!(report.processed(), 5_000);
    assert_eq!(report.dropped(), 0);
}

#[test]
fn a_closure_that_panics_before_its_future_fails_only_its_item() {
    let report = Engine::builder(0..100_u64)
        .transport(Async::map(|x: u64| {
            assert!(x != 3, "no future for 3");
            async move { x }
        }))
        .backend(|_: u64| {})
        .run()
        .unwrap();
    report.check().unwrap();
    assert_eq!((report.processed(), report.failed()), (99, 1));
}
