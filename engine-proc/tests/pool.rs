//! The pool with real worker processes: results, failures, deaths, timeouts, stops.
//!
//! Worker processes are copies of this test binary, so it has its own `main` (the test
//! harness's `main` would not call `engine_proc::init()` first).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test harness reports"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use engine_core::protocol::TaskId;
use engine_core::{StageContext, StageError, Transport};
use engine_proc::{ExitHow, Pool, SpawnError, TaskError, Worker, WorkerStage};
use engine_threads::Engine;
use serde::{Deserialize, Serialize};

/// Adds its offset; some inputs misbehave on purpose.
struct Adder {
    offset: u64,
}

/// Panics on this input.
const PANIC: u64 = 13;
/// Exits the worker process on this input.
const EXIT: u64 = 999_999_666;
/// Inputs from here sleep (input - SLOW) milliseconds: the work of a slow task.
const SLOW: u64 = 1_000_000_000;

impl Worker for Adder {
    type Init = u64;
    type Task = u64;
    type Output = u64;

    fn init(offset: u64) -> Result<Self, StageError> {
        if offset == u64::MAX {
            return Err(StageError::msg("this offset is refused"));
        }
        Ok(Adder { offset })
    }

    fn run(&mut self, task: u64) -> Result<u64, StageError> {
        match task {
            PANIC => panic!("thirteen is unlucky"),
            EXIT => std::process::exit(3),
            t if t >= SLOW => std::thread::sleep(Duration::from_millis(t - SLOW)),
            t if t % 1_000 == 999 => return Err(StageError::msg(format!("{t} is refused"))),
            _ => {}
        }
        Ok(task + self.offset)
    }
}

/// Checks a task's result against what `Adder` does with it.
fn check(task: u64, result: &Result<u64, TaskError>) {
    match (task, result) {
        (PANIC, Err(TaskError::Failed(e))) => {
            assert!(
                e.is_panic() && e.to_string().contains("thirteen is unlucky"),
                "{e:#}"
            );
        }
        (t, Err(TaskError::Failed(e))) if t % 1_000 == 999 => {
            assert_eq!(e.to_string(), format!("{t} is refused"));
        }
        (t, Ok(v)) if t >= SLOW => assert_eq!(*v, t + 1),
        (t, Ok(v)) if t != PANIC && t % 1_000 != 999 => assert_eq!(*v, t + 1),
        (t, other) => panic!("task {t}: unexpected {other:?}"),
    }
}

fn pool(workers: usize) -> Pool<WorkerStage<Adder>> {
    Pool::builder()
        .workers(workers, WorkerStage::<Adder>::new(1))
        .start()
        .expect("the pool starts")
}

fn results_and_errors_come_back_by_id() {
    let mut pool = pool(2);
    let mut seen = BTreeMap::new();
    for (id, result) in pool.run(0..5_000) {
        assert!(
            seen.insert(id.0, result).is_none(),
            "task {id} came back twice"
        );
    }
    assert_eq!(seen.len(), 5_000);
    for (id, result) in &seen {
        check(*id, result);
    }
    let stats = pool.stats();
    assert_eq!(stats.completed, 5_000);
    assert_eq!(stats.failed, 6);
    assert_eq!(stats.worker_deaths, 0);
}

fn map_keeps_the_order_of_the_tasks() {
    let mut pool = pool(2);
    let tasks: Vec<u64> = (0..3_000).map(|i| (i * 7_919) % 3_000).collect();
    let results: Vec<_> = pool.map(tasks.iter().copied()).collect();
    assert_eq!(results.len(), tasks.len());
    for (task, result) in tasks.iter().zip(&results) {
        check(*task, result);
    }
}

fn a_panicking_task_is_an_error_and_the_rest_succeed() {
    let mut pool = pool(2);
    let results: Vec<_> = pool.map([1, PANIC, 2, 3]).collect();
    assert_eq!(results[0].as_ref().ok(), Some(&2));
    match &results[1] {
        Err(TaskError::Failed(e)) => {
            assert!(e.is_panic(), "{e:#}");
            assert!(e.to_string().contains("thirteen is unlucky"), "{e:#}");
        }
        other => panic!("expected a failed task, got {other:?}"),
    }
    assert_eq!(results[2].as_ref().ok(), Some(&3));
    assert_eq!(results[3].as_ref().ok(), Some(&4));
    assert_eq!(
        pool.stats().worker_deaths,
        0,
        "a panic does not kill the worker"
    );
}

