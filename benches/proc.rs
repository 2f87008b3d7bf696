//! Worker processes over `ipc-channel` against hand-written `ipc-channel` code of the same
//! shape, in the same run:
//!
//! - `pool`: small tasks (`x + 1` on a `u64`) through a [`Pool`] of 2 workers, against a
//!   raw batched `ipc-channel` stream of the same items (2 child processes, `Vec<u64>`
//!   batches of 1024, three batches in flight per child as the pool has, one master thread
//!   per child), and
//!   against a hand-written request/response loop (one task per round trip). The engine's
//!   absolute rate is printed too: Python's `multiprocessing.Pool` (chunksize 256) does
//!   about 2.9M items/s on the same task.
//! - `placed`: the same `x + 1` as a [`Transport`] placed in 2 worker processes of a
//!   threaded engine (`ProcTransport::new(Inc).workers(2)`, 2 transport threads), against the
//!   [`Pool`] doing the same work in the same run, and against the same stage called one item
//!   per round trip (what `ProcTransport` did before it took whole batches). Also the time a
//!   lone item takes through the placed transport (alone: `... -- lone`), by default and with
//!   `inline_when_idle`, against a hand-written pipeline of the same shape calling its child
//!   one round trip per item, and 1 MiB items through it.
//! - `oneway`: small messages master -> child, one way: a [`Child`] counting what
//!   [`Duplex::recv`] delivers, against a raw `IpcSender<u64>` to a child that counts.
//! - `bulk`: 1 GiB in 1 MiB bodies master -> child: [`Duplex::send_bytes`] (bodies of 64 KiB
//!   and more travel in shared memory), against a raw `IpcBytesSender`.
//!
//! Every child process is a copy of this binary: `main` calls `engine_proc::init()` on its
//! first line (which turns an engine worker into one and never returns), then dispatches the
//! hand-written children on the `PROC_BENCH_ROLE` environment variable, as a user without the
//! engine would.
//!
//! Run with `cargo xtask bench proc` (or `... -- pool` for one measurement).

#![allow(clippy::print_stdout, reason = "a benchmark prints its table")]

mod harness;

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use engine_core::protocol::Kind;
use engine_core::{StageContext, StageError, Transport};
use engine_proc::{Child, Duplex, Pool, ProcTransport};
use engine_threads::Engine;
use ipc_channel::ipc::{self, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const ROUNDS: usize = 5;

/// Tasks per engine round of `pool`.
const POOL_TASKS: u64 = 1_500_000;
/// Tasks per baseline round of `pool`: one round trip each, so far fewer (rates compare).
const ROUND_TRIP_TASKS: u64 = 100_000;
/// Items per message of the raw batched stream: the pool's largest batch.
const RAW_BATCH: u64 = 1024;
/// Batches in flight per child of the raw batched stream: the pool's depth.
const RAW_DEPTH: usize = 3;
/// Messages per round of `oneway`.
const MESSAGES: u64 = 200_000;
/// The body size of `bulk`.
const MIB: usize = 1 << 20;
/// Bodies per round of `bulk`: 1 GiB.
const BODIES: usize = 1024;

/// The environment variable that makes this binary one of the hand-written children.
const ROLE: &str = "PROC_BENCH_ROLE";
/// The name of the `IpcOneShotServer` a hand-written child connects to.
const SERVER: &str = "PROC_BENCH_SERVER";
/// Ends a round of the hand-written `oneway` child.
const END: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------
// Measurement helpers.

/// Like [`harness::compare`], but each side times its own round (so that preparing the
/// input stays outside the timed part) and has its own operation count.
fn compare_timed(
    rounds: usize,
    (engine_ops, baseline_ops): (u64, u64),
    mut engine: impl FnMut() -> Duration,
    mut baseline: impl FnMut() -> Duration,
) -> (harness::Figures, harness::Figures) {
    // One warm-up call each.
    engine();
    baseline();
    let rate = |ops: u64, elapsed: Duration| ops as f64 / elapsed.as_secs_f64().max(1e-12);
    let mut e = Vec::with_capacity(rounds);
    let mut b = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        e.push(rate(engine_ops, engine()));
        b.push(rate(baseline_ops, baseline()));
    }
    e.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    (harness::Figures { rates: e }, harness::Figures { rates: b })
}

