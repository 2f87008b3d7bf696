//! The pod: starting and cleanly stopping 10,000 beans (time per bean, memory per bean)
//! against the same number of plain tokio tasks doing the same wait, TCP echo throughput of
//! the built-in server against a hand-written tokio echo server, and HTTP requests through the
//! adapter bean (`HttpServer`) against the same axum app served by `axum::serve`, from a
//! hand-written HTTP/1.1 client over keep-alive connections on loopback, and the latency of
//! one request at a time answered through `feed().call()` by an engine bean against the same
//! handler computing inline (and, in `http-engine-hops`, where that request's time goes, hop
//! by hop).
//!
//! Run with `cargo xtask bench pod`.

#![allow(clippy::print_stdout, reason = "a benchmark prints its table")]

mod harness;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine_pod::axum::Router;
use engine_pod::axum::extract::{Path, State};
use engine_pod::axum::routing::get;
use engine_pod::{
    BeanContext, BeanSpec, Call, Feed, HttpServer, Pod, PodConfig, TcpServer, bean_fn, engine_bean,
    feed,
};
use engine_threads::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const BEANS: usize = 10_000;
const ROUNDS: usize = 5;

/// Resident memory of this process, in bytes (Linux), for memory per bean.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Starts `BEANS` beans that wait for the stop, waits until all run, stops the pod.
async fn pod_round() -> (Duration, Option<u64>) {
    let before = rss();
    let started = Instant::now();
    let mut pod = Pod::new(PodConfig::default());
    let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..BEANS {
        let running_tx = running_tx.clone();
        pod.add(BeanSpec::new(
            "waiter",
            bean_fn(move |ctx: BeanContext| {
                let running_tx = running_tx.clone();
                async move {
                    let _ = running_tx.send(());
                    ctx.stopping().await;
                }
            }),
        ));
    }
    let handle = pod.start();
    for _ in 0..BEANS {
        running.recv().await.expect("beans run");
    }
    let during = rss();
    handle.stop();
    let report = handle.wait().await;
    assert!(report.is_success() && !report.forced);
    let per_bean = before
        .zip(during)
        .map(|(b, d)| d.saturating_sub(b) / BEANS as u64);
    (started.elapsed(), per_bean)
}

/// The same with plain tasks and one cancellation token each.
async fn tasks_round() -> Duration {
    let started = Instant::now();
    let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
    let tokens: Vec<CancellationToken> = (0..BEANS).map(|_| CancellationToken::new()).collect();
    let handles: Vec<_> = tokens
        .iter()
        .map(|token| {
            let (token, running_tx) = (token.clone(), running_tx.clone());
            tokio::spawn(async move {
                let _ = running_tx.send(());
                token.cancelled().await;
            })
        })
        .collect();
    for _ in 0..BEANS {
        running.recv().await.expect("tasks run");
    }
    for token in tokens.iter().rev() {
        token.cancel();
    }
    for handle in handles {
        handle.await.expect("task");
    }
    started.elapsed()
}

/// Bytes each echo client sends (and reads back).
const ECHO_BYTES: usize = 8 << 20;
const ECHO_CLIENTS: usize = 4;

/// Sends `ECHO_BYTES` from each of `ECHO_CLIENTS` clients and reads them back.
async fn echo_round(addr: SocketAddr) -> usize {
    let clients: Vec<_> = (0..ECHO_CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.expect("connects");
                stream.set_nodelay(true).expect("nodelay");
                let (mut reader, mut writer) = stream.into_split();
                let send = tokio::spawn(async move {
                    let chunk = vec![7_u8; 16 << 10];
                    for _ in 0..ECHO_BYTES / chunk.len() {
                        writer.write_all(&chunk).await.expect("writes");
                    }
                    writer
                });
                let mut buf = vec![0_u8; 64 << 10];
                let mut got = 0;
                while got < ECHO_BYTES {
                    let n = reader.read(&mut buf).await.expect("reads");
                    assert!(n > 0, "the server closed early");
                    got += n;
                }
                drop(send.await.expect("sender"));
                got
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += client.await.expect("client");
    }
    total
}

