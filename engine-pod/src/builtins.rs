//! The registration of the built-in beans under their config names: `Registry::with_builtins`.

use serde::Deserialize;

use crate::bean::bean_fn;
use crate::context::BeanContext;
use crate::registry::Registry;

/// Parameters of the `hello` bean.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HelloParams {
    /// Who to greet (default "world").
    #[serde(default = "world")]
    name: String,
    /// Wait for the pod's stop before ending (default false).
    #[serde(default)]
    wait: bool,
}

fn world() -> String {
    "world".to_owned()
}

/// Parameters of the `sleep` bean.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepParams {
    /// How long to sleep (default "1h").
    #[serde(default = "an_hour", with = "humantime_serde")]
    duration: std::time::Duration,
    /// Ignore the pod's stop request, to try the stop deadline (default false).
    #[serde(default)]
    ignore_stop: bool,
}

fn an_hour() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

/// Parameters of the `engine` bean.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EngineParams {
    transport_threads: usize,
    backend_threads: usize,
    queue_size: Option<usize>,
}

impl Default for EngineParams {
    fn default() -> Self {
        Self {
            transport_threads: 1,
            backend_threads: 1,
            queue_size: None,
        }
    }
}

/// Registers every built-in bean.
impl Registry {
    /// A registry holding the built-in beans (see [`builtin_names`](Self::builtin_names)).
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        register(&mut registry);
        registry
    }

    /// The names of the built-in beans.
    pub fn builtin_names() -> Vec<String> {
        Self::with_builtins().names()
    }
}

/// Registers every built-in bean.
fn register(registry: &mut Registry) {
    // A TCP server echoing what each connection sends (host, port, backlog).
    registry.register_typed("tcp_server", |_: crate::builtin::TcpServerParams| {
        crate::builtin::TcpServer::echo()
    });
    // Lines of standard input, logged, and sent as a named signal if `signal` is set.
    registry.register_typed("stdin", |_: crate::builtin::StdinParams| {
        crate::builtin::StdinReader::new()
    });
    // The status of every bean as JSON over HTTP (`GET /status`), `/ready`, the control API.
    registry.register("status", |config| {
        // Checked here so that a bad parameter fails before anything starts.
        crate::config::params::<crate::status::StatusParams>(&config.core, &config.params)?;
        Ok(crate::status::StatusServer::new())
    });
    // Nothing listens beyond loopback without a token: the pod does not start at all.
    registry.check_with_pod("status", |config, pod| {
        let params =
            crate::config::params::<crate::status::StatusParams>(&config.core, &config.params)
                .map_err(|err| err.to_string())?;
        params
            .check_bind(pod.control_token.as_ref())
            .map_err(|err| err.to_string())
    });
    // The default threaded engine (stdin -> log transport -> log backend) as a bean.
    registry.register_typed("engine", |params: EngineParams| {
        crate::engine_bean::engine_bean(move |_ctx| {
            let mut builder = engine_threads::Engine::builder(engine_ootb::StdinFrontend::new())
                .transport(engine_ootb::LogTransport::<String>::new())
                .backend(engine_ootb::LogBackend::<String>::new())
                .transport_threads(params.transport_threads)
                .backend_threads(params.backend_threads);
            if let Some(items) = params.queue_size {
                builder = builder.queue_capacity(items);
            }
            builder
        })
    });
    // Sleeps, ending early on a stop unless told to ignore it: for trying stop deadlines and
    // restart policies from a config file.
    registry.register_typed("sleep", |params: SleepParams| {
        bean_fn(move |ctx: BeanContext| {
            let (duration, ignore_stop) = (params.duration, params.ignore_stop);
            async move {
                ctx.on_signal("stop", {
                    let id = ctx.id();
                    move |_| tracing::info!(bean = %id, ignore_stop, "sleep bean got the stop signal")
                });
                if ignore_stop {
                    tokio::time::sleep(duration).await;
                } else {
                    tokio::select! {
                        () = tokio::time::sleep(duration) => {}
                        () = ctx.stopping() => {}
                    }
                }
            }
        })
    });
    // The origin's quick-start example: greets, and with `wait = true` stays up until stopped.
    registry.register_typed("hello", |params: HelloParams| {
        bean_fn(move |ctx: BeanContext| {
            let (name, wait) = (params.name.clone(), params.wait);
            async move {
                tracing::info!(bean = %ctx.id(), "hello {name}!");
                if wait {
                    ctx.stopping().await;
                }
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use crate::config::{BeanConfig, parse_bean_arg};
    use crate::registry::Registry;

    #[test]
    fn every_builtin_name_resolves() {
        let registry = Registry::with_builtins();
        let names = Registry::builtin_names();
        assert!(names.contains(&"hello".to_owned()), "{names:?}");
        for (i, name) in names.iter().enumerate() {
            registry
                .make(i + 1, &BeanConfig::new(name.clone()))
                .unwrap_or_else(|err| panic!("built-in {name:?} does not resolve: {err}"));
        }
        let err = registry
            .make(1, &parse_bean_arg("helo").unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown core \"helo\"; registered: "),
            "{err}"
        );
    }
}
