//! Process-backed stages: a transport or backend of the threaded engine placed in N worker
//! processes, with the same stage code.

use std::any::{Any, type_name};
use std::fmt;

use engine_core::plumbing::{ItemOutcome, Offload};
use engine_core::protocol::to_bytes;
use engine_core::{Backend, StageContext, StageError, Transport};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::in_worker::{InBackend, InTransport, PlacedInit};
use crate::placed::{Lane, Slot};
use crate::portable::{NoConfig, PortableConfig, WithConfig};
use crate::program::Program;
use crate::remote::{RemoteBackend, RemoteTransport};

/// Places a [`Transport`] in worker processes: the engine's transport threads hand their
/// batches to `N` worker processes and pass each item's output on when it comes back.
///
/// The stage value is serialised and sent to every worker, which runs the stage's `setup`
/// once, `transport` for every item and `cleanup` at the end, with a context of its own:
/// worker `i` of `N` as its index, the engine's stop state (a stop of the run reaches
/// [`StageContext::is_stopping`] there), and the app config if its type was named with
/// [`config`](Self::config). Items cross in the batches the engine's queue forms (up to 1024
/// at a time), each engine thread keeps several batches in flight, and the workers pull them
/// from one queue, so `N` is independent of the engine's thread count and no worker waits for
/// a round trip. Each item comes back on its own: output, filtered, or failed with its own
/// error (a panic included). Large items travel in shared memory.
///
/// A lone item (a batch of a few items while every worker waits) goes from the engine thread
/// straight to an idle worker, and the engine thread waits for its reply itself: it looks
/// for it for up to 150 µs, spinning and then yielding, before it sleeps on the worker. So
/// trickling items cross at about the speed of a hand-written call to a child process, for
/// up to 150 µs of CPU per lone item whose worker takes longer. With the engine's
/// `inline_when_idle`, a lone item skips the engine thread too: the frontend thread that read
/// it (or a pod's caller) sends it to the idle worker and waits for the reply the same way,
/// for up to about a millisecond, after which the engine thread takes the item over.
///
/// A worker that dies is replaced, and the batch it was running is tried again on another
/// (see [`retries`](Self::retries)); after that every item of the batch fails with how the
/// worker ended. A graceful stop drains through the workers; a stop now (a second Ctrl-C, an
/// expired stop deadline) kills them at once and the batches in flight count as dropped, so
/// an engine thread never waits on a hung worker. The report's counts are exact.
///
/// Moving a stage from threads to processes is one line: `.transport(stage)` becomes
/// `.transport(ProcTransport::new(stage).workers(4))`. Give the engine the same value for
/// all its transport threads (`.transport(..)`, not a factory making one per thread), so
/// that they share the workers.
///
/// ```no_run
/// use engine::core::{StageContext, StageError, Transport};
/// use engine::proc::ProcTransport;
/// use engine::threads::Engine;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Square;
///
/// impl Transport for Square {
///     type Input = u64;
///     type Output = u64;
///     fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
///         Ok(Some(x * x))
///     }
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     engine::proc::init(); // first line: workers are copies of this binary
///     let report = Engine::builder(0..1_000_000_u64)
///         .transport(ProcTransport::new(Square).workers(4))
///         .backend(|_: u64| {})
///         .run()?;
///     assert_eq!(report.processed(), 1_000_000);
///     Ok(())
/// }
/// ```
pub struct ProcTransport<S: RemoteTransport, C: PortableConfig = NoConfig> {
    placed: Placed<S, InTransport<S, C>>,
}

/// Places a [`Backend`] in worker processes, as [`ProcTransport`] does for a transport.
///
/// Each worker flushes its backend after every batch it ran, and an item counts as processed
/// (its completion ticket is settled) only once that flush has succeeded; a failed flush
/// fails the items of the batch it covered.
pub struct ProcBackend<S: RemoteBackend, C: PortableConfig = NoConfig> {
    placed: Placed<S, InBackend<S, C>>,
}

