//! The `engine` command line.
//!
//! `engine run` (also the default with no subcommand) runs the default engine: lines from
//! standard input -> log transport -> log backend, and prints the run report to standard error
//! at the end. Ctrl-C stops gracefully (what was read drains), a second Ctrl-C stops at once.
//! `engine info` prints what this build contains.
//!
//! With the `redis` feature, `--from redis://host:port/<stream>?group=<group>` reads lines from
//! a Redis stream (through a consumer group) instead of standard input, and `--to
//! redis://host:port/<stream>` appends them to a stream instead of logging them. A bad address
//! is a usage error (exit code 2). With `?partitions=<P>`, the stream is keyed: `--to` sends
//! each line to the partition of its key (`--key line`, the default, or `--key field:N`, the
//! N-th whitespace-separated field), and `--from` reads with a keyed source (each partition
//! owned by one consumer at a time, lines of a key in order; ordered mode is on, so
//! `--backend-threads` must be 1). `engine dlq list|show ID|replay [--all|ID...]
//! redis://host:port/<stream>` lists the dead letters of a stream, shows one, and moves chosen
//! ones back to the stream for another try.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program writes its answers and errors to the terminal"
)]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "redis")]
mod dlq;
#[cfg(all(feature = "observe", feature = "ootb"))]
mod observe;
mod run;

use run::RunArgs;

/// Staged, concurrent data processing: frontend -> transport -> backend, on threads, in worker
/// processes, or in a pod of beans.
#[derive(Debug, Parser)]
#[command(name = "engine", version, propagate_version = true)]
struct Cli {
    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter
    /// such as `engine=debug`). Overrides `RUST_LOG`.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,

    /// Options of `run`, which is also what runs without a subcommand.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the default engine: stdin lines -> log transport -> log backend (the default).
    Run(RunArgs),
    /// Print the version, the protocol version and the engines compiled into this build.
    Info,
    /// A live table of a running engine's or pod's stages and beans, read from its metrics
    /// endpoint (`engine run --metrics-addr`, or a pod's status server); `q` or Ctrl-C quits.
    #[cfg(feature = "observe")]
    Top {
        /// The metrics endpoint: `host:port` (e.g. `127.0.0.1:9464`) or an `http://` URL.
        addr: String,
        /// How often the table refreshes.
        #[arg(long, default_value = "250ms", value_parser = parse_duration)]
        interval: Duration,
        /// Print the table once and exit (also what happens when stdout is not a terminal).
        #[arg(long)]
        once: bool,
        /// The pod's control token, if its status server asks for one.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "ENGINE_POD_CONTROL_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
    },
    /// The bean pod: run beans from a config file or the command line.
    #[cfg(feature = "pod")]
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// The dead letters of a Redis stream: list them, show one, move chosen ones back.
    #[cfg(feature = "redis")]
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
}

#[cfg(feature = "pod")]
#[derive(Debug, Subcommand)]
enum PodCommand {
    /// Run the beans of a config file (`-c pod.toml`) and/or of the command line
    /// (`hello:name=Ozzy sleep:duration=10s`).
    Run(engine::pod::cli::RunArgs),
    /// List the built-in beans.
    Beans,
    /// Drive a running pod through its status bean: `status`, `stop ID`, `restart ID`,
    /// `signal NAME [--label L]`, `shutdown`.
    Ctl(engine::pod::cli::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "pod")]
    if let Some(Command::Pod { command }) = &cli.command {
        return pod(command, cli.log_level.as_deref());
    }
    if let Err(err) = init_logging(cli.log_level.as_deref()) {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    match cli.command {
        Some(Command::Info) => {
            println!("engine {}", env!("CARGO_PKG_VERSION"));
            println!(
                "protocol version {}",
                engine::core::protocol::PROTOCOL_VERSION
            );
            println!("features: {}", engine::enabled_features().join(", "));
            ExitCode::SUCCESS
        }
        Some(Command::Run(args)) => run::run(&args),
        #[cfg(feature = "observe")]
        Some(Command::Top {
            addr,
            interval,
            once,
            token,
        }) => match engine::observe::top::run(&addr, token.as_deref(), interval, once) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err @ engine::observe::TopError::BadAddress(_)) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "redis")]
        Some(Command::Dlq { command }) => match dlq::dlq(&command) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "pod")]
        Some(Command::Pod { .. }) => unreachable!("handled before logging is set up"),
        None => run::run(&cli.run),
    }
}

/// `engine pod ...`: the pod's own command line, with the built-in beans. Logging follows the
/// pod's effective log level (the option, the environment, or the config file).
#[cfg(feature = "pod")]
fn pod(command: &PodCommand, global_level: Option<&str>) -> ExitCode {
    let registry = engine::pod::Registry::with_builtins();
    match command {
        PodCommand::Beans => {
            for name in registry.names() {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        PodCommand::Run(args) => {
            let mut args = args.clone();
            if args.log_level.is_none() {
                args.log_level = global_level.map(str::to_owned);
            }
            engine::pod::cli::init_logging(&engine::pod::cli::log_level(&args));
            engine::pod::cli::run(&registry, &args)
        }
        PodCommand::Ctl(args) => engine::pod::cli::ctl(args),
    }
}

/// Parses a duration: `500ms`, `10s`, `1m 30s` (humantime's forms), or a number of seconds
/// such as `1.5`. Zero is refused: every duration option is an interval or a wait.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<f64>() {
        Ok(seconds) => Duration::try_from_secs_f64(seconds).map_err(|err| err.to_string())?,
        Err(_) => humantime::parse_duration(text)
            .map_err(|err| format!("{text:?} is not a duration such as 500ms, 10s or 1m: {err}"))?,
    };
    if duration.is_zero() {
        return Err(format!("{text:?} is not a positive duration"));
    }
    Ok(duration)
}

/// Logs to standard error, filtered by `--log-level`, else `RUST_LOG`, else `info`.
fn init_logging(level: Option<&str>) -> anyhow::Result<()> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|err| anyhow::anyhow!("invalid --log-level {level:?}: {err}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|err| anyhow::anyhow!("cannot set up logging: {err}"))
}
