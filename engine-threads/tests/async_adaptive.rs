//! An adaptive async stage finds its own limit against a real server on loopback whose latency
//! rises steeply beyond 64 requests at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engine_threads::{Async, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// 5 ms per request up to 64 at once, then steeply more: 5 ms x (n / 64)^4.
fn latency(active: usize) -> Duration {
    let over = (active as f64 / 64.0).max(1.0);
    Duration::from_secs_f64((0.005 * over.powi(4)).min(1.0))
}

/// Serves requests of 8 bytes, answering each with the same 8 bytes after `latency`.
async fn serve(listener: TcpListener, active: Arc<AtomicUsize>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let active = Arc::clone(&active);
        tokio::spawn(async move {
            let mut request = [0_u8; 8];
            if stream.read_exact(&mut request).await.is_err() {
                return;
            }
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(latency(now)).await;
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.write_all(&request).await;
        });
    }
}

async fn request(addr: std::net::SocketAddr, x: u64) -> std::io::Result<u64> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&x.to_le_bytes()).await?;
    let mut answer = [0_u8; 8];
    stream.read_exact(&mut answer).await?;
    Ok(u64::from_le_bytes(answer))
}

#[test]
fn the_limit_settles_near_where_the_server_degrades() {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = server.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    server.spawn(serve(listener, Arc::new(AtomicUsize::new(0))));

    let stage = Async::try_map(move |x: u64| request(addr, x)).adaptive(1_024);
    let probe = stage.clone();
    let handle = Engine::builder(0_u64..)
        .transport(stage)
        .backend(|_: u64| {})
        .spawn()
        .unwrap();

    // Within 10 s the limit is between 32 and 128, and stays there for the next 2 s.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let mut settled_since: Option<Instant> = None;
    let mut seen = Vec::new();
    loop {
        let limit = probe.concurrency_limit();
        seen.push(limit);
        if (32..=128).contains(&limit) {
            let since = *settled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(2) {
                break;
            }
        } else {
            settled_since = None;
            assert!(
                Instant::now() < deadline,
                "the limit did not settle between 32 and 128 within 10 s: {seen:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.stop();
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.failed(), 0);
    assert!(report.processed() > 1_000, "{report:?}");
}
