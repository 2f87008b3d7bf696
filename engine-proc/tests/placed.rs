//! Stages placed in worker processes keep every promise of the threaded engine: the same
//! results and counts as on threads, nothing lost when a worker is killed, tickets settled
//! only after the worker's flush, the app config and the stop state in the worker's context,
//! and a stop now that frees the engine from a hung worker.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::compare::{collect, counts};
use engine_core::plumbing::{Outcome, Ticket, TrackedFrontend};
use engine_core::{Backend, StageContext, StageError, StageKind, StopHandle, Transport};
use engine_proc::{ProcBackend, ProcTransport};
use engine_threads::Engine;
use serde::{Deserialize, Serialize};

/// Doubles, filters multiples of 7, refuses multiples of 13 and panics on every 1000th item.
#[derive(Clone, Serialize, Deserialize)]
struct Judge;

impl Transport for Judge {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        if x % 1000 == 999 {
            panic!("item {x} panics");
        }
        if x.is_multiple_of(13) {
            return Err(StageError::msg(format!("{x} refused")));
        }
        Ok((!x.is_multiple_of(7)).then_some(x * 2))
    }
}

fn the_same_transport_gives_the_same_results_on_threads_and_in_three_processes() {
    const N: u64 = 200_000;
    let (threads, on_threads) = collect(Judge, N);
    let (placed, in_processes) = collect(ProcTransport::new(Judge).workers(3), N);
    assert_eq!(on_threads.len(), in_processes.len());
    assert!(on_threads == in_processes, "the outputs differ");
    assert_eq!(counts(&threads), counts(&placed));
    let transport = placed.stage_of_kind(StageKind::Transport).unwrap().counts;
    let panics = (0..N).filter(|x| x % 1000 == 999).count() as u64;
    let refused = (0..N).filter(|x| x % 1000 != 999 && x % 13 == 0).count() as u64;
    assert_eq!(transport.input, N);
    assert_eq!(transport.failed, panics + refused);
    assert_eq!(
        transport.filtered,
        (0..N)
            .filter(|x| x % 1000 != 999 && x % 13 != 0 && x % 7 == 0)
            .count() as u64
    );
    assert_eq!(placed.processed(), transport.output);
}

fn ordered_mode_keeps_the_order_through_the_processes() {
    const N: u64 = 50_000;
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let report = Engine::builder(0..N)
        .transport(ProcTransport::new(Judge).workers(3))
        .transport_threads(2)
        .ordered(true)
        .backend(move |x: u64| sink.lock().unwrap().push(x))
        .run()
        .unwrap();
    report.check().unwrap();
    let expected: Vec<u64> = (0..N)
        .filter(|x| x % 1000 != 999 && x % 13 != 0 && x % 7 != 0)
        .map(|x| x * 2)
        .collect();
    assert!(*got.lock().unwrap() == expected, "out of order or missing");
}

/// `x + 1`, slowly (about 20 µs an item), with the pid of the worker it ran in.
#[derive(Clone, Serialize, Deserialize)]
struct Slow;

impl Transport for Slow {
    type Input = u64;
    type Output = (u64, u32);

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<(u64, u32)>, StageError> {
        let until = Instant::now() + Duration::from_micros(20);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Ok(Some((x + 1, std::process::id())))
    }
}

