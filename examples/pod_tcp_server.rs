//! The built-in TCP server (the origin's `os_aio_pod.contrib.tcp_server.TCPServerAdapter`):
//! one bean with the default echo handler and one with a handler of its own that upper-cases
//! each line. Both listen on 127.0.0.1 with port 0 (any free port, read back with
//! `TcpServer::local_addr`); clients send lines and check the replies, then the pod stops.
//!
//! Run with `cargo run --example pod_tcp_server`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::net::SocketAddr;

use anyhow::{Context as _, Result, ensure};
use engine::pod::{BeanContext, BeanSpec, BeanState, Pod, PodConfig, TcpServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The custom handler: answers each line upper-cased, until the client closes its side or
/// the bean is asked to stop.
async fn shout(mut stream: TcpStream, _peer: SocketAddr, ctx: BeanContext) -> std::io::Result<()> {
    let (reader, mut writer) = stream.split();
    let mut lines = BufReader::new(reader).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    writer.write_all(line.to_uppercase().as_bytes()).await?;
                    writer.write_all(b"\n").await?;
                }
                None => break,
            },
            () = ctx.stopping() => break,
        }
    }
    writer.shutdown().await
}

/// Connects to `addr`, sends each line and reads one line back for each; then closes its
/// side and checks the server closes too, with nothing more to say.
async fn exchange(addr: SocketAddr, lines: &[&str]) -> Result<Vec<String>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut replies = Vec::with_capacity(lines.len());
    for line in lines {
        writer.write_all(format!("{line}\n").as_bytes()).await?;
        let mut reply = String::new();
        reader.read_line(&mut reply).await?;
        replies.push(reply);
    }
    writer.shutdown().await?;
    let mut rest = String::new();
    reader.read_to_string(&mut rest).await?;
    ensure!(rest.is_empty(), "unexpected trailing data {rest:?}");
    Ok(replies)
}

fn main() -> Result<()> {
    let echo = TcpServer::echo();
    let echo_addr = echo.local_addr();
    let upper = TcpServer::with_handler(shout);
    let upper_addr = upper.local_addr();

    // `host`, `port` and `backlog` are the server's parameters, as in a `[[beans]]` table.
    let params = toml::toml! {
        host = "127.0.0.1"
        port = 0
    };
    let mut pod = Pod::new(PodConfig::default());
    pod.add(
        BeanSpec::new("tcp_server", echo)
            .label("echo")
            .params(params.clone()),
    );
    pod.add(
        BeanSpec::new("tcp_server", upper)
            .label("upper")
            .params(params),
    );

    let report = tokio::runtime::Runtime::new()?.block_on(async {
        let handle = pod.start();
        let echo_at = echo_addr.get().await.context("the echo server listens")?;
        let upper_at = upper_addr.get().await.context("the upper server listens")?;
        println!("echo server on {echo_at}, upper server on {upper_at}");

        let echoed = exchange(echo_at, &["hello", "pod"]).await?;
        println!("echo replied {echoed:?}");
        ensure!(echoed == ["hello\n", "pod\n"], "echo replied {echoed:?}");

        // Two clients at once: each connection runs in a task of its own.
        let (first, second) = tokio::join!(
            exchange(upper_at, &["hello", "Bean 1"]),
            exchange(upper_at, &["make me loud"]),
        );
        let (first, second) = (first?, second?);
        println!("upper replied {first:?} and {second:?}");
        ensure!(first == ["HELLO\n", "BEAN 1\n"], "upper replied {first:?}");
        ensure!(second == ["MAKE ME LOUD\n"], "upper replied {second:?}");

        handle.stop();
        Ok(handle.wait().await)
    })?;

    let finished = report
        .beans
        .iter()
        .filter(|b| b.state == BeanState::Finished);
    println!("{} of 2 servers finished", finished.count());
    ensure!(
        report.stopped && !report.forced && report.is_success(),
        "{report:?}"
    );
    ensure!(
        report
            .beans
            .iter()
            .map(|b| b.state)
            .eq([BeanState::Finished; 2]),
        "{report:?}"
    );
    ensure!(
        echo_addr.try_get().is_none() && upper_addr.try_get().is_none(),
        "the servers still listen"
    );
    Ok(())
}
