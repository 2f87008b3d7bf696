//! SIGINT/SIGTERM handling for a [`StopHandle`]: the first signal stops gracefully, the second
//! stops now.

use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use signal_hook::consts::signal::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::plumbing::lock;
use crate::stop::{StopHandle, StopLevel};

/// A termination signal the handler reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGINT, sent by Ctrl-C.
    Interrupt,
    /// SIGTERM, sent by `kill` and service managers.
    Terminate,
}

impl Signal {
    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Self::Interrupt => SIGINT,
            Self::Terminate => SIGTERM,
        }
    }

    fn from_number(number: i32) -> Option<Self> {
        match number {
            SIGINT => Some(Self::Interrupt),
            SIGTERM => Some(Self::Terminate),
            _ => None,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        })
    }
}

/// The signal handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// Registering with the operating system failed.
    #[error("cannot register the SIGINT/SIGTERM handler")]
    Register(#[source] io::Error),
    /// The thread that turns signals into stops could not be started.
    #[error("cannot start the signal-handling thread")]
    Thread(#[source] io::Error),
}

/// Whether the default action (terminate) applies to SIGINT/SIGTERM: true while no
/// [`SignalGuard`] is alive. Read from inside the signal handler, hence a static atomic.
static DEFAULT_ACTION: AtomicBool = AtomicBool::new(true);
/// How many guards are alive, and whether the default-action fallback is registered.
static GUARDS: Mutex<(usize, bool)> = Mutex::new((0, false));

/// Turns SIGINT and SIGTERM into stops of `stop`: the first signal stops gracefully
/// ([`StopHandle::stop`]), the second stops now ([`StopHandle::stop_now`]), and a third
/// terminates the process at once through the signal's default action, so that a run stuck in
/// code that ignores the stop can still be interrupted from the keyboard.
///
/// Signals are received on a dedicated thread (through `signal-hook`), so the stop handle is
/// never touched from inside a signal handler. Each guard counts its own signals: two guards
/// (on one handle, or on a parent and its child) both see the first SIGINT as the first. The
/// handling lasts until the returned guard is dropped; once every guard is gone, SIGINT and
/// SIGTERM terminate the process again as they do by default.
///
/// # Errors
///
/// [`SignalError`] if the handler cannot be registered or its thread cannot start.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine::core::{StopHandle, StopLevel, install_signal_handler};
///
/// let stop = StopHandle::new();
/// let guard = install_signal_handler(&stop)?;
/// signal_hook::low_level::raise(signal_hook::consts::SIGINT)?;
/// assert_eq!(stop.wait_timeout(Duration::from_secs(10)), Some(StopLevel::Graceful));
/// drop(guard);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn install_signal_handler(stop: &StopHandle) -> Result<SignalGuard, SignalError> {
    install_signal_handler_with(stop, |_, _| {})
}

/// Like [`install_signal_handler`], and also calls `on_signal` with each signal and the level
/// the stop is at after it, for example to log "press Ctrl-C again to stop now". It is not
/// called for the third signal, which terminates the process.
///
/// # Errors
///
/// As for [`install_signal_handler`].
pub fn install_signal_handler_with(
    stop: &StopHandle,
    mut on_signal: impl FnMut(Signal, StopLevel) + Send + 'static,
) -> Result<SignalGuard, SignalError> {
    let mut guards = lock(&GUARDS);
    if !guards.1 {
        // signal-hook does not restore the default disposition when the last handler is
        // unregistered (the signal would then be ignored), so a conditional default action is
        // registered once, first, and switched on whenever no guard is alive.
        for signal in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_default(signal, &DEFAULT_ACTION)
                .map_err(SignalError::Register)?;
        }
        guards.1 = true;
    }
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(SignalError::Register)?;
    let handle = signals.handle();
    let stop = stop.clone();
    let thread = thread::Builder::new()
        .name("engine-signals".into())
        .spawn(move || {
            let mut received = 0_u32;
            for number in signals.forever() {
                let Some(signal) = Signal::from_number(number) else {
                    continue;
                };
                received += 1;
                let level = match received {
                    1 => StopLevel::Graceful,
                    2 => StopLevel::Now,
                    _ => {
                        // Terminates the process; returns only if that failed, and then the
                        // signal is simply handled as a second one again.
                        let _ = signal_hook::low_level::emulate_default_handler(number);
                        StopLevel::Now
                    }
                };
                // A panic in a stop callback or in `on_signal` is the callback's bug; catching
                // it keeps this thread, and with it Ctrl-C, working.
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    if level == StopLevel::Graceful {
                        stop.stop();
                    } else {
                        stop.stop_now();
                    }
                }));
                let _ = catch_unwind(AssertUnwindSafe(|| on_signal(signal, stop.level())));
            }
        })
        .map_err(SignalError::Thread)?;
    guards.0 += 1;
    DEFAULT_ACTION.store(false, Ordering::SeqCst);
    Ok(SignalGuard {
        handle,
        thread: Some(thread),
    })
}

/// Keeps SIGINT/SIGTERM handling alive; dropping it unregisters the handler and joins its
/// thread.
#[derive(Debug)]
#[must_use = "dropping the guard ends the signal handling at once"]
pub struct SignalGuard {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        // Restore the default action before closing, so that a signal arriving meanwhile is
        // never lost: it either reaches this guard or terminates the process.
        {
            let mut guards = lock(&GUARDS);
            guards.0 = guards.0.saturating_sub(1);
            if guards.0 == 0 {
                DEFAULT_ACTION.store(true, Ordering::SeqCst);
            }
        }
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            // The thread catches every panic; joining reports nothing.
            let _ = thread.join();
        }
    }
}
