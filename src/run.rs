//! `engine run`: the default engine, with its source and sink chosen by the options at run
//! time (boxed stages), observed as the options ask.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
#[cfg(all(feature = "threads", feature = "ootb"))]
use engine::core::{BoxBackend, BoxFrontend, box_frontend};

#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Threads of the transport stage.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) transport_threads: usize,
    /// Threads of the backend stage.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) backend_threads: usize,
    /// Capacity of each queue between stages, in items.
    #[arg(long, value_name = "ITEMS")]
    pub(crate) queue_size: Option<usize>,
    /// Log the engine's statistics at this interval (e.g. `500ms`, `10s`, `1m`).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    pub(crate) stats_interval: Option<Duration>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` and a live dashboard at
    /// `http://ADDR/` while the run lasts (e.g. `127.0.0.1:9464`; loopback only unless
    /// `--metrics-public`).
    #[cfg(feature = "observe")]
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Allow `--metrics-addr` beyond loopback.
    #[cfg(feature = "observe")]
    #[arg(long)]
    pub(crate) metrics_public: bool,
    /// Keep serving the final metrics this long after the run ends, for a last scrape.
    #[cfg(feature = "observe")]
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    pub(crate) metrics_linger: Option<Duration>,
    /// Show the progress line on standard error even when it is not a terminal.
    #[cfg(feature = "observe")]
    #[arg(long, overrides_with = "no_progress")]
    pub(crate) progress: bool,
    /// Never show the progress line (by default it shows when standard error is a terminal).
    #[cfg(feature = "observe")]
    #[arg(long, overrides_with = "progress")]
    pub(crate) no_progress: bool,
    /// Read lines from a Redis stream instead of standard input, through a consumer group:
    /// `redis://host:port/<stream>?group=<group>` (group `engine` by default). Runs until
    /// Ctrl-C.
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL", value_parser = parse_stream_address)]
    pub(crate) from: Option<Box<engine::redis::StreamAddress>>,
    /// Append the lines to a Redis stream instead of logging them in the backend:
    /// `redis://host:port/<stream>` (at most 1,000,000 unfinished entries: `?bound=<n>` for n,
    /// `?bound=none` for no bound).
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL", value_parser = parse_stream_address)]
    pub(crate) to: Option<Box<engine::redis::StreamAddress>>,
    /// The key of each line for a keyed `--to` stream (`?partitions=<P>`): `line` (the whole
    /// line) or `field:N` (the N-th whitespace-separated field, from 1; a line with fewer
    /// fields has the empty key).
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "KEY", value_parser = parse_key, default_value = "line")]
    pub(crate) key: LineKey,
}

/// The key of a line, for a keyed stream.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKey {
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
pub(crate) fn parse_stream_address(
    text: &str,
) -> Result<Box<engine::redis::StreamAddress>, String> {
    engine::redis::StreamAddress::parse(text)
        .map(Box::new)
        .map_err(|err| err.to_string())
}

