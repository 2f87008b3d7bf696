//! Real signals: SIGINT and SIGTERM sent to this test process fire the stop handle, a second
//! signal stops now, and dropping the guard restores the default action.
//!
//! Signals are process-wide, so the tests in this file take a lock and run one at a time. The
//! handler is always installed before a signal is sent.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use engine_core::{
    Signal, StopHandle, StopLevel, install_signal_handler, install_signal_handler_with,
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

#[test]
fn two_guards_both_fire() {
    let _serial = serial();
    let (a, b) = (StopHandle::new(), StopHandle::new());
    let guard_a = install_signal_handler(&a).unwrap();
    let guard_b = install_signal_handler(&b).unwrap();
    raise(SIGINT).unwrap();
    assert_eq!(a.wait_timeout(WAIT), Some(StopLevel::Graceful));
    assert_eq!(b.wait_timeout(WAIT), Some(StopLevel::Graceful));
    drop((guard_a, guard_b));
}

/// In a child process (this same test binary), installs and drops a guard, then raises
/// SIGINT: the process must die of SIGINT, as it would without the engine.
#[test]
fn dropping_the_guard_restores_the_default_action() {
    use std::os::unix::process::ExitStatusExt;

    if std::env::var_os("ENGINE_CORE_SIGNAL_CHILD").is_some() {
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
