//! Setup and cleanup per thread, like os-m3-engine's `setup` and `cleanup` methods: the engine
//! calls `setup` on each stage thread before its first item and `cleanup` after its last.
//! Here each backend thread opens a buffer of its own in `setup` and flushes it into a shared
//! store in `cleanup`, and both stages count the calls.
//!
//! Run with `cargo run --example setup_cleanup`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Result, ensure};
use engine::prelude::*;
use engine::threads::Engine;

/// Counts and prints the `setup` and `cleanup` calls of every thread of one stage.
#[derive(Debug, Default)]
struct Calls {
    setups: AtomicUsize,
    cleanups: AtomicUsize,
}

impl Calls {
    fn setup(&self, ctx: &StageContext) {
        println!("setup {} thread {}", ctx.stage(), ctx.index());
        self.setups.fetch_add(1, Ordering::SeqCst);
    }

    fn cleanup(&self, ctx: &StageContext) {
        println!("cleanup {} thread {}", ctx.stage(), ctx.index());
        self.cleanups.fetch_add(1, Ordering::SeqCst);
    }

    /// The numbers of setups and cleanups so far.
    fn counts(&self) -> (usize, usize) {
        let load = |count: &AtomicUsize| count.load(Ordering::SeqCst);
        (load(&self.setups), load(&self.cleanups))
    }
}

/// Passes numbers on.
#[derive(Clone)]
struct Pass(Arc<Calls>);

impl Transport for Pass {
    type Input = u64;
    type Output = u64;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.0.setup(ctx);
        Ok(())
    }

    fn transport(&mut self, n: u64, _ctx: &StageContext) -> Result<Option<u64>, StageError> {
        Ok(Some(n))
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        self.0.cleanup(ctx);
    }
}

/// Keeps numbers in a per-thread buffer, opened in `setup` and flushed in `cleanup`.
#[derive(Clone)]
struct Store {
    calls: Arc<Calls>,
    buffer: Option<Vec<u64>>,
    store: Arc<Mutex<Vec<u64>>>,
}

impl Backend for Store {
    type Input = u64;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.calls.setup(ctx);
        self.buffer = Some(Vec::new());
        Ok(())
    }

    fn process(&mut self, n: u64, _ctx: &StageContext) -> Result<(), StageError> {
        let buffer = self
            .buffer
            .as_mut()
            .ok_or_else(|| StageError::msg("no buffer"))?;
        buffer.push(n);
        Ok(())
    }

    fn cleanup(&mut self, ctx: &StageContext) {
        self.calls.cleanup(ctx);
        let buffer = self.buffer.take().unwrap_or_default();
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.extend(buffer);
    }
}

fn main() -> Result<()> {
    let (transport, backend) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
    let store = Arc::new(Mutex::new(Vec::new()));
    // Stages given by value are cloned once per thread, so each thread has its own buffer.
    let report = Engine::builder(0..1000_u64)
        .transport(Pass(Arc::clone(&transport)))
        .transport_threads(4)
        .backend(Store {
            calls: Arc::clone(&backend),
            buffer: None,
            store: Arc::clone(&store),
        })
        .backend_threads(3)
        .run()?;
    println!("{report}");
    report.check()?;

    // Setup and cleanup ran once on each of the 4 transport and 3 backend threads.
    let calls = [transport.counts(), backend.counts()];
    ensure!(calls == [(4, 4), (3, 3)], "(setups, cleanups): {calls:?}");
    let mut stored = store.lock().unwrap_or_else(PoisonError::into_inner).clone();
    stored.sort_unstable();
    // Every number went through exactly one thread's buffer.
    ensure!(stored.into_iter().eq(0..1000), "items were lost");
    println!("ok");
    Ok(())
}