/// The hand-written server: accept, and `tokio::io::copy` each connection back to itself.
async fn plain_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.into_split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    addr
}

fn echo() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (pod_addr, handle, plain_addr) = runtime.block_on(async {
        let server = TcpServer::echo();
        let addr = server.local_addr();
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("tcp_server", server));
        let handle = pod.start();
        let pod_addr = addr.get().await.expect("the pod's server listens");
        (pod_addr, handle, plain_echo_server().await)
    });
    harness::header("pod: TCP echo, 4 clients x 8 MiB in 16 KiB writes (bytes/s)");
    let bytes = (ECHO_BYTES * ECHO_CLIENTS) as u64;
    let (engine, baseline) = harness::compare(
        ROUNDS,
        bytes,
        || runtime.block_on(echo_round(pod_addr)),
        || runtime.block_on(echo_round(plain_addr)),
    );
    harness::row(
        "built-in tcp_server vs hand-written tokio echo",
        &engine,
        &baseline,
    );
    handle.stop();
    let report = runtime.block_on(handle.wait());
    assert!(report.is_success());
}

/// Requests per round, spread over `HTTP_CONNECTIONS` keep-alive connections.
const HTTP_REQUESTS: usize = 20_000;
const HTTP_CONNECTIONS: usize = 8;
/// A round that takes longer than this is a broken server, not a slow one.
const HTTP_ROUND_LIMIT: Duration = Duration::from_secs(60);

