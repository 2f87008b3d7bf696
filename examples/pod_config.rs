//! A pod from a config file: pod settings and `[[beans]]` tables with `core`, `label`,
//! `restart` and parameters, beans found in a registry (a program's own and the built-ins),
//! environment variables overriding the file. `engine pod run -c pod.toml` does the same.
//!
//! Run with `cargo run --example pod_config`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use engine::pod::{BeanContext, BeanState, PodFile, Registry, bean_fn, cli};
use serde::Deserialize;

const CONFIG: &str = r#"
log_level = "info"
stop_wait_time = "10s"

[[beans]]
core = "hello"          # built in
name = "config file"

[[beans]]
core = "flaky"          # this program's own bean
label = "retried"
restart = { when = "on-failure", max_restarts = 5, within = "1m", backoff = "1ms" }
fail_times = 2
"#;

/// The `flaky` bean's parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Flaky {
    fail_times: u32,
}

fn main() -> Result<()> {
    let runs = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::with_builtins();
    {
        let runs = Arc::clone(&runs);
        registry.register_typed("flaky", move |params: Flaky| {
            let runs = Arc::clone(&runs);
            bean_fn(move |ctx: BeanContext| {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                let fail = run <= params.fail_times;
                async move {
                    println!("bean {} ({:?}) run {run}", ctx.id(), ctx.label());
                    if fail {
                        return Err(engine::core::StageError::msg(format!("run {run} fails")));
                    }
                    Ok(())
                }
            })
        });
    }

    let path = std::env::temp_dir().join(format!("pod-config-example-{}.toml", std::process::id()));
    std::fs::write(&path, CONFIG)?;
    let mut file = PodFile::load(&path)?;
    std::fs::remove_file(&path)?;
    // The environment overrides the file, as `ENGINE_POD_STOP_WAIT_TIME=2s` would.
    file.apply_env([("ENGINE_POD_STOP_WAIT_TIME".to_owned(), "2s".to_owned())])?;
    ensure!(file.pod.stop_wait_time == Some(Duration::from_secs(2)));
    println!("effective config:\n{}", cli::render(&file));

    let pod = registry.build(file)?;
    let report = tokio::runtime::Runtime::new()?.block_on(pod.run());
    ensure!(report.is_success(), "{report:?}");
    let flaky = &report.beans[1];
    ensure!(flaky.label.as_deref() == Some("retried"));
    ensure!(
        flaky.state == BeanState::Finished && flaky.restarts == 2,
        "{flaky:?}"
    );
    ensure!(runs.load(Ordering::SeqCst) == 3);

    // A config error names the bean and the key.
    let bad = PodFile::parse("[[beans]]\ncore = \"flaky\"\nfail_times = \"twice\"\n")?;
    let err = registry.build(bad).expect_err("a string is not a number");
    println!("config error: {err}");
    ensure!(err.to_string().contains("parameter `fail_times`"));
    Ok(())
}
