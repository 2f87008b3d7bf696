//! A line reader bean: reads lines from stdin (or any buffered reader), logs them, and can
//! send each one to other beans as a named signal.

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};

use engine_core::plumbing::lock;
use engine_core::{Frontend, StageContext, StageError, StageKind};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::mpsc;

use crate::bean::{Bean, BeanFuture};
use crate::config::ConfigError;
use crate::context::BeanContext;
use crate::state::Target;

/// How many lines the stdin thread reads ahead of the bean.
const STDIN_LINES_AHEAD: usize = 64;

/// The parameters of a [`StdinReader`], read from the bean's config at each start.
///
/// ```toml
/// [[beans]]
/// core = "stdin"
/// signal = "line"   # send each line as the signal "line" (default: only log it)
/// label = "sink"    # to the beans labelled "sink" (default: to every bean)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct StdinParams {
    /// The signal to send each line as; its payload is the line as a JSON string.
    pub signal: Option<String>,
    /// The label of the beans to send it to; every bean when unset. It needs `signal`.
    pub label: Option<String>,
}

/// Why a [`StdinReader`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StdinError {
    /// Reading the input failed.
    #[error("cannot read the input")]
    Read(#[source] io::Error),
    /// The thread reading the process's stdin could not be started.
    #[error("cannot start the thread reading stdin")]
    Thread(#[source] io::Error),
}

/// A reader given by value, with the bytes of a line it had begun when a run ended.
struct Held {
    reader: Box<dyn AsyncBufRead + Send + Unpin>,
    partial: Vec<u8>,
}

/// Where the lines come from.
enum Source {
    /// The process's stdin, read by a thread of its own.
    Stdin,
    /// A reader given by value; `None` once a run has read it to its end.
    Reader(Arc<std::sync::Mutex<Option<Held>>>),
}

/// A bean reading lines, with [`StdinParams`] as parameters.
///
/// Each line (without its `\n` or `\r\n`) is logged at info level with the bean's id and, if
/// `signal` is set, sent as that signal to the beans labelled `label` (or to every bean),
/// with the line as a JSON string payload. Bytes that are not UTF-8 are replaced with
/// U+FFFD, so every line is sent. A line is held whole in memory until its end.
///
/// The bean ends at the end of the input, or when it is asked to stop.
///
/// [`StdinReader::new`] reads the process's stdin on a thread of its own (a read of stdin
/// cannot be cancelled, so after a stop the thread waits for one more line or the end of the
/// input before noticing). The process has one stdin: its lines go to whichever stdin bean
/// runs, one at a time, and a restarted bean reads on where the last run stopped.
///
/// [`StdinReader::from_reader`] reads any buffered reader. A run that reaches its end uses it
/// up: a later start (a restart) ends at once with `Ok`. A run that ends on a stop or an
/// error keeps the reader for the next start.
///
/// ```
/// use engine::pod::{BeanSpec, Pod, PodConfig, StdinReader};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let input: &[u8] = b"first line\nsecond line\n";
/// let mut pod = Pod::new(PodConfig::default());
/// pod.add(BeanSpec::new("stdin", StdinReader::from_reader(input)));
/// assert!(pod.start().wait().await.is_success());
/// # });
/// ```
pub struct StdinReader {
    source: Source,
}

impl fmt::Debug for StdinReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Stdin => "stdin",
            Source::Reader(_) => "reader",
        };
        f.debug_struct("StdinReader")
            .field("source", &source)
            .finish()
    }
}

impl Default for StdinReader {
    fn default() -> Self {
        Self::new()
    }
}

impl StdinReader {
    /// A bean reading the process's stdin.
    pub fn new() -> Self {
        Self {
            source: Source::Stdin,
        }
    }

    /// A bean reading `reader` instead of stdin.
    pub fn from_reader(reader: impl AsyncBufRead + Send + Unpin + 'static) -> Self {
        let held = Held {
            reader: Box::new(reader),
            partial: Vec::new(),
        };
        Self {
            source: Source::Reader(Arc::new(std::sync::Mutex::new(Some(held)))),
        }
    }
}

impl Bean for StdinReader {
    fn start(&self, ctx: BeanContext) -> BeanFuture {
        let slot = match &self.source {
            Source::Stdin => None,
            Source::Reader(slot) => Some(Arc::clone(slot)),
        };
        Box::pin(async move {
            let params: StdinParams = ctx.params()?;
            let out = Output::new(&ctx, params)?;
            match slot {
                None => read_stdin(&ctx, &out).await?,
                Some(slot) => read_held(&ctx, &out, &slot).await?,
            }
            Ok(())
        })
    }
}

/// What to do with each line.
struct Output {
    signal: Option<(String, Target)>,
}