fn kill_9_mid_run_loses_and_repeats_nothing() {
    const N: u64 = 10_000;
    let mut pool = Pool::builder()
        .workers(2, WorkerStage::<Adder>::new(1))
        .max_batch(64)
        .start()
        .unwrap();
    for task in 0..N {
        // Every task takes a little time, so that the kill lands mid-run.
        pool.submit(if task % 10 == 0 { SLOW + 1 } else { task });
    }
    let mut seen = BTreeMap::new();
    let mut killed = None;
    while let Some((id, result)) = pool.recv() {
        assert!(
            seen.insert(id.0, result).is_none(),
            "task {id} came back twice"
        );
        if seen.len() == 2_000 && killed.is_none() {
            let victim = pool.worker_pids()[0];
            Command::new("kill")
                .args(["-9", &victim.to_string()])
                .status()
                .unwrap();
            killed = Some(victim);
        }
    }
    assert_eq!(seen.len() as u64, N, "every id comes back");
    for (id, result) in &seen {
        check(if id % 10 == 0 { SLOW + 1 } else { *id }, result);
    }
    let stats = pool.stats();
    assert_eq!(stats.worker_deaths, 1, "{stats:?}");
    assert_eq!(stats.respawns, 1, "{stats:?}");
    assert!(!pool.worker_pids().contains(&killed.unwrap()));
    assert_eq!(pool.worker_pids().len(), 2);
}

/// Tasks submitted one at a time, while the workers wait, go to a worker straight from the
/// submitting thread; each comes back once, with its result.
fn lone_tasks_go_straight_to_an_idle_worker() {
    let mut pool = pool(2);
    for task in 0..300 {
        let id = pool.submit(task);
        let (got, result) = pool.recv().unwrap();
        assert_eq!(got, id);
        check(task, &result);
    }
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed), (300, 300), "{stats:?}");
    assert!(stats.handed >= 1, "no task went straight: {stats:?}");
    assert!(pool.recv().is_none(), "nothing comes back twice");
}

/// A lone task sent to a worker that was killed while it waited is retried on the
/// worker's replacement: nothing is lost, nothing runs twice.
fn a_lone_task_sent_to_a_killed_idle_worker_is_retried() {
    const ROUNDS: u64 = 5;
    let mut pool = pool(1);
    for round in 0..ROUNDS {
        let id = pool.submit(round);
        expect_back(&mut pool, id, round + 1);
        let victim = pool.worker_pids()[0];
        Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status()
            .unwrap();
        // Its driver waits for work and cannot know yet: this task goes to the dead worker.
        let id = pool.submit(1_000 + round);
        expect_back(&mut pool, id, 1_001 + round);
        assert!(!pool.worker_pids().contains(&victim));
    }
    let stats = pool.stats();
    assert_eq!(stats.worker_deaths, ROUNDS, "{stats:?}");
    assert_eq!(stats.retried, ROUNDS, "{stats:?}");
    assert_eq!(stats.completed, 2 * ROUNDS, "{stats:?}");
    assert!(stats.handed >= 1, "no task went straight: {stats:?}");
}

/// A lone task submitted just before a shutdown is never lost: it finishes (it went to an
/// idle worker at once) or is cancelled, and comes back once either way.
fn a_lone_task_submitted_just_before_a_shutdown_comes_back() {
    for task in 100..120_u64 {
        let mut pool = pool(1);
        let id = pool.submit(task);
        let (rest, stats) = pool.shutdown();
        match rest.as_slice() {
            [(got, Ok(value))] if *got == id => assert_eq!(*value, task + 1),
            [(got, Err(TaskError::Cancelled))] if *got == id => {}
            other => panic!("task {task}: {other:?}"),
        }
        assert_eq!((stats.submitted, stats.completed), (1, 1), "{stats:?}");
    }
}

/// Receives the next result and checks that it is `id`'s, and `want`.
fn expect_back(pool: &mut Pool<WorkerStage<Adder>>, id: TaskId, want: u64) {
    match pool.recv() {
        Some((got, Ok(value))) if got == id => assert_eq!(value, want, "task {id}"),
        other => panic!("task {id}: expected {want}, got {other:?}"),
    }
}

