//! One test (at least) per promise of the threaded engine in DESIGN.md.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Collect, Lifecycle, PATIENCE, spin, wait_until};
use engine_core::{
    Backend, ErrorPolicy, Frontend, RunEnd, StageContext, StageError, StageKind, StopHandle,
    StopLevel, Transport, filter_map,
};
use engine_threads::{Engine, EngineError};

/// Frontend thread `ctx.index()` of `ctx.instances()` yields its share of `0..n`.
fn share(ctx: &StageContext, n: u64) -> impl Iterator<Item = u64> + use<> {
    let (i, threads) = (ctx.index() as u64, ctx.instances() as u64);
    (0..n).filter(move |x| *x % threads == i)
}

// Promise 1: nothing is lost. Counts add up for 1..N threads per stage, with and without a
// transport or a backend, and the last stage saw exactly the produced items, by content.
#[test]
fn every_item_is_accounted_for_with_any_thread_counts_and_shape() {
    const N: u64 = 20_000;
    for frontends in [1, 3] {
        for transports in [1, 2, 4] {
            for backends in [1, 3] {
                // Transport and backend: odd numbers are filtered out, even ones halved.
                let sink = Collect::default();
                let report =
                    Engine::builder_with(frontends, move |ctx: &StageContext| share(ctx, N))
                        .transport(filter_map(|x: u64| x.is_multiple_of(2).then_some(x / 2)))
                        .transport_threads(transports)
                        .backend(sink.clone())
                        .backend_threads(backends)
                        .queue_capacity(64)
                        .run()
                        .unwrap();
                report.check().unwrap();
                assert_eq!(report.end, RunEnd::Completed);
                assert_eq!(report.produced(), N);
                assert_eq!(report.filtered(), N / 2);
                assert_eq!(report.processed(), N / 2);
                assert_eq!(sink.sorted(), (0..N / 2).collect::<Vec<_>>());
                let threads: Vec<_> = report.stages.iter().map(|s| s.threads.len()).collect();
                assert_eq!(threads, [frontends, transports, backends]);
            }
            // Transport only: it is the last stage.
            let seen = Arc::new(Mutex::new(Vec::new()));
            let report = {
                let seen = Arc::clone(&seen);
                Engine::builder_with(frontends, move |ctx: &StageContext| share(ctx, N))
                    .transport(move |x: u64| seen.lock().unwrap().push(x))
                    .transport_threads(transports)
                    .run()
                    .unwrap()
            };
            report.check().unwrap();
            assert_eq!((report.produced(), report.processed()), (N, N));
            let mut seen = seen.lock().unwrap().clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..N).collect::<Vec<_>>());
        }
        // Backend only.
        let sink = Collect::default();
        let report = Engine::builder_with(frontends, move |ctx: &StageContext| share(ctx, N))
            .backend(sink.clone())
            .backend_threads(2)
            .run()
            .unwrap();
        report.check().unwrap();
        assert_eq!(report.processed(), N);
        assert_eq!(sink.sorted(), (0..N).collect::<Vec<_>>());
    }
}

/// An endless frontend of 0, 1, 2, ...
#[derive(Default)]
struct Counter(u64);

impl Frontend for Counter {
    type Item = u64;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        self.0 += 1;
        Ok(Some(self.0 - 1))
    }
}

// Promise 2: a graceful stop drains everything accepted.
#[test]
fn a_graceful_stop_drains_everything_accepted() {
    let sink = Collect::default();
    let handle = Engine::builder(Counter::default())
        .transport(|x: u64| x)
        .transport_threads(2)
        .backend(sink.clone())
        .queue_capacity(256)
        .spawn()
        .unwrap();
    wait_until("items at the backend", || {
        sink.0.lock().unwrap().len() >= 10_000
    });
    handle.stop();
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Stopped);
    assert_eq!(report.dropped(), 0);
    let produced = report.produced();
    assert!(produced >= 10_000);
    assert_eq!(report.processed(), produced);
    assert_eq!(sink.sorted(), (0..produced).collect::<Vec<_>>());
}

/// A backend that blocks on its first item until the gate opens.
#[derive(Clone)]
struct Gated {
    started: crossbeam_channel::Sender<()>,
    gate: crossbeam_channel::Receiver<()>,
    seen: Arc<AtomicU64>,
}

impl Backend for Gated {
    type Input = u64;

    fn process(&mut self, _item: u64, _ctx: &StageContext) -> Result<(), StageError> {
        if self.seen.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = self.started.send(());
            let _ = self.gate.recv();
        }
        Ok(())
    }
}

