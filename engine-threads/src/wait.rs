//! [`Wait`]: what a stage thread is doing, as its counters store it and the stall report
//! reads it, and [`ThreadWait`], one thread's wait by stage.

use std::sync::Arc;

use engine_core::StageKind;

/// What a stage thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Wait {
    /// In stage code or the engine's own work (for a frontend: in `produce`).
    Working = 0,
    /// Waiting for its input queue.
    Input = 1,
    /// Waiting for room in the next queue.
    Room = 2,
    /// A frontend in ordered mode, waiting for the sink to deliver (the ordered window).
    Window = 3,
    /// Waiting for a batch to come back from where its items run (a worker's batch).
    Worker = 4,
    /// The thread has left its loop.
    Ended = 5,
}

impl Wait {
    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Input,
            2 => Self::Room,
            3 => Self::Window,
            4 => Self::Worker,
            5 => Self::Ended,
            _ => Self::Working,
        }
    }

    /// Whether a thread in this state holds up items it admitted (a thread waiting for input,
    /// or done, holds nothing).
    pub(crate) fn holds_items(self, kind: StageKind) -> bool {
        match self {
            Self::Input | Self::Ended => false,
            // A frontend in `produce` is waiting for its source, not holding items.
            Self::Working => kind != StageKind::Frontend,
            Self::Room | Self::Window | Self::Worker => true,
        }
    }

    pub(crate) fn describe(self, kind: StageKind) -> &'static str {
        match (self, kind) {
            (Self::Working, StageKind::Frontend) => "in produce (its source)",
            (Self::Working, _) => "working (in the stage's code)",
            (Self::Input, _) => "waiting for its input",
            (Self::Room, _) => "waiting for room downstream",
            (Self::Window, _) => "waiting for the ordered window",
            (Self::Worker, _) => "waiting for a batch to come back from its workers",
            (Self::Ended, _) => "ended",
        }
    }
}

/// One thread's wait, by stage.
pub(crate) struct ThreadWait {
    pub(crate) stage: Arc<str>,
    pub(crate) kind: StageKind,
    pub(crate) index: usize,
    pub(crate) wait: Wait,
}
