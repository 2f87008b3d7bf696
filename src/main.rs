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

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[cfg(all(feature = "observe", feature = "ootb"))]
mod observe;

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
        command: DlqCommand,
    },
}

/// `engine dlq ...`: the dead-letter stream of `redis://host:port/<stream>` (`<stream>:dead`,
/// or the address's `dead=`).
#[cfg(feature = "redis")]
#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List the dead letters, oldest first: id, original id, deliveries, reason.
    List {
        /// The stream: `redis://host:port/<stream>`.
        #[arg(value_name = "URL", value_parser = parse_stream_address)]
        address: Box<engine::redis::StreamAddress>,
    },
    /// Show one dead letter in full, with its line.
    Show {
        /// The dead letter's id (the first column of `list`).
        id: engine::redis::EntryId,
        /// The stream: `redis://host:port/<stream>`.
        #[arg(value_name = "URL", value_parser = parse_stream_address)]
        address: Box<engine::redis::StreamAddress>,
    },
    /// Move dead letters back to the stream, as new entries, for another try:
    /// `replay --all URL` or `replay ID... URL`.
    Replay {
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// The dead letters' ids (the first column of `list`), unless `--all`, then the
        /// stream: `redis://host:port/<stream>`.
        #[arg(value_name = "ID... URL", required = true, num_args = 1..)]
        targets: Vec<String>,
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

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Threads of the transport stage.
    #[arg(long, default_value_t = 1, value_name = "N")]
    transport_threads: usize,
    /// Threads of the backend stage.
    #[arg(long, default_value_t = 1, value_name = "N")]
    backend_threads: usize,
    /// Capacity of each queue between stages, in items.
    #[arg(long, value_name = "ITEMS")]
    queue_size: Option<usize>,
    /// Log the engine's statistics at this interval (e.g. `500ms`, `10s`, `1m`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    stats_interval: Option<Duration>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` and a live dashboard at
    /// `http://ADDR/` while the run lasts (e.g. `127.0.0.1:9464`; loopback only unless
    /// `--metrics-public`).
    #[cfg(feature = "observe")]
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Allow `--metrics-addr` beyond loopback.
    #[cfg(feature = "observe")]
    #[arg(long)]
    metrics_public: bool,
    /// Keep serving the final metrics this long after the run ends, for a last scrape.
    #[cfg(feature = "observe")]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    metrics_linger: Option<Duration>,
    /// Show the progress line on standard error even when it is not a terminal.
    #[cfg(feature = "observe")]
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// Never show the progress line (by default it shows when standard error is a terminal).
    #[cfg(feature = "observe")]
    #[arg(long, overrides_with = "progress")]
    no_progress: bool,
    /// Read lines from a Redis stream instead of standard input, through a consumer group:
    /// `redis://host:port/<stream>?group=<group>` (group `engine` by default). Runs until
    /// Ctrl-C.
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL", value_parser = parse_stream_address)]
    from: Option<Box<engine::redis::StreamAddress>>,
    /// Append the lines to a Redis stream instead of logging them in the backend:
    /// `redis://host:port/<stream>` (at most 1,000,000 unfinished entries: `?bound=<n>` for n,
    /// `?bound=none` for no bound).
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL", value_parser = parse_stream_address)]
    to: Option<Box<engine::redis::StreamAddress>>,
    /// The key of each line for a keyed `--to` stream (`?partitions=<P>`): `line` (the whole
    /// line) or `field:N` (the N-th whitespace-separated field, from 1; a line with fewer
    /// fields has the empty key).
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "KEY", value_parser = parse_key, default_value = "line")]
    key: LineKey,
}

/// The key of a line, for a keyed stream.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKey {
    /// The whole line.
    Line,
    /// The N-th whitespace-separated field (0-based here).
    Field(usize),
}

#[cfg(feature = "redis")]
impl LineKey {
    fn of(self, line: &str) -> &str {
        match self {
            Self::Line => line,
            Self::Field(n) => line.split_whitespace().nth(n).unwrap_or(""),
        }
    }
}