fn a_worker_that_exits_every_time_fails_its_task_after_the_retries() {
    let mut pool = Pool::builder()
        .workers(2, WorkerStage::<Adder>::new(1))
        .retries(2)
        .start()
        .unwrap();
    let results: Vec<_> = pool.map([1, EXIT, 2]).collect();
    match &results[1] {
        Err(TaskError::WorkerDied { how, attempts }) => {
            assert_eq!(*how, ExitHow::Code(3));
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected worker-died, got {other:?}"),
    }
    assert_eq!(results[0].as_ref().ok(), Some(&2));
    assert_eq!(results[2].as_ref().ok(), Some(&3));
    // The pool still serves.
    let more: Vec<_> = pool.map(100..200).map(Result::unwrap).collect();
    assert_eq!(more, (101..201).collect::<Vec<_>>());
    let stats = pool.stats();
    assert_eq!(stats.worker_deaths, 3, "{stats:?}");
    assert!(stats.retried >= 2, "{stats:?}");
}

fn a_task_past_the_timeout_is_killed_and_its_worker_replaced() {
    let mut pool = Pool::builder()
        .workers(1, WorkerStage::<Adder>::new(1))
        .task_timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    let first = pool.worker_pids();
    let results: Vec<_> = pool.map([1, SLOW + 60_000, 2]).collect();
    assert!(
        matches!(results[1], Err(TaskError::TimedOut { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(results[0].as_ref().ok(), Some(&2));
    assert_eq!(results[2].as_ref().ok(), Some(&3));
    assert_ne!(pool.worker_pids(), first, "the worker was replaced");
    assert_eq!(pool.stats().timeouts, 1);
}

fn a_corrupt_frame_is_reported_and_the_pool_goes_on() {
    let mut pool = pool(1);
    assert!(pool.inject_raw_frame(b"EN\x01\x00\x00\x00\xff\xff\xff garbage".to_vec()));
    assert!(pool.inject_raw_frame(vec![0, 1, 2]));
    let results: Vec<u64> = pool.map(0..100).map(|r| r.unwrap_or(0)).collect();
    assert_eq!(results[..5], [1, 2, 3, 4, 5]);
    assert_eq!(pool.stats().corrupt_frames, 2);
    assert_eq!(pool.stats().worker_deaths, 0);
}

fn a_failing_init_is_a_clear_start_error() {
    let error = Pool::builder()
        .worker(WorkerStage::<Adder>::new(1))
        .worker(WorkerStage::<Adder>::new(u64::MAX))
        .start()
        .unwrap_err();
    assert!(matches!(error, SpawnError::Init(_)), "{error}");
    assert!(
        error.to_string().contains("this offset is refused"),
        "{error}"
    );
}

/// Writes a byte to the pipe `fd` (whose write end the workers inherit from the master) as
/// each task starts, then works for the task's number of milliseconds: so a test knows a task
/// runs.
#[derive(Clone, Serialize, Deserialize)]
struct Announce {
    fd: i32,
}

impl Transport for Announce {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, ms: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
        // SAFETY: writes one byte from a valid buffer to an inherited pipe.
        unsafe { libc::write(self.fd, [1_u8].as_ptr().cast(), 1) };
        std::thread::sleep(Duration::from_millis(ms));
        Ok(Some(ms))
    }
}

fn a_stop_cancels_queued_tasks_and_delivers_finished_ones() {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array. No O_CLOEXEC: the workers inherit
    // the write end.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let mut pool = Pool::builder()
        .workers(2, Announce { fd: fds[1] })
        .start()
        .unwrap();
    let stop = pool.stop_handle().clone();
    let ids: Vec<TaskId> = (0..4).map(|_| pool.submit(200)).collect();
    for task in 0..1_000 {
        pool.submit(1 + task % 2);
    }
    // The stop comes once a task runs (one of the first four: workers take from the front).
    let mut byte = [0_u8; 1];
    // SAFETY: reads one byte into a valid buffer from the pipe's read end.
    while unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) } != 1 {
        assert_eq!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::Interrupted
        );
    }
    stop.stop();
    let mut outcomes = BTreeMap::new();
    while let Some((id, result)) = pool.recv() {
        outcomes.insert(id, result.is_ok());
    }
    assert_eq!(outcomes.len(), 1_004, "every task has an outcome");
    assert!(
        ids.iter().filter(|id| outcomes[id]).count() >= 1,
        "running tasks finished"
    );
    assert!(
        outcomes.values().filter(|ok| !**ok).count() > 900,
        "queued tasks were cancelled"
    );
    let pids = pool.worker_pids();
    let (_, stats) = pool.shutdown();
    assert_eq!(stats.worker_deaths, 0);
    for pid in pids {
        assert!(gone(pid), "worker {pid} is gone");
    }
    for fd in fds {
        // SAFETY: closes the two descriptors this test opened.
        unsafe { libc::close(fd) };
    }
}

/// Whether a process is gone: no /proc entry (a zombie still has one).
fn gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn dropping_a_pool_leaves_no_worker_and_no_zombie() {
    let pool = pool(3);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|pid| !gone(*pid)));
    drop(pool);
    for pid in pids {
        assert!(gone(pid), "worker {pid} is still there (or a zombie)");
    }
}

