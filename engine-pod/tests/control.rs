//! The control API on the status bean, through [`ControlClient`]: list, stop one bean,
//! restart one bean, signal a label, stop the pod; a token refuses requests without it
//! (401) and nothing changes; no bind beyond loopback without a token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_pod::{
    BeanContext, BeanId, BeanSpec, BeanState, ControlClient, ControlToken, CtlError, Pod,
    PodConfig, PodHandle, StatusServer, Target, bean_fn,
};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(20);

/// A bean that counts the `poke` signals it hears and waits for its stop.
fn poked(count: Arc<Mutex<Vec<BeanId>>>) -> impl engine_pod::Bean {
    bean_fn(move |ctx: BeanContext| {
        let count = Arc::clone(&count);
        async move {
            let id = ctx.id();
            ctx.on_signal("poke", move |_| count.lock().unwrap().push(id));
            ctx.mark_ready();
            ctx.stopping().await;
        }
    })
}

/// A pod of a status bean (1), two `workers` (2, 3) and an `other` (4).
async fn pod(
    config: PodConfig,
    params: toml::Table,
) -> (PodHandle, std::net::SocketAddr, Arc<Mutex<Vec<BeanId>>>) {
    let poked_ids = Arc::new(Mutex::new(Vec::new()));
    let status = StatusServer::new();
    let addr = status.local_addr();
    let mut pod = Pod::new(config);
    pod.add(BeanSpec::new("status", status).params(params));
    for label in ["workers", "workers", "other"] {
        pod.add(
            BeanSpec::new("poked", poked(Arc::clone(&poked_ids)))
                .label(label)
                .declares_readiness(),
        );
    }
    let handle = pod.start();
    let addr = timeout(PATIENCE, addr.get()).await.unwrap().unwrap();
    let all_ready = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans.iter().all(|b| b.state == BeanState::Ready)
        })
        .await;
    assert!(all_ready, "{:?}", handle.status());
    (handle, addr, poked_ids)
}

#[tokio::test]
async fn stop_restart_and_signal_one_bean_or_a_label_through_the_control_api() {
    let (handle, addr, poked) = pod(PodConfig::default(), toml::Table::new()).await;
    let client = ControlClient::new(addr, None);
    let status = client.status().await.unwrap();
    assert_eq!(status.len(), 4);
    assert_eq!(status[0].address, Some(addr));

    // A signal to a label reaches only its beans.
    let ran = client
        .signal(
            "poke",
            Target::Label("workers".into()),
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    assert_eq!(ran, 2);
    let mut got = poked.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, [BeanId(2), BeanId(3)]);

    // Restart: a new run, with a new start time and one more restart.
    let before = client.status().await.unwrap()[3].clone();
    client.restart(BeanId(4)).await.unwrap();
    let restarted = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans[3].restarts == 1 && beans[3].state == BeanState::Ready
        })
        .await;
    assert!(restarted, "{:?}", handle.status());
    let after = client.status().await.unwrap()[3].clone();
    assert!(
        after.uptime_secs < before.uptime_secs + 0.5,
        "{before:?} {after:?}"
    );
    // The new run registered its handler again, once.
    assert_eq!(
        client
            .signal("poke", Target::Id(BeanId(4)), serde_json::Value::Null)
            .await
            .unwrap(),
        1
    );

    // Stop ends one bean while the others run.
    client.stop(BeanId(2)).await.unwrap();
    let stopped = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans[1].state == BeanState::Finished
        })
        .await;
    assert!(stopped);
    let status = client.status().await.unwrap();
    assert!(
        [0, 2, 3]
            .iter()
            .all(|&i| status[i].state == BeanState::Ready),
        "{status:?}"
    );
    // A stopped bean cannot be stopped again; an unknown one is not found.
    match client.stop(BeanId(2)).await {
        Err(CtlError::Refused { status, .. }) => assert_eq!(status.as_u16(), 409),
        other => panic!("{other:?}"),
    }
    match client.restart(BeanId(99)).await {
        Err(CtlError::Refused { status, .. }) => assert_eq!(status.as_u16(), 404),
        other => panic!("{other:?}"),
    }
    // A bean that ended for good starts again on request.
    client.restart(BeanId(2)).await.unwrap();
    let back = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans[1].state == BeanState::Ready && beans[1].restarts == 1
        })
        .await;
    assert!(back, "{:?}", handle.status());

    client.shutdown().await.unwrap();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(
        report.stopped && !report.forced && report.is_success(),
        "{report:?}"
    );
}

#[tokio::test]
async fn with_a_token_a_request_without_it_gets_401_and_changes_nothing() {
    let mut config = PodConfig::default();
    config.control_token = ControlToken::new("s3cret");
    let (handle, addr, poked) = pod(config, toml::Table::new()).await;
    for token in [None, ControlToken::new("wrong")] {
        let client = ControlClient::new(addr, token);
        assert!(matches!(client.status().await, Err(CtlError::Unauthorized)));
        assert!(matches!(
            client.stop(BeanId(2)).await,
            Err(CtlError::Unauthorized)
        ));
        assert!(matches!(
            client.restart(BeanId(3)).await,
            Err(CtlError::Unauthorized)
        ));
        let signal = client
            .signal("poke", Target::All, serde_json::Value::Null)
            .await;
        assert!(matches!(signal, Err(CtlError::Unauthorized)));
        assert!(matches!(
            client.shutdown().await,
            Err(CtlError::Unauthorized)
        ));
        // The readiness probe stays open, for probes.
        assert!(client.ready().await.unwrap());
    }
    // Nothing changed.
    let status = handle.status();
    assert!(
        status
            .iter()
            .all(|b| b.state == BeanState::Ready && b.restarts == 0)
    );
    assert!(poked.lock().unwrap().is_empty());
    assert!(!handle.stop_handle().is_stopping());

    let client = ControlClient::new(addr, ControlToken::new("s3cret"));
    assert_eq!(client.status().await.unwrap().len(), 4);
    client.stop(BeanId(2)).await.unwrap();
    client.shutdown().await.unwrap();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.is_success(), "{report:?}");
}

#[tokio::test]
async fn the_status_bean_does_not_listen_beyond_loopback_without_a_token() {
    let mut params = toml::Table::new();
    params.insert("host".into(), "0.0.0.0".into());
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("status", StatusServer::new()).params(params));
    let report = timeout(PATIENCE, pod.run()).await.unwrap();
    assert_eq!(report.beans[0].state, BeanState::Failed);
    let error = report.beans[0].last_error.clone().unwrap();
    assert!(error.contains("without a control token"), "{error}");
}