/// Runs the default engine; the exit code is 0 when it completed or stopped gracefully, 130
/// when it was aborted (a second Ctrl-C), 1 when a stage failed.
#[cfg(all(feature = "threads", feature = "ootb"))]
pub(crate) fn run(args: &RunArgs) -> ExitCode {
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

/// The lines' source, chosen by `--from`: standard input, a stream, or a keyed stream.
#[cfg(all(feature = "threads", feature = "ootb"))]
struct Source {
    frontend: BoxFrontend<String>,
    /// Whether lines must keep their order (a keyed stream's partitions).
    ordered: bool,
    /// The acknowledgements still to be sent by a stream source, checked at the end.
    #[cfg(feature = "redis")]
    settlement: Option<engine::redis::Settlement>,
}

#[cfg(all(feature = "threads", feature = "ootb"))]
impl Source {
    fn of(args: &RunArgs) -> Self {
        let _ = args;
        #[cfg(feature = "redis")]
        if let Some(from) = &args.from {
            use engine::redis::{KeyedSource, StreamSource};
            if from.partitions().is_some() {
                let source = KeyedSource::<String>::new((**from).clone());
                return Self {
                    settlement: Some(source.settlement()),
                    frontend: box_frontend(source),
                    ordered: true,
                };
            }
            let source = StreamSource::<String>::new((**from).clone());
            #[cfg(feature = "observe")]
            let _ = SOURCE_SETTLEMENT.set(source.settlement());
            return Self {
                settlement: Some(source.settlement()),
                frontend: box_frontend(source),
                ordered: false,
            };
        }
        Self {
            frontend: box_frontend(engine::ootb::StdinFrontend::new()),
            ordered: false,
            #[cfg(feature = "redis")]
            settlement: None,
        }
    }
}

/// The lines' destination, chosen by `--to`: the log, a stream, or a keyed stream. One per
/// backend thread.
#[cfg(all(feature = "threads", feature = "ootb"))]
fn backend(args: &RunArgs) -> BoxBackend<String> {
    let _ = args;
    #[cfg(feature = "redis")]
    if let Some(to) = &args.to {
        let sink = engine::redis::StreamSink::<String>::new((**to).clone());
        let key = args.key;
        return match to.partitions() {
            Some(partitions) => Box::new(sink.keyed(partitions, move |line: &String| {
                key.of(line).as_bytes().to_vec()
            })),
            None => Box::new(sink),
        };
    }
    Box::new(engine::ootb::LogBackend::<String>::new())
}

/// Builds the engine from the options, runs it under Ctrl-C handling (and observed as the
/// options ask), and returns the report.
#[cfg(all(feature = "threads", feature = "ootb"))]
fn try_run(args: &RunArgs) -> anyhow::Result<engine::core::RunReport> {
    tracing::info!(
        transport_threads = args.transport_threads,
        backend_threads = args.backend_threads,
        "{}",
        describe(args)
    );
    let source = Source::of(args);
    let backend_args = args.clone();
    let mut builder = engine::threads::Engine::builder(source.frontend)
        .transport(engine::ootb::LogTransport::<String>::new())
        .backend_with(move |_| backend(&backend_args))
        .transport_threads(args.transport_threads)
        .backend_threads(args.backend_threads)
        .ordered(source.ordered);
    if let Some(items) = args.queue_size {
        builder = builder.queue_capacity(items);
    }
    if let Some(interval) = args.stats_interval {
        builder = builder.stats_interval(interval);
    }
    let engine = builder.build()?;
    #[cfg(unix)]
    let _signals = engine::core::install_signal_handler(engine.stop_handle())?;
    let report = run_observed(args, engine)?;
    // The engine waits for a stream source's cleanup after a graceful stop, so the
    // acknowledgements are sent by now, unless the run was aborted or the drain timed out.
    #[cfg(feature = "redis")]
    if let Some(outstanding) = source.settlement.map(|s| s.outstanding())
        && outstanding != 0
    {
        tracing::warn!(
            outstanding,
            "some acknowledgements were not sent; those lines will be delivered again"
        );
    }
    Ok(report)
}

/// The engine `engine run` builds: every choice is made at run time.
#[cfg(all(feature = "threads", feature = "ootb"))]
type RunEngine = engine::threads::Engine<
    BoxFrontend<String>,
    engine::threads::Present<engine::ootb::LogTransport<String>>,
    engine::threads::Present<BoxBackend<String>>,
>;

/// Runs a built engine, with the metrics server and the progress line the options ask for.
#[cfg(all(feature = "threads", feature = "ootb", feature = "observe"))]
fn run_observed(
    args: &RunArgs,
    engine: RunEngine,
) -> Result<engine::core::RunReport, anyhow::Error> {
    let handle = engine.spawn()?;
    let observed = match crate::observe::Observed::start(&observe_options(args), &handle) {
        Ok(observed) => observed,
        Err(err) => {
            handle.stop_now();
            let _ = handle.join();
            return Err(err);
        }
    };
    let report = handle.join();
    observed.finish();
    Ok(report?)
}

/// Runs a built engine.
#[cfg(all(feature = "threads", feature = "ootb", not(feature = "observe")))]
fn run_observed(
    args: &RunArgs,
    engine: RunEngine,
) -> Result<engine::core::RunReport, anyhow::Error> {
    let _ = args;
    Ok(engine.run()?)
}

/// The counts of `--from`'s source, for the metrics.
#[cfg(all(feature = "redis", feature = "observe"))]
static SOURCE_SETTLEMENT: std::sync::OnceLock<engine::redis::Settlement> =
    std::sync::OnceLock::new();

/// What `engine run` shows while it runs.
#[cfg(all(feature = "threads", feature = "ootb", feature = "observe"))]
fn observe_options(args: &RunArgs) -> crate::observe::Options {
    crate::observe::Options {
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
pub(crate) fn run(_args: &RunArgs) -> ExitCode {
    eprintln!(
        "error: this build has no default engine (it needs the `threads` and `ootb` features)"
    );
    ExitCode::from(2)
}