/// Whether process `pid` is gone (reaped, not a zombie).
fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Items that come one at a time each reach the backend while the frontend waits for it
/// (none is held for a batch), also when the worker a lone item goes to was killed while
/// it waited: the item is run again on its replacement.
fn lone_items_reach_the_backend_also_past_a_killed_idle_worker() {
    // One worker: the item after a kill goes to the killed worker.
    let placed = ProcTransport::new(Judge).workers(1);
    let probe = placed.clone();
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let (seen_tx, seen) = crossbeam_channel::unbounded::<u64>();
    let handle = Engine::builder(rx)
        .transport(placed)
        .transport_threads(2)
        .backend(move |x: u64| {
            let _ = seen_tx.send(x);
        })
        .spawn()
        .unwrap();
    // Items the stage passes on: no multiple of 7 (filtered) or 13 (refused).
    let items: Vec<u64> = (1..200)
        .filter(|x: &u64| !x.is_multiple_of(7) && !x.is_multiple_of(13))
        .take(60)
        .collect();
    let mut killed = BTreeSet::new();
    for (i, &x) in items.iter().enumerate() {
        tx.send(x).unwrap();
        let got = seen
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("item {x} did not reach the backend"));
        assert_eq!(got, x * 2);
        if i % 15 == 14 {
            let victim = probe.worker_pids()[0];
            // SAFETY: kill with a pid of our own unreaped child and a signal number.
            unsafe {
                libc::kill(victim as i32, libc::SIGKILL);
            }
            killed.insert(victim);
        }
    }
    drop(tx);
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.processed(), items.len() as u64, "{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert!(
        seen.try_recv().is_err(),
        "nothing reaches the backend twice"
    );
    assert_eq!(killed.len(), 4, "each kill hit a live worker: {killed:?}");
}

/// `x * 2`; the first time it sees an item `x % 5 == 2`, its worker process exits (a file in
/// `dir` remembers it, so the item's retry runs). Items `x % 4 == 3` take 5 ms.
#[derive(Clone, Serialize, Deserialize)]
struct DiesOnce {
    dir: PathBuf,
}

impl Transport for DiesOnce {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        if x % 5 == 2 && std::fs::File::create_new(self.dir.join(x.to_string())).is_ok() {
            std::process::exit(3);
        }
        if x % 4 == 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Some(x * 2))
    }
}

/// With `inline`, the builder's `inline_when_idle`: a lone item goes from the frontend thread
/// to an idle worker, and that thread waits for its reply (about a millisecond at most, then
/// the stage's own thread takes it over).
fn inline_if<F, T, B>(
    builder: engine_threads::EngineBuilder<F, T, B>,
    inline: bool,
) -> engine_threads::EngineBuilder<F, T, B>
where
    T: engine_threads::Lendable,
    B: engine_threads::Lendable,
{
    if inline {
        builder.inline_when_idle()
    } else {
        builder
    }
}

/// Sends `items` one at a time through `handle`'s engine: each is sent once the one before
/// reached the backend (`seen`), which must give `expect(x)` for each.
fn one_at_a_time(
    tx: &crossbeam_channel::Sender<u64>,
    seen: &crossbeam_channel::Receiver<u64>,
    items: impl IntoIterator<Item = u64>,
    expect: impl Fn(u64) -> u64,
) {
    for x in items {
        tx.send(x).unwrap();
        let got = seen
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("item {x} did not reach the backend"));
        assert_eq!(got, expect(x));
    }
}

