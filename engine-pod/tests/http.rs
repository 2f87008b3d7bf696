//! The HTTP app adapter: an axum app in a pod from a TOML config, whose handlers reach the
//! pod through the bean context (another bean's status, the pod config, a named signal to
//! the TCP bean); a graceful stop lets an in-flight request finish; a request outliving the
//! stop wait time is cancelled with the bean.

#![cfg(feature = "http")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use engine_pod::{
    BeanContext, BeanId, BeanSpec, BeanState, HttpServer, Pod, PodConfig, PodFile, Registry,
    Target, TcpServer,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(20);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and returns the status code and the body.
async fn call(
    client: &HttpClient,
    method: &str,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET /bean/{id}`: another bean's state, through the context.
async fn bean_state(
    Extension(ctx): Extension<BeanContext>,
    Path(id): Path<u64>,
) -> Result<String, (hyper::StatusCode, String)> {
    ctx.bean(BeanId(id))
        .map(|b| b.state.to_string())
        .ok_or((hyper::StatusCode::NOT_FOUND, format!("no bean {id}")))
}

/// `GET /config`: the pod config, through the context.
async fn config(Extension(ctx): Extension<BeanContext>) -> String {
    format!("{:?}", ctx.pod_config().stop_wait_time)
}

/// `POST /poke/{label}`: a named signal to a label; answers how many handlers ran.
async fn poke(
    Extension(ctx): Extension<BeanContext>,
    Path(label): Path<String>,
) -> Json<serde_json::Value> {
    let ran = ctx.send_signal("poke", Target::Label(label), "from http".into());
    Json(serde_json::json!({ "handlers": ran }))
}

#[tokio::test]
async fn an_axum_app_from_a_toml_config_reaches_the_pod_through_its_context() {
    let (poked_tx, mut poked) = mpsc::unbounded_channel();
    let mut registry = Registry::with_builtins();
    registry.register("api", |_| {
        Ok(HttpServer::new(
            Router::new()
                .route("/bean/{id}", get(bean_state))
                .route("/config", get(config))
                .route("/poke/{label}", post(poke)),
        ))
    });
    registry.register("echo", move |_| {
        let poked_tx = poked_tx.clone();
        Ok(TcpServer::echo().on_start(move |ctx: &BeanContext| {
            let poked_tx = poked_tx.clone();
            ctx.on_signal("poke", move |event| {
                let _ = poked_tx.send(event.payload.clone());
            });
        }))
    });
    let file = PodFile::parse(
        r#"
        stop_wait_time = "2s"
        [[beans]]
        core = "echo"
        label = "tcp"
        [[beans]]
        core = "api"
        label = "api"
        host = "127.0.0.1"
        port = 0
        "#,
    )
    .unwrap();
    let handle = registry.build(file).unwrap().start();
    let ready = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans.iter().all(|b| b.state == BeanState::Ready)
        })
        .await;
    assert!(ready, "{:?}", handle.status());
    let addr = handle.status()[1].address.expect("the http bean's address");
    let client = client();

    assert_eq!(
        call(&client, "GET", addr, "/bean/1").await.unwrap(),
        (200, "ready".to_owned())
    );
    assert_eq!(call(&client, "GET", addr, "/bean/7").await.unwrap().0, 404);
    assert_eq!(
        call(&client, "GET", addr, "/config").await.unwrap(),
        (200, "Some(2s)".to_owned())
    );
    let (status, body) = call(&client, "POST", addr, "/poke/tcp").await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"handlers":1}"#));
    assert_eq!(
        timeout(PATIENCE, poked.recv()).await.unwrap(),
        Some(serde_json::json!("from http"))
    );
    assert_eq!(call(&client, "GET", addr, "/nothing").await.unwrap().0, 404);

    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.is_success() && !report.forced, "{report:?}");
    assert!(report.beans.iter().all(|b| b.state == BeanState::Finished));
}

/// A router whose `/slow` tells `entered` it runs, then waits for `release`.
fn slow_app(
    entered: mpsc::UnboundedSender<()>,
    release: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
) -> Router {
    Router::new().route(
        "/slow",
        get(move || {
            let (entered, release) = (entered.clone(), release.lock().unwrap().take());
            async move {
                let _ = entered.send(());
                if let Some(release) = release {
                    let _ = release.await;
                }
                "done"
            }
        }),
    )
}

fn pod_with(server: HttpServer, stop_wait: Duration) -> Pod {
    let mut config = PodConfig::default();
    config.stop_wait_time = Some(stop_wait);
    let mut pod = Pod::new(config);
    pod.add(BeanSpec::new("api", server));
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_the_request_in_flight_finish() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (release_tx, release) = oneshot::channel();
    let server = HttpServer::new(slow_app(entered_tx, Arc::new(Mutex::new(Some(release)))));
    let bound = server.local_addr();
    let stop_wait = Duration::from_secs(5);
    let handle = pod_with(server, stop_wait).start();
    let addr = timeout(PATIENCE, bound.get()).await.unwrap().unwrap();

    let request = tokio::spawn(async move { call(&client(), "GET", addr, "/slow").await });
    timeout(PATIENCE, entered.recv()).await.unwrap().unwrap();
    let stopped_at = Instant::now();
    handle.stop();
    // The server stops accepting, and the bean waits for its request.
    let stopping = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans[0].state == BeanState::Stopping
        })
        .await;
    assert!(stopping);
    timeout(PATIENCE, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener closes on the stop");
    assert_eq!(handle.status()[0].state, BeanState::Stopping);
    release_tx.send(()).unwrap();

    let answer = timeout(PATIENCE, request).await.unwrap().unwrap();
    assert_eq!(answer, Ok((200, "done".to_owned())));
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    let took = stopped_at.elapsed();
    assert!(report.is_success() && !report.forced, "{report:?}");
    assert_eq!(report.beans[0].state, BeanState::Finished);
    assert!(took < stop_wait + Duration::from_millis(500), "{took:?}");
}

#[tokio::test]
async fn a_request_outliving_the_stop_wait_time_is_cancelled_with_the_bean() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    // Never released: the request outlives the stop wait time.
    let (_release_tx, release) = oneshot::channel();
    let server = HttpServer::new(slow_app(entered_tx, Arc::new(Mutex::new(Some(release)))));
    let bound = server.local_addr();
    let handle = pod_with(server, Duration::from_millis(200)).start();
    let addr = timeout(PATIENCE, bound.get()).await.unwrap().unwrap();
    let request = tokio::spawn(async move { call(&client(), "GET", addr, "/slow").await });
    timeout(PATIENCE, entered.recv()).await.unwrap().unwrap();
    handle.stop();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.forced, "{report:?}");
    assert_eq!(report.beans[0].state, BeanState::Cancelled);
    let answer = timeout(PATIENCE, request).await.unwrap().unwrap();
    assert!(answer.is_err(), "{answer:?}");
    assert_eq!(bound.get().await, None);
}

#[tokio::test]
async fn any_tower_service_is_served_with_the_context() {
    // A router is a tower service; handed over as one, it takes the generic path.
    let service = Router::new().route(
        "/id",
        get(|Extension(ctx): Extension<BeanContext>| async move { ctx.id().to_string() }),
    );
    let server = HttpServer::from_service(service);
    let bound = server.local_addr();
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new(
        "waiter",
        engine_pod::bean_fn(|ctx: BeanContext| async move { ctx.stopping().await }),
    ));
    pod.add(BeanSpec::new("api", server));
    let handle = pod.start();
    let addr = timeout(PATIENCE, bound.get()).await.unwrap().unwrap();
    assert_eq!(
        call(&client(), "GET", addr, "/id").await.unwrap(),
        (200, "2".to_owned())
    );
    handle.stop();
    assert!(timeout(PATIENCE, handle.wait()).await.unwrap().is_success());
}
