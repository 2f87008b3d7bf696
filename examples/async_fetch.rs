//! I/O-bound work with async stages: a small axum app on loopback answers `GET /square/N`
//! after 10 ms; the engine pushes 20,000 requests through an async transport with 1,024 in
//! flight, and checks every answer and the report's counts.
//!
//! On blocking threads the same work would need a thread per request in flight; here two
//! runtime threads carry all of them.
//!
//! Run with `cargo run --example async_fetch`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use engine::pod::axum::extract::Path;
use engine::pod::axum::routing::get;
use engine::pod::axum::{self, Router};
use engine::threads::{Async, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const REQUESTS: u64 = 20_000;
const IN_FLIGHT: usize = 1_024;

/// One request, as a plain HTTP/1.1 client would send it; the answer's body as a number.
async fn square(addr: SocketAddr, n: u64) -> Result<(u64, u64)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /square/{n} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response without a body")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok((n, body.trim().parse()?))
}

fn main() -> Result<()> {
    // The server, on a runtime of its own: a stand-in for a remote API.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // A backlog above the requests in flight, so that a burst of connects is not refused.
    let listener = {
        let _runtime = server.enter();
        let socket = TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        socket.listen(4 * IN_FLIGHT as u32)?
    };
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        "/square/{n}",
        get(|Path(n): Path<u64>| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            (n * n).to_string()
        }),
    );
    server.spawn(async move { axum::serve(listener, app).await });

    let answers = Arc::new(Mutex::new(Vec::with_capacity(REQUESTS as usize)));
    let sink = Arc::clone(&answers);
    let started = Instant::now();
    let report = Engine::builder(0..REQUESTS)
        .transport(
            Async::try_map(move |n: u64| square(addr, n))
                .concurrency(IN_FLIGHT)
                .timeout(Duration::from_secs(30)),
        )
        .backend(move |answer: (u64, u64)| sink.lock().expect("not poisoned").push(answer))
        .run()?;
    let elapsed = started.elapsed();
    report.check()?;

    let mut answers = answers.lock().expect("not poisoned").clone();
    answers.sort_unstable();
    ensure!(report.processed() == REQUESTS, "{report:?}");
    ensure!(report.failed() == 0 && report.dropped() == 0, "{report:?}");
    ensure!(
        answers.len() == REQUESTS as usize,
        "{} answers",
        answers.len()
    );
    for (i, (n, squared)) in answers.iter().enumerate() {
        ensure!(
            *n == i as u64 && *squared == n * n,
            "request {n} got {squared}"
        );
    }
    println!(
        "{REQUESTS} requests, {IN_FLIGHT} in flight, each answered after 10 ms: {elapsed:.2?} \
         ({:.0} requests/s; one at a time would take {:.0} s)",
        REQUESTS as f64 / elapsed.as_secs_f64(),
        REQUESTS as f64 * 0.010
    );
    Ok(())
}
