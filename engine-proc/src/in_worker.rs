//! A stage inside its worker process: what the master sends to start it, the stage set up
//! with its context (made in one place, from that), and the [`Program`]s a worker runs: one
//! item per task for a pool, one engine batch per task for a placed transport or backend.

use std::fmt;
use std::marker::PhantomData;

use engine_core::plumbing::{ItemOutcome, catch_panic};
use engine_core::protocol::from_bytes;
use engine_core::{Backend, BatchOut, StageContext, StageError, StageKind, Transport};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::portable::{NoConfig, PortableConfig};
use crate::program::{Program, worker_stop};
use crate::remote::{RemoteBackend, RemoteTransport};

/// What a worker of a placed stage or a pool starts from.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PlacedInit {
    #[serde(with = "serde_bytes")]
    stage: Vec<u8>,
    name: String,
    index: usize,
    instances: usize,
    config: Option<Vec<u8>>,
}

impl PlacedInit {
    /// Worker `index` of `instances` of the stage `name`, encoded as `stage`.
    pub(crate) fn new(
        stage: Vec<u8>,
        name: &str,
        index: usize,
        instances: usize,
        config: Option<Vec<u8>>,
    ) -> Self {
        Self {
            stage,
            name: name.to_owned(),
            index,
            instances,
            config,
        }
    }
}

/// A stage set up in its worker process, and the context it runs with. The only way to make
/// one is [`open`](Self::open), which builds the context and runs the stage's `setup` with it,
/// so a running stage always has both.
struct Running<S> {
    stage: S,
    ctx: StageContext,
}

impl<S> fmt::Debug for Running<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("stage", &std::any::type_name::<S>())
            .field("ctx", &self.ctx)
            .finish()
    }
}

impl<S: DeserializeOwned> Running<S> {
    /// Decodes the stage and its app config (of type `C`), builds its context as a stage of
    /// `kind`, and runs `setup` with it.
    fn open<C: PortableConfig>(
        init: PlacedInit,
        kind: StageKind,
        setup: fn(&mut S, &StageContext) -> Result<(), StageError>,
    ) -> Result<Self, StageError> {
        let mut stage = from_bytes::<S>(&init.stage).map_err(StageError::new)?;
        let ctx = StageContext::new(init.name, kind, init.index, init.instances, worker_stop())
            .with_config(C::decode(init.config.as_deref())?);
        setup(&mut stage, &ctx)?;
        Ok(Self { stage, ctx })
    }
}

/// A pool's transport inside its worker process: one item per task.
#[derive(Debug)]
pub(crate) struct InItem<S>(Running<S>);

/// A placed transport inside its worker process: one engine batch per task.
#[derive(Debug)]
pub(crate) struct InTransport<S, C>(Running<S>, PhantomData<fn() -> C>);

/// A placed backend inside its worker process: one engine batch per task, flushed after it.
#[derive(Debug)]
pub(crate) struct InBackend<S, C>(Running<S>, PhantomData<fn() -> C>);

impl<S: RemoteTransport> Program for InItem<S> {
    type Init = PlacedInit;
    type Task = S::Input;
    type Output = Option<S::Output>;

    fn init(init: PlacedInit) -> Result<Self, StageError> {
        Running::open::<NoConfig>(init, StageKind::Transport, S::setup).map(Self)
    }

    fn run(&mut self, task: S::Input) -> Result<Option<S::Output>, StageError> {
        let Running { stage, ctx } = &mut self.0;
        stage.transport(task, ctx)
    }

    fn context(&self) -> Option<&StageContext> {
        Some(&self.0.ctx)
    }

    fn cleanup(&mut self) {
        let Running { stage, ctx } = &mut self.0;
        Transport::cleanup(stage, ctx);
    }
}