fn gated() -> (
    Gated,
    crossbeam_channel::Receiver<()>,
    crossbeam_channel::Sender<()>,
) {
    let (started, started_rx) = crossbeam_channel::unbounded();
    let (open, gate) = crossbeam_channel::unbounded();
    let backend = Gated {
        started,
        gate,
        seen: Arc::default(),
    };
    (backend, started_rx, open)
}

/// Counts up from 0, and says when it has produced `n` items: with the backend stuck on the
/// first, the rest are queued (or in the frontend's open batch) when a test stops the run.
fn counting_past(
    n: u64,
) -> (
    impl Iterator<Item = u64> + Send + 'static,
    crossbeam_channel::Receiver<()>,
) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let items = (0_u64..).inspect(move |&i| {
        if i == n {
            let _ = tx.try_send(());
        }
    });
    (items, rx)
}

// Promise 2: a second stop aborts, and the dropped count says how much was abandoned.
#[test]
fn a_second_stop_aborts_and_counts_the_dropped_items() {
    let (backend, started, open) = gated();
    let seen = Arc::clone(&backend.seen);
    let (items, produced) = counting_past(10);
    let handle = Engine::builder(items)
        .transport(|x: u64| x)
        .backend(backend)
        .queue_capacity(64)
        .spawn()
        .unwrap();
    produced.recv_timeout(PATIENCE).unwrap();
    started.recv_timeout(PATIENCE).unwrap();
    // Let the queues fill up behind the blocked backend.
    wait_until("full queues", || {
        handle.stats().stages.iter().map(|s| s.queued).sum::<u64>() >= 64
    });
    handle.stop();
    handle.stop_now();
    open.send(()).unwrap();
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Aborted);
    assert!(report.dropped() > 0, "{report}");
    assert_eq!(
        report.processed() + report.dropped(),
        report.produced(),
        "{report}"
    );
    assert_eq!(report.processed(), seen.load(Ordering::SeqCst));
}

// Promise 2: an expired stop deadline aborts like a second stop.
#[test]
fn an_expired_stop_deadline_aborts() {
    let (backend, started, open) = gated();
    let (items, produced) = counting_past(10);
    let handle = Engine::builder(items)
        .backend(backend)
        .queue_capacity(64)
        .stop_timeout(Duration::from_millis(20))
        .spawn()
        .unwrap();
    produced.recv_timeout(PATIENCE).unwrap();
    started.recv_timeout(PATIENCE).unwrap();
    handle.stop();
    // The backend is stuck in its item, so the drain cannot finish: the deadline fires.
    assert_eq!(
        handle
            .stop_handle()
            .wait_for_level(StopLevel::Now, Some(PATIENCE)),
        Some(StopLevel::Now)
    );
    open.send(()).unwrap();
    let report = handle.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Aborted);
    assert!(report.dropped() > 0, "{report}");
}

/// A frontend reading lines from a pipe.
struct PipeLines(BufReader<std::io::PipeReader>);

impl Frontend for PipeLines {
    type Item = String;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<String>, StageError> {
        let mut line = String::new();
        Ok((self.0.read_line(&mut line)? > 0).then(|| line.trim_end().to_owned()))
    }
}

// Promise 3 (and the frontend slots): a frontend stuck in a blocking read neither holds back
// the items it already produced nor keeps the run from ending after a stop.
#[test]
fn a_frontend_stuck_in_a_read_does_not_hold_items_or_the_run() {
    let (reader, mut writer) = std::io::pipe().unwrap();
    std::io::Write::write_all(&mut writer, b"a\nb\nc\n").unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = Engine::builder(PipeLines(BufReader::new(reader)))
        .transport(|line: String| line.to_uppercase())
        .backend(move |line: String| tx.send(line).unwrap())
        .spawn()
        .unwrap();
    // The three lines arrive although the frontend is now blocked reading the pipe.
    let got: Vec<_> = (0..3).map(|_| rx.recv_timeout(PATIENCE).unwrap()).collect();
    assert_eq!(got, ["A", "B", "C"]);
    handle.stop();
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || done_tx.send(handle.join()).unwrap());
    let report = done_rx
        .recv_timeout(PATIENCE)
        .expect("run() returned while the frontend was blocked")
        .unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Stopped);
    assert_eq!((report.produced(), report.processed()), (3, 3));
    // Data written after the stop is not accepted; the abandoned thread reads it and ends.
    std::io::Write::write_all(&mut writer, b"late\n").unwrap();
    drop(writer);
}