/// The master's side of a placed stage: the stage to send, how to run its workers, and the
/// connection of this engine thread.
struct Placed<S, W: Program> {
    stage: S,
    workers: Option<usize>,
    config: Config,
    slot: Slot<W>,
    /// This engine thread's lane to the stage's workers: `None` until `setup`, which receives
    /// the thread's context, connects it ([`Placed::join`]), and after `cleanup` leaves.
    lane: Option<Lane<W>>,
}

impl<S: Clone, W: Program> Clone for Placed<S, W> {
    fn clone(&self) -> Self {
        Self {
            stage: self.stage.clone(),
            workers: self.workers,
            config: self.config.clone(),
            slot: self.slot.clone(),
            lane: None,
        }
    }
}

impl<S: Serialize, W: Program<Init = PlacedInit>> Placed<S, W> {
    fn new(stage: S) -> Self {
        Self {
            stage,
            workers: None,
            config: Config {
                retries: 1,
                ..Config::default()
            },
            slot: Slot::default(),
            lane: None,
        }
    }

    /// Connects this engine thread to the stage's workers (starting them if it is the first).
    fn join<C: PortableConfig>(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let workers = self.workers.unwrap_or(ctx.instances()).max(1);
        let stage = &self.stage;
        let config = Config {
            name: ctx.stage().to_owned(),
            ..self.config.clone()
        };
        let lane = self.slot.join(ctx, workers, config, |workers| {
            let bytes = to_bytes(stage).map_err(|e| StageError::new(e).fatal())?;
            let config = C::encode(ctx.app_config())?;
            Ok((0..workers)
                .map(|index| {
                    PlacedInit::new(bytes.clone(), ctx.stage(), index, workers, config.clone())
                })
                .collect())
        })?;
        self.lane = Some(lane);
        Ok(())
    }
}

impl<S, W: Program> Placed<S, W> {
    /// Disconnects this engine thread; the last to leave stops the workers.
    fn leave(&mut self) {
        self.lane = None;
    }

    /// This engine thread's lane, once set up.
    fn lane(&mut self) -> Option<&mut Lane<W>> {
        self.lane.as_mut()
    }

    /// Runs one item through the workers and waits for its outcome: for an engine that calls
    /// the stage per item rather than offloading its batches. A failed or dropped item is the
    /// error; what comes back is done, many or filtered.
    fn call<I, O>(&mut self, item: I) -> Result<ItemOutcome<O>, StageError>
    where
        W: Program<Task = Vec<I>, Output = Vec<ItemOutcome<O>>>,
        I: Send + 'static,
    {
        let lane = self
            .lane()
            .ok_or_else(|| StageError::msg("the placed stage was not set up").fatal())?;
        match lane.call(item) {
            ItemOutcome::Failed(error) => Err(error),
            ItemOutcome::Dropped => Err(StageError::msg("the run was stopped").fatal()),
            settled => Ok(settled),
        }
    }
}

impl<S, W: Program> fmt::Debug for Placed<S, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placed")
            .field("stage", &type_name::<S>())
            .field("workers", &self.workers)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