/// A lone item's engine thread waits for the reply on the worker itself (for a while, then
/// its driver takes over): lone items come back whether the reply comes at once, after
/// that while (5 ms), or never because the worker died on the item (it is run again), and
/// none comes back twice. With `inline`, the frontend thread sends and waits (for about a
/// millisecond, then the engine thread takes the item over), and the same holds.
fn lone_items_come_back_whether_their_worker_answers_late_or_dies(inline: bool) {
    const N: u64 = 40;
    let dir = std::env::temp_dir().join(format!(
        "engine-placed-dies-{}-{inline}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let (seen_tx, seen) = crossbeam_channel::unbounded::<u64>();
    let builder = Engine::builder(rx)
        .transport(ProcTransport::new(DiesOnce { dir: dir.clone() }).workers(2))
        .transport_threads(2)
        .backend(move |x: u64| {
            let _ = seen_tx.send(x);
        });
    let handle = inline_if(builder, inline).spawn().unwrap();
    one_at_a_time(&tx, &seen, 0..N, |x| x * 2);
    drop(tx);
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.processed(), N, "{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert!(
        seen.try_recv().is_err(),
        "nothing reaches the backend twice"
    );
    let deaths = std::fs::read_dir(&dir).unwrap().count() as u64;
    assert_eq!(deaths, (0..N).filter(|x| x % 5 == 2).count() as u64);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Items that come in pairs to two engine threads sharing one worker: while one thread
/// watches for its item's reply, the other's item waits in the queue for the worker's
/// driver, which must still hear of it once the watch is over. With `inline`, the first of
/// a pair may be watched by the frontend thread.
fn pairs_of_items_through_one_worker_all_come_back(inline: bool) {
    const PAIRS: u64 = 300;
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let (seen_tx, seen) = crossbeam_channel::unbounded::<u64>();
    let builder = Engine::builder(rx)
        .transport(ProcTransport::new(Judge).workers(1))
        .transport_threads(2)
        .backend(move |x: u64| {
            let _ = seen_tx.send(x);
        });
    let handle = inline_if(builder, inline).spawn().unwrap();
    // Items the stage passes on: no multiple of 7 (filtered) or 13 (refused).
    let mut items = (1..).filter(|x: &u64| !x.is_multiple_of(7) && !x.is_multiple_of(13));
    for _ in 0..PAIRS {
        let pair = [items.next().unwrap(), items.next().unwrap()];
        for x in pair {
            tx.send(x).unwrap();
        }
        let mut got: Vec<u64> = (0..2)
            .map(|_| {
                seen.recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("an item of {pair:?} did not reach the backend"))
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, pair.map(|x| x * 2));
    }
    drop(tx);
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.processed(), 2 * PAIRS, "{report}");
}

/// A lone item that hangs is timed out by its worker's driver, although the engine thread
/// watched for its reply first; the items after it come back. With `inline`, the frontend
/// thread watched first, and left the item to the engine thread.
fn a_lone_item_that_hangs_times_out(inline: bool) {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let (seen_tx, seen) = crossbeam_channel::unbounded::<u64>();
    let builder = Engine::builder(rx)
        .transport(
            ProcTransport::new(Hang)
                .workers(1)
                .batch_timeout(Duration::from_millis(300)),
        )
        .backend(move |x: u64| {
            let _ = seen_tx.send(x);
        });
    let handle = inline_if(builder, inline).spawn().unwrap();
    one_at_a_time(&tx, &seen, 0..5, |x| x);
    // Item 5 alone (an item sent with it would share its batch, and its fate): it fails once
    // its worker is killed.
    tx.send(5).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = || {
        handle
            .stats()
            .stages
            .iter()
            .any(|s| s.kind == StageKind::Transport && s.counts.failed == 1)
    };
    while !failed() {
        assert!(Instant::now() < deadline, "the hung item was not timed out");
        std::thread::yield_now();
    }
    one_at_a_time(&tx, &seen, 6..10, |x| x);
    drop(tx);
    let report = handle.join().unwrap();
    assert_eq!(report.processed(), 9, "{report}");
    assert_eq!(report.failed(), 1, "{report}");
    assert!(seen.try_recv().is_err(), "the hung item never arrives");
}

fn a_worker_killed_mid_run_loses_nothing_and_runs_nothing_twice() {
    const N: u64 = 60_000;
    let placed = ProcTransport::new(Slow).workers(3);
    let probe = placed.clone();
    let seen = Arc::new(AtomicU64::new(0));
    let got = Arc::new(Mutex::new(Vec::new()));
    let (count, sink) = (Arc::clone(&seen), Arc::clone(&got));
    let handle = Engine::builder(0..N)
        .transport(placed)
        .transport_threads(2)
        .backend(move |(x, pid): (u64, u32)| {
            sink.lock().unwrap().push((x, pid));
            count.fetch_add(1, Ordering::SeqCst);
        })
        .spawn()
        .unwrap();
    // Mid-run: a tenth of the items are through.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.load(Ordering::SeqCst) < N / 10 {
        assert!(Instant::now() < deadline, "the run does not progress");
        std::thread::yield_now();
    }
    let pids = probe.worker_pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    let victim = pids[1];
    assert!(
        seen.load(Ordering::SeqCst) < N,
        "the run ended before the kill"
    );
    // SAFETY: kill with a pid of our own unreaped child and a signal number.
    unsafe {
        libc::kill(victim as i32, libc::SIGKILL);
    }
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.processed(), N, "{report}");
    assert_eq!(report.failed(), 0);
    let got = got.lock().unwrap();
    let values: BTreeSet<u64> = got.iter().map(|(x, _)| *x).collect();
    assert_eq!(got.len() as u64, N, "an item arrived twice");
    assert_eq!(values, (1..=N).collect(), "an item is missing");
    assert!(gone(victim), "the killed worker was reaped");
}