/// A frontend whose reads end within 20 ms (a blocking read with a timeout, as a broker's),
/// which notes its cleanup and asks the engine to wait for it.
struct TimedReads {
    items: crossbeam_channel::Receiver<u32>,
    cleaned: Arc<AtomicU64>,
    grace: Duration,
}

impl Frontend for TimedReads {
    type Item = u32;

    fn produce(&mut self, ctx: &StageContext) -> Result<Option<u32>, StageError> {
        loop {
            match self.items.recv_timeout(Duration::from_millis(20)) {
                Ok(item) => return Ok(Some(item)),
                Err(_) if ctx.is_stopping() => return Ok(None),
                Err(_) => {}
            }
        }
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        self.cleaned.fetch_add(1, Ordering::SeqCst);
    }

    fn stop_grace(&self) -> Duration {
        self.grace
    }
}

/// Starts `frontend` with a backend that hands items to the returned receiver.
fn spawn_with<F>(
    frontend: F,
) -> (
    engine_threads::EngineHandle,
    crossbeam_channel::Receiver<u32>,
)
where
    F: Frontend<Item = u32> + Send + 'static,
{
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = Engine::builder(frontend)
        .backend(move |x: u32| tx.send(x).unwrap())
        .spawn()
        .unwrap();
    (handle, rx)
}

/// Joins a run on another thread, failing the test if it does not return in time.
fn join_in_time(handle: engine_threads::EngineHandle) -> engine_core::RunReport {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || done_tx.send(handle.join()).unwrap());
    done_rx
        .recv_timeout(PATIENCE)
        .expect("run() returned in time")
        .unwrap()
}

// Promise 2 with a frontend's stop grace: after a graceful stop, `run` returns only once a
// frontend that asked for a grace has left its read and run its cleanup.
#[test]
fn a_stop_waits_for_the_cleanup_of_a_frontend_with_a_stop_grace() {
    let (items, read) = crossbeam_channel::unbounded();
    let cleaned = Arc::new(AtomicU64::new(0));
    let (handle, rx) = spawn_with(TimedReads {
        items: read,
        cleaned: Arc::clone(&cleaned),
        grace: PATIENCE,
    });
    for i in 0..3 {
        items.send(i).unwrap();
    }
    let got: Vec<_> = (0..3).map(|_| rx.recv_timeout(PATIENCE).unwrap()).collect();
    assert_eq!(got, [0, 1, 2]);
    handle.stop();
    let report = join_in_time(handle);
    assert_eq!(
        cleaned.load(Ordering::SeqCst),
        1,
        "cleanup ran before run() returned"
    );
    assert_eq!(report.end, RunEnd::Stopped);
    assert_eq!((report.produced(), report.processed()), (3, 3));
}

// The grace is a bound: a frontend stuck for ever is left behind once it has passed.
#[test]
fn a_stop_grace_is_a_bound_for_a_frontend_stuck_for_ever() {
    struct Stuck(PipeLines, Duration);
    impl Frontend for Stuck {
        type Item = String;
        fn produce(&mut self, ctx: &StageContext) -> Result<Option<String>, StageError> {
            self.0.produce(ctx)
        }
        fn stop_grace(&self) -> Duration {
            self.1
        }
    }
    // A grace of 50 ms, then a grace of a day ended by a second stop.
    for (grace, second_stop) in [
        (Duration::from_millis(50), false),
        (Duration::from_secs(86_400), true),
    ] {
        let (reader, mut writer) = std::io::pipe().unwrap();
        std::io::Write::write_all(&mut writer, b"a\n").unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = Engine::builder(Stuck(PipeLines(BufReader::new(reader)), grace))
            .backend(move |line: String| tx.send(line).unwrap())
            .spawn()
            .unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), "a");
        handle.stop();
        if second_stop {
            handle.stop_handle().stop_now();
        }
        let report = join_in_time(handle);
        assert_eq!(report.processed(), 1);
        let end = if second_stop {
            RunEnd::Aborted
        } else {
            RunEnd::Stopped
        };
        assert_eq!(report.end, end);
        drop(writer);
    }
}

// Promise 3: the end of the frontend ends the run.
#[test]
fn the_end_of_the_frontend_ends_the_run() {
    let report = Engine::builder(0..5_u32)
        .transport(|x: u32| x + 1)
        .backend(|_: u32| {})
        .run()
        .unwrap();
    assert_eq!(report.end, RunEnd::Completed);
    assert_eq!(report.processed(), 5);
}