impl Output {
    fn new(ctx: &BeanContext, params: StdinParams) -> Result<Self, ConfigError> {
        let signal = match (params.signal, params.label) {
            (Some(name), label) => Some((name, label.map_or(Target::All, Target::Label))),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::Params {
                    core: ctx.core().to_owned(),
                    key: "label".to_owned(),
                    message: "a target label needs `signal`".to_owned(),
                });
            }
        };
        Ok(Self { signal })
    }

    /// Logs a line (as read, with its end of line if any) and sends it on.
    fn bytes(&self, ctx: &BeanContext, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        self.line(ctx, String::from_utf8_lossy(bytes).into_owned());
    }

    /// Logs a line (without its end of line) and sends it on.
    fn line(&self, ctx: &BeanContext, line: String) {
        tracing::info!(bean = %ctx.id(), %line, "read a line");
        if let Some((name, target)) = &self.signal {
            let handled = ctx.send_signal(name, target.clone(), serde_json::Value::String(line));
            if handled == 0 {
                tracing::debug!(bean = %ctx.id(), signal = %name, "no bean handles the signal");
            }
        }
    }
}

/// Reads a reader given by value until its end or a stop.
async fn read_held(
    ctx: &BeanContext,
    out: &Output,
    slot: &std::sync::Mutex<Option<Held>>,
) -> Result<(), StdinError> {
    let taken = lock(slot).take();
    let Some(mut held) = taken else {
        tracing::debug!(bean = %ctx.id(), "the input was read to its end by an earlier run");
        return Ok(());
    };
    let give_back = |held: Held| {
        *lock(slot) = Some(held);
    };
    loop {
        // A cancelled `read_until` keeps what it read in `partial`, so nothing is lost when
        // the stop wins the race.
        let read = tokio::select! {
            biased;
            () = ctx.stopping() => None,
            read = held.reader.read_until(b'\n', &mut held.partial) => Some(read),
        };
        match read {
            None => {
                give_back(held);
                return Ok(());
            }
            Some(Ok(0)) => {
                if !held.partial.is_empty() {
                    out.bytes(ctx, &held.partial);
                }
                return Ok(());
            }
            Some(Ok(_)) => {
                // A line, or the last bytes of the input without an end of line.
                out.bytes(ctx, &held.partial);
                held.partial.clear();
            }
            Some(Err(error)) if error.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(error)) => {
                give_back(held);
                return Err(StdinError::Read(error));
            }
        }
    }
}

/// A line of stdin (without its end of line), or the error that ended the reading.
type StdinLine = Result<String, StageError>;

/// The lines of the process's stdin, read by a thread started at the first use.
type StdinFeed = tokio::sync::Mutex<mpsc::Receiver<StdinLine>>;

/// The process's stdin feed, or why its thread could not start.
fn stdin_feed() -> Result<&'static StdinFeed, StdinError> {
    static FEED: OnceLock<Result<StdinFeed, (io::ErrorKind, String)>> = OnceLock::new();
    let feed = FEED.get_or_init(|| {
        let (tx, rx) = mpsc::channel(STDIN_LINES_AHEAD);
        std::thread::Builder::new()
            .name("engine-pod-stdin".to_owned())
            .spawn(move || read_stdin_lines(&tx))
            .map(|_| tokio::sync::Mutex::new(rx))
            .map_err(|err| (err.kind(), err.to_string()))
    });
    feed.as_ref()
        .map_err(|(kind, message)| StdinError::Thread(io::Error::new(*kind, message.clone())))
}

/// The stdin thread: sends lines until the end of stdin, a read error, or no one listens.
/// engine-ootb's stdin frontend reads them (retrying interrupted reads, replacing invalid
/// UTF-8 with a warning), as it does for `engine run`.
fn read_stdin_lines(tx: &mpsc::Sender<StdinLine>) {
    let mut lines = engine_ootb::StdinFrontend::new();
    let ctx = StageContext::standalone("stdin", StageKind::Frontend);
    while let Some(line) = lines.produce(&ctx).transpose() {
        let failed = line.is_err();
        if tx.blocking_send(line).is_err() || failed {
            return;
        }
    }
}

/// Reads the process's stdin until its end or a stop.
async fn read_stdin(ctx: &BeanContext, out: &Output) -> Result<(), StdinError> {
    let feed = stdin_feed()?;
    let mut lines = tokio::select! {
        biased;
        () = ctx.stopping() => return Ok(()),
        lines = feed.lock() => lines,
    };
    loop {
        let next = tokio::select! {
            biased;
            () = ctx.stopping() => return Ok(()),
            next = lines.recv() => next,
        };
        match next {
            None => return Ok(()),
            Some(Ok(line)) => out.line(ctx, line),
            Some(Err(error)) => return Err(StdinError::Read(io::Error::other(error))),
        }
    }
}
