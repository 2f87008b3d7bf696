//! Stopping a router from a signal (multipro_lab: "the main process catches either a SIGINT
//! or a SIGTERM signal and sends the exit message to all processes; after all worker
//! processes have exited, the main process exits too").
//!
//! Three workers answer main's `ping` with their pid. Once all have answered, the example
//! does what Ctrl-C in a terminal does, which reaches the whole process group: it sends
//! SIGINT with `kill` to each worker (workers ignore SIGINT, so they keep running, as a
//! second ping round shows) and then to itself. The main process turns the signal into a
//! stop, tells every worker to exit, and waits for them: each exits with code 0.
//!
//! Run with `cargo run --example proc_stop_on_signal --features proc`. It exits non-zero if
//! any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Result, ensure};
use engine_core::protocol::Address;
use engine_core::{StageError, StopHandle, StopLevel, install_signal_handler};
use engine_proc::{Handlers, Node, Router};

const WORKERS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Main's watchdog gives up after this long: a guard against a hang, never reached when all
/// goes well (the signal stops the router first).
const GIVE_UP: Duration = Duration::from_secs(10);

/// A worker: answers `ping` with its pid and the round.
fn ponger(handlers: &mut Handlers) {
    handlers.on("ping", |node, round: u32| {
        node.send(&Address::Main, "pong", &(round, std::process::id()))
            .map_err(StageError::new)
    });
}

/// Sends `signal` to `pid` with kill(1), as a terminal or an operator would.
fn kill(signal: &str, pid: u32) -> Result<(), StageError> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .map_err(StageError::new)?;
    if status.success() {
        Ok(())
    } else {
        Err(StageError::msg(format!("kill {signal} {pid}: {status}")))
    }
}

fn ping_all(node: &mut Node, round: u32) -> Result<(), StageError> {
    for worker in WORKERS {
        node.send(&Address::named(worker), "ping", &round)
            .map_err(StageError::new)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    engine_proc::init();

    let stop = StopHandle::new();
    let _guard = install_signal_handler(&stop)?;

    // The pid each worker answered with, by round and name.
    let pongs = Rc::new(RefCell::new(BTreeMap::<(u32, String), u32>::new()));
    let gave_up = Rc::new(RefCell::new(false));

    let mut router = Router::builder().stop_handle(&stop);
    for name in WORKERS {
        router = router.worker(name, ponger);
    }
    let report = router
        .on_start(|node| ping_all(node, 1))
        .on("pong", {
            let pongs = Rc::clone(&pongs);
            move |node, (round, pid): (u32, u32)| {
                let name = node.sender().map(ToString::to_string).unwrap_or_default();
                println!("round {round}: pong from {name} (pid {pid})");
                let mut pongs = pongs.borrow_mut();
                pongs.insert((round, name), pid);
                let answered = pongs.keys().filter(|(r, _)| *r == round).count();
                if answered < WORKERS.len() {
                    return Ok(());
                }
                match round {
                    1 => {
                        // Ctrl-C reaches the workers too: they ignore it.
                        for ((_, worker), pid) in pongs.iter() {
                            println!("kill -INT {pid} ({worker})");
                            kill("-INT", *pid)?;
                        }
                        // A signal to an ignoring process is dropped when sent; one that
                        // killed the worker would have killed it before it reads this ping.
                        drop(pongs);
                        ping_all(node, 2)
                    }
                    _ => {
                        // Every worker still runs: now the signal to main.
                        println!("kill -INT {} (main)", std::process::id());
                        kill("-INT", std::process::id())
                    }
                }
            }
        })
        .every(GIVE_UP, {
            let gave_up = Rc::clone(&gave_up);
            move |node| {
                *gave_up.borrow_mut() = true;
                node.exit();
                Ok(())
            }
        })
        .run()?;

    println!("stopped: {:?}", stop.level());
    for worker in &report.workers {
        println!("{} (pid {}) {}", worker.name, worker.pid, worker.exit);
    }
    ensure!(
        !*gave_up.borrow(),
        "the signal did not stop the router: {report:?}"
    );
    ensure!(
        stop.level() == StopLevel::Graceful,
        "one SIGINT should stop gracefully: {:?}",
        stop.level()
    );
    let pongs = pongs.borrow();
    ensure!(pongs.len() == 2 * WORKERS.len(), "{pongs:?}");
    ensure!(
        report.main.handled == 2 * WORKERS.len() as u64 && report.main.handler_errors == 0,
        "main: {:?}",
        report.main
    );
    ensure!(report.workers.len() == WORKERS.len(), "{report:?}");
    for worker in &report.workers {
        ensure!(
            worker.exit.is_success() && !worker.ended_early,
            "{} should exit with code 0 when main tells it to: {worker:?}",
            worker.name
        );
        ensure!(
            pongs.get(&(1, worker.name.clone())) == Some(&worker.pid)
                && pongs.get(&(2, worker.name.clone())) == Some(&worker.pid),
            "{} answered both rounds from its own process: {pongs:?}",
            worker.name
        );
        ensure!(
            worker.stats.is_some_and(|s| s.handled == 2),
            "{}: {:?}",
            worker.name,
            worker.stats
        );
    }
    println!("ok");
    Ok(())
}