/// How long `f` takes.
fn time<R>(f: impl FnOnce() -> R) -> Duration {
    let started = Instant::now();
    black_box(f());
    started.elapsed()
}

/// 1 + 2 + ... + n.
fn sum_to(n: u64) -> u64 {
    n * (n + 1) / 2
}

// ---------------------------------------------------------------------------------------
// The hand-written side: what a user of plain ipc-channel writes.

/// What the hand-written `pool` child hands over: tasks in, results out.
type EchoChannels = (IpcSender<u64>, IpcReceiver<u64>);
/// What the hand-written batched `pool` child hands over: batches in, batches out.
type BatchChannels = (IpcSender<Vec<u64>>, IpcReceiver<Vec<u64>>);
/// What the hand-written `oneway` child hands over: messages in, `(count, sum)` out.
type CountChannels = (IpcSender<u64>, IpcReceiver<(u64, u64)>);
/// What the hand-written `bulk` child hands over: bodies in, the total of bytes out.
type BytesChannels = (IpcBytesSender, IpcReceiver<u64>);

/// Starts this binary as the hand-written child `role` and returns what it sends back
/// through the one-shot server (its channels).
fn spawn_raw<B: Serialize + DeserializeOwned>(role: &str) -> (B, std::process::Child) {
    let (server, name) = IpcOneShotServer::<B>::new().expect("a one-shot server");
    let process = Command::new(std::env::current_exe().expect("the current executable"))
        .env(ROLE, role)
        .env(SERVER, name)
        .stdin(Stdio::null())
        .spawn()
        .expect("the child starts");
    let (_, boot) = server.accept().expect("the child connects");
    (boot, process)
}

/// Connects a hand-written child to its master and hands over `boot`.
fn connect<B: Serialize>(boot: B) {
    let server = std::env::var(SERVER).expect("the server's name");
    IpcSender::<B>::connect(server)
        .expect("connect to the master")
        .send(boot)
        .expect("the master listens");
}

/// The main of a hand-written child; its exit code.
fn raw_child(role: &str) -> i32 {
    match role {
        // x -> x + 1, one by one, until the master hangs up.
        "raw-echo" => {
            let (task_tx, tasks) = ipc::channel::<u64>().expect("a channel");
            let (reply, reply_rx) = ipc::channel::<u64>().expect("a channel");
            connect::<EchoChannels>((task_tx, reply_rx));
            while let Ok(x) = tasks.recv() {
                if reply.send(x + 1).is_err() {
                    return 1;
                }
            }
            0
        }
        // A batch of x -> a batch of x + 1, until the master hangs up.
        "raw-batch" => {
            let (task_tx, batches) = ipc::channel::<Vec<u64>>().expect("a channel");
            let (reply, reply_rx) = ipc::channel::<Vec<u64>>().expect("a channel");
            connect::<BatchChannels>((task_tx, reply_rx));
            while let Ok(mut batch) = batches.recv() {
                for x in &mut batch {
                    *x += 1;
                }
                if reply.send(batch).is_err() {
                    return 1;
                }
            }
            0
        }
        // Counts and sums until END, replies (count, sum), again until the master hangs up.
        "raw-count" => {
            let (tx, messages) = ipc::channel::<u64>().expect("a channel");
            let (reply, reply_rx) = ipc::channel::<(u64, u64)>().expect("a channel");
            connect::<CountChannels>((tx, reply_rx));
            let (mut count, mut sum) = (0_u64, 0_u64);
            while let Ok(x) = messages.recv() {
                if x == END {
                    if reply.send((count, sum)).is_err() {
                        return 1;
                    }
                    (count, sum) = (0, 0);
                } else {
                    count += 1;
                    sum = sum.wrapping_add(x);
                }
            }
            0
        }
        // Checks each body, an empty one ends a round: replies the total of bytes.
        "raw-bytes" => {
            let (tx, bodies) = ipc::bytes_channel().expect("a channel");
            let (reply, reply_rx) = ipc::channel::<u64>().expect("a channel");
            connect::<BytesChannels>((tx, reply_rx));
            let (mut count, mut total) = (0_usize, 0_u64);
            while let Ok(body) = bodies.recv() {
                if body.is_empty() {
                    if reply.send(total).is_err() {
                        return 1;
                    }
                    (count, total) = (0, 0);
                    continue;
                }
                if !body_ok(&body, count) {
                    return 2;
                }
                count += 1;
                total += body.len() as u64;
            }
            0
        }
        _ => 3,
    }
}

