//! Running workers: one worker process per slot, each fed by a driver thread of its own,
//! started together and stopped together (a pool's, or a placed stage's in one run).

use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, unbounded};
use engine_core::protocol::to_bytes;
use engine_core::{StopHandle, StopLevel, StopSubscription};

use crate::config::Config;
use crate::error::SpawnError;
use crate::program::Program;
use crate::shared::{Results, Shared, State};

/// Running workers, and the receivers of their lanes.
pub(crate) type Started<W> = (Workers<W>, Vec<Results<<W as Program>::Output>>);

/// Running workers and their drivers. Dropping it stops them gracefully and waits for them.
pub(crate) struct Workers<W: Program> {
    pub(crate) shared: Arc<Shared<W>>,
    drivers: Vec<JoinHandle<()>>,
    stop: StopHandle,
    _subscription: StopSubscription,
}

impl<W: Program> Workers<W> {
    /// Starts one worker per init and waits until each is initialised; results go to
    /// `lanes` receivers. `stop` stops the workers: graceful lets running tasks finish, now
    /// kills at once; either is forwarded to the workers' stage code.
    pub(crate) fn start(
        inits: Vec<W::Init>,
        config: Config,
        lanes: usize,
        stop: StopHandle,
    ) -> Result<Started<W>, SpawnError> {
        Self::start_with(inits, config, lanes, stop, |shared, level| {
            shared.forward_stop(level);
            shared.close(if level >= StopLevel::Now {
                State::Killing
            } else {
                State::Closing
            });
        })
    }

    /// As [`start`](Self::start), with `on_stop` deciding what a stop does.
    pub(crate) fn start_with(
        inits: Vec<W::Init>,
        config: Config,
        lanes: usize,
        stop: StopHandle,
        on_stop: fn(&Shared<W>, StopLevel),
    ) -> Result<Started<W>, SpawnError> {
        if inits.is_empty() {
            return Err(SpawnError::Io(std::io::Error::other(
                "a pool needs at least one worker: call `worker` or `workers`",
            )));
        }
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..lanes.max(1)).map(|_| unbounded()).unzip();
        let shared = Arc::new(Shared::<W>::new(inits.len(), senders, config));
        let subscription = {
            let shared = Arc::clone(&shared);
            stop.on_stop(move |level| on_stop(&shared, level))
        };
        let mut workers = Self {
            shared,
            drivers: Vec::new(),
            stop,
            _subscription: subscription,
        };
        let mut started = Vec::new();
        for (slot, init) in inits.into_iter().enumerate() {
            let init = to_bytes(&init).map_err(SpawnError::Protocol)?;
            let (ready_tx, ready) = bounded(1);
            let shared = Arc::clone(&workers.shared);
            let handle = thread::Builder::new()
                .name(format!("engine-proc-pool-{slot}"))
                .spawn(move || crate::driver::drive(&shared, slot, &init, &ready_tx))
                .map_err(SpawnError::Io)?;
            workers.drivers.push(handle);
            started.push(ready);
        }
        let mut error = None;
        for ready in started {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error = error.or(Some(e)),
                Err(_) => {
                    error = error.or(Some(SpawnError::Io(std::io::Error::other(
                        "a pool thread ended",
                    ))));
                }
            }
        }
        match error {
            None => Ok((workers, receivers)),
            // Dropping the workers stops those that started.
            Some(error) => Err(error),
        }
    }

    /// How many worker slots there are.
    pub(crate) fn len(&self) -> usize {
        self.drivers.len()
    }

    /// The stop handle the workers follow.
    pub(crate) fn stop_handle(&self) -> &StopHandle {
        &self.stop
    }

    /// Stops the workers gracefully (running tasks finish, up to the stop timeout) and waits
    /// for their drivers.
    pub(crate) fn shutdown(&mut self) {
        self.shared.close(State::Closing);
        for driver in self.drivers.drain(..) {
            let _ = driver.join();
        }
    }
}

impl<W: Program> Drop for Workers<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
