//! The `run` command line, as a library: the `engine` binary's `engine pod run` calls it with
//! the built-in registry, and a program with beans of its own registers them and calls the
//! same function.
//!
//! ```text
//! engine pod run -c pod.toml
//! engine pod run hello:name=Ozzy tcp_server:port=9000
//! engine pod ctl --addr 127.0.0.1:9100 status
//! ```
//!
//! `ctl` drives a running pod through its status bean's control API: `status`, `ready`,
//! `stop ID`, `restart ID`, `signal NAME [--label L | --id N] [--payload JSON]`, `shutdown`;
//! exit 0 when done, 1 when refused or unreachable, 2 for bad options.
//!
//! Settings come from the config file, then `ENGINE_POD_*` environment variables, then the
//! options, each overriding the one before.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::ctl::{CtlArgs, CtlCommand, ctl};

use crate::config::{ConfigError, PodFile, parse_bean_arg, parse_duration};
use crate::registry::Registry;
use crate::state::PodReport;
use crate::token::ControlToken;

/// Options of `run`.
#[derive(Debug, Clone, Default, Args)]
#[non_exhaustive]
pub struct RunArgs {
    /// The config file (TOML: pod settings and `[[beans]]` tables).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The log level or filter (overrides the file and ENGINE_POD_LOG_LEVEL).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Debug mode: print the effective config before starting.
    #[arg(long)]
    pub debug: bool,
    /// How long to wait for beans after SIGINT/SIGTERM before cancelling them (e.g. `10s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stop_wait_time: Option<Duration>,
    /// The token the status bean's control API and views ask for (overrides the file's
    /// `control_token` and ENGINE_POD_CONTROL_TOKEN); needed to bind the status bean beyond
    /// loopback. `--control-token` is another name for it.
    #[arg(long = "token", visible_alias = "control-token", value_name = "TOKEN")]
    pub control_token: Option<String>,
    /// Beans to run after those of the file: `core` or `core:key=value,key=value`.
    #[arg(value_name = "BEAN")]
    pub beans: Vec<String>,
}

/// The pod's command line for a program of its own: `PROGRAM run [OPTIONS] [BEAN]...`.
#[derive(Debug, Parser)]
#[command(version, about = "Runs a pod of beans")]
struct PodCli {
    #[command(subcommand)]
    command: PodCommand,
}

#[derive(Debug, Subcommand)]
enum PodCommand {
    /// Run the beans of a config file and/or of the command line.
    Run(RunArgs),
    /// List the registered beans.
    Beans,
    /// Drive a running pod through its status bean's control API.
    Ctl(CtlArgs),
}

/// The effective config: the file, then the environment, then the options.
///
/// # Errors
///
/// A [`ConfigError`] saying what is wrong and where.
pub fn load(
    args: &RunArgs,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<PodFile, ConfigError> {
    let mut file = match &args.config {
        Some(path) => PodFile::load(path)?,
        None => PodFile::default(),
    };
    file.apply_env(env)?;
    if let Some(level) = &args.log_level {
        file.pod.log_level = level.clone();
    }
    if args.debug {
        file.pod.debug = true;
    }
    if let Some(wait) = args.stop_wait_time {
        file.pod.stop_wait_time = Some(wait);
    }
    if let Some(token) = &args.control_token {
        file.pod.control_token =
            Some(
                ControlToken::new(token.clone()).ok_or_else(|| ConfigError::Override {
                    name: "--token".to_owned(),
                    message: "an empty token protects nothing".to_owned(),
                })?,
            );
    }
    for arg in &args.beans {
        file.beans.push(parse_bean_arg(arg)?);
    }
    if file.beans.is_empty() {
        return Err(ConfigError::Argument {
            arg: String::new(),
            message: "no beans to run: give a config file with [[beans]] tables or bean arguments"
                .to_owned(),
        });
    }
    Ok(file)
}

/// The effective config as TOML, as `--debug` prints it.
pub fn render(file: &PodFile) -> String {
    let mut out = format!(
        "log_level = {:?}\ndebug = {}\n",
        file.pod.log_level, file.pod.debug
    );
    if let Some(wait) = file.pod.stop_wait_time {
        out += &format!(
            "stop_wait_time = \"{}\"\n",
            humantime::format_duration(wait)
        );
    }
    if file.pod.control_token.is_some() {
        // The secret is not printed.
        out += "control_token = \"***\"\n";
    }
    for bean in &file.beans {
        let mut table = bean.params.clone();
        if let Some(token) = table.get_mut("token") {
            // A status bean's token is a secret too.
            *token = "***".into();
        }
        table.insert("core".to_owned(), bean.core.clone().into());
        if let Some(label) = &bean.label {
            table.insert("label".to_owned(), label.clone().into());
        }
        out += "\n[[beans]]\n";
        out += &toml::to_string(&table).unwrap_or_default();
    }
    out
}

/// Runs `run` with parsed options: loads the config, builds the pod from `registry`, runs it
/// on a new tokio runtime with SIGINT/SIGTERM handling, and returns the exit code: 0 when no
/// bean failed, 1 when one did, 2 for a config error. Logging is left to the caller.
pub fn run(registry: &Registry, args: &RunArgs) -> ExitCode {
    match try_run(registry, args) {
        Ok(report) if report.is_success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::from(2)
        }
    }
}