// ---------------------------------------------------------------------------------------
// 1. Small tasks through a pool.

/// `x + 1`: one stage for the pool and the engine alike.
#[derive(Clone, Serialize, Deserialize)]
struct Inc;

impl Transport for Inc {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        Ok(Some(x + 1))
    }
}

/// Sends `0..items` in batches of [`RAW_BATCH`] through the hand-written batch children,
/// [`RAW_DEPTH`] batches in flight per child (child `c` takes batches `c`, `c + n`, ...);
/// returns the sum of the replies.
fn raw_batched(children: &mut [(BatchChannels, std::process::Child)], items: u64) -> u64 {
    let n = children.len() as u64;
    thread::scope(|s| {
        let threads: Vec<_> = children
            .iter_mut()
            .enumerate()
            .map(|(c, ((tx, rx), _))| {
                s.spawn(move || {
                    let mut starts =
                        (c as u64 * RAW_BATCH..items).step_by((n * RAW_BATCH) as usize);
                    let batch = |start: u64| (start..(start + RAW_BATCH).min(items)).collect();
                    let mut inflight = 0;
                    for start in starts.by_ref().take(RAW_DEPTH) {
                        tx.send(batch(start)).expect("the child runs");
                        inflight += 1;
                    }
                    let mut sum = 0_u64;
                    while inflight > 0 {
                        let reply: Vec<u64> = rx.recv().expect("the child answers");
                        sum = reply.iter().fold(sum, |a, &x| a.wrapping_add(x));
                        inflight -= 1;
                        if let Some(start) = starts.next() {
                            tx.send(batch(start)).expect("the child runs");
                            inflight += 1;
                        }
                    }
                    sum
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a master thread"))
            .fold(0, u64::wrapping_add)
    })
}

fn pool() {
    let mut pool = Pool::builder()
        .workers(2, Inc)
        .start()
        .expect("the pool starts");
    let mut echoes: Vec<(EchoChannels, std::process::Child)> =
        (0..2).map(|_| spawn_raw("raw-echo")).collect();
    let mut batchers: Vec<(BatchChannels, std::process::Child)> =
        (0..2).map(|_| spawn_raw("raw-batch")).collect();

    let mut engine = || {
        time(|| {
            let sum = pool
                .run(0..POOL_TASKS)
                .map(|(_, result)| result.expect("the task succeeds"))
                .fold(0_u64, u64::wrapping_add);
            assert_eq!(sum, sum_to(POOL_TASKS));
        })
    };
    let mut batched = || {
        time(|| {
            let sum = raw_batched(&mut batchers, POOL_TASKS);
            assert_eq!(sum, sum_to(POOL_TASKS));
        })
    };
    let mut round_trips = || {
        time(|| {
            // One master thread per child, each taking every other task.
            let sum: u64 = thread::scope(|s| {
                let threads: Vec<_> = echoes
                    .iter_mut()
                    .enumerate()
                    .map(|(first, ((tx, rx), _))| {
                        s.spawn(move || {
                            let mut sum = 0_u64;
                            for x in (first as u64..ROUND_TRIP_TASKS).step_by(2) {
                                tx.send(x).expect("the child runs");
                                sum += rx.recv().expect("the child answers");
                            }
                            sum
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().expect("a master thread"))
                    .sum()
            });
            assert_eq!(sum, sum_to(ROUND_TRIP_TASKS));
        })
    };
    // Interleaved rounds, one warm-up each.
    let rate = |ops: u64, elapsed: Duration| ops as f64 / elapsed.as_secs_f64().max(1e-12);
    engine();
    batched();
    round_trips();
    let (mut e, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        e.push(rate(POOL_TASKS, engine()));
        b.push(rate(POOL_TASKS, batched()));
        r.push(rate(ROUND_TRIP_TASKS, round_trips()));
    }
    for v in [&mut e, &mut b, &mut r] {
        v.sort_by(f64::total_cmp);
    }
    let (e, b, r) = (
        harness::Figures { rates: e },
        harness::Figures { rates: b },
        harness::Figures { rates: r },
    );
    harness::header("proc: small tasks (x+1, u64), 2 worker processes, items/s");
    harness::row("Pool::run vs raw batched ipc-channel stream", &e, &b);
    println!("target ratio >= 0.7");
    harness::row("Pool::run vs one round trip per task", &e, &r);
    println!(
        "engine: {:.2}M items/s ({POOL_TASKS} per round; Python multiprocessing.Pool, \
         chunksize 256: ~2.9M items/s); target ratio >= 10",
        e.median() / 1e6
    );

    let (_, stats) = pool.shutdown();
    assert_eq!(stats.failed, 0);
    for ((tx, rx), mut process) in echoes.drain(..) {
        drop((tx, rx));
        assert!(process.wait().expect("the child ends").success());
    }
    for ((tx, rx), mut process) in batchers.drain(..) {
        drop((tx, rx));
        assert!(process.wait().expect("the child ends").success());
    }
}

// ---------------------------------------------------------------------------------------
// 2. A transport placed in worker processes.

/// A transport that forwards item by item and hides the batch path: the placed stage as it
/// was before it took whole batches (one round trip per item).
#[derive(Clone)]
struct PerItem<T>(T);

impl<T: Transport> Transport for PerItem<T> {
    type Input = T::Input;
    type Output = T::Output;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.0.setup(ctx)
    }

    fn transport(
        &mut self,
        x: T::Input,
        ctx: &StageContext,
    ) -> Result<Option<T::Output>, StageError> {
        self.0.transport(x, ctx)
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        self.0.cleanup(ctx);
    }
}

/// Items per round of the placed engine.
const PLACED_ITEMS: u64 = 3_000_000;
/// Items per round of the per-item baseline.
const PER_ITEM_ITEMS: u64 = 20_000;

/// Runs `items` through an engine whose transport is `stage` (2 threads); checks the sum.
fn placed_run<T: Transport<Input = u64, Output = u64> + Clone + Send + 'static>(
    stage: T,
    items: u64,
) -> Duration {
    time(|| {
        let sum = Arc::new(AtomicU64::new(0));
        let total = Arc::clone(&sum);
        let mut local = 0_u64;
        let report = Engine::builder(0..items)
            .transport(stage)
            .transport_threads(2)
            .backend(move |x: u64| {
                // One backend thread: a local sum, published as it goes.
                local = local.wrapping_add(x);
                total.store(local, Ordering::Relaxed);
            })
            .run()
            .expect("the engine runs");
        assert_eq!(report.processed(), items);
        assert_eq!(sum.load(Ordering::Relaxed), sum_to(items));
    })
}

fn placed() {
    let placed = ProcTransport::new(Inc).workers(2);
    let per_item = PerItem(ProcTransport::new(Inc).workers(2));
    let mut pool = Pool::builder()
        .workers(2, Inc)
        .start()
        .expect("the pool starts");
    let mut pool_run = || {
        time(|| {
            let sum = pool
                .run(0..PLACED_ITEMS)
                .map(|(_, result)| result.expect("the task succeeds"))
                .fold(0_u64, u64::wrapping_add);
            assert_eq!(sum, sum_to(PLACED_ITEMS));
        })
    };
    let rate = |ops: u64, elapsed: Duration| ops as f64 / elapsed.as_secs_f64().max(1e-12);
    placed_run(placed.clone(), PLACED_ITEMS);
    pool_run();
    let (mut e, mut p, mut o) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        e.push(rate(PLACED_ITEMS, placed_run(placed.clone(), PLACED_ITEMS)));
        p.push(rate(PLACED_ITEMS, pool_run()));
        o.push(rate(
            PER_ITEM_ITEMS,
            placed_run(per_item.clone(), PER_ITEM_ITEMS),
        ));
    }
    for v in [&mut e, &mut p, &mut o] {
        v.sort_by(f64::total_cmp);
    }
    let (e, p, o) = (
        harness::Figures { rates: e },
        harness::Figures { rates: p },
        harness::Figures { rates: o },
    );
    harness::header("proc: x+1 on u64, transport placed in 2 worker processes, items/s");
    harness::row("placed transport vs Pool::run", &e, &p);
    println!("target ratio >= 0.5");
    harness::row("placed transport vs one round trip per item", &e, &o);
    println!("target ratio >= 100");
    drop(pool.shutdown());

    lone();

    // 1 MiB items.
    let rates: Vec<f64> = (0..ROUNDS).map(|_| big_items(256)).collect();
    let mut rates = rates;
    rates.sort_by(f64::total_cmp);
    println!(
        "1 MiB items through the placed transport: median {:.2} GB/s; target >= 1.5 GB/s",
        rates[rates.len() / 2] / 1e9
    );
}

/// A lone item: the time from the frontend to the backend, one at a time, through the
/// placed transport and through a hand-written pipeline of the same shape (a frontend
/// thread, 2 transport threads each with a child process it calls one round trip per item, a
/// backend thread). Samples alternate between the two, so both see the same machine load.
/// Measured twice: the engine by default, then with `inline_when_idle`, where the frontend
/// thread sends a lone item to an idle worker itself.
fn lone() {
    lone_against_hand_written(false);
    lone_against_hand_written(true);
}

/// [`lone`] for the engine by default, or with `inline_when_idle`.
fn lone_against_hand_written(inline: bool) {
    const SAMPLES: usize = 400;
    let (engine_in, engine_seen, engine) = placed_lone_pipeline(inline);
    let (base_in, base_seen, baseline) = hand_written_lone_pipeline();
    let one = |input: &crossbeam_channel::Sender<u64>,
               seen: &crossbeam_channel::Receiver<(u64, Instant)>,
               i: u64| {
        let sent = Instant::now();
        input.send(i).expect("the pipeline runs");
        let (x, arrived) = seen.recv().expect("the item arrives");
        assert_eq!(x, i + 1);
        arrived.duration_since(sent)
    };
    // The first 10 items start the workers and warm the path up.
    let (mut engine_lat, mut base_lat) = harness::alternate(
        SAMPLES,
        10,
        Duration::from_micros(200),
        |i| one(&engine_in, &engine_seen, i),
        |i| one(&base_in, &base_seen, i),
    );
    drop((engine_in, base_in));
    engine();
    baseline();
    let how = if inline { ", inline_when_idle" } else { "" };
    println!(
        "\nproc: latency of a lone item, frontend -> transport placed in 2 workers -> backend \
         ({SAMPLES} samples{how})"
    );
    harness::latency_table(
        ("engine", &mut engine_lat),
        ("hand-written", &mut base_lat),
        "target: engine median <= 100 µs",
    );
}

/// A pipeline for [`lone`]: items in, `(output, when the backend saw it)` out, and its join.
type LonePipeline = (
    crossbeam_channel::Sender<u64>,
    crossbeam_channel::Receiver<(u64, Instant)>,
    Box<dyn FnOnce()>,
);

/// The engine: `x + 1` placed in 2 workers, 2 transport threads; the backend stamps the
/// time it sees each item, as the threads bench's backend does. With `inline`, a lone item
/// runs through the idle stages on the frontend thread (`inline_when_idle`).
fn placed_lone_pipeline(inline: bool) -> LonePipeline {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let (seen_tx, seen) = crossbeam_channel::unbounded::<(u64, Instant)>();
    let builder = Engine::builder(rx)
        .transport(ProcTransport::new(Inc).workers(2))
        .transport_threads(2)
        .backend(move |x: u64| {
            let _ = seen_tx.send((x, Instant::now()));
        });
    let builder = if inline {
        builder.inline_when_idle()
    } else {
        builder
    };
    let engine = builder.spawn().expect("the engine starts");
    let join = move || {
        engine.join().expect("the engine ends");
    };
    (tx, seen, Box::new(join))
}

/// The same shape by hand: a frontend thread forwards each item to 2 transport threads,
/// each of which calls its own `raw-echo` child, one round trip per item, and forwards the
/// answer to a backend thread.
fn hand_written_lone_pipeline() -> LonePipeline {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let (seen_tx, seen) = crossbeam_channel::unbounded::<(u64, Instant)>();
    let (to_transports, transports_rx) = crossbeam_channel::bounded::<u64>(1024);
    let (to_backend, backend_rx) = crossbeam_channel::bounded::<u64>(1024);
    let mut threads = vec![thread::spawn(move || {
        for x in rx {
            to_transports.send(x).expect("the transports run");
        }
    })];
    let mut children = Vec::new();
    for _ in 0..2 {
        let (((task_tx, reply_rx), child), input, output) = (
            spawn_raw::<EchoChannels>("raw-echo"),
            transports_rx.clone(),
            to_backend.clone(),
        );
        children.push(child);
        threads.push(thread::spawn(move || {
            for x in input {
                task_tx.send(x).expect("the child runs");
                let y = reply_rx.recv().expect("the child answers");
                output.send(y).expect("the backend runs");
            }
        }));
    }
    drop((transports_rx, to_backend));
    threads.push(thread::spawn(move || {
        for y in backend_rx {
            let _ = seen_tx.send((y, Instant::now()));
        }
    }));
    let join = move || {
        for t in threads {
            t.join().expect("a pipeline thread ends");
        }
        // The transport threads dropped their senders: each child sees its master hang up.
        for mut child in children {
            assert!(child.wait().expect("the child ends").success());
        }
    };
    (tx, seen, Box::new(join))
}

/// The length and a check byte of a large item, computed in the worker.
#[derive(Clone, Serialize, Deserialize)]
struct Measure;

impl Transport for Measure {
    type Input = serde_bytes::ByteBuf;
    type Output = (u64, u8);

    fn transport(
        &mut self,
        body: serde_bytes::ByteBuf,
        _: &StageContext,
    ) -> Result<Option<(u64, u8)>, StageError> {
        Ok(Some((body.len() as u64, body[body.len() / 2])))
    }
}

/// Sends `n` 1 MiB items through a placed transport; returns bytes/s.
fn big_items(n: usize) -> f64 {
    let items: Vec<serde_bytes::ByteBuf> = (0..n)
        .map(|i| serde_bytes::ByteBuf::from(vec![(i % 251) as u8; MIB]))
        .collect();
    let took = time(|| {
        let report = Engine::builder(items)
            .queue_capacity(16)
            .transport(ProcTransport::new(Measure).workers(2))
            .transport_threads(2)
            .backend(|(len, _check): (u64, u8)| assert_eq!(len as usize, MIB))
            .run()
            .expect("the engine runs");
        assert_eq!(report.processed(), n as u64);
    });
    (n * MIB) as f64 / took.as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// 3. One-way small messages.

/// Counts and sums `"n"` messages; replies `(count, sum)` to `"end"`; returns on DIE.
fn counter(pipe: &mut Duplex) -> Result<(), StageError> {
    let (mut count, mut sum) = (0_u64, 0_u64);
    loop {
        let message = pipe.recv()?;
        match &message.kind {
            Kind::User(k) if k == "n" => {
                count += 1;
                sum = sum.wrapping_add(message.body::<u64>()?);
            }
            Kind::User(k) if k == "end" => {
                pipe.send(Kind::user("count"), &(count, sum))?;
                (count, sum) = (0, 0);
            }
            _ => return Ok(()),
        }
    }
}

fn oneway() {
    let child = Child::spawn(counter).expect("the child starts");
    let ((tx, rx), mut raw): (CountChannels, _) = spawn_raw("raw-count");
    let expected = (MESSAGES, sum_to(MESSAGES - 1));

    let engine = || {
        let pipe = child.duplex();
        for i in 0..MESSAGES {
            pipe.send(Kind::user("n"), &i).expect("the child runs");
        }
        pipe.send(Kind::user("end"), &()).expect("the child runs");
        let reply = pipe.recv().expect("the child answers");
        assert_eq!(reply.body::<(u64, u64)>().expect("a count"), expected);
    };
    let baseline = || {
        for i in 0..MESSAGES {
            tx.send(i).expect("the child runs");
        }
        tx.send(END).expect("the child runs");
        assert_eq!(rx.recv().expect("the child answers"), expected);
    };
    let (e, b) = harness::compare(ROUNDS, MESSAGES, engine, baseline);
    harness::header("proc: one-way u64 messages master -> child, messages/s");
    harness::row("Duplex::send vs IpcSender<u64>::send", &e, &b);
    println!("target ratio >= 0.8");

    child.duplex().send(Kind::Die, &()).expect("the child runs");
    assert!(child.wait().is_success());
    drop((tx, rx));
    assert!(raw.wait().expect("the child ends").success());
}

// ---------------------------------------------------------------------------------------
// 4. 1 GiB in 1 MiB bodies.

/// Body `i` of a round: filled with `i % 251`.
fn bodies() -> Vec<Vec<u8>> {
    (0..BODIES).map(|i| vec![(i % 251) as u8; MIB]).collect()
}

/// Whether body `i` has the size and a byte it should.
fn body_ok(body: &[u8], i: usize) -> bool {
    body.len() == MIB && body[MIB / 2] == (i % 251) as u8
}

/// Checks `"blob"` bodies; replies the total of bytes to `"end"`; returns on DIE.
fn blobs(pipe: &mut Duplex) -> Result<(), StageError> {
    let (mut count, mut total) = (0_usize, 0_u64);
    loop {
        let message = pipe.recv()?;
        match &message.kind {
            Kind::User(k) if k == "blob" => {
                if !body_ok(&message.body, count) {
                    return Err(StageError::msg(format!("body {count} is wrong")));
                }
                count += 1;
                total += message.body.len() as u64;
            }
            Kind::User(k) if k == "end" => {
                pipe.send(Kind::user("total"), &total)?;
                (count, total) = (0, 0);
            }
            _ => return Ok(()),
        }
    }
}

fn bulk() {
    let child = Child::spawn(blobs).expect("the child starts");
    let ((tx, rx), mut raw): (BytesChannels, _) = spawn_raw("raw-bytes");
    let total = (BODIES * MIB) as u64;

    // Both sides send the same prepared bodies (filled outside the timed part): the engine
    // takes each by value, the baseline by reference.
    let engine = || {
        let bodies = bodies();
        time(|| {
            let pipe = child.duplex();
            for body in bodies {
                pipe.send_bytes(Kind::user("blob"), body)
                    .expect("the child runs");
            }
            pipe.send(Kind::user("end"), &()).expect("the child runs");
            let reply = pipe.recv().expect("the child answers");
            assert_eq!(reply.body::<u64>().expect("a total"), total);
        })
    };
    let baseline = || {
        let bodies = bodies();
        time(|| {
            for body in &bodies {
                tx.send(body).expect("the child runs");
            }
            tx.send(&[]).expect("the child runs");
            assert_eq!(rx.recv().expect("the child answers"), total);
        })
    };
    let (e, b) = compare_timed(ROUNDS, (total, total), engine, baseline);
    harness::header("proc: 1 GiB in 1 MiB bodies master -> child, bytes/s");
    harness::row("Duplex::send_bytes vs IpcBytesSender::send", &e, &b);
    println!(
        "engine {:.2} GB/s (target >= 1.5), hand-written {:.2} GB/s",
        e.median() / 1e9,
        b.median() / 1e9
    );

    child.duplex().send(Kind::Die, &()).expect("the child runs");
    assert!(child.wait().is_success());
    drop((tx, rx));
    assert!(raw.wait().expect("the child ends").success());
}

fn main() {
    // First: an engine worker becomes one here and never returns.
    engine_proc::init();
    // Then the hand-written children.
    if let Ok(role) = std::env::var(ROLE) {
        std::process::exit(raw_child(&role));
    }

    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("pool") {
        pool();
    }
    if run("placed") {
        placed();
    }
    if only.as_deref() == Some("lone") {
        lone();
    }
    if run("oneway") {
        oneway();
    }
    if run("bulk") {
        bulk();
    }
}
