//! Passing parameters, like os-m3-engine's `create(app_config=config)`: one config value of
//! any type, given to the builder with `.config(...)` and read by every stage with
//! `ctx.config::<T>()`. The example runs the same stages with two configs and checks that the
//! results follow the config.
//!
//! Run with `cargo run --example app_config`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use anyhow::{Result, ensure};
use engine::ootb::CollectBackend;
use engine::prelude::*;
use engine::threads::Engine;

/// The application's parameters, shared by every stage of a run.
struct Settings {
    /// What the transport multiplies each number by.
    factor: u64,
    /// What the backend writes before each number.
    label: String,
}

/// Multiplies each number by the configured factor, reading the config on each item.
#[derive(Clone)]
struct Scale;

impl Transport for Scale {
    type Input = u64;
    type Output = u64;

    fn transport(&mut self, n: u64, ctx: &StageContext) -> Result<Option<u64>, StageError> {
        Ok(Some(n * ctx.config::<Settings>()?.factor))
    }
}

/// Labels each number, reading the config once in `setup`, and collects the labels.
#[derive(Clone)]
struct Label {
    label: String,
    out: CollectBackend<String>,
}

impl Backend for Label {
    type Input = u64;

    fn setup(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        // A missing config, or one of another type, is an error here and fails the run.
        self.label.clone_from(&ctx.config::<Settings>()?.label);
        Ok(())
    }

    fn process(&mut self, n: u64, ctx: &StageContext) -> Result<(), StageError> {
        self.out.process(format!("{} {n}", self.label), ctx)
    }
}

/// Runs the numbers 1 to 3 through the stages under `settings`.
fn run(settings: Settings) -> Result<Vec<String>> {
    let out = CollectBackend::new();
    let collected = out.collected();
    let report = Engine::builder(1..=3_u64)
        .transport(Scale)
        .backend(Label {
            label: String::new(),
            out,
        })
        .config(settings)
        .run()?;
    report.check()?;
    Ok(collected.take())
}

fn main() -> Result<()> {
    let doubled = run(Settings {
        factor: 2,
        label: "double".to_owned(),
    })?;
    let tripled = run(Settings {
        factor: 3,
        label: "triple".to_owned(),
    })?;
    println!("{doubled:?}\n{tripled:?}");
    ensure!(
        doubled == ["double 2", "double 4", "double 6"],
        "got {doubled:?}"
    );
    ensure!(
        tripled == ["triple 3", "triple 6", "triple 9"],
        "got {tripled:?}"
    );
    println!("ok");
    Ok(())
}
