//! The pod's quick start: a plain async function is a bean, and keys of its config (here
//! `name = "Ozzy"`, as the origin's `os-aio-pod run example.helloworld:hi="Ozzy"`) are its
//! parameters. The same bean runs from the command line with
//! `cargo run -- pod run hello:name=Ozzy` (it is built in).
//!
//! Run with `cargo run --example pod_hello`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::sync::{Arc, Mutex};

use anyhow::{Result, ensure};
use engine::pod::{BeanContext, PodFile, Registry, bean_fn};
use serde::Deserialize;

/// The bean's parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    name: String,
}

fn main() -> Result<()> {
    let greetings = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    {
        let greetings = Arc::clone(&greetings);
        registry.register("helloworld", move |_config| {
            let greetings = Arc::clone(&greetings);
            Ok(bean_fn(move |ctx: BeanContext| {
                let greetings = Arc::clone(&greetings);
                async move {
                    let params: Hello = ctx.params()?;
                    let line = format!("hello world! bean {} says hi to {}", ctx.id(), params.name);
                    println!("{line}");
                    greetings.lock().expect("not poisoned").push(line);
                    Ok::<(), engine::core::StageError>(())
                }
            }))
        });
    }
    let file = PodFile::parse("[[beans]]\ncore = \"helloworld\"\nname = \"Ozzy\"\n")?;
    let pod = registry.build(file)?;
    let report = tokio::runtime::Runtime::new()?.block_on(pod.run());
    ensure!(report.is_success(), "{report:?}");
    ensure!(
        *greetings.lock().expect("not poisoned") == ["hello world! bean 1 says hi to Ozzy"],
        "unexpected greetings"
    );
    Ok(())
}
