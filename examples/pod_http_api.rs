//! The origin's motivating case: a TCP echo server extended with an HTTP API. The echo
//! server counts the connections it serves; the HTTP bean (an axum `Router`) reports that
//! count with the echo bean's state and address, which its handlers find through the bean
//! context, and sends the echo bean a named signal (`reset`) that zeroes the count. Both
//! listen on 127.0.0.1 with any free port; the program waits for their readiness, drives
//! them as a client would, then stops the pod.
//!
//! Run with `cargo run --example pod_http_api`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use engine::pod::axum::routing::{get, post};
use engine::pod::axum::{Extension, Json, Router};
use engine::pod::{
    BeanContext, BeanSpec, BeanState, ConnectionFuture, ConnectionHandler, Echo, HttpServer, Pod,
    PodConfig, Target, TcpServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The echo handler, counting the connections it serves.
struct CountingEcho(Arc<AtomicU64>);

impl ConnectionHandler for CountingEcho {
    fn handle(&self, stream: TcpStream, peer: SocketAddr, ctx: BeanContext) -> ConnectionFuture {
        self.0.fetch_add(1, Ordering::SeqCst);
        Echo.handle(stream, peer, ctx)
    }
}

/// What `GET /connections` answers.
#[derive(serde::Serialize)]
struct Connections {
    served: u64,
    echo_state: String,
    echo_address: Option<SocketAddr>,
}

/// What `POST /reset` answers.
#[derive(serde::Serialize)]
struct Reset {
    handlers: usize,
}

/// The HTTP API: the count and the echo bean's status (found through the context), and a
/// named signal to the echo bean.
fn api(served: Arc<AtomicU64>) -> Router {
    Router::new()
        .route(
            "/connections",
            get(move |Extension(ctx): Extension<BeanContext>| {
                let served = Arc::clone(&served);
                async move {
                    let echo = ctx
                        .beans_labelled("echo")
                        .first()
                        .and_then(|id| ctx.bean(*id));
                    Json(Connections {
                        served: served.load(Ordering::SeqCst),
                        echo_state: echo.as_ref().map_or("gone".into(), |b| b.state.to_string()),
                        echo_address: echo.and_then(|b| b.address),
                    })
                }
            }),
        )
        .route(
            "/reset",
            post(|Extension(ctx): Extension<BeanContext>| async move {
                let handlers = ctx.send_signal("reset", Target::Label("echo".into()), ().into());
                Json(Reset { handlers })
            }),
        )
}

/// One HTTP/1.1 request with no body, on a connection of its own: the status code and the
/// body. The example keeps to the facade's dependencies; a program would use an HTTP client
/// crate.
async fn http(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0");
    stream
        .write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    // "HTTP/1.1 200 OK", headers, an empty line, the body.
    let code = response.get(9..12).and_then(|code| code.parse().ok());
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned());
    code.zip(body).context("not an HTTP response")
}

/// Sends a line to the echo server and checks it comes back.
async fn echo_once(addr: SocketAddr, line: &str) -> Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await?;
    let mut back = String::new();
    stream.read_to_string(&mut back).await?;
    ensure!(back == line, "echoed {back:?} for {line:?}");
    Ok(())
}

fn main() -> Result<()> {
    let served = Arc::new(AtomicU64::new(0));
    let echo = TcpServer::with_handler(CountingEcho(Arc::clone(&served))).on_start({
        let served = Arc::clone(&served);
        move |ctx: &BeanContext| {
            let served = Arc::clone(&served);
            ctx.on_signal("reset", move |_| served.store(0, Ordering::SeqCst));
        }
    });
    let mut config = PodConfig::default();
    config.stop_wait_time = Some(Duration::from_secs(5));
    let mut pod = Pod::new(config);
    pod.add(BeanSpec::new("tcp_server", echo).label("echo"));
    pod.add(BeanSpec::new("http", HttpServer::new(api(served))).label("api"));

    let report = tokio::runtime::Runtime::new()?.block_on(async {
        let handle = pod.start();
        // Readiness: both servers have bound their address once they are ready.
        let ready = handle
            .wait_status(Instant::now() + Duration::from_secs(10), |beans| {
                beans.iter().all(|b| b.state == BeanState::Ready)
            })
            .await;
        ensure!(ready, "the servers are not ready: {:?}", handle.status());
        let status = handle.status();
        let echo_at = status[0].address.context("the echo server's address")?;
        let api_at = status[1].address.context("the api's address")?;
        println!("echo server on {echo_at}, HTTP API on {api_at}");

        for i in 0..3 {
            echo_once(echo_at, &format!("hello {i}\n")).await?;
        }
        let expected = format!(r#"{{"served":3,"echo_state":"ready","echo_address":"{echo_at}"}}"#);
        let (code, body) = http(api_at, "GET", "/connections").await?;
        println!("GET /connections -> {code} {body}");
        ensure!(
            (code, body.as_str()) == (200, expected.as_str()),
            "{code} {body}"
        );

        let (code, body) = http(api_at, "POST", "/reset").await?;
        println!("POST /reset -> {code} {body}");
        ensure!(
            (code, body.as_str()) == (200, r#"{"handlers":1}"#),
            "{code} {body}"
        );

        echo_once(echo_at, "again\n").await?;
        let (code, body) = http(api_at, "GET", "/connections").await?;
        println!("GET /connections -> {code} {body}");
        ensure!(body.starts_with(r#"{"served":1,"#), "{code} {body}");

        let (code, _) = http(api_at, "GET", "/nothing").await?;
        ensure!(code == 404, "GET /nothing -> {code}");

        handle.stop();
        Ok(handle.wait().await)
    })?;

    // A graceful stop: every bean, the status bean too, finished.
    for bean in &report.beans {
        println!("bean {} ({}): {}", bean.id, bean.core, bean.state);
    }
    let all_finished = report.beans.iter().all(|b| b.state == BeanState::Finished);
    ensure!(
        all_finished && report.stopped && !report.forced,
        "{report:?}"
    );
    Ok(())
}