fn try_run(registry: &Registry, args: &RunArgs) -> Result<PodReport, RunError> {
    // `vars_os`: an unrelated variable that is not Unicode must not stop the pod.
    let env = std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)));
    let file = load(args, env)?;
    if file.pod.debug {
        #[allow(clippy::print_stdout, reason = "--debug prints the effective config")]
        {
            println!("{}", render(&file));
        }
    }
    let pod = registry.build(file)?;
    let runtime = tokio::runtime::Runtime::new().map_err(RunError::Runtime)?;
    let stop = engine_core::StopHandle::new();
    #[cfg(unix)]
    let _signals = engine_core::install_signal_handler(&stop).map_err(RunError::Signals)?;
    let report = runtime.block_on(async move { pod.with_stop_handle(&stop).start().wait().await });
    // Tasks of cancelled beans are gone; threads of blocking beans are not waited for.
    runtime.shutdown_background();
    for bean in &report.beans {
        tracing::info!(
            bean = %bean.id,
            label = bean.label.as_deref().unwrap_or(""),
            core = %bean.core,
            state = ?bean.state,
            restarts = bean.restarts,
            "bean ended"
        );
    }
    Ok(report)
}

/// Why `run` could not run.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[cfg(unix)]
    #[error("cannot install the signal handler: {0}")]
    Signals(engine_core::SignalError),
}

/// The whole command line for a program's `main`: parses `PROGRAM run ...` (or `beans`, `ctl`) from
/// the process arguments, sets up logging to standard error at the effective log level, and
/// runs. A program registers its beans, then returns this from `main`:
///
/// ```no_run
/// use engine::pod::{BeanContext, Registry, bean_fn, cli};
///
/// fn main() -> std::process::ExitCode {
///     let mut registry = Registry::with_builtins();
///     registry.register("mine", |_| Ok(bean_fn(|ctx: BeanContext| async move {
///         ctx.stopping().await;
///     })));
///     cli::main(&registry)
/// }
/// ```
pub fn main(registry: &Registry) -> ExitCode {
    let cli = PodCli::parse();
    match cli.command {
        PodCommand::Beans => {
            #[allow(clippy::print_stdout, reason = "the command's answer")]
            for name in registry.names() {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        PodCommand::Run(args) => {
            init_logging(&log_level(&args));
            run(registry, &args)
        }
        PodCommand::Ctl(args) => ctl(&args),
    }
}

/// The log level `run` will use: the option, else `ENGINE_POD_LOG_LEVEL`, else the file's,
/// else `info`; for setting up logging before [`run`].
pub fn log_level(args: &RunArgs) -> String {
    args.log_level
        .clone()
        .or_else(|| std::env::var(format!("{}LOG_LEVEL", crate::config::ENV_PREFIX)).ok())
        .or_else(|| {
            let file = PodFile::load(args.config.as_ref()?).ok()?;
            Some(file.pod.log_level)
        })
        .unwrap_or_else(|| "info".to_owned())
}

/// Logs to standard error at `level` (a level or a `tracing` filter).
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_the_environment_which_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("engine-pod-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pod.toml");
        std::fs::write(
            &path,
            "log_level = \"warn\"\nstop_wait_time = \"9s\"\n[[beans]]\ncore = \"hello\"\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path),
            stop_wait_time: Some(Duration::from_secs(1)),
            beans: vec!["hello:name=you".to_owned()],
            ..RunArgs::default()
        };
        let env = [
            ("ENGINE_POD_LOG_LEVEL".to_owned(), "debug".to_owned()),
            ("ENGINE_POD_STOP_WAIT_TIME".to_owned(), "5s".to_owned()),
        ];
        let file = load(&args, env).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(file.pod.log_level, "debug");
        assert_eq!(file.pod.stop_wait_time, Some(Duration::from_secs(1)));
        assert_eq!(file.beans.len(), 2);
        let text = render(&file);
        assert!(text.contains("stop_wait_time = \"1s\""), "{text}");
        assert!(text.contains("name = \"you\""), "{text}");
        assert!(load(&RunArgs::default(), []).is_err());
    }

    #[test]
    fn the_token_option_is_token_or_control_token() {
        for name in ["--token", "--control-token"] {
            let cli = PodCli::try_parse_from(["pod", "run", name, "s3cret", "hello"]).unwrap();
            let PodCommand::Run(args) = cli.command else {
                panic!("not run");
            };
            let file = load(&args, []).unwrap();
            assert!(file.pod.control_token.unwrap().matches("s3cret"));
        }
        let env = [("ENGINE_POD_CONTROL_TOKEN".to_owned(), "from-env".to_owned())];
        let args = RunArgs {
            beans: vec!["hello".to_owned()],
            ..RunArgs::default()
        };
        let file = load(&args, env).unwrap();
        assert!(file.pod.control_token.unwrap().matches("from-env"));
    }
}