/// CPU ticks (user + system) used so far by this process's threads whose name starts with
/// `prefix`.
#[cfg(target_os = "linux")]
fn cpu_ticks(prefix: &str) -> (usize, u64) {
    let mut threads = 0;
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        // Fields after the command name, which ends with the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        threads += 1;
    }
    (threads, ticks)
}

// Promise 3: idle threads block on their queues and use no CPU.
#[cfg(target_os = "linux")]
#[test]
fn idle_threads_use_no_cpu() {
    let (reader, writer) = std::io::pipe().unwrap();
    let handle = Engine::builder(PipeLines(BufReader::new(reader)))
        .transport(|line: String| line)
        .transport_threads(4)
        .backend(|_: String| {})
        .backend_threads(2)
        .names("zzf", "zzt", "zzb")
        .spawn()
        .unwrap();
    // Threads name themselves as they start.
    wait_until("named stage threads", || cpu_ticks("zz").0 == 7);
    let (_, before) = cpu_ticks("zz");
    // Half a second of idleness: a thread that polled or spun would use ticks (10 ms each).
    let (_never, idle) = crossbeam_channel::bounded::<()>(0);
    assert!(idle.recv_timeout(Duration::from_millis(500)).is_err());
    let (_, after) = cpu_ticks("zz");
    assert!(
        after - before <= 2,
        "idle threads used {} ticks",
        after - before
    );
    handle.stop();
    let report = handle.join().unwrap();
    assert_eq!(report.produced(), 0);
    drop(writer);
}

/// A transport that fails on some items: errors on multiples of 7, panics on multiples of 13.
#[derive(Clone)]
struct Flaky;

impl Transport for Flaky {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, x: u64, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        if x.is_multiple_of(13) {
            panic!("thirteen divides {x}");
        }
        if x.is_multiple_of(7) {
            return Err(StageError::msg(format!("seven divides {x}")));
        }
        Ok(Some(x))
    }
}

/// A frontend that panics once, at item 5, then goes on.
struct PanicsOnce(u64, u64);

impl Frontend for PanicsOnce {
    type Item = u64;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        self.0 += 1;
        if self.0 == 6 {
            panic!("frontend hiccup");
        }
        Ok((self.0 <= self.1).then_some(self.0))
    }
}

// Promise 4: a panic or an error on one item is caught and counted, and the run goes on
// under the default skip policy.
#[test]
fn panics_and_errors_in_any_stage_are_caught_counted_and_skipped() {
    const N: u64 = 1_000;
    let sink = Collect::default();
    let failing_backend = {
        let sink = sink.clone();
        move |x: u64| -> Result<(), StageError> {
            if x.is_multiple_of(11) {
                return Err(StageError::msg("eleven"));
            }
            sink.0.lock().unwrap().push(x);
            Ok(())
        }
    };
    let report = Engine::builder(PanicsOnce(0, N))
        .transport(Flaky)
        .transport_threads(2)
        .backend(failing_backend)
        .run()
        .unwrap();
    report.check().unwrap();
    let stage = |kind| report.stage_of_kind(kind).unwrap().counts;
    let sevens_or_thirteens = (1..=N).filter(|x| x % 7 == 0 || x % 13 == 0).count() as u64;
    let elevens = (1..=N)
        .filter(|x| x % 11 == 0 && x % 7 != 0 && x % 13 != 0 && *x != 6)
        .count() as u64;
    assert_eq!(stage(StageKind::Frontend).failed, 1, "{report}");
    assert_eq!(
        stage(StageKind::Transport).failed,
        sevens_or_thirteens,
        "{report}"
    );
    assert_eq!(stage(StageKind::Backend).failed, elevens, "{report}");
    let expected: Vec<u64> = (1..=N)
        .filter(|x| *x != 6 && x % 7 != 0 && x % 13 != 0 && x % 11 != 0)
        .collect();
    assert_eq!(sink.sorted(), expected);
    assert_eq!(report.end, RunEnd::Completed);
}

