//! Custom stages, like os-m3-engine's `create(transport_cls=...)` with its own frontend,
//! transport and backend classes: a frontend that says "Hello world!" a few times, a
//! transport that transforms each greeting, and a backend that prints and keeps them.
//!
//! Run with `cargo run --example custom_stages`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::{Arc, Mutex};

use anyhow::{Result, ensure};
use engine::prelude::*;
use engine::threads::Engine;

/// Says "Hello world!" `times` times, as the origin's generator `produce` does once.
struct Hello {
    times: usize,
}

impl Frontend for Hello {
    type Item = String;

    fn produce(&mut self, _ctx: &StageContext) -> Result<Option<String>, StageError> {
        if self.times == 0 {
            // `None` means the frontend is done, which ends the run once the rest drained.
            return Ok(None);
        }
        self.times -= 1;
        Ok(Some("Hello world!".to_owned()))
    }
}

/// Returns each greeting shouted: what `transport` returns is sent to the backend.
#[derive(Clone)]
struct Shout;

impl Transport for Shout {
    type Input = String;
    type Output = String;

    fn transport(
        &mut self,
        data: String,
        _ctx: &StageContext,
    ) -> Result<Option<String>, StageError> {
        Ok(Some(data.to_uppercase()))
    }
}

/// Prints each greeting, and keeps it so that the example can check it.
#[derive(Clone)]
struct Print {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Backend for Print {
    type Input = String;

    fn process(&mut self, data: String, _ctx: &StageContext) -> Result<(), StageError> {
        println!("{data}");
        self.seen
            .lock()
            .map_err(|_| StageError::msg("the list of greetings is poisoned"))?
            .push(data);
        Ok(())
    }
}

fn main() -> Result<()> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let report = Engine::builder(Hello { times: 3 })
        .transport(Shout)
        .backend(Print {
            seen: Arc::clone(&seen),
        })
        .run()?;
    println!("{report}");
    report.check()?;

    let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    ensure!(
        *seen == ["HELLO WORLD!"; 3],
        "the backend saw {seen:?} instead of three shouted greetings"
    );
    ensure!(
        report.processed() == 3,
        "{} items processed",
        report.processed()
    );
    println!("ok");
    Ok(())
}
