//! Readiness: a bean marks itself ready, others wait for it, the status tells `starting`,
//! `ready` and `running` apart, and `/ready` answers 503 until every bean that declares
//! readiness is ready.

use std::time::{Duration, Instant};

use engine_pod::{
    BeanContext, BeanId, BeanSpec, BeanState, ControlClient, Pod, PodConfig, ReadyError,
    StatusServer, TcpServer, bean_fn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn wait_ready_returns_once_the_bean_marks_itself_ready_and_probes_follow() {
    let (go_tx, go) = oneshot::channel::<()>();
    let go = std::sync::Mutex::new(Some(go));
    let status = StatusServer::new();
    let status_addr = status.local_addr();
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("status", status));
    // Marks itself ready when the test says so.
    pod.add(
        BeanSpec::new(
            "slow",
            bean_fn(move |ctx: BeanContext| {
                let go = go.lock().unwrap().take();
                async move {
                    if let Some(go) = go {
                        let _ = go.await;
                    }
                    ctx.mark_ready();
                    ctx.stopping().await;
                }
            }),
        )
        .label("slow")
        .declares_readiness(),
    );
    pod.add(BeanSpec::new(
        "plain",
        bean_fn(|ctx: BeanContext| async move { ctx.stopping().await }),
    ));
    let (waited_tx, mut waited) = tokio::sync::mpsc::unbounded_channel();
    pod.add(BeanSpec::new(
        "waiter",
        bean_fn(move |ctx: BeanContext| {
            let waited_tx = waited_tx.clone();
            async move {
                let result = ctx.wait_ready("slow").await;
                let state = ctx.bean(BeanId(2)).map(|b| b.state);
                waited_tx.send((result, state)).unwrap();
                assert_eq!(
                    ctx.wait_ready("nobody").await,
                    Err(ReadyError::NoSuchBean("nobody".into()))
                );
                ctx.stopping().await;
            }
        }),
    ));
    let handle = pod.start();
    let addr = timeout(PATIENCE, status_addr.get()).await.unwrap().unwrap();
    let client = ControlClient::new(addr, None);

    let deadline = Instant::now() + PATIENCE;
    assert!(
        handle
            .wait_status(deadline, |beans| beans[0].state == BeanState::Ready
                && beans[2].state == BeanState::Running)
            .await
    );
    let status = handle.status();
    assert_eq!(status[1].state, BeanState::Starting);
    assert_eq!(status[2].state, BeanState::Running);
    assert!(!client.ready().await.unwrap(), "503 while bean 2 starts");
    assert!(waited.try_recv().is_err(), "the waiter still waits");

    go_tx.send(()).unwrap();
    let (result, state) = timeout(PATIENCE, waited.recv()).await.unwrap().unwrap();
    assert_eq!(result, Ok(()));
    assert_eq!(state, Some(BeanState::Ready));
    assert!(
        client.ready().await.unwrap(),
        "200 once every declared bean is ready"
    );

    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.is_success(), "{report:?}");
}

#[tokio::test]
async fn wait_ready_fails_when_the_bean_ends_before_it_is_ready() {
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("quitter", bean_fn(|_ctx: BeanContext| async {})).declares_readiness());
    let (tx, rx) = oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    pod.add(BeanSpec::new(
        "waiter",
        bean_fn(move |ctx: BeanContext| {
            let tx = tx.lock().unwrap().take();
            async move {
                let result = ctx.wait_ready(BeanId(1)).await;
                if let Some(tx) = tx {
                    let _ = tx.send(result);
                }
            }
        }),
    ));
    let report = timeout(PATIENCE, pod.run()).await.unwrap();
    assert!(report.is_success());
    assert_eq!(
        rx.await.unwrap(),
        Err(ReadyError::Ended {
            id: BeanId(1),
            state: BeanState::Finished
        })
    );
}

/// The test: a bean that waits for the TCP server's readiness connects on its first
/// try, in 100 of 100 pods, with no retry loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bean_waiting_for_the_tcp_server_connects_on_its_first_try_100_times() {
    for run in 0..100 {
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("tcp_server", TcpServer::echo()).label("echo"));
        pod.add(BeanSpec::new(
            "client",
            bean_fn(|ctx: BeanContext| async move {
                ctx.wait_ready("echo").await?;
                let addr = ctx
                    .bean(BeanId(1))
                    .and_then(|b| b.address)
                    .ok_or_else(|| engine_core::StageError::msg("no address"))?;
                let mut stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(engine_core::StageError::new)?;
                stream
                    .write_all(b"ping")
                    .await
                    .map_err(engine_core::StageError::new)?;
                stream
                    .shutdown()
                    .await
                    .map_err(engine_core::StageError::new)?;
                let mut back = String::new();
                stream
                    .read_to_string(&mut back)
                    .await
                    .map_err(engine_core::StageError::new)?;
                ctx.stop_pod();
                if back == "ping" {
                    Ok(())
                } else {
                    Err(engine_core::StageError::msg(format!("echoed {back:?}")))
                }
            }),
        ));
        let report = timeout(PATIENCE, pod.run()).await.unwrap();
        assert!(report.is_success(), "run {run}: {report:?}");
    }
}

/// Polls `future` on this thread without ever parking it, so that this thread sees the
/// result the moment a runtime thread makes it ready, not after a wake-up: the test then acts
/// in the narrowest window the bean leaves.
fn spin_on<F: Future>(future: F) -> F::Output {
    let deadline = Instant::now() + PATIENCE;
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        assert!(Instant::now() < deadline, "nothing came in {PATIENCE:?}");
        std::hint::spin_loop();
    }
}

/// A client that has just read the status server's address finds it ready: the server marks
/// itself ready before it publishes the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_200_as_soon_as_the_status_address_is_known_40_times() {
    for run in 0..40 {
        let status = StatusServer::new();
        let status_addr = status.local_addr();
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("status", status));
        let handle = pod.start();
        // The bean runs on the runtime's threads; this one watches for the address.
        let addr = spin_on(status_addr.get()).expect("the server listens");
        let state = handle.status()[0].state;
        assert_eq!(state, BeanState::Ready, "run {run}: the address came first");
        let ready = ControlClient::new(addr, None).ready().await.unwrap();
        assert!(ready, "run {run}: 503 from a server whose address is known");
        handle.stop();
        let report = timeout(PATIENCE, handle.wait()).await.unwrap();
        assert!(report.is_success(), "run {run}: {report:?}");
    }
}