// Promise 4: under the stop policy, the first failure ends the run with a clear error.
#[test]
fn the_stop_policy_ends_the_run_at_the_first_failure() {
    let result = Engine::builder(Counter::default())
        .transport(|x: u64| -> u64 {
            assert!(x != 500, "item 500 is bad");
            x
        })
        .backend(|_: u64| {})
        .error_policy(ErrorPolicy::Stop)
        .run();
    let Err(EngineError::StageFailed {
        stage,
        kind,
        during_setup,
        error,
        report,
        ..
    }) = result
    else {
        panic!("expected a stage failure, got {result:?}");
    };
    assert_eq!(
        (stage.as_str(), kind, during_setup),
        ("transport", StageKind::Transport, false)
    );
    assert!(error.is_panic());
    assert!(error.to_string().contains("item 500 is bad"), "{error}");
    report.check().unwrap();
    assert!(matches!(report.end, RunEnd::Failed { .. }));
    assert_eq!(report.stage("transport").unwrap().counts.failed, 1);
}

/// A transport whose setup fails on thread 1, counting setups and cleanups.
#[derive(Clone)]
struct SetupFails(Lifecycle);

impl Transport for SetupFails {
    type Input = u64;
    type Output = u64;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        if ctx.index() == 1 {
            return Err(StageError::msg("no database"));
        }
        self.0.setups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn transport(&mut self, x: u64, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        Ok(Some(x))
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        self.0.cleanups.fetch_add(1, Ordering::SeqCst);
    }
}

/// A backend counting setups and cleanups.
#[derive(Clone)]
struct Counted(Lifecycle);

impl Backend for Counted {
    type Input = u64;

    fn setup(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        self.0.setups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn process(&mut self, _x: u64, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        self.0.cleanups.fetch_add(1, Ordering::SeqCst);
    }
}

// Promise 4: a failing setup stops the run with a clear error, and every instance that was
// set up is cleaned up.
#[test]
fn a_failing_setup_stops_the_run_and_cleans_up_what_was_set_up() {
    let (transports, backends) = (Lifecycle::default(), Lifecycle::default());
    let result = Engine::builder(Counter::default())
        .transport(SetupFails(transports.clone()))
        .transport_threads(3)
        .backend(Counted(backends.clone()))
        .backend_threads(2)
        .run();
    let err = result.unwrap_err();
    let EngineError::StageFailed {
        stage,
        thread,
        during_setup,
        report,
        ..
    } = &err
    else {
        panic!("expected a stage failure, got {err:?}");
    };
    assert_eq!(
        (stage.as_str(), *thread, *during_setup),
        ("transport", 1, true)
    );
    assert_eq!(
        err.to_string(),
        "transport stage \"transport\" (thread 1) failed in setup: no database"
    );
    report.check().unwrap();
    assert_eq!(transports.setups(), 2);
    assert_eq!(transports.cleanups(), 2);
    assert_eq!(backends.setups(), 2);
    assert_eq!(backends.cleanups(), 2);
}

/// An item that counts the items alive.
struct Alive(Arc<AtomicI64>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// Promise 5: memory is bounded by the queues, whatever the speed of each stage.
#[test]
fn memory_stays_bounded_with_a_slow_backend() {
    const N: u64 = 20_000;
    let alive = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let source = {
        let (alive, peak) = (Arc::clone(&alive), Arc::clone(&peak));
        (0..N).map(move |_| {
            let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            Alive(Arc::clone(&alive))
        })
    };
    let report = Engine::builder(source)
        .transport(|a: Alive| a)
        .backend(|a: Alive| {
            spin(Duration::from_micros(10));
            drop(a);
        })
        .queue_capacity(64)
        .run()
        .unwrap();
    assert_eq!(report.processed(), N);
    assert_eq!(alive.load(Ordering::SeqCst), 0);
    // Two queues of 64, plus one batch of at most 16 in the hands of each of the frontend,
    // the transport (in and out) and the backend.
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 2 * 64 + 4 * 16, "{peak} items alive at once");
}

// The stop handle works from another thread while `run()` blocks.
#[test]
fn a_stop_handle_stops_a_blocking_run_from_another_thread() {
    let stop = StopHandle::new();
    let sink = Collect::default();
    let stopper = {
        let (stop, sink) = (stop.clone(), sink.clone());
        thread::spawn(move || {
            wait_until("items", || sink.0.lock().unwrap().len() >= 1_000);
            stop.stop();
        })
    };
    let report = Engine::builder(Counter::default())
        .backend(sink.clone())
        .stop_handle(&stop)
        .run()
        .unwrap();
    stopper.join().unwrap();
    report.check().unwrap();
    assert_eq!(report.end, RunEnd::Stopped);
    assert_eq!(report.processed(), sink.0.lock().unwrap().len() as u64);
}