macro_rules! placed_stage {
    ($ty:ident, $bound:ident) => {
        impl<S: $bound + Clone, C: PortableConfig> Clone for $ty<S, C> {
            fn clone(&self) -> Self {
                Self {
                    placed: self.placed.clone(),
                }
            }
        }

        impl<S: $bound, C: PortableConfig> fmt::Debug for $ty<S, C> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("placed", &self.placed)
                    .finish()
            }
        }

        impl<S: $bound> $ty<S> {
            /// The stage, to run in worker processes.
            pub fn new(stage: S) -> Self {
                Self {
                    placed: Placed::new(stage),
                }
            }
        }

        impl<S: $bound, C: PortableConfig> $ty<S, C> {
            /// How many worker processes run the stage, shared by all the engine's threads of
            /// the stage (default: as many as the stage has engine threads).
            #[must_use]
            pub fn workers(mut self, n: usize) -> Self {
                self.placed.workers = Some(n.max(1));
                self
            }

            crate::config::worker_settings! {
                config: placed.config,
                unit: "batch",
                units: "batches",
                retries: "1",
                timeout: batch_timeout,
                recycle: "the batch that reaches `n` items is its last.",
            }

            /// Sends the run's app config, of type `T`, to every worker once, where the stage
            /// reads it with [`StageContext::config`]. Without it, workers have no config.
            /// The run fails at setup with a clear error if its config is not a `T`.
            #[must_use]
            pub fn config<T>(self) -> $ty<S, WithConfig<T>>
            where
                T: Serialize + DeserializeOwned + Any + Send + Sync,
            {
                let Placed {
                    stage,
                    workers,
                    config,
                    ..
                } = self.placed;
                $ty {
                    placed: Placed {
                        stage,
                        workers,
                        config,
                        slot: Slot::default(),
                        lane: None,
                    },
                }
            }

            /// The process ids of the live workers (none outside a run).
            pub fn worker_pids(&self) -> Vec<u32> {
                self.placed.slot.pids()
            }

            /// The stage's worker processes as Prometheus metrics (feature `metrics`): per
            /// worker, batches, failures, deaths, respawns, recycles, and whether it is up.
            /// Take it from the value given to the engine (or a clone), before or during the
            /// run; it shows the workers of the run in progress.
            #[cfg(feature = "metrics")]
            #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
            pub fn metrics(&self) -> crate::WorkerMetrics {
                self.placed.slot.metrics()
            }
        }
    };
}

placed_stage!(ProcTransport, RemoteTransport);
placed_stage!(ProcBackend, RemoteBackend);

impl<S: RemoteTransport, C: PortableConfig> Transport for ProcTransport<S, C> {
    type Input = S::Input;
    type Output = S::Output;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.placed.join::<C>(ctx)
    }

    fn transport(
        &mut self,
        item: S::Input,
        _ctx: &StageContext,
    ) -> Result<Option<S::Output>, StageError> {
        match self.placed.call(item)? {
            ItemOutcome::Done(output) => Ok(Some(output)),
            ItemOutcome::Many(mut outputs) if outputs.len() <= 1 => Ok(outputs.pop()),
            ItemOutcome::Many(outputs) => Err(StageError::msg(format!(
                "the placed transport gave {} outputs for one item to a caller that takes one",
                outputs.len()
            ))),
            _ => Ok(None),
        }
    }

    fn emits_many(&self) -> bool {
        self.placed.stage.emits_many()
    }

    fn transport_each(
        &mut self,
        item: S::Input,
        _ctx: &StageContext,
        out: &mut Vec<S::Output>,
    ) -> Result<(), StageError> {
        match self.placed.call(item)? {
            ItemOutcome::Done(output) => out.push(output),
            ItemOutcome::Many(outputs) => out.extend(outputs),
            _ => {}
        }
        Ok(())
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        self.placed.leave();
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = S::Input, Output = S::Output>> {
        self.placed
            .lane()
            .map(|lane| lane as &mut dyn Offload<Input = S::Input, Output = S::Output>)
    }
}

impl<S: RemoteBackend, C: PortableConfig> Backend for ProcBackend<S, C> {
    type Input = S::Input;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.placed.join::<C>(ctx)
    }

    fn process(&mut self, item: S::Input, _ctx: &StageContext) -> Result<(), StageError> {
        self.placed.call(item).map(drop)
    }

    fn cleanup(&mut self, _ctx: &StageContext) {
        self.placed.leave();
    }

    fn offload(&mut self) -> Option<&mut dyn Offload<Input = S::Input, Output = ()>> {
        self.placed
            .lane()
            .map(|lane| lane as &mut dyn Offload<Input = S::Input, Output = ()>)
    }
}