/// The master role: starts a pool, prints its workers' pids, then waits forever.
fn master_role() {
    let pool = pool(2);
    let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    println!("{}", pids.join(" "));
    loop {
        std::thread::park();
    }
}

fn workers_die_with_their_master() {
    let exe = std::env::current_exe().unwrap();
    let mut master = Command::new(exe)
        .env("POOL_TEST_ROLE", "master")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(master.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line:?}");
    master.kill().unwrap();
    master.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    // Waiting for other processes to end: poll /proc until the deadline.
    while pids.iter().any(|pid| running(*pid)) {
        assert!(
            Instant::now() < deadline,
            "workers outlived their master by a second: {pids:?}"
        );
        std::thread::yield_now();
    }
}

/// Whether a process runs (exists and is not a zombie waiting for its new parent to reap it).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The role of a program that forgot `init`: it starts a pool anyway.
fn no_init_role() {
    match Pool::builder()
        .workers(1, WorkerStage::<Adder>::new(1))
        .start_timeout(Duration::from_secs(20))
        .start()
    {
        Ok(_) => println!("started"),
        Err(e) => println!("error: {e}"),
    }
}

fn a_binary_without_init_is_a_clear_error_not_a_hang() {
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let out = Command::new(exe)
        .env("POOL_TEST_ROLE", "no-init")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("before it connected; does `main` call `engine_proc::init()`"),
        "{stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it took {:?}",
        started.elapsed()
    );
}

/// A transport written for the threaded engine: it remembers, from its `setup`, which worker
/// of how many it is, filters odd numbers and halves the rest.
#[derive(Clone, Serialize, Deserialize)]
struct Halve {
    #[serde(skip)]
    me: Option<(usize, usize)>,
}

impl Transport for Halve {
    type Input = u64;
    type Output = (u64, usize, usize);

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.me = Some((ctx.index(), ctx.instances()));
        Ok(())
    }

    fn transport(
        &mut self,
        x: u64,
        _: &StageContext,
    ) -> Result<Option<(u64, usize, usize)>, StageError> {
        let (index, of) = self.me.ok_or_else(|| StageError::msg("not set up"))?;
        Ok(x.is_multiple_of(2).then_some((x / 2, index, of)))
    }
}

fn a_transport_written_for_threads_runs_in_a_pool_as_it_is() {
    const N: u64 = 20_000;
    // On threads.
    let on_threads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&on_threads);
    Engine::builder(0..N)
        .transport(Halve { me: None })
        .backend(move |(half, _, _): (u64, usize, usize)| sink.lock().unwrap().push(half))
        .run()
        .unwrap();
    // In a pool of 3 processes, each set up once as worker i of 3.
    let mut pool = Pool::builder()
        .workers(3, Halve { me: None })
        .start()
        .unwrap();
    let mut halves = Vec::new();
    let mut filtered = 0;
    let mut workers = std::collections::BTreeSet::new();
    for (id, result) in pool.run(0..N) {
        match result {
            Ok((half, index, of)) => {
                assert_eq!(half, id.0 / 2, "task {id}");
                assert_eq!(of, 3);
                workers.insert(index);
                halves.push(half);
            }
            Err(TaskError::Filtered) => {
                assert_eq!(id.0 % 2, 1, "task {id}");
                filtered += 1;
            }
            Err(other) => panic!("task {id}: {other}"),
        }
    }
    assert_eq!(filtered, N / 2);
    let mut on_threads = on_threads.lock().unwrap().clone();
    on_threads.sort_unstable();
    halves.sort_unstable();
    assert_eq!(halves, on_threads, "the same outputs as on threads");
    assert!(
        workers.iter().all(|w| *w < 3) && !workers.is_empty(),
        "{workers:?}"
    );
    let (_, stats) = pool.shutdown();
    assert_eq!((stats.submitted, stats.completed), (N, N));
}

