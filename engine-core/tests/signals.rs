//! Real signals: SIGINT and SIGTERM sent to this test process fire the stop handle, a second
//! signal stops now, and dropping the guard restores the default action.
//!
//! Signals are process-wide, so the tests in this file take a lock and run one at a time. The
//! handler is always installed before a signal is sent.

#![cfg(unix)]

use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use engine_core::{
    Signal, SignalGuard, StopHandle, StopLevel, install_signal_handler, install_signal_handler_with,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::low_level::raise;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn sigint_stops_gracefully_then_now() {
    let _serial = serial();
    let stop = StopHandle::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let guard = install_signal_handler_with(&stop, move |signal, level| {
        tx.send((signal, level)).unwrap();
    })
    .unwrap();

    raise(SIGINT).unwrap();
    assert_eq!(stop.wait_timeout(WAIT), Some(StopLevel::Graceful));
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        (Signal::Interrupt, StopLevel::Graceful)
    );

    raise(SIGINT).unwrap();
    assert_eq!(
        stop.wait_for_level(StopLevel::Now, Some(WAIT)),
        Some(StopLevel::Now)
    );
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        (Signal::Interrupt, StopLevel::Now)
    );
    drop(guard);
}

#[test]
fn sigterm_stops_gracefully() {
    let _serial = serial();
    let stop = StopHandle::new();
    let guard = install_signal_handler(&stop).unwrap();
    raise(SIGTERM).unwrap();
    assert_eq!(stop.wait_timeout(WAIT), Some(StopLevel::Graceful));
    drop(guard);
}

/// Installs a handler that reports each signal on a channel.
fn reporting_guard(stop: &StopHandle) -> (SignalGuard, mpsc::Receiver<(Signal, StopLevel)>) {
    let (tx, rx) = mpsc::channel();
    let guard = install_signal_handler_with(stop, move |signal, level| {
        let _ = tx.send((signal, level));
    })
    .unwrap();
    (guard, rx)
}

#[test]
fn two_guards_on_one_handle_count_one_signal_once() {
    let _serial = serial();
    let stop = StopHandle::new();
    let (guard_a, seen_a) = reporting_guard(&stop);
    let (guard_b, seen_b) = reporting_guard(&stop);
    raise(SIGINT).unwrap();
    // Both guards have handled the signal once it reached both callbacks.
    seen_a.recv_timeout(WAIT).unwrap();
    seen_b.recv_timeout(WAIT).unwrap();
    assert_eq!(
        stop.level(),
        StopLevel::Graceful,
        "one SIGINT must not abort"
    );
    drop((guard_a, guard_b));
}

#[test]
fn guards_on_a_parent_and_its_child_keep_one_signal_graceful() {
    let _serial = serial();
    let parent = StopHandle::new();
    let child = parent.child();
    let (guard_p, seen_p) = reporting_guard(&parent);
    let (guard_c, seen_c) = reporting_guard(&child);
    raise(SIGINT).unwrap();
    seen_p.recv_timeout(WAIT).unwrap();
    seen_c.recv_timeout(WAIT).unwrap();
    assert_eq!(parent.level(), StopLevel::Graceful);
    assert_eq!(child.level(), StopLevel::Graceful);
    drop((guard_p, guard_c));
}

#[test]
fn a_panicking_callback_keeps_signal_handling_alive() {
    let _serial = serial();
    let stop = StopHandle::new();
    let guard = install_signal_handler_with(&stop, |_, level| {
        if level == StopLevel::Graceful {
            panic!("a buggy signal callback");
        }
    })
    .unwrap();
    raise(SIGINT).unwrap();
    assert_eq!(stop.wait_timeout(WAIT), Some(StopLevel::Graceful));
    raise(SIGINT).unwrap();
    assert_eq!(
        stop.wait_for_level(StopLevel::Now, Some(WAIT)),
        Some(StopLevel::Now)
    );
    drop(guard);
}

/// Runs one test of this binary in a child process with `ENGINE_CORE_SIGNAL_CHILD` set, and
/// returns how it ended.
fn in_child(test: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads=1"])
        .env("ENGINE_CORE_SIGNAL_CHILD", "1")
        .output()
        .unwrap()
        .status
}

fn is_child() -> bool {
    std::env::var_os("ENGINE_CORE_SIGNAL_CHILD").is_some()
}

/// In a child process, a third SIGINT kills the process even though nothing stops the run.
#[test]
fn a_third_signal_terminates_the_process() {
    use std::os::unix::process::ExitStatusExt;

    if is_child() {
        let stop = StopHandle::new();
        let (_guard, seen) = reporting_guard(&stop);
        raise(SIGINT).unwrap();
        seen.recv_timeout(WAIT).unwrap();
        raise(SIGINT).unwrap();
        seen.recv_timeout(WAIT).unwrap();
        raise(SIGINT).unwrap();
        // A stuck run: only reached if the third signal did not terminate the process.
        let _ = seen.recv_timeout(WAIT);
        std::process::exit(3);
    }
    let _serial = serial();
    let status = in_child("a_third_signal_terminates_the_process");
    assert_eq!(status.signal(), Some(SIGINT), "child ended with {status:?}");
}

/// In a child process (this same test binary), installs and drops a guard, then raises
/// SIGINT: the process must die of SIGINT, as it would without the engine.
#[test]
fn dropping_the_guard_restores_the_default_action() {
    use std::os::unix::process::ExitStatusExt;

    if is_child() {
        let stop = StopHandle::new();
        drop(install_signal_handler(&stop).unwrap());
        raise(SIGINT).unwrap();
        // Only reached if SIGINT was ignored.
        std::process::exit(3);
    }
    let _serial = serial();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "dropping_the_guard_restores_the_default_action",
            "--test-threads=1",
        ])
        .env("ENGINE_CORE_SIGNAL_CHILD", "1")
        .output()
        .unwrap()
        .status;
    assert_eq!(status.signal(), Some(SIGINT), "child ended with {status:?}");
}