/// The app both servers serve.
fn app() -> Router {
    Router::new().route("/", get(|| async { "hello from the pod\n" }))
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`, keeping what follows
/// it in `buf`; returns the body's length.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("an ASCII head");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a content-length");
            let total = end + 4 + length;
            while buf.len() < total {
                let n = stream.read(&mut chunk).await.expect("reads");
                assert!(n > 0, "the server closed mid-response");
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return length;
        }
        let n = stream.read(&mut chunk).await.expect("reads");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `HTTP_REQUESTS` GETs over `HTTP_CONNECTIONS` keep-alive connections, one request in flight
/// per connection; returns the bytes of body read.
async fn http_round(addr: SocketAddr) -> usize {
    let clients: Vec<_> = (0..HTTP_CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connects");
                stream.set_nodelay(true).expect("nodelay");
                let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                let mut buf = Vec::with_capacity(4096);
                let mut body = 0;
                for _ in 0..HTTP_REQUESTS / HTTP_CONNECTIONS {
                    stream.write_all(request.as_bytes()).await.expect("writes");
                    body += read_response(&mut stream, &mut buf).await;
                }
                body
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += client.await.expect("client");
    }
    total
}

fn http() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (pod_addr, handle, plain_addr) = runtime.block_on(async {
        let server = HttpServer::new(app());
        let addr = server.local_addr();
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("http", server));
        let handle = pod.start();
        let pod_addr = addr.get().await.expect("the adapter bean listens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let plain_addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            engine_pod::axum::serve(listener, app())
                .await
                .expect("axum serves");
        });
        (pod_addr, handle, plain_addr)
    });
    let round = |addr| {
        runtime.block_on(async {
            tokio::time::timeout(HTTP_ROUND_LIMIT, http_round(addr))
                .await
                .expect("a round within its time limit")
        })
    };
    harness::header("pod: HTTP GETs, 8 keep-alive connections x 2,500 requests (requests/s)");
    let (engine, baseline) = harness::compare(
        ROUNDS,
        HTTP_REQUESTS as u64,
        || round(pod_addr),
        || round(plain_addr),
    );
    harness::row(
        "HttpServer bean vs axum::serve, same app",
        &engine,
        &baseline,
    );
    handle.stop();
    let report = runtime.block_on(handle.wait());
    assert!(report.is_success());
}

/// An `HttpServer` whose `GET /square/{n}` sends the number through `feed().call()` into an
/// engine bean (transport squares on 2 threads, backend answers) and awaits the answer; with
/// `inline`, the engine runs with `inline_when_idle`. Returns the adapter bean and the engine
/// bean.
fn square_through_engine(inline: bool) -> (HttpServer, engine_pod::EngineBean) {
    let (calls, frontend) = feed::<Call<u64, u64>>(64);
    let engine = engine_bean(move |_ctx| {
        let builder = Engine::builder(frontend.clone())
            .transport(|call: Call<u64, u64>| call.map(|x| x.wrapping_mul(x)))
            .backend(|call: Call<u64, u64>| {
                call.answer();
            })
            .transport_threads(2);
        if inline {
            builder.inline_when_idle()
        } else {
            builder
        }
    });
    let server = HttpServer::new(
        Router::new()
            .route(
                "/square/{n}",
                get(
                    |State(calls): State<Feed<Call<u64, u64>>>, Path(n): Path<u64>| async move {
                        calls.call(n).await.expect("the engine answers").to_string()
                    },
                ),
            )
            .with_state(calls),
    );
    (server, engine)
}

/// One request at a time over one keep-alive connection: the latency of `GET /square/{n}`,
/// answered by a handler that squares inline, or that sends the number through `feed().call()`
/// into an engine bean (transport squares, backend answers) and awaits the answer, with the
/// engine run by default and with `inline_when_idle`.
fn http_engine() {
    const SAMPLES: usize = 2_000;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (addrs, handle) = runtime.block_on(async {
        let (through_inline, inline_engine) = square_through_engine(true);
        let (through_engine, engine) = square_through_engine(false);
        let inline = HttpServer::new(Router::new().route(
            "/square/{n}",
            get(|Path(n): Path<u64>| async move { n.wrapping_mul(n).to_string() }),
        ));
        let addrs = [
            inline.local_addr(),
            through_inline.local_addr(),
            through_engine.local_addr(),
        ];
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("engine", engine));
        pod.add(BeanSpec::new("inline-engine", inline_engine));
        pod.add(BeanSpec::new("through-engine", through_engine));
        pod.add(BeanSpec::new("through-inline-engine", through_inline));
        pod.add(BeanSpec::new("inline", inline));
        let handle = pod.start();
        let mut ready = Vec::new();
        for addr in addrs {
            ready.push(addr.get().await.expect("the adapter bean listens"));
        }
        (ready, handle)
    });
    let [mut inline, mut through_inline, mut through_engine] = runtime.block_on(async {
        let mut clients = Vec::new();
        for addr in &addrs {
            clients.push(Client::connect(*addr).await);
        }
        let mut lat = [Vec::new(), Vec::new(), Vec::new()];
        for n in 0..SAMPLES as u64 {
            for (client, lat) in clients.iter_mut().zip(&mut lat) {
                lat.push(client.square(n).await);
            }
        }
        lat
    });
    println!(
        "\npod: one HTTP request at a time, GET /square/{{n}} ({SAMPLES} samples each, alternating)"
    );
    harness::latency_table(
        (
            "through feed().call(), inline_when_idle",
            &mut through_inline,
        ),
        ("the handler inline", &mut inline),
        "target: median ratio <= 1.3",
    );
    harness::latency_table(
        ("through feed().call(), by default", &mut through_engine),
        ("the handler inline", &mut inline),
        "each stage on its own thread",
    );
    handle.stop();
    let report = runtime.block_on(handle.wait());
    assert!(report.is_success());
}

/// A keep-alive HTTP/1.1 connection that times one request at a time.
struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            addr,
            buf: Vec::with_capacity(4096),
        }
    }

    async fn square(&mut self, n: u64) -> Duration {
        let request = format!("GET /square/{n} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        let started = Instant::now();
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("writes");
        read_response(&mut self.stream, &mut self.buf).await;
        started.elapsed()
    }
}

fn main() {
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("beans") {
        beans();
    }
    if run("echo") {
        echo();
    }
    if run("http") {
        http();
    }
    if run("http-engine") {
        http_engine();
    }
    if run("http-engine-hops") {
        http_engine_hops();
    }
}

fn beans() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    harness::header("pod: start and stop 10,000 beans (beans/s)");
    let mut memory = Vec::new();
    let (engine, baseline) = harness::compare(
        ROUNDS,
        BEANS as u64,
        || {
            let (took, per_bean) = runtime.block_on(pod_round());
            memory.extend(per_bean);
            took
        },
        || runtime.block_on(tasks_round()),
    );
    harness::row("pod beans vs plain tokio tasks", &engine, &baseline);
    // Later rounds reuse memory the allocator kept, so only the first (warm-up) round
    // measures growth.
    if let Some(first) = memory.first() {
        println!("memory per running bean: about {first} bytes (resident growth, first round)");
    }
}

/// Where the time of `http-engine` goes, hop by hop: the handler stamps the time before it
/// sends and after the answer came, the transport and the backend when they see the item.
/// Medians of the differences: handler -> transport (the tokio thread wakes the frontend
/// thread, which wakes a transport thread), transport -> backend (one engine handoff),
/// backend -> handler (the backend's answer wakes the tokio task).
fn http_engine_hops() {
    const SAMPLES: usize = 2_000;
    /// Nanoseconds since the first stamp, by where the item was.
    static STAMPS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
    static START: OnceLock<Instant> = OnceLock::new();
    fn stamp(at: usize) {
        let ns = START.get_or_init(Instant::now).elapsed().as_nanos();
        STAMPS[at].store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (addr, handle) = runtime.block_on(async {
        let (calls, frontend) = feed::<Call<u64, u64>>(64);
        let engine = engine_bean(move |_ctx| {
            Engine::builder(frontend.clone())
                .transport(|call: Call<u64, u64>| {
                    stamp(1);
                    call.map(|x| x.wrapping_mul(x))
                })
                .backend(|call: Call<u64, u64>| {
                    stamp(2);
                    call.answer();
                })
                .transport_threads(2)
        });
        let server = HttpServer::new(
            Router::new()
                .route(
                    "/square/{n}",
                    get(
                        |State(calls): State<Feed<Call<u64, u64>>>, Path(n): Path<u64>| async move {
                            stamp(0);
                            let answer = calls.call(n).await.expect("the engine answers");
                            stamp(3);
                            answer.to_string()
                        },
                    ),
                )
                .with_state(calls),
        );
        let addr = server.local_addr();
        let mut pod = Pod::new(PodConfig::default());
        pod.add(BeanSpec::new("engine", engine));
        pod.add(BeanSpec::new("through-engine", server));
        let handle = pod.start();
        let addr = addr.get().await.expect("the adapter bean listens");
        (addr, handle)
    });
    let hops = [
        "handler -> transport",
        "transport -> backend",
        "backend -> handler",
    ];
    let mut took: [Vec<u64>; 4] = Default::default();
    runtime.block_on(async {
        let mut client = Client::connect(addr).await;
        for n in 0..SAMPLES as u64 {
            let total = client.square(n).await;
            let at: Vec<u64> = STAMPS.iter().map(|s| s.load(Ordering::SeqCst)).collect();
            for (i, lat) in took.iter_mut().take(3).enumerate() {
                lat.push(at[i + 1].saturating_sub(at[i]));
            }
            took[3].push(u64::try_from(total.as_nanos()).unwrap_or(u64::MAX));
        }
    });
    println!("\npod: where one request through feed().call() spends its time ({SAMPLES} samples)");
    for (name, mut lat) in hops.into_iter().chain(["whole request"]).zip(took) {
        lat.sort_unstable();
        println!(
            "{name:<22} median {:>7.1} µs   p90 {:>7.1} µs",
            lat[lat.len() / 2] as f64 / 1e3,
            lat[lat.len() * 9 / 10] as f64 / 1e3
        );
    }
    handle.stop();
    let report = runtime.block_on(handle.wait());
    assert!(report.is_success());
}
