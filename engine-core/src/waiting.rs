//! Marking a blocking read as waiting for input, so that the engine running the stage counts
//! the time as waiting rather than work: a source-bound pipeline then says it waits for its
//! source instead of naming its frontend the bottleneck.
//!
//! An engine installs a [`WaitSink`](crate::plumbing::WaitSink) on each stage thread; outside
//! an engine, [`waiting_for_input`] just runs the read.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an engine counts a stage thread's waits (see [`plumbing`](crate::plumbing)).
pub trait WaitSink: Send + Sync {
    /// The thread starts waiting for input.
    fn begin_input_wait(&self);
    /// The thread waited `waited` for input, and works again.
    fn end_input_wait(&self, waited: Duration);
}

thread_local! {
    static SINK: RefCell<Option<Arc<dyn WaitSink>>> = const { RefCell::new(None) };
}

/// Runs `read`, a blocking wait for the stage's input (a socket, a pipe, a broker), counted as
/// waiting for input rather than work by the engine running the stage.
///
/// A frontend that blocks in `produce` until its source has something calls its read through
/// this, as the built-in sources do; the engine's views then show the frontend waiting for its
/// input, not busy, and do not name it the bottleneck. It costs a thread-local lookup and two
/// clock reads, which a blocking read dwarfs.
///
/// ```
/// use engine::core::waiting_for_input;
///
/// let mut line = String::new();
/// let read = waiting_for_input(|| std::io::Read::read_to_string(&mut &b"7\n"[..], &mut line));
/// assert_eq!((read.unwrap(), line.as_str()), (2, "7\n"));
/// ```
pub fn waiting_for_input<T>(read: impl FnOnce() -> T) -> T {
    let Some(sink) = SINK.with(|sink| sink.borrow().clone()) else {
        return read();
    };
    sink.begin_input_wait();
    let started = Instant::now();
    let result = read();
    sink.end_input_wait(started.elapsed());
    result
}

/// Installs `sink` for the current thread (an engine's stage thread), or removes it.
pub(crate) fn set_wait_sink(sink: Option<Arc<dyn WaitSink>>) {
    SINK.with(|current| *current.borrow_mut() = sink);
}