/// Tags each task with the pid of the worker that ran it; with `leak`, keeps that many MiB
/// per task alive, as a leaking library would.
#[derive(Clone, Serialize, Deserialize)]
struct Tag {
    leak_mib: usize,
    #[serde(skip)]
    leaked: Vec<Vec<u8>>,
}

impl Transport for Tag {
    type Input = u64;
    type Output = (u64, u32);

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<(u64, u32)>, StageError> {
        if self.leak_mib > 0 {
            self.leaked.push(vec![1_u8; self.leak_mib << 20]);
            // About a millisecond of work, so that the pool reads the worker's memory.
            let until = Instant::now() + Duration::from_millis(1);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        Ok(Some((x, std::process::id())))
    }
}

fn recycling_after_100_tasks_runs_every_task_once_in_new_processes() {
    const N: u64 = 10_000;
    let mut pool = Pool::builder()
        .workers(
            2,
            Tag {
                leak_mib: 0,
                leaked: Vec::new(),
            },
        )
        .recycle_after(100)
        .start()
        .unwrap();
    let first = pool.worker_pids();
    let mut per_pid: BTreeMap<u32, u64> = BTreeMap::new();
    let mut seen = vec![false; N as usize];
    for (id, result) in pool.run(0..N) {
        let (x, pid) = result.unwrap();
        assert_eq!(x, id.0);
        assert!(
            !std::mem::replace(&mut seen[x as usize], true),
            "task {x} ran twice"
        );
        *per_pid.entry(pid).or_default() += 1;
    }
    assert!(seen.iter().all(|s| *s), "a task is missing");
    assert!(
        per_pid.values().all(|n| *n <= 100),
        "a worker ran more than 100 tasks"
    );
    // Every process ran a hundred, but the last of each of the two slots, which may have
    // run fewer when the tasks ran out: those two then hold a hundred between them.
    let short: Vec<u64> = per_pid.values().copied().filter(|n| *n < 100).collect();
    match short.as_slice() {
        [] => assert_eq!(per_pid.len() as u64, N / 100),
        [a, b] => {
            assert_eq!(a + b, 100, "{per_pid:?}");
            assert_eq!(per_pid.len() as u64, N / 100 + 1);
        }
        _ => panic!("more than one short process per slot: {per_pid:?}"),
    }
    assert!(first.iter().all(|pid| per_pid.contains_key(pid)));
    let (_, stats) = pool.shutdown();
    assert_eq!(stats.completed, N);
    assert_eq!(stats.worker_deaths, 0, "recycling is not a death");
    assert!(stats.recycles >= N / 100 - 2, "{stats:?}");
}

fn a_worker_past_its_memory_limit_is_recycled_between_batches() {
    const N: u64 = 600;
    let mut pool = Pool::builder()
        .workers(
            2,
            Tag {
                leak_mib: 2,
                leaked: Vec::new(),
            },
        )
        .max_memory(96 << 20)
        .start()
        .unwrap();
    let mut pids = std::collections::BTreeSet::new();
    let mut done = 0;
    for (_, result) in pool.run(0..N) {
        pids.insert(result.unwrap().1);
        done += 1;
    }
    assert_eq!(done, N);
    let (_, stats) = pool.shutdown();
    assert!(stats.recycles >= 1, "{stats:?}");
    assert_eq!(stats.worker_deaths, 0);
    assert!(pids.len() > 2, "{pids:?}");
}

/// The pool's metrics: per worker, the tasks it ran and its recycles.
#[cfg(feature = "metrics")]
fn the_pools_metrics_count_tasks_and_recycles_per_worker() {
    let mut pool = Pool::builder()
        .name("tagger")
        .workers(
            2,
            Tag {
                leak_mib: 0,
                leaked: Vec::new(),
            },
        )
        .recycle_after(10)
        .start()
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(pool.metrics()));
    assert_eq!(pool.run(0..100).filter(|(_, r)| r.is_ok()).count(), 100);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let sum = |metric: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains("pool=\"tagger\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum("engine_worker_tasks_total"), 100, "{text}");
    assert_eq!(sum("engine_worker_deaths_total"), 0, "{text}");
    assert!(sum("engine_worker_recycles_total") >= 8, "{text}");
    // A slot may be between two processes at the moment of the scrape.
    assert!(sum("engine_worker_up") <= 2, "{text}");
}

/// The pool's metrics: each worker's resident memory, read from `/proc` at the scrape.
#[cfg(feature = "metrics")]
fn the_pools_metrics_give_each_workers_memory() {
    let pool = pool(2);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(pool.metrics()));
    // The workers take their slots as they start: poll until both are up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let memory = loop {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let memory: BTreeMap<String, u64> = text
            .lines()
            .filter(|l| l.starts_with("engine_worker_memory_bytes{"))
            .map(|l| {
                let worker = l
                    .split("worker=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                let bytes = l.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
                (worker.to_owned(), bytes)
            })
            .collect();
        if memory.len() == 2 {
            break memory;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(10));
    };
    // A worker process is a copy of this binary: some megabytes at least.
    for (worker, bytes) in &memory {
        assert!(*bytes > 1 << 20, "worker {worker}: {bytes} bytes");
    }
    assert_eq!(memory.keys().collect::<Vec<_>>(), ["0", "1"]);
}

