//! The built-in beans' promises: the TCP server echoes many clients at once and survives bad
//! ones, the flow consumes each item exactly once, the simple server runs its steps in order,
//! and the line reader sends its lines as signals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_core::StageError;
use engine_pod::{
    BeanContext, BeanFuture, BeanSpec, BeanState, Flow, PcFlow, PcFlowParams, Pod, PodConfig,
    PodReport, Producer, Simple, SimpleServer, StdinParams, StdinReader, TcpServer,
    TcpServerParams, bean_fn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// A guard against hangs: tests wait on events, and only fail through this.
const PATIENCE: Duration = Duration::from_secs(20);

fn table(value: impl serde::Serialize) -> toml::Table {
    toml::Table::try_from(value).unwrap()
}

fn tcp_params(port: u16) -> toml::Table {
    let mut params = TcpServerParams::default();
    params.port = port;
    table(params)
}

async fn wait(handle: engine_pod::PodHandle) -> PodReport {
    timeout(PATIENCE, handle.wait())
        .await
        .expect("the pod ends")
}

/// Sends `data` and reads until the server closes its side, concurrently.
async fn echo_round(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let send = async move {
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let receive = async move {
        let mut back = Vec::new();
        reader.read_to_end(&mut back).await.unwrap();
        back
    };
    tokio::join!(send, receive).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tcp_server_echoes_every_client_and_survives_bad_ones() {
    let server = TcpServer::echo();
    let bound = server.local_addr();
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("tcp_server", server).params(tcp_params(0)));
    let handle = pod.start();
    let addr = timeout(PATIENCE, bound.get())
        .await
        .unwrap()
        .expect("listening");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // A client that stays idle and connected through the stop.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    // A client sending bytes that are not UTF-8 gets them back unchanged.
    let garbage = tokio::spawn(echo_round(addr, vec![0xff, 0xfe, 0x00, 0xc3, 0x28, b'\n']));
    // A client leaving in the middle of a line.
    let mut rude = TcpStream::connect(addr).await.unwrap();
    rude.write_all(b"half a li").await.unwrap();
    drop(rude);

    let mut clients = Vec::new();
    for client in 0..20 {
        let data: String = (0..50)
            .map(|line| format!("client {client} line {line}\n"))
            .collect();
        clients.push(tokio::spawn(async move {
            (data.clone(), echo_round(addr, data.into_bytes()).await)
        }));
    }
    for client in clients {
        let (sent, back) = timeout(PATIENCE, client).await.unwrap().unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), sent);
    }
    let back = timeout(PATIENCE, garbage).await.unwrap().unwrap();
    assert_eq!(back, [0xff, 0xfe, 0x00, 0xc3, 0x28, b'\n']);

    handle.stop();
    let report = wait(handle).await;
    assert_eq!(report.beans[0].state, BeanState::Finished, "{report:?}");
    assert!(report.is_success() && !report.forced, "{report:?}");
    // The idle connection was ended by the stop, and the address is gone.
    let mut buf = [0_u8; 8];
    let read = timeout(PATIENCE, idle.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(bound.get().await, None);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_taken_port_fails_the_bean_with_the_address() {
    let first = TcpServer::echo();
    let bound = first.local_addr();
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("tcp_server", first));
    let running = pod.start();
    let addr = timeout(PATIENCE, bound.get()).await.unwrap().unwrap();

    let second = TcpServer::echo();
    let second_bound = second.local_addr();
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("tcp_server", second).params(tcp_params(addr.port())));
    let report = wait(pod.start()).await;
    assert_eq!(report.beans[0].state, BeanState::Failed);
    let error = report.beans[0].last_error.clone().unwrap();
    assert!(
        error.contains(&format!("cannot listen on {addr}")),
        "{error}"
    );
    assert_eq!(second_bound.get().await, None);

    running.stop();
    assert!(wait(running).await.is_success());
}

#[tokio::test]
async fn bad_tcp_parameters_name_the_key() {
    let mut params = toml::Table::new();
    params.insert("prot".into(), 9000.into());
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("tcp_server", TcpServer::echo()).params(params));
    let report = wait(pod.start()).await;
    let error = report.beans[0].last_error.clone().unwrap();
    assert!(error.contains("unknown field `prot`"), "{error}");
}

/// A flow producing `0..limit` (or forever), recording what it consumes.
struct Numbers {
    limit: Option<u64>,
    /// Items whose consume fails.
    fails: fn(u64) -> bool,
    consumed: Mutex<Vec<u64>>,
    /// Told once this many items have been consumed.
    milestone: (usize, Mutex<Option<oneshot::Sender<()>>>),
    producer_saw_stop: AtomicBool,
}

impl Numbers {
    fn new(limit: Option<u64>, fails: fn(u64) -> bool) -> Self {
        Self {
            limit,
            fails,
            consumed: Mutex::new(Vec::new()),
            milestone: (usize::MAX, Mutex::new(None)),
            producer_saw_stop: AtomicBool::new(false),
        }
    }
}

