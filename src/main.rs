//! The `engine` command line.
//!
//! `engine info` prints what this build contains. The default engine (`engine run`, also the
//! default with no subcommand: stdin -> log transport -> log backend) arrives with the threaded
//! engine; until then, running without a subcommand prints the help.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program writes its answers and errors to the terminal"
)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version, the protocol version and the engines compiled into this build.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        None => {
            tracing::info!("the default engine arrives with engine-threads; showing the help");
            let mut command = Cli::command();
            if command.print_long_help().is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
    }
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