/// An output that will not encode when it is a multiple of 3.
#[derive(Debug, Deserialize, PartialEq)]
struct Picky(u64);

impl Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(3) {
            return Err(serde::ser::Error::custom(format!(
                "{} will not encode",
                self.0
            )));
        }
        serializer.serialize_newtype_struct("Picky", &self.0)
    }
}

/// Wraps its input in [`Picky`]; fails inputs that are multiples of 5.
#[derive(Clone, Serialize, Deserialize)]
struct Wrap;

impl Transport for Wrap {
    type Input = u64;
    type Output = Picky;

    fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<Picky>, StageError> {
        if x.is_multiple_of(5) {
            return Err(StageError::msg(format!("{x} refused")));
        }
        Ok(Some(Picky(x)))
    }
}

/// An output that will not encode fails its task alone: the rest of its batch, failures
/// included, comes back in place.
fn an_output_that_will_not_encode_fails_only_its_own_task() {
    let mut pool = Pool::builder().workers(2, Wrap).start().unwrap();
    let mut seen = 0;
    for (id, result) in pool.run(1..=300) {
        let x = id.0 + 1;
        seen += 1;
        match result {
            Ok(output) => {
                assert!(!x.is_multiple_of(3) && !x.is_multiple_of(5), "task {id}");
                assert_eq!(output, Picky(x));
            }
            Err(TaskError::Failed(error)) if x.is_multiple_of(5) => {
                assert!(error.to_string().contains("refused"), "task {id}: {error}");
            }
            Err(TaskError::Failed(error)) => {
                assert!(x.is_multiple_of(3), "task {id}: {error}");
                assert!(
                    error.to_string().contains("cannot encode"),
                    "task {id}: {error}"
                );
            }
            Err(other) => panic!("task {id}: {other}"),
        }
    }
    assert_eq!(seen, 300);
    let (_, stats) = pool.shutdown();
    assert_eq!(
        (stats.completed, stats.failed),
        (300, 300 / 3 + 300 / 5 - 300 / 15)
    );
}

/// A task that will not encode when it is a multiple of 7.
#[derive(Debug, Deserialize)]
struct PickyTask(u64);

impl Serialize for PickyTask {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(7) {
            return Err(serde::ser::Error::custom(format!(
                "task {} will not encode",
                self.0
            )));
        }
        serializer.serialize_newtype_struct("PickyTask", &self.0)
    }
}

/// Unwraps its [`PickyTask`].
#[derive(Clone, Serialize, Deserialize)]
struct Unwrap;

impl Transport for Unwrap {
    type Input = PickyTask;
    type Output = u64;

    fn transport(&mut self, x: PickyTask, _: &StageContext) -> Result<Option<u64>, StageError> {
        Ok(Some(x.0))
    }
}

/// A task that will not encode fails alone, as it is submitted: the tasks around it run,
/// `map` keeps their order, and the counters add up.
fn a_task_that_will_not_encode_fails_alone() {
    let mut pool = Pool::builder().workers(2, Unwrap).start().unwrap();
    let results: Vec<_> = pool.map((1..=300).map(PickyTask)).collect();
    assert_eq!(results.len(), 300);
    for (x, result) in (1..=300_u64).zip(&results) {
        match result {
            Ok(y) => {
                assert!(!x.is_multiple_of(7), "task {x}");
                assert_eq!(*y, x);
            }
            Err(TaskError::Failed(error)) => {
                assert!(x.is_multiple_of(7), "task {x}: {error}");
                assert!(
                    format!("{error:#}").contains("cannot encode"),
                    "task {x}: {error:#}"
                );
            }
            Err(other) => panic!("task {x}: {other}"),
        }
    }
    // One submitted alone, between runs of others.
    let id = pool.submit(PickyTask(14));
    let (got, result) = pool.recv().unwrap();
    assert_eq!(got, id);
    assert!(matches!(result, Err(TaskError::Failed(_))), "{result:?}");
    let (_, stats) = pool.shutdown();
    assert_eq!(
        (stats.submitted, stats.completed, stats.failed),
        (301, 301, 300 / 7 + 1)
    );
}

