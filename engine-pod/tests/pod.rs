//! The pod's promises, in process: lifecycle, ids and labels, lookup and waiting, named
//! signals, stop handlers and deadline, restart policies, failures logged and reported.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_core::StageError;
use engine_pod::{
    BeanContext, BeanId, BeanSpec, BeanState, Pod, PodConfig, Restart, RestartPolicy, Target,
    bean_fn, blocking,
};
use tokio::time::timeout;

mod common;

/// A guard against hangs: tests wait on events, and only fail through this.
const PATIENCE: Duration = Duration::from_secs(20);

fn config(stop_wait: Option<Duration>) -> PodConfig {
    let mut config = PodConfig::default();
    config.stop_wait_time = stop_wait;
    config
}

/// A bean that records its id and waits for the stop request.
fn waiter(log: Arc<Mutex<Vec<String>>>) -> impl engine_pod::Bean {
    bean_fn(move |ctx: BeanContext| {
        let log = Arc::clone(&log);
        async move {
            log.lock().unwrap().push(format!("start {}", ctx.id()));
            ctx.stopping().await;
            log.lock().unwrap().push(format!("stop {}", ctx.id()));
        }
    })
}

#[tokio::test]
async fn the_pod_ends_when_every_bean_has_ended_and_ids_follow_start_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut pod = Pod::new(PodConfig::default());
    for label in ["a", "b", "a"] {
        let seen = Arc::clone(&seen);
        pod.add(
            BeanSpec::new(
                "record",
                bean_fn(move |ctx: BeanContext| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let label = ctx.label().unwrap_or_default().to_owned();
                        seen.lock().unwrap().push((ctx.id(), label));
                    }
                }),
            )
            .label(label),
        );
    }
    let report = timeout(PATIENCE, pod.start().wait()).await.unwrap();
    assert!(report.is_success());
    assert!(!report.stopped);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            (BeanId(1), "a".to_owned()),
            (BeanId(2), "b".to_owned()),
            (BeanId(3), "a".to_owned())
        ]
    );
    assert!(report.beans.iter().all(|b| b.state == BeanState::Finished));
}

#[tokio::test]
async fn beans_find_each_other_by_label_wait_for_each_other_and_signal_by_label() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut pod = Pod::new(PodConfig::default());
    for _ in 0..2 {
        let got = Arc::clone(&got);
        pod.add(
            BeanSpec::new(
                "listener",
                bean_fn(move |ctx: BeanContext| {
                    let got = Arc::clone(&got);
                    async move {
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                        ctx.on_signal("ping", move |event| {
                            let _ = tx.send((event.from, event.payload.clone()));
                        });
                        let (from, payload) = rx.recv().await.expect("a ping");
                        got.lock().unwrap().push((ctx.id(), from, payload));
                    }
                }),
            )
            .label("listeners"),
        );
    }
    pod.add(BeanSpec::new(
        "quiet",
        bean_fn(|ctx: BeanContext| async move {
            ctx.on_signal("ping", |_| panic!("not for me"));
            ctx.stopping().await;
        }),
    ));
    pod.add(BeanSpec::new(
        "pinger",
        bean_fn(|ctx: BeanContext| async move {
            let listeners = ctx.beans_labelled("listeners");
            assert_eq!(listeners, [BeanId(1), BeanId(2)]);
            assert_eq!(&*ctx.bean(BeanId(3)).unwrap().core, "quiet");
            // Wait until both listeners registered their handler, then ping them.
            while ctx.send_signal("ping", Target::Label("listeners".into()), 0.into()) < 2 {
                tokio::task::yield_now().await;
            }
            for id in listeners {
                assert_eq!(ctx.wait_for(id).await, Some(BeanState::Finished));
            }
            assert_eq!(ctx.wait_for(BeanId(99)).await, None);
            ctx.stop_pod();
        }),
    ));
    let report = timeout(PATIENCE, pod.start().wait()).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    let mut got = got.lock().unwrap().clone();
    got.sort_by_key(|(id, _, _)| *id);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(_, from, _)| *from == Some(BeanId(4))));
}