impl Flow for Numbers {
    type Item = u64;

    fn produce(self: Arc<Self>, _ctx: BeanContext, out: Producer<u64>) -> BeanFuture {
        Box::pin(async move {
            let mut n = 0;
            while self.limit.is_none_or(|limit| n < limit) {
                if let Err(err) = out.send(n).await {
                    assert_eq!(err.0, n, "the item comes back");
                    self.producer_saw_stop.store(true, Ordering::SeqCst);
                    break;
                }
                n += 1;
            }
            Ok(())
        })
    }

    fn consume(self: Arc<Self>, item: u64, _ctx: BeanContext) -> BeanFuture {
        Box::pin(async move {
            if item.is_multiple_of(64) {
                // Lets the other consumers interleave.
                tokio::task::yield_now().await;
            }
            if (self.fails)(item) {
                return Err(StageError::msg(format!("item {item} is bad")));
            }
            let count = {
                let mut consumed = self.consumed.lock().unwrap();
                consumed.push(item);
                consumed.len()
            };
            if count >= self.milestone.0
                && let Some(tx) = self.milestone.1.lock().unwrap().take()
            {
                let _ = tx.send(());
            }
            Ok(())
        })
    }
}

fn flow_params(consumer_num: usize, queue_size: usize) -> toml::Table {
    let mut params = PcFlowParams::default();
    params.consumer_num = consumer_num;
    params.queue_size = queue_size;
    table(params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_item_is_consumed_exactly_once() {
    let flow = PcFlow::new(Numbers::new(Some(10_000), |_| false));
    let (numbers, stats) = (Arc::clone(flow.flow()), flow.stats());
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("numbers", flow).params(flow_params(8, 16)));
    let report = wait(pod.start()).await;
    assert!(report.is_success(), "{report:?}");
    let mut consumed = numbers.consumed.lock().unwrap().clone();
    consumed.sort_unstable();
    assert_eq!(consumed, (0..10_000).collect::<Vec<_>>());
    assert_eq!(
        (stats.produced(), stats.consumed(), stats.failed()),
        (10_000, 10_000, 0)
    );
    assert!(!numbers.producer_saw_stop.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_errors_are_counted_and_the_flow_goes_on() {
    let flow = PcFlow::new(Numbers::new(Some(1_000), |n| n.is_multiple_of(7)));
    let (numbers, stats) = (Arc::clone(flow.flow()), flow.stats());
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("numbers", flow).params(flow_params(3, 4)));
    let report = wait(pod.start()).await;
    assert_eq!(report.beans[0].state, BeanState::Finished, "{report:?}");
    let bad = (0..1_000_u64).filter(|n| n.is_multiple_of(7)).count() as u64;
    assert_eq!(stats.failed(), bad);
    assert_eq!(stats.consumed(), 1_000 - bad);
    let mut consumed = numbers.consumed.lock().unwrap().clone();
    consumed.sort_unstable();
    assert_eq!(
        consumed,
        (0..1_000_u64)
            .filter(|n| !n.is_multiple_of(7))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_ends_the_producer_and_drains_the_queue() {
    let (tx, reached) = oneshot::channel();
    let mut numbers = Numbers::new(None, |_| false);
    numbers.milestone = (500, Mutex::new(Some(tx)));
    let flow = PcFlow::new(numbers);
    let (numbers, stats) = (Arc::clone(flow.flow()), flow.stats());
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("numbers", flow).params(flow_params(4, 32)));
    let handle = pod.start();
    timeout(PATIENCE, reached).await.unwrap().unwrap();
    handle.stop();
    let report = wait(handle).await;
    assert_eq!(report.beans[0].state, BeanState::Finished, "{report:?}");
    assert!(numbers.producer_saw_stop.load(Ordering::SeqCst));
    // Every item sent successfully was consumed, once; the numbers run without a gap.
    let produced = stats.produced();
    let mut consumed = numbers.consumed.lock().unwrap().clone();
    consumed.sort_unstable();
    assert!(produced >= 500, "{produced}");
    assert_eq!(consumed, (0..produced).collect::<Vec<_>>());
    assert_eq!(stats.consumed(), produced);
}

#[tokio::test]
async fn bad_flow_parameters_fail_the_bean() {
    let mut pod = Pod::new(PodConfig::default());
    pod.add(
        BeanSpec::new("numbers", PcFlow::new(Numbers::new(Some(1), |_| false)))
            .params(flow_params(0, 1)),
    );
    let report = wait(pod.start()).await;
    let error = report.beans[0].last_error.clone().unwrap();
    assert!(error.contains("parameter `consumer_num`"), "{error}");
}

/// A simple server recording its steps.
struct Recorder {
    steps: Mutex<Vec<&'static str>>,
    fail_run: bool,
    /// Told when `run` starts.
    running: Mutex<Option<oneshot::Sender<()>>>,
}

impl Recorder {
    fn step(&self, step: &'static str) {
        self.steps.lock().unwrap().push(step);
    }
}

impl SimpleServer for Recorder {
    fn startup(self: Arc<Self>, _ctx: BeanContext) -> BeanFuture {
        Box::pin(async move {
            self.step("startup");
            Ok(())
        })
    }

    fn run(self: Arc<Self>, ctx: BeanContext) -> BeanFuture {
        Box::pin(async move {
            self.step("run");
            if let Some(tx) = self.running.lock().unwrap().take() {
                let _ = tx.send(());
            }
            if self.fail_run {
                return Err(StageError::msg("run failed"));
            }
            ctx.stopping().await;
            self.step("run ended");
            Ok(())
        })
    }

    fn cleanup(self: Arc<Self>, _ctx: BeanContext) -> BeanFuture {
        Box::pin(async move {
            self.step("cleanup");
            Ok(())
        })
    }

    fn on_stop(&self, ctx: &BeanContext) {
        assert!(!ctx.is_stopping(), "the signal comes before the stop token");
        self.step("on_stop");
    }
}

#[tokio::test]
async fn the_simple_server_runs_its_steps_in_order_and_hears_the_stop() {
    let (running_tx, running) = oneshot::channel();
    let server = Arc::new(Recorder {
        steps: Mutex::new(Vec::new()),
        fail_run: false,
        running: Mutex::new(Some(running_tx)),
    });
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new(
        "recorder",
        Simple::from_arc(Arc::clone(&server)),
    ));
    let handle = pod.start();
    // Once `run` has started, the stop handler is registered.
    timeout(PATIENCE, running).await.unwrap().unwrap();
    handle.stop();
    let report = wait(handle).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(
        *server.steps.lock().unwrap(),
        ["startup", "run", "on_stop", "run ended", "cleanup"]
    );
}

#[tokio::test]
async fn cleanup_runs_when_run_fails() {
    let server = Arc::new(Recorder {
        steps: Mutex::new(Vec::new()),
        fail_run: true,
        running: Mutex::new(None),
    });
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new(
        "recorder",
        Simple::from_arc(Arc::clone(&server)),
    ));
    let report = wait(pod.start()).await;
    assert_eq!(report.beans[0].state, BeanState::Failed);
    assert_eq!(report.beans[0].last_error.as_deref(), Some("run failed"));
    assert_eq!(*server.steps.lock().unwrap(), ["startup", "run", "cleanup"]);
}

#[tokio::test]
async fn the_line_reader_sends_its_lines_to_the_labelled_beans() {
    let (mut input, output) = tokio::io::duplex(64);
    let (ready_tx, ready) = oneshot::channel();
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    let ready_tx = Mutex::new(Some(ready_tx));
    let mut pod = Pod::new(PodConfig::default());
    pod.add(
        BeanSpec::new(
            "sink",
            bean_fn(move |ctx: BeanContext| {
                let lines_tx = lines_tx.clone();
                let ready_tx = ready_tx.lock().unwrap().take();
                async move {
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    ctx.on_signal("line", move |event| {
                        let _ = tx.send(event.payload.clone());
                    });
                    if let Some(ready_tx) = ready_tx {
                        let _ = ready_tx.send(());
                    }
                    for _ in 0..3 {
                        let Some(payload) = rx.recv().await else {
                            break;
                        };
                        let _ = lines_tx.send(payload);
                    }
                }
            }),
        )
        .label("sink"),
    );
    let mut params = StdinParams::default();
    params.signal = Some("line".to_owned());
    params.label = Some("sink".to_owned());
    let reader = StdinReader::from_reader(tokio::io::BufReader::new(output));
    pod.add(BeanSpec::new("stdin", reader).params(table(params)));
    let handle = pod.start();
    timeout(PATIENCE, ready).await.unwrap().unwrap();
    input
        .write_all(b"first\nnot \xff utf-8\r\nlast, without an end of line")
        .await
        .unwrap();
    drop(input);
    let report = wait(handle).await;
    assert!(report.is_success(), "{report:?}");
    let mut got = Vec::new();
    while let Ok(payload) = lines.try_recv() {
        got.push(payload);
    }
    assert_eq!(
        got,
        [
            serde_json::json!("first"),
            serde_json::json!("not \u{fffd} utf-8"),
            serde_json::json!("last, without an end of line"),
        ]
    );
}

#[tokio::test]
async fn a_target_label_without_a_signal_is_a_parameter_error() {
    let mut params = toml::Table::new();
    params.insert("label".into(), "sink".into());
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("stdin", StdinReader::from_reader(&b""[..])).params(params));
    let report = wait(pod.start()).await;
    let error = report.beans[0].last_error.clone().unwrap();
    assert!(error.contains("parameter `label`"), "{error}");
}