/// A ticket that records its item's outcome.
struct Record(u64, Arc<Mutex<Vec<(u64, &'static str)>>>);

impl Ticket for Record {
    fn complete(self, outcome: Outcome<'_>) {
        let what = match outcome {
            Outcome::Processed => "processed",
            Outcome::Failed { .. } => "failed",
            Outcome::Filtered => "filtered",
            Outcome::Dropped => "dropped",
            _ => "other",
        };
        self.1.lock().unwrap().push((self.0, what));
    }
}

/// A tracked frontend of 0..n whose tickets record outcomes.
struct Tracked(u64, u64, Arc<Mutex<Vec<(u64, &'static str)>>>);

impl TrackedFrontend for Tracked {
    type Item = u64;
    type Ticket = Record;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<(Record, u64)>, StageError> {
        if self.0 == self.1 {
            return Ok(None);
        }
        self.0 += 1;
        Ok(Some((Record(self.0 - 1, Arc::clone(&self.2)), self.0 - 1)))
    }
}

/// Buffers items and writes them to a file of its worker at each flush; a flush whose buffer
/// holds an item `x % 2500 == 1` fails and writes nothing.
#[derive(Clone, Serialize, Deserialize)]
struct Journal {
    dir: PathBuf,
    #[serde(skip)]
    buffer: Vec<u64>,
}

impl Backend for Journal {
    type Input = u64;

    fn process(&mut self, x: u64, _: &StageContext) -> Result<(), StageError> {
        self.buffer.push(x);
        Ok(())
    }

    fn flush(&mut self, _: &StageContext) -> Result<(), StageError> {
        let buffer = std::mem::take(&mut self.buffer);
        if buffer.iter().any(|x| x % 2500 == 1) {
            return Err(StageError::msg("the journal refuses this batch"));
        }
        let path = self.dir.join(format!("flushed-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for x in buffer {
            writeln!(file, "{x}")?;
        }
        Ok(())
    }
}

fn a_placed_backend_settles_only_what_its_flush_wrote() {
    const N: u64 = 5_000;
    let dir = std::env::temp_dir().join(format!("engine-placed-flush-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let report = Engine::builder(Tracked(0, N, Arc::clone(&outcomes)))
        .backend(
            ProcBackend::new(Journal {
                dir: dir.clone(),
                buffer: Vec::new(),
            })
            .workers(2),
        )
        .run()
        .unwrap();
    report.check().unwrap();
    let mut flushed = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        flushed.extend(text.lines().map(|l| l.parse::<u64>().unwrap()));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let outcomes = outcomes.lock().unwrap();
    assert_eq!(outcomes.len() as u64, N, "every ticket once");
    let processed: BTreeSet<u64> = outcomes
        .iter()
        .filter(|(_, what)| *what == "processed")
        .map(|(x, _)| *x)
        .collect();
    let failed = outcomes
        .iter()
        .filter(|(_, what)| *what == "failed")
        .count() as u64;
    assert_eq!(processed, flushed, "processed exactly what was written");
    assert!(!processed.contains(&1) && !processed.contains(&2501));
    assert!(failed > 0 && !processed.is_empty());
    assert_eq!(processed.len() as u64 + failed, N);
    let backend = report.stage_of_kind(StageKind::Backend).unwrap().counts;
    assert_eq!(
        (backend.output, backend.failed),
        (processed.len() as u64, failed)
    );
}

/// The app config of the tests.
#[derive(Debug, Serialize, Deserialize)]
struct Settings {
    factor: u64,
}

/// Multiplies by the config's factor; item `wait_on` waits (up to 10 s) for the run to be
/// stopping. Each output says whether the worker saw the stop.
#[derive(Clone, Serialize, Deserialize)]
struct Configured {
    wait_on: Option<u64>,
}

impl Transport for Configured {
    type Input = u64;
    type Output = (u64, bool);

    fn transport(&mut self, x: u64, ctx: &StageContext) -> Result<Option<(u64, bool)>, StageError> {
        let factor = ctx.config::<Settings>()?.factor;
        if self.wait_on == Some(x) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ctx.is_stopping() && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        Ok(Some((x * factor, ctx.is_stopping())))
    }
}

fn the_app_config_and_the_stop_state_reach_the_workers() {
    // The config crosses once per worker; no stop: nobody sees one.
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let report = Engine::builder(0..300_u64)
        .config(Settings { factor: 3 })
        .transport(
            ProcTransport::new(Configured { wait_on: None })
                .workers(2)
                .config::<Settings>(),
        )
        .backend(move |out: (u64, bool)| sink.lock().unwrap().push(out))
        .run()
        .unwrap();
    assert_eq!(report.processed(), 300);
    let mut first = std::mem::take(&mut *got.lock().unwrap());
    first.sort_unstable();
    assert_eq!(first, (0..300).map(|x| (x * 3, false)).collect::<Vec<_>>());

    // A graceful stop of the engine is seen by stage code in the worker while it runs.
    let stop = StopHandle::new();
    let trigger = stop.clone();
    let sink = Arc::clone(&got);
    let report = Engine::builder((0..1_000_u64).inspect(move |x| {
        if *x == 150 {
            trigger.stop();
        }
    }))
    .config(Settings { factor: 2 })
    .stop_handle(&stop)
    .transport(
        ProcTransport::new(Configured { wait_on: Some(100) })
            .workers(1)
            .config::<Settings>(),
    )
    .backend(move |out: (u64, bool)| sink.lock().unwrap().push(out))
    .run()
    .unwrap();
    report.check().unwrap();
    let got = got.lock().unwrap();
    assert!(got.contains(&(200, true)), "item 100 saw the stop");

    // A config of another type is a clear error at setup.
    let error = Engine::builder(0..10_u64)
        .config(7_u32)
        .transport(
            ProcTransport::new(Configured { wait_on: None })
                .workers(1)
                .config::<Settings>(),
        )
        .backend(|_: (u64, bool)| {})
        .run()
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("Settings"), "{message}");
}

/// Never returns from item 5.
#[derive(Clone, Serialize, Deserialize)]
struct Hang;

impl Transport for Hang {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        if x == 5 {
            loop {
                std::hint::spin_loop();
            }
        }
        Ok(Some(x))
    }
}

/// Waits until the placed stage has `workers` workers and its transport has taken input;
/// returns their pids.
fn running(
    handle: &engine_threads::EngineHandle,
    probe: &ProcTransport<Hang>,
    workers: usize,
) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pids = probe.worker_pids();
        let started = handle
            .stats()
            .stages
            .iter()
            .any(|s| s.kind == StageKind::Transport && s.counts.input > 0);
        if pids.len() == workers && started {
            return pids;
        }
        assert!(Instant::now() < deadline, "the workers do not start");
        std::thread::yield_now();
    }
}

fn the_stop_deadline_frees_the_engine_from_a_hung_worker() {
    const STOP_TIMEOUT: Duration = Duration::from_millis(500);
    let placed = ProcTransport::new(Hang).workers(2);
    let probe = placed.clone();
    let handle = Engine::builder(0..10_u64)
        .transport(placed)
        .stop_timeout(STOP_TIMEOUT)
        .backend(|_: u64| {})
        .spawn()
        .unwrap();
    let pids = running(&handle, &probe, 2);
    let stopped = Instant::now();
    handle.stop();
    let report = handle.join().unwrap();
    let took = stopped.elapsed();
    assert!(
        took < STOP_TIMEOUT + Duration::from_secs(1),
        "the run took {took:?} to end"
    );
    report.check().unwrap();
    assert!(
        report.dropped() > 0,
        "the hung batch was abandoned: {report}"
    );
    for pid in pids {
        assert!(gone(pid), "worker {pid} is left behind");
    }
}

/// `x + 1` with the pid of its worker.
#[derive(Clone, Serialize, Deserialize)]
struct Where;

impl Transport for Where {
    type Input = u64;
    type Output = (u64, u32);

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<(u64, u32)>, StageError> {
        Ok(Some((x + 1, std::process::id())))
    }
}

fn a_placed_stage_recycles_its_workers_between_batches() {
    const N: u64 = 5_000;
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    // Batches of at most 16 items: a worker runs at most 250 + 15 items.
    let report = Engine::builder(0..N)
        .queue_capacity(64)
        .transport(ProcTransport::new(Where).workers(2).recycle_after(250))
        .transport_threads(2)
        .backend(move |out: (u64, u32)| sink.lock().unwrap().push(out))
        .run()
        .unwrap();
    report.check().unwrap();
    assert_eq!(report.processed(), N);
    let got = got.lock().unwrap();
    let values: BTreeSet<u64> = got.iter().map(|(x, _)| *x).collect();
    assert_eq!(got.len() as u64, N, "an item ran twice");
    assert_eq!(values, (1..=N).collect(), "an item is missing");
    let mut per_pid = std::collections::BTreeMap::<u32, u64>::new();
    for (_, pid) in got.iter() {
        *per_pid.entry(*pid).or_default() += 1;
    }
    assert!(per_pid.values().all(|n| *n < 250 + 16), "{per_pid:?}");
    assert!(per_pid.len() as u64 >= N / (250 + 16), "{per_pid:?}");
}

fn stop_now_frees_the_engine_from_a_hung_worker_at_once() {
    let placed = ProcTransport::new(Hang).workers(1);
    let probe = placed.clone();
    let handle = Engine::builder(0..10_u64)
        .transport(placed)
        .stop_timeout(Duration::from_secs(60))
        .backend(|_: u64| {})
        .spawn()
        .unwrap();
    let pids = running(&handle, &probe, 1);
    let stopped = Instant::now();
    handle.stop_now();
    let report = handle.join().unwrap();
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the run took {took:?} to end"
    );
    report.check().unwrap();
    assert!(report.dropped() > 0, "{report}");
    assert!(gone(pids[0]), "the hung worker is left behind");
}

/// Aborts its worker process on item 7, every time.
#[derive(Clone, Serialize, Deserialize)]
struct Crash;

impl Transport for Crash {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        if x == 7 {
            std::process::abort();
        }
        Ok(Some(x))
    }
}

/// A ticket that records the error its item failed with.
struct Why(u64, Arc<Mutex<Vec<(u64, String)>>>);

impl Ticket for Why {
    fn complete(self, outcome: Outcome<'_>) {
        if let Outcome::Failed { error, .. } = outcome {
            self.1.lock().unwrap().push((self.0, error.to_string()));
        }
    }
}

/// A tracked frontend of 0..n whose tickets record errors.
struct Failures(u64, u64, Arc<Mutex<Vec<(u64, String)>>>);

impl TrackedFrontend for Failures {
    type Item = u64;
    type Ticket = Why;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<(Why, u64)>, StageError> {
        if self.0 == self.1 {
            return Ok(None);
        }
        self.0 += 1;
        Ok(Some((Why(self.0 - 1, Arc::clone(&self.2)), self.0 - 1)))
    }
}

fn a_batch_whose_worker_always_dies_fails_with_how_it_died() {
    // A queue of 4 items makes batches of one item, so only item 7 fails.
    let failures = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let report = Engine::builder(Failures(0, 20, Arc::clone(&failures)))
        .queue_capacity(4)
        .transport(ProcTransport::new(Crash).workers(2).retries(2))
        .backend(move |x: u64| sink.lock().unwrap().push(x))
        .run()
        .unwrap();
    report.check().unwrap();
    let transport = report.stage_of_kind(StageKind::Transport).unwrap().counts;
    assert_eq!((transport.input, transport.failed), (20, 1), "{report}");
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (item, error) = &failures[0];
    assert_eq!(*item, 7);
    assert!(
        error.contains("SIGABRT") && error.contains("3 attempt"),
        "the error says how the worker died and how often: {error}"
    );
    let mut got = got.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..20).filter(|x| *x != 7).collect::<Vec<_>>());
}

