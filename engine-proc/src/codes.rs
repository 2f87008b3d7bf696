//! What master and worker processes agree on below every other module: the exit codes of a
//! worker that could not run, and the kinds of the engine's own messages.

/// Exit code of a worker whose bootstrap failed (bad environment, no master).
pub(crate) const EXIT_BOOT_FAILED: i32 = 86;
/// Exit code of a worker whose `init` (its program's, or its stage's `setup`) failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 87;
/// Exit code of a worker whose channel to the master failed.
pub(crate) const EXIT_CHANNEL_FAILED: i32 = 88;

/// The kind of the message that carries a worker's init arguments.
pub(crate) const INIT: &str = "engine.init";
/// The kind of the message that tells a worker the run's stop level.
pub(crate) const STOP: &str = "engine.stop";
/// The name under which a pool worker hands the master its control channel, where stop
/// levels go.
pub(crate) const CONTROL: &str = "engine.control";
