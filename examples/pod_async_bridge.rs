//! Async code feeding a threaded engine and awaiting its results: HTTP POSTs to the adapter
//! bean (`HttpServer`) become items of an engine bean's pipeline, through a bounded `flume`
//! feed ([`engine::pod::feed`]); each item carries its way back ([`engine::pod::Call`]), so
//! each request awaits and returns its own item's result. A full feed makes the handlers
//! wait: the engine's backpressure reaches the HTTP clients. An item the engine fails is
//! answered 422; the others go on.
//!
//! Run with `cargo run --example pod_async_bridge`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use engine::core::try_map;
use engine::pod::axum::Router;
use engine::pod::axum::extract::State;
use engine::pod::axum::http::StatusCode;
use engine::pod::axum::routing::post;
use engine::pod::{
    BeanSpec, BeanState, Call, CallError, Feed, HttpServer, Pod, PodConfig, engine_bean, feed,
};
use engine::threads::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request's number, on its way through the engine and back.
type Square = Call<u64, u64>;

/// `POST /square` with a number in the body: its square, computed by the engine.
async fn square(State(calls): State<Feed<Square>>, body: String) -> (StatusCode, String) {
    let Ok(n) = body.trim().parse::<u64>() else {
        return (StatusCode::BAD_REQUEST, format!("{body:?} is not a number"));
    };
    match calls.call(n).await {
        Ok(squared) => (StatusCode::OK, squared.to_string()),
        // The engine failed the item (it overflowed): this request hears of it.
        Err(CallError::Dropped) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{n} overflows")),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

/// One HTTP/1.1 POST (`Connection: close`), returning the status code and the body. The
/// example keeps to the facade's dependencies; a program would use an HTTP client crate.
async fn post_number(addr: SocketAddr, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "POST /square HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_owned()))
}

fn main() -> Result<()> {
    // At most 8 requests wait in the feed; more wait in their handlers.
    let (calls, frontend) = feed::<Square>(8);
    let engine = engine_bean(move |_ctx| {
        Engine::builder(frontend.clone())
            .transport(try_map(|call: Square| {
                call.try_map(|n| n.checked_mul(n).ok_or("overflow"))
            }))
            .backend(|call: Square| {
                call.answer();
            })
            .transport_threads(2)
    });
    let http = HttpServer::new(
        Router::new()
            .route("/square", post(square))
            .with_state(calls),
    );
    let addr = http.local_addr();

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("engine", engine).label("squares"));
        pod.add(BeanSpec::new("http", http).label("api"));
        let handle = pod.start();
        let addr = tokio::time::timeout(Duration::from_secs(10), addr.get())
            .await
            .context("the HTTP bean did not bind in time")?
            .context("the HTTP bean did not listen")?;
        println!("HTTP API on http://{addr}/square");

        // 200 requests at once: each gets its own number's square.
        let requests: Vec<_> = (0..200_u64)
            .map(|n| tokio::spawn(async move { (n, post_number(addr, &n.to_string()).await) }))
            .collect();
        for request in requests {
            let (n, answer) = request.await?;
            let (code, body) = answer?;
            ensure!(code == 200, "{n}: status {code}: {body}");
            ensure!(body == (n * n).to_string(), "{n} squared is not {body}");
        }
        println!("200 concurrent requests, each answered with its own square");

        let (code, body) = post_number(addr, &u64::MAX.to_string()).await?;
        ensure!(code == 422, "an overflow gave {code}: {body}");
        let (code, body) = post_number(addr, "12").await?;
        ensure!(
            (code, body.as_str()) == (200, "144"),
            "12 gave {code}: {body}"
        );
        println!("an overflowing number answered 422 ({body:?} for 12 after it)");

        handle.stop();
        let report = handle.wait().await;
        ensure!(report.is_success() && !report.forced, "{report:?}");
        ensure!(
            report.beans.iter().all(|b| b.state == BeanState::Finished),
            "{:?}",
            report.beans
        );
        println!("pod stopped: the engine drained and the HTTP bean closed");
        Ok(())
    })
}
