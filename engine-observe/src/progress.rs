//! A live progress line on a terminal: items done, the rate of each stage, the time so far,
//! the bottleneck (or "waiting for input" when the source is the limit), and with a known
//! total the share done and the time left.
//!
//! The line is drawn by its own thread, which reads the engine's counters a few times a
//! second; the stages never wait for it (indicatif#235 was a progress bar behind a mutex on
//! the hot path).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::snapshot::Snapshot;
use crate::verdict::{Window, rates, verdict};

/// How far a run is through a known total (bytes of an input file, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Done so far.
    pub done: u64,
    /// The total.
    pub total: u64,
}

/// A progress line on standard error, until it is finished or dropped.
#[derive(Debug)]
pub struct Progress {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The line's text for `now`, with rates since `before`: items done, each stage's rate, and
/// what limits the run ([`verdict`](crate::verdict())), if anything does.
pub fn describe(before: Option<&Snapshot>, now: &Snapshot) -> String {
    let rates = rates(before, now);
    let done = now.stages.last().map_or(0.0, |s| s.handled());
    let mut text = format!("{done:.0} items");
    for r in &rates {
        text.push_str(&format!(" | {} {:.0}/s", r.name, r.out_per_second));
    }
    if let Some(summary) = verdict(&rates).summary() {
        text.push_str(" | ");
        text.push_str(&summary);
    }
    text
}

impl Progress {
    /// Starts drawing on standard error, every `interval`, what `read` says: the engine's
    /// counters, and how far through a known total it is, if it knows.
    pub fn start(
        interval: Duration,
        mut read: impl FnMut() -> (Snapshot, Option<Position>) + Send + 'static,
    ) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("engine-progress".into())
            .spawn(move || {
                let bar =
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
                let spinner = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let known = ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {percent:>3}% eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(spinner.clone());
                // Rates over a second or more: the line is drawn more often than that.
                let mut window = Window::default();
                let mut with_total = false;
                loop {
                    let (now, position) = read();
                    match position {
                        Some(Position { done, total }) if total > 0 => {
                            if !with_total {
                                bar.set_style(known.clone());
                                with_total = true;
                            }
                            bar.set_length(total);
                            bar.set_position(done.min(total));
                        }
                        _ => bar.tick(),
                    }
                    let before = window.base_for(&now);
                    bar.set_message(describe(before.as_ref(), &now));
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                bar.finish_and_clear();
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }

    /// Clears the line and waits for its thread.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::snapshot::StageSample;

    #[test]
    fn the_line_names_items_rates_and_the_bottleneck() {
        let mut sink = StageSample::new("sink", "backend");
        sink.threads = 1;
        sink.items_out = 500.0;
        sink.busy_seconds = 4.0;
        let now = Snapshot {
            at: Instant::now(),
            elapsed: Duration::from_secs(5),
            running: true,
            stages: vec![sink],
            beans: Vec::new(),
        };
        let text = describe(None, &now);
        assert_eq!(text, "500 items | sink 100/s | bottleneck: sink");
    }

    #[test]
    fn a_source_bound_run_says_it_waits_for_input() {
        let mut stdin = StageSample::new("frontend", "frontend");
        stdin.threads = 1;
        stdin.items_out = 400.0;
        stdin.busy_seconds = 0.04;
        stdin.waiting_input_seconds = 3.9;
        let mut sink = StageSample::new("sink", "backend");
        sink.threads = 1;
        sink.items_out = 400.0;
        sink.busy_seconds = 0.1;
        sink.waiting_input_seconds = 3.8;
        let now = Snapshot::new(
            Instant::now(),
            Duration::from_secs(4),
            true,
            vec![stdin, sink],
        );
        let text = describe(None, &now);
        assert_eq!(
            text,
            "400 items | frontend 100/s | sink 100/s | waiting for input"
        );
    }
}