/// Parses `--key`; an error is a usage error (exit code 2).
#[cfg(feature = "redis")]
fn parse_key(text: &str) -> Result<LineKey, String> {
    match text.split_once(':') {
        None if text == "line" => Ok(LineKey::Line),
        Some(("field", n)) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(LineKey::Field(n - 1)),
            _ => Err(format!("`field:N` needs a field number from 1, not {n:?}")),
        },
        _ => Err(format!("expected `line` or `field:N`, not {text:?}")),
    }
}

/// Parses `--from`/`--to`; an error is a usage error (exit code 2).
#[cfg(feature = "redis")]
fn parse_stream_address(text: &str) -> Result<Box<engine::redis::StreamAddress>, String> {
    engine::redis::StreamAddress::parse(text)
        .map(Box::new)
        .map_err(|err| err.to_string())
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
        Some(Command::Run(args)) => run(&args),
        #[cfg(feature = "observe")]
        Some(Command::Top {
            addr,
            interval,
            once,
        }) => match engine::observe::top::run(&addr, interval, once) {
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
        Some(Command::Dlq { command }) => match dlq(&command) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "pod")]
        Some(Command::Pod { .. }) => unreachable!("handled before logging is set up"),
        None => run(&cli.run),
    }
}

/// Runs the default engine; the exit code is 0 when it completed or stopped gracefully, 130
/// when it was aborted (a second Ctrl-C), 1 when a stage failed.
#[cfg(all(feature = "threads", feature = "ootb"))]
fn run(args: &RunArgs) -> ExitCode {
    #[cfg(feature = "observe")]
    if let Some(addr) = args.metrics_addr
        && !addr.ip().is_loopback()
        && !args.metrics_public
    {
        eprintln!(
            "error: --metrics-addr {addr} is not a loopback address; add --metrics-public to serve metrics beyond this machine"
        );
        return ExitCode::from(2);
    }
    match try_run(args) {
        Ok(report) => {
            eprintln!("{report}");
            if report.end == engine::core::RunEnd::Aborted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            let report = err
                .downcast_ref::<engine::threads::EngineError>()
                .and_then(engine::threads::EngineError::report);
            if let Some(report) = report {
                eprintln!("{report}");
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the engine from a frontend and a backend (the transport is always the log
/// transport), applies the options, runs it under Ctrl-C handling, and returns the report.
#[cfg(all(feature = "threads", feature = "ootb"))]
macro_rules! run_engine {
    ($args:expr, $frontend:expr, $backend:expr) => {
        run_engine!($args, $frontend, $backend, false)
    };
    ($args:expr, $frontend:expr, $backend:expr, $ordered:expr) => {{
        let args: &RunArgs = $args;
        let mut builder = engine::threads::Engine::builder($frontend)
            .transport(engine::ootb::LogTransport::<String>::new())
            .backend($backend)
            .transport_threads(args.transport_threads)
            .backend_threads(args.backend_threads)
            .ordered($ordered);
        if let Some(items) = args.queue_size {
            builder = builder.queue_capacity(items);
        }
        if let Some(interval) = args.stats_interval {
            builder = builder.stats_interval(interval);
        }
        let engine = builder.build()?;
        #[cfg(unix)]
        let _signals = engine::core::install_signal_handler(engine.stop_handle())?;
        run_observed!(args, engine)
    }};
}

/// Runs a built engine, with the metrics server and the progress line the options ask for.
#[cfg(all(feature = "threads", feature = "ootb", feature = "observe"))]
macro_rules! run_observed {
    ($args:expr, $engine:expr) => {{
        let args: &RunArgs = $args;
        let handle = $engine.spawn()?;
        let observed = match observe::Observed::start(&observe_options(args), &handle) {
            Ok(observed) => observed,
            Err(err) => {
                handle.stop_now();
                let _ = handle.join();
                return Err(err);
            }
        };
        let report = handle.join();
        observed.finish();
        report
    }};
}

/// Runs a built engine.
#[cfg(all(feature = "threads", feature = "ootb", not(feature = "observe")))]
macro_rules! run_observed {
    ($args:expr, $engine:expr) => {{
        let _ = $args;
        $engine.run()
    }};
}

/// The counts of `--from`'s source, for the metrics.
#[cfg(all(feature = "redis", feature = "observe"))]
static SOURCE_SETTLEMENT: std::sync::OnceLock<engine::redis::Settlement> =
    std::sync::OnceLock::new();

/// What `engine run` shows while it runs.
#[cfg(all(feature = "threads", feature = "ootb", feature = "observe"))]
fn observe_options(args: &RunArgs) -> observe::Options {
    observe::Options {
        metrics_addr: args.metrics_addr,
        metrics_public: args.metrics_public,
        metrics_linger: args.metrics_linger.unwrap_or_default(),
        progress: if args.progress {
            Some(true)
        } else if args.no_progress {
            Some(false)
        } else {
            None
        },
        #[cfg(feature = "redis")]
        stdin: args.from.is_none(),
        #[cfg(feature = "redis")]
        streams: args
            .from
            .iter()
            .chain(&args.to)
            .map(|address| (**address).clone())
            .collect(),
        #[cfg(feature = "redis")]
        source: SOURCE_SETTLEMENT.get().cloned(),
        #[cfg(not(feature = "redis"))]
        stdin: true,
    }
}

#[cfg(all(feature = "threads", feature = "ootb"))]
fn try_run(args: &RunArgs) -> anyhow::Result<engine::core::RunReport> {
    tracing::info!(
        transport_threads = args.transport_threads,
        backend_threads = args.backend_threads,
        "{}",
        describe(args)
    );
    #[cfg(feature = "redis")]
    {
        use engine::redis::{KeyedSource, StreamSink, StreamSource};
        let log = || engine::ootb::LogBackend::<String>::new();
        let stdin = engine::ootb::StdinFrontend::new;
        let key = args.key;
        let sink = |to: &engine::redis::StreamAddress| {
            let sink = StreamSink::<String>::new(to.clone());
            match to.partitions() {
                Some(partitions) => sink.keyed(partitions, move |line: &String| {
                    key.of(line).as_bytes().to_vec()
                }),
                None => sink,
            }
        };
        let report = match (&args.from, &args.to) {
            (None, None) => run_engine!(args, stdin(), log()),
            (None, Some(to)) => run_engine!(args, stdin(), sink(to)),
            (Some(from), to) if from.partitions().is_some() => {
                // Lines of a key reach the backend in the order of their partition.
                let source = KeyedSource::<String>::new((**from).clone());
                let settlement = source.settlement();
                let report = match to {
                    None => run_engine!(args, source, log(), true),
                    Some(to) => run_engine!(args, source, sink(to), true),
                };
                if settlement.outstanding() != 0 {
                    tracing::warn!(
                        outstanding = settlement.outstanding(),
                        "some acknowledgements were not sent; those lines will be delivered again"
                    );
                }
                report
            }
            (Some(from), to) => {
                let source = StreamSource::<String>::new((**from).clone());
                let settlement = source.settlement();
                #[cfg(feature = "observe")]
                let _ = SOURCE_SETTLEMENT.set(settlement.clone());
                let report = match to {
                    None => run_engine!(args, source, log()),
                    Some(to) => run_engine!(args, source, sink(to)),
                };
                // The engine waits for the source's cleanup after a graceful stop, so the
                // acknowledgements are sent by now, unless the run was aborted or the drain
                // timed out.
                let outstanding = settlement.outstanding();
                if outstanding != 0 {
                    tracing::warn!(
                        outstanding,
                        "some acknowledgements were not sent; those lines will be delivered again"
                    );
                }
                report
            }
        };
        Ok(report?)
    }
    #[cfg(not(feature = "redis"))]
    Ok(run_engine!(
        args,
        engine::ootb::StdinFrontend::new(),
        engine::ootb::LogBackend::<String>::new()
    )?)
}

/// Where the lines come from and go to, for the start-up log line.
#[cfg(all(feature = "threads", feature = "ootb"))]
fn describe(args: &RunArgs) -> String {
    #[cfg(feature = "redis")]
    {
        let from = args.from.as_ref().map_or_else(
            || "standard input".to_owned(),
            |a| format!("stream {a} (group {})", a.group()),
        );
        let to = args
            .to
            .as_ref()
            .map_or_else(|| "the log".to_owned(), |a| format!("stream {a}"));
        format!("reading lines from {from}, writing them to {to}")
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = args;
        "reading lines from standard input".to_owned()
    }
}

#[cfg(not(all(feature = "threads", feature = "ootb")))]
fn run(_args: &RunArgs) -> ExitCode {
    eprintln!(
        "error: this build has no default engine (it needs the `threads` and `ootb` features)"
    );
    ExitCode::from(2)
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

/// `engine dlq list|show|replay`: a thin layer over [`engine::redis::DeadLetters`]. Lists
/// and answers go to standard output, counts to standard error; 1 when an id is not found.
#[cfg(feature = "redis")]
fn dlq(command: &DlqCommand) -> anyhow::Result<ExitCode> {
    use engine::redis::DeadLetters;
    match command {
        DlqCommand::List { address } => {
            let mut letters = DeadLetters::connect(address)?;
            let list = letters.list()?;
            for letter in &list {
                let original = letter
                    .original_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string());
                let deliveries = letter
                    .deliveries
                    .map_or_else(|| "-".to_owned(), |n| n.to_string());
                println!(
                    "{}\t{original}\tdeliveries={deliveries}\t{}",
                    letter.id, letter.reason
                );
            }
            eprintln!(
                "{} dead letters in {}",
                list.len(),
                letters.dead_letter_stream()
            );
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, address } => {
            let mut letters = DeadLetters::connect(address)?;
            let Some(letter) = letters.get(*id)? else {
                eprintln!(
                    "error: no dead letter {id} in {}",
                    letters.dead_letter_stream()
                );
                return Ok(ExitCode::FAILURE);
            };
            let or_dash = |text: Option<String>| text.unwrap_or_else(|| "-".to_owned());
            println!("id: {}", letter.id);
            println!("stream: {}", or_dash(letter.stream.clone()));
            println!(
                "original id: {}",
                or_dash(letter.original_id.map(|id| id.to_string()))
            );
            println!(
                "deliveries: {}",
                or_dash(letter.deliveries.map(|n| n.to_string()))
            );
            println!("protocol version: {}", or_dash(letter.version.clone()));
            println!("reason: {}", letter.reason);
            match &letter.payload {
                None => println!("line: - (no item)"),
                Some(bytes) => match engine::core::protocol::from_bytes::<String>(bytes) {
                    Ok(line) => println!("line: {line:?}"),
                    Err(_) => {
                        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                        println!("item: {} bytes, not a line: {hex}", bytes.len());
                    }
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { all, targets } => {
            let Some((url, ids)) = targets.split_last() else {
                unreachable!("clap requires one value at least");
            };
            let usage = |message: String| {
                eprintln!("error: {message}");
                Ok(ExitCode::from(2))
            };
            let address = match parse_stream_address(url) {
                Ok(address) => address,
                Err(err) => return usage(err),
            };
            let ids = match ids
                .iter()
                .map(|id| {
                    id.parse::<engine::redis::EntryId>()
                        .map_err(|e| format!("{id:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(ids) => ids,
                Err(err) => return usage(err),
            };
            match (*all, ids.is_empty()) {
                (true, false) => return usage("give --all or ids, not both".to_owned()),
                (false, true) => return usage("give the ids to replay, or --all".to_owned()),
                _ => {}
            }
            let mut letters = DeadLetters::connect(&address)?;
            let replayed = if *all {
                letters.replay_all()?
            } else {
                letters.replay(&ids)?
            };
            for moved in &replayed {
                println!("{} -> {}", moved.dead, moved.new);
            }
            eprintln!(
                "replayed {} dead letters from {} to {}",
                replayed.len(),
                letters.dead_letter_stream(),
                letters.stream()
            );
            let missing: Vec<String> = ids
                .iter()
                .filter(|id| !replayed.iter().any(|moved| moved.dead == **id))
                .map(ToString::to_string)
                .collect();
            if missing.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "error: not replayed (no such dead letter, or no item in it): {}",
                    missing.join(", ")
                );
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a number of seconds such as `1.5`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 1m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} is not a positive duration"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|err| err.to_string())
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