fn main() {
    match std::env::var("POOL_TEST_ROLE").as_deref() {
        Ok("no-init") => return no_init_role(),
        _ => engine_proc::init(),
    }
    if std::env::var("POOL_TEST_ROLE").as_deref() == Ok("master") {
        return master_role();
    }
    let tests: &[(&str, fn())] = &[
        #[cfg(feature = "metrics")]
        (
            "the_pools_metrics_count_tasks_and_recycles_per_worker",
            the_pools_metrics_count_tasks_and_recycles_per_worker,
        ),
        #[cfg(feature = "metrics")]
        (
            "the_pools_metrics_give_each_workers_memory",
            the_pools_metrics_give_each_workers_memory,
        ),
        (
            "a_transport_written_for_threads_runs_in_a_pool_as_it_is",
            a_transport_written_for_threads_runs_in_a_pool_as_it_is,
        ),
        (
            "results_and_errors_come_back_by_id",
            results_and_errors_come_back_by_id,
        ),
        (
            "an_output_that_will_not_encode_fails_only_its_own_task",
            an_output_that_will_not_encode_fails_only_its_own_task,
        ),
        (
            "a_task_that_will_not_encode_fails_alone",
            a_task_that_will_not_encode_fails_alone,
        ),
        (
            "recycling_after_100_tasks_runs_every_task_once_in_new_processes",
            recycling_after_100_tasks_runs_every_task_once_in_new_processes,
        ),
        (
            "a_worker_past_its_memory_limit_is_recycled_between_batches",
            a_worker_past_its_memory_limit_is_recycled_between_batches,
        ),
        (
            "map_keeps_the_order_of_the_tasks",
            map_keeps_the_order_of_the_tasks,
        ),
        (
            "a_panicking_task_is_an_error_and_the_rest_succeed",
            a_panicking_task_is_an_error_and_the_rest_succeed,
        ),
        (
            "lone_tasks_go_straight_to_an_idle_worker",
            lone_tasks_go_straight_to_an_idle_worker,
        ),
        (
            "a_lone_task_sent_to_a_killed_idle_worker_is_retried",
            a_lone_task_sent_to_a_killed_idle_worker_is_retried,
        ),
        (
            "a_lone_task_submitted_just_before_a_shutdown_comes_back",
            a_lone_task_submitted_just_before_a_shutdown_comes_back,
        ),
        (
            "kill_9_mid_run_loses_and_repeats_nothing",
            kill_9_mid_run_loses_and_repeats_nothing,
        ),
        (
            "a_worker_that_exits_every_time_fails_its_task_after_the_retries",
            a_worker_that_exits_every_time_fails_its_task_after_the_retries,
        ),
        (
            "a_task_past_the_timeout_is_killed_and_its_worker_replaced",
            a_task_past_the_timeout_is_killed_and_its_worker_replaced,
        ),
        (
            "a_corrupt_frame_is_reported_and_the_pool_goes_on",
            a_corrupt_frame_is_reported_and_the_pool_goes_on,
        ),
        (
            "a_failing_init_is_a_clear_start_error",
            a_failing_init_is_a_clear_start_error,
        ),
        (
            "a_stop_cancels_queued_tasks_and_delivers_finished_ones",
            a_stop_cancels_queued_tasks_and_delivers_finished_ones,
        ),
        (
            "dropping_a_pool_leaves_no_worker_and_no_zombie",
            dropping_a_pool_leaves_no_worker_and_no_zombie,
        ),
        (
            "workers_die_with_their_master",
            workers_die_with_their_master,
        ),
        (
            "a_binary_without_init_is_a_clear_error_not_a_hang",
            a_binary_without_init_is_a_clear_error_not_a_hang,
        ),
    ];
    std::process::exit(common::run_tests(tests));
}
