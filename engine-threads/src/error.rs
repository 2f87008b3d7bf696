//! The errors of building and running an engine.

use std::error::Error as StdError;
use std::{fmt, io};

use engine_core::{RunReport, StageError, StageKind};

/// Why an engine could not be built or did not run to its end.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// A builder option has a value the engine cannot run with.
    InvalidOption {
        /// The builder method, e.g. `"transport_threads"`.
        option: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// A stage thread could not be started; nothing ran.
    Spawn {
        /// The thread's name.
        thread: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A stage failed: its `setup` returned an error or panicked, or an item failed under
    /// [`ErrorPolicy::Stop`](engine_core::ErrorPolicy::Stop) or with a
    /// [fatal](StageError::fatal) error. The run was aborted; the report says what became of
    /// every item.
    StageFailed {
        /// The stage's name.
        stage: String,
        /// The stage's kind.
        kind: StageKind,
        /// The index of the thread that failed.
        thread: usize,
        /// Whether the failure was in `setup`.
        during_setup: bool,
        /// The stage's error (for a panic, its message).
        error: StageError,
        /// The run's report.
        report: Box<RunReport>,
    },
}

impl EngineError {
    /// The run's report, when the run started.
    pub fn report(&self) -> Option<&RunReport> {
        match self {
            Self::StageFailed { report, .. } => Some(report),
            _ => None,
        }
    }

    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidOption {
            option,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidOption { option, reason } => {
                write!(f, "invalid option `{option}`: {reason}")
            }
            Self::Spawn { thread, .. } => write!(f, "cannot start thread {thread:?}"),
            Self::StageFailed {
                stage,
                kind,
                thread,
                during_setup,
                error,
                ..
            } => {
                let what = if *during_setup { "setup" } else { "an item" };
                write!(
                    f,
                    "{} stage {stage:?} (thread {thread}) failed in {what}: {error}",
                    kind.as_str()
                )
            }
        }
    }
}

impl StdError for EngineError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Spawn { source, .. } => Some(source),
            Self::StageFailed { error, .. } => error.as_error().source(),
            Self::InvalidOption { .. } => None,
        }
    }
}