/// Runs a batch-native transport on one engine batch, in one call: an outcome per item, as
/// on threads (the items it left without a report fail with its error or panic).
fn transport_batch<S: Transport>(
    stage: &mut S,
    items: Vec<S::Input>,
    ctx: &StageContext,
) -> Vec<ItemOutcome<S::Output>> {
    let n = items.len();
    let mut out = BatchOut::new();
    let result = catch_panic(|| stage.transport_batch(items, &mut out, ctx));
    let reported = out.len();
    let mut outcomes: Vec<_> = out.drain().take(n).map(ItemOutcome::of).collect();
    if reported > n {
        tracing::error!(
            stage = ctx.stage(),
            "transport_batch reported {reported} outcomes for {n} items; the surplus is dropped"
        );
    }
    if reported < n {
        let error = result.err().unwrap_or_else(|| {
            StageError::msg(format!(
                "transport_batch reported {reported} outcomes for {n} items"
            ))
        });
        // One error value per item: the first keeps the original, the others its message.
        let message = format!("{error:#}");
        outcomes.push(ItemOutcome::Failed(error));
        outcomes.resize_with(n, || ItemOutcome::Failed(StageError::msg(message.clone())));
    }
    outcomes
}

impl<S: RemoteTransport, C: PortableConfig> Program for InTransport<S, C> {
    type Init = PlacedInit;
    type Task = Vec<S::Input>;
    type Output = Vec<ItemOutcome<S::Output>>;

    fn init(init: PlacedInit) -> Result<Self, StageError> {
        let running = Running::open::<C>(init, StageKind::Transport, S::setup)?;
        Ok(Self(running, PhantomData))
    }

    fn run(&mut self, items: Vec<S::Input>) -> Result<Self::Output, StageError> {
        let Running { stage, ctx } = &mut self.0;
        if stage.emits_many() {
            return Ok(items
                .into_iter()
                .map(|item| {
                    let mut outputs = Vec::new();
                    let result = catch_panic(|| stage.transport_each(item, ctx, &mut outputs));
                    ItemOutcome::of_many(result.map(|()| outputs))
                })
                .collect());
        }
        if stage.takes_batches() {
            return Ok(transport_batch(stage, items, ctx));
        }
        Ok(items
            .into_iter()
            .map(|item| ItemOutcome::of(catch_panic(|| stage.transport(item, ctx))))
            .collect())
    }

    fn context(&self) -> Option<&StageContext> {
        Some(&self.0.ctx)
    }

    fn cleanup(&mut self) {
        let Running { stage, ctx } = &mut self.0;
        Transport::cleanup(stage, ctx);
    }

    fn weight(items: &Self::Task) -> u64 {
        items.len() as u64
    }
}

impl<S: RemoteBackend, C: PortableConfig> Program for InBackend<S, C> {
    type Init = PlacedInit;
    type Task = Vec<S::Input>;
    type Output = Vec<ItemOutcome<()>>;

    fn init(init: PlacedInit) -> Result<Self, StageError> {
        let running = Running::open::<C>(init, StageKind::Backend, S::setup)?;
        Ok(Self(running, PhantomData))
    }

    fn run(&mut self, items: Vec<S::Input>) -> Result<Self::Output, StageError> {
        let Running { stage, ctx } = &mut self.0;
        let mut outcomes: Vec<ItemOutcome<()>> = items
            .into_iter()
            .map(|item| match catch_panic(|| stage.process(item, ctx)) {
                Ok(()) => ItemOutcome::Done(()),
                Err(error) => ItemOutcome::Failed(error),
            })
            .collect();
        // What was processed is settled only once it is flushed.
        if let Err(error) = catch_panic(|| stage.flush(ctx)) {
            let message = format!("{error:#}");
            for outcome in &mut outcomes {
                if matches!(outcome, ItemOutcome::Done(())) {
                    *outcome = ItemOutcome::Failed(StageError::msg(&message));
                }
            }
        }
        Ok(outcomes)
    }

    fn context(&self) -> Option<&StageContext> {
        Some(&self.0.ctx)
    }

    fn cleanup(&mut self) {
        let Running { stage, ctx } = &mut self.0;
        Backend::cleanup(stage, ctx);
    }

    fn weight(items: &Self::Task) -> u64 {
        items.len() as u64
    }
}
