//! SIGINT/SIGTERM handling for a [`StopHandle`]: the first signal stops gracefully, the second
//! stops now.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use signal_hook::consts::signal::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::stop::{StopHandle, StopLevel};

/// A termination signal the handler reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
static DEFAULT_ACTION: AtomicBool = AtomicBool::new(false);
/// How many guards are alive, and whether the default-action fallback is registered.
static GUARDS: Mutex<(usize, bool)> = Mutex::new((0, false));

/// Turns SIGINT and SIGTERM into stops of `stop`: the first signal calls
/// [`StopHandle::stop`] (graceful), a second calls [`StopHandle::stop_now`].
///
/// Signals are received on a dedicated thread (through `signal-hook`), so the stop handle is
/// never touched from inside a signal handler. The handling lasts until the returned guard is
/// dropped; after that, SIGINT and SIGTERM terminate the process again as they do by default
/// (once every guard is gone).
///
/// # Errors
///
/// [`SignalError`] if the handler cannot be registered or its thread cannot start.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use engine_core::{StopHandle, StopLevel, install_signal_handler};
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
/// it raised the stop to, for example to log "press Ctrl-C again to stop now".
///
/// # Errors
///
/// As for [`install_signal_handler`].
pub fn install_signal_handler_with(
    stop: &StopHandle,
    mut on_signal: impl FnMut(Signal, StopLevel) + Send + 'static,
) -> Result<SignalGuard, SignalError> {
    let mut guards = GUARDS.lock().unwrap_or_else(PoisonError::into_inner);
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
            for number in signals.forever() {
                if let Some(signal) = Signal::from_number(number) {
                    let level = stop.escalate();
                    on_signal(signal, level);
                }
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
pub struct SignalGuard {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            // The thread only forwards signals; a panic there (in a user callback) must not
            // turn this drop into a second panic.
            let _ = thread.join();
        }
        let mut guards = GUARDS.lock().unwrap_or_else(PoisonError::into_inner);
        guards.0 = guards.0.saturating_sub(1);
        if guards.0 == 0 {
            DEFAULT_ACTION.store(true, Ordering::SeqCst);
        }
    }
}