#[tokio::test]
async fn a_stop_runs_stop_handlers_before_any_bean_sees_it_then_stops_every_bean() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut pod = Pod::new(config(Some(Duration::from_secs(10))));
    for _ in 0..3 {
        pod.add(BeanSpec::new("waiter", waiter(Arc::clone(&log))));
    }
    // Each handler records whether any bean's stop handle was stopping when it ran.
    let seen_stopping = Arc::new(Mutex::new(Vec::new()));
    let (registered_tx, mut registered) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..2 {
        let (seen_stopping, registered_tx) = (Arc::clone(&seen_stopping), registered_tx.clone());
        pod.add(BeanSpec::new(
            "handler",
            bean_fn(move |ctx: BeanContext| {
                let (seen_stopping, registered_tx) =
                    (Arc::clone(&seen_stopping), registered_tx.clone());
                async move {
                    let me = ctx.clone();
                    ctx.on_signal("stop", move |_| {
                        seen_stopping.lock().unwrap().push(me.is_stopping());
                    });
                    registered_tx.send(()).unwrap();
                    ctx.stopping().await;
                }
            }),
        ));
    }
    let handle = pod.start();
    for _ in 0..2 {
        timeout(PATIENCE, registered.recv()).await.unwrap().unwrap();
    }
    let stop = handle.stop_handle().clone();
    handle.stop();
    // Every bean's handle is a child of the pod's: all of them stop with it.
    assert!(stop.is_stopping());
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.stopped && !report.forced, "{report:?}");
    assert_eq!(*seen_stopping.lock().unwrap(), [false, false]);
    let mut stops: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("stop"))
        .cloned()
        .collect();
    stops.sort();
    assert_eq!(stops, ["stop 1", "stop 2", "stop 3"]);
    assert!(report.beans.iter().all(|b| b.state == BeanState::Finished));
}

#[tokio::test]
async fn a_bean_that_ignores_the_stop_is_cancelled_at_the_deadline() {
    let mut pod = Pod::new(config(Some(Duration::from_millis(200))));
    pod.add(BeanSpec::new(
        "stubborn",
        bean_fn(|_ctx: BeanContext| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }),
    ));
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Mutex::new(Some(started_tx));
    pod.add(BeanSpec::new(
        "stubborn-thread",
        blocking(move |_ctx: BeanContext| {
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            // A blocking bean that never looks at its stop token.
            let (_tx, rx) = std::sync::mpsc::channel::<()>();
            let _ = rx.recv_timeout(Duration::from_secs(3600));
        }),
    ));
    let handle = pod.start();
    started.await.unwrap();
    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.forced);
    assert!(
        report.beans.iter().all(|b| b.state == BeanState::Cancelled),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_second_stop_cancels_at_once() {
    let mut pod = Pod::new(config(None)); // No deadline: only a second stop ends it.
    pod.add(BeanSpec::new(
        "stubborn",
        bean_fn(|_ctx: BeanContext| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }),
    ));
    let handle = pod.start();
    handle.stop();
    tokio::task::yield_now().await;
    handle.stop_now();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.forced);
    assert_eq!(report.beans[0].state, BeanState::Cancelled);
}

#[tokio::test]
async fn restart_policies_honour_their_limit() {
    let (failing, runs) = common::failing("always fails");
    let policy = RestartPolicy::new(Restart::OnFailure)
        .limit(3, Duration::from_secs(60))
        .backoff(Duration::from_millis(1), Duration::from_millis(4));
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("failing", failing).label("f").restart(policy));
    // Fails twice, then succeeds: restarted twice, ends finished.
    let attempts = Arc::new(Mutex::new(0_u32));
    let flaky = {
        let attempts = Arc::clone(&attempts);
        bean_fn(move |_ctx: BeanContext| {
            let attempts = Arc::clone(&attempts);
            async move {
                let n = {
                    let mut n = attempts.lock().unwrap();
                    *n += 1;
                    *n
                };
                if n <= 2 {
                    panic!("attempt {n} panics");
                }
                Ok::<(), StageError>(())
            }
        })
    };
    pod.add(BeanSpec::new("flaky", flaky).restart(policy));
    let report = timeout(PATIENCE, pod.start().wait()).await.unwrap();
    assert!(!report.is_success());
    assert_eq!(runs.load(SeqCst), 4, "one run and three restarts");
    let failing = &report.beans[0];
    assert_eq!((failing.state, failing.restarts), (BeanState::Failed, 3));
    assert_eq!(failing.last_error.as_deref(), Some("always fails"));
    let flaky = &report.beans[1];
    assert_eq!((flaky.state, flaky.restarts), (BeanState::Finished, 2));
    assert!(
        flaky
            .last_error
            .as_deref()
            .unwrap()
            .contains("attempt 2 panics")
    );
}