fn main() {
    engine_proc::init();
    let tests: &[(&str, fn())] = &[
        (
            "the_same_transport_gives_the_same_results_on_threads_and_in_three_processes",
            the_same_transport_gives_the_same_results_on_threads_and_in_three_processes,
        ),
        (
            "ordered_mode_keeps_the_order_through_the_processes",
            ordered_mode_keeps_the_order_through_the_processes,
        ),
        (
            "lone_items_reach_the_backend_also_past_a_killed_idle_worker",
            lone_items_reach_the_backend_also_past_a_killed_idle_worker,
        ),
        (
            "lone_items_come_back_whether_their_worker_answers_late_or_dies",
            || lone_items_come_back_whether_their_worker_answers_late_or_dies(false),
        ),
        (
            "lone_items_come_back_whether_their_worker_answers_late_or_dies_inline_when_idle",
            || {
                lone_items_come_back_whether_their_worker_answers_late_or_dies(true);
            },
        ),
        ("pairs_of_items_through_one_worker_all_come_back", || {
            pairs_of_items_through_one_worker_all_come_back(false)
        }),
        (
            "pairs_of_items_through_one_worker_all_come_back_inline_when_idle",
            || {
                pairs_of_items_through_one_worker_all_come_back(true);
            },
        ),
        ("a_lone_item_that_hangs_times_out", || {
            a_lone_item_that_hangs_times_out(false)
        }),
        ("a_lone_item_that_hangs_times_out_inline_when_idle", || {
            a_lone_item_that_hangs_times_out(true);
        }),
        (
            "a_worker_killed_mid_run_loses_nothing_and_runs_nothing_twice",
            a_worker_killed_mid_run_loses_nothing_and_runs_nothing_twice,
        ),
        (
            "a_placed_backend_settles_only_what_its_flush_wrote",
            a_placed_backend_settles_only_what_its_flush_wrote,
        ),
        (
            "the_app_config_and_the_stop_state_reach_the_workers",
            the_app_config_and_the_stop_state_reach_the_workers,
        ),
        (
            "the_stop_deadline_frees_the_engine_from_a_hung_worker",
            the_stop_deadline_frees_the_engine_from_a_hung_worker,
        ),
        (
            "a_placed_stage_recycles_its_workers_between_batches",
            a_placed_stage_recycles_its_workers_between_batches,
        ),
        (
            "stop_now_frees_the_engine_from_a_hung_worker_at_once",
            stop_now_frees_the_engine_from_a_hung_worker_at_once,
        ),
        (
            "a_batch_whose_worker_always_dies_fails_with_how_it_died",
            a_batch_whose_worker_always_dies_fails_with_how_it_died,
        ),
    ];
    std::process::exit(common::run_tests(tests));
}
