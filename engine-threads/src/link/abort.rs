//! The abort signal: a channel that disconnects when the run is aborted, so that it wakes every
//! thread blocked on a queue.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};
use engine_core::StopHandle;
use engine_core::plumbing::lock;

/// Wakes every thread blocked on a queue when the run is aborted.
///
/// A run is aborted exactly when its stop handle reaches [`StopLevel::Now`]; the level is
/// read directly, so a thread sees the abort as soon as it is requested, and the channel
/// wakes threads that are blocked.
///
/// [`StopLevel::Now`]: engine_core::StopLevel::Now
#[derive(Debug, Clone)]
pub(crate) struct Abort {
    /// Never receives anything: it becomes ready (disconnected) when the sender is dropped.
    rx: Receiver<()>,
    stop: StopHandle,
}

/// The coordinator's side of [`Abort`].
#[derive(Debug)]
pub(crate) struct AbortTrigger {
    tx: Mutex<Option<Sender<()>>>,
}

pub(crate) fn abort_pair(stop: &StopHandle) -> (AbortTrigger, Abort) {
    let (tx, rx) = crossbeam_channel::bounded(0);
    (
        AbortTrigger {
            tx: Mutex::new(Some(tx)),
        },
        Abort {
            rx,
            stop: stop.clone(),
        },
    )
}

impl AbortTrigger {
    /// Wakes every blocked thread; called once the stop level is `Now`.
    pub(crate) fn fire(&self) {
        lock(&self.tx).take();
    }
}

impl Abort {
    #[inline]
    pub(crate) fn is_fired(&self) -> bool {
        self.stop.is_stopped_now()
    }

    /// Becomes ready (disconnected) when the run is aborted.
    pub(crate) fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}