#[tokio::test]
async fn status_shows_running_beans_with_uptime() {
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("waiter", waiter(Arc::default())).label("w"));
    let handle = pod.start();
    timeout(PATIENCE, async {
        while handle.status()[0].state != BeanState::Running {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let status = handle.status();
    assert_eq!(status[0].label.as_deref(), Some("w"));
    assert_eq!(&*status[0].core, "waiter");
    let json = serde_json::to_string(&status).unwrap();
    assert!(json.contains("\"state\":\"running\""), "{json}");
    assert_eq!(
        handle.send_signal("nothing", Target::All, serde_json::Value::Null),
        0
    );
    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert_eq!(report.beans[0].state, BeanState::Finished);
}

#[tokio::test]
async fn an_engine_bean_drains_its_engine_when_the_pod_stops_with_no_stop_wiring() {
    let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut pod = Pod::new(config(Some(Duration::from_secs(10))));
    // The builder has no stop handle: the bean sets the pod's.
    let bean = engine_pod::engine_bean(move |_ctx| {
        let running_tx = running_tx.clone();
        engine_threads::Engine::builder(0_u64..)
            .transport(|x: u64| x)
            .backend(move |_: u64| {
                let _ = running_tx.send(());
            })
    });
    let last = bean.last_report();
    pod.add(BeanSpec::new("numbers", bean));
    let handle = pod.start();
    running.recv().await.unwrap();
    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert_eq!(report.beans[0].state, BeanState::Finished, "{report:?}");
    assert!(!report.forced, "{report:?}");
    let run = last.get().expect("the engine's report");
    run.check().unwrap();
    assert_eq!(run.end, engine_core::RunEnd::Stopped);
    assert_eq!(run.dropped(), 0);
    assert!(run.processed() > 0);
}

/// A raw HTTP/1.1 GET, returning the status line and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn the_status_bean_serves_every_beans_status_as_json() {
    let server = engine_pod::StatusServer::new();
    let addr = server.local_addr();
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("status", server).label("ops"));
    pod.add(BeanSpec::new("waiter", waiter(Arc::default())).label("w"));
    let handle = pod.start();
    let addr = timeout(PATIENCE, addr.get()).await.unwrap().unwrap();
    assert!(addr.ip().is_loopback());
    let (status, body) = http_get(addr, "/status").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let beans: Vec<engine_pod::BeanStatus> = serde_json::from_str(&body).unwrap();
    assert_eq!(beans.len(), 2);
    assert_eq!(
        (&*beans[0].core, beans[0].label.as_deref()),
        ("status", Some("ops"))
    );
    assert_eq!(beans[1].state, BeanState::Running);
    let (status, _) = http_get(addr, "/nothing").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.is_success() && !report.forced, "{report:?}");
}

#[tokio::test]
async fn a_cancelled_bean_stops_running() {
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut pod = Pod::new(config(Some(Duration::from_millis(50))));
    pod.add(BeanSpec::new(
        "stubborn",
        bean_fn(move |_ctx: BeanContext| {
            let dropped_tx = Arc::clone(&dropped_tx);
            let running_tx = running_tx.clone();
            async move {
                // Tells the test when this run's future is dropped (cancelled).
                struct OnDrop(Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        if let Some(tx) = self.0.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }
                let _guard = OnDrop(dropped_tx);
                let _ = running_tx.send(());
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }),
    ));
    let handle = pod.start();
    running.recv().await.unwrap();
    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert_eq!(report.beans[0].state, BeanState::Cancelled);
    timeout(PATIENCE, dropped).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_panic_before_the_beans_future_exists_fails_the_bean() {
    let mut pod = Pod::new(PodConfig::default());
    pod.add(
        BeanSpec::new(
            "early",
            bean_fn(|_ctx: BeanContext| -> std::future::Ready<()> { panic!("too early") }),
        )
        .restart(RestartPolicy::new(Restart::OnFailure).limit(1, Duration::from_secs(60))),
    );
    let report = timeout(PATIENCE, pod.run()).await.unwrap();
    assert!(!report.is_success());
    let bean = &report.beans[0];
    assert_eq!((bean.state, bean.restarts), (BeanState::Failed, 1));
    assert!(bean.last_error.as_deref().unwrap().contains("too early"));
}

#[tokio::test]
async fn a_bean_that_ends_on_the_stop_signal_is_not_restarted() {
    let runs = Arc::new(Mutex::new(0));
    let mut pod = Pod::new(config(Some(Duration::from_secs(10))));
    {
        let runs = Arc::clone(&runs);
        pod.add(
            BeanSpec::new(
                "always",
                bean_fn(move |ctx: BeanContext| {
                    let runs = Arc::clone(&runs);
                    async move {
                        *runs.lock().unwrap() += 1;
                        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                        let tx = Mutex::new(Some(tx));
                        ctx.on_signal("stop", move |_| {
                            if let Some(tx) = tx.lock().unwrap().take() {
                                let _ = tx.send(());
                            }
                        });
                        let _ = rx.await;
                    }
                }),
            )
            .restart(RestartPolicy::new(Restart::Always)),
        );
    }
    // A later bean keeps the first one's token alive while it stops (reverse order).
    pod.add(BeanSpec::new("waiter", waiter(Arc::default())));
    let handle = pod.start();
    timeout(PATIENCE, async {
        while handle
            .status()
            .iter()
            .any(|b| b.state != BeanState::Running)
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.stopped && !report.forced, "{report:?}");
    assert_eq!(*runs.lock().unwrap(), 1);
    assert_eq!(report.beans[0].restarts, 0);
}
