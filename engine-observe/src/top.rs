//! `engine top`: a live table of a running engine's stages and a pod's beans, read from its
//! `/metrics` and refreshed in place (the engine's `vector top`).

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, terminal};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::snapshot::{ParseError, Snapshot, StageRates, bottleneck, rates};

/// Why `engine top` stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopError {
    /// The address is not `host:port` or an `http://` URL.
    #[error("{0:?} is not an address: give host:port, e.g. 127.0.0.1:9464")]
    BadAddress(String),
    /// The metrics could not be fetched.
    #[error("cannot read {url}: {reason}")]
    Fetch {
        /// What was asked for.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// What came back is not metrics.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The terminal could not be driven.
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
}

/// Reads `/metrics` of an engine's or pod's metrics server.
#[derive(Debug)]
pub struct Scraper {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Scraper {
    /// A scraper of `addr` (`host:port`, or a URL such as `http://host:port/metrics`).
    ///
    /// # Errors
    ///
    /// [`TopError::BadAddress`] if `addr` is not an address.
    pub fn new(addr: &str) -> Result<Self, TopError> {
        let url = if addr.starts_with("http://") {
            if addr.trim_end_matches('/').ends_with("/metrics") {
                addr.to_owned()
            } else {
                format!("{}/metrics", addr.trim_end_matches('/'))
            }
        } else {
            format!("http://{addr}/metrics")
        };
        if url.parse::<hyper::Uri>().is_err() || addr.is_empty() {
            return Err(TopError::BadAddress(addr.to_owned()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            url,
            runtime,
            client,
        })
    }

    /// The URL it reads.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches and reads the metrics once.
    ///
    /// # Errors
    ///
    /// [`TopError::Fetch`] if the server cannot be reached or answers with an error,
    /// [`TopError::Parse`] if the answer is not metrics.
    pub fn scrape(&self) -> Result<Snapshot, TopError> {
        let fetch = |reason: String| TopError::Fetch {
            url: self.url.clone(),
            reason,
        };
        let uri: hyper::Uri = self.url.parse().map_err(|e| fetch(format!("{e}")))?;
        let text = self.runtime.block_on(async {
            let response = tokio::time::timeout(Duration::from_secs(2), self.client.get(uri))
                .await
                .map_err(|_| fetch("no answer within 2 s".into()))?
                .map_err(|e| fetch(e.to_string()))?;
            if !response.status().is_success() {
                return Err(fetch(format!("the server answered {}", response.status())));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| fetch(e.to_string()))?
                .to_bytes();
            Ok(String::from_utf8_lossy(&body).into_owned())
        })?;
        Ok(Snapshot::parse(&text, Instant::now())?)
    }
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k/s", x / 1e3)
    } else {
        format!("{x:.0}/s")
    }
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, sec) => format!("{h}h {m:02}m {sec:02}s"),
    }
}

/// The table `engine top` shows for `now`, with rates since `before` (or since the start).
pub fn render(source: &str, before: Option<&Snapshot>, now: &Snapshot) -> Vec<String> {
    let rates: Vec<StageRates> = rates(before, now);
    let worst = bottleneck(&rates).map(|r| (r.name.clone(), r.kind.clone()));
    let mut lines = Vec::new();
    let mut head = format!(
        "engine top - {source} - {} {}",
        if now.running { "running" } else { "finished" },
        duration(now.elapsed)
    );
    if let Some((name, _)) = &worst {
        let _ = write!(head, " - bottleneck: {name}");
    }
    lines.push(head);
    lines.push(String::new());
    if !rates.is_empty() {
        lines.push(format!(
            "{:<16} {:<10} {:>3} {:>10} {:>10} {:>6} {:>5}  {}",
            "STAGE", "KIND", "THR", "IN", "OUT", "QUEUE", "BUSY", "STATE"
        ));
        for (r, s) in rates.iter().zip(&now.stages) {
            let queue = if s.queue_capacity > 0.0 {
                format!("{:.0}%", 100.0 * r.queue_fill)
            } else {
                "-".to_owned()
            };
            let mut state = Vec::new();
            if worst.as_ref() == Some(&(r.name.clone(), r.kind.clone())) {
                state.push("bottleneck");
            }
            if r.backpressured {
                state.push("backpressured");
            }
            lines.push(format!(
                "{:<16} {:<10} {:>3} {:>10} {:>10} {:>6} {:>4.0}%  {}",
                truncate(&r.name, 16),
                r.kind,
                s.threads.max(1),
                rate(r.in_per_second),
                rate(r.out_per_second),
                queue,
                100.0 * r.busy,
                state.join(", ")
            ));
        }
    }
    if !now.beans.is_empty() {
        lines.push(String::new());
        lines.push(format!(
            "{:<5} {:<16} {:<14} {:<11} {:>8} {:>10}",
            "BEAN", "LABEL", "CORE", "STATE", "RESTARTS", "UPTIME"
        ));
        for b in &now.beans {
            lines.push(format!(
                "{:<5} {:<16} {:<14} {:<11} {:>8} {:>10}",
                b.id,
                truncate(&b.label, 16),
                truncate(&b.core, 14),
                b.state,
                b.restarts,
                duration(Duration::from_secs_f64(b.uptime_seconds.max(0.0)))
            ));
        }
    }
    if rates.is_empty() && now.beans.is_empty() {
        lines.push("no engine or pod metrics at this address".to_owned());
    }
    lines.push(String::new());
    lines.push("q or Ctrl-C to quit".to_owned());
    lines
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Restores the terminal whatever way `top` ends.
struct Screen;

impl Screen {
    fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(Self)
    }

    fn draw(&self, lines: &[String]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        queue!(
            out,
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )?;
        for line in lines {
            write!(out, "{line}\r\n")?;
        }
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && (matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc)
            || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL)))
}

/// Runs `engine top` against `addr`, refreshing every `interval` until `q`, Esc or Ctrl-C.
/// When standard output is not a terminal, or with `once`, prints the table once and returns.
///
/// # Errors
///
/// [`TopError`] for a bad address, a terminal that cannot be driven, or (printing once) a
/// scrape that fails. While the table runs, a failed scrape is shown and retried.
pub fn run(addr: &str, interval: Duration, once: bool) -> Result<(), TopError> {
    let scraper = Scraper::new(addr)?;
    if once || !io::stdout().is_terminal() {
        let now = scraper.scrape()?;
        let mut out = io::stdout().lock();
        for line in render(addr, None, &now) {
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let screen = Screen::enter()?;
    let mut before: Option<Snapshot> = None;
    loop {
        let started = Instant::now();
        match scraper.scrape() {
            Ok(now) => {
                screen.draw(&render(addr, before.as_ref(), &now))?;
                before = Some(now);
            }
            Err(error) => screen.draw(&[
                format!("engine top - {addr}"),
                String::new(),
                format!("{error}; retrying"),
                String::new(),
                "q or Ctrl-C to quit".to_owned(),
            ])?,
        }
        while let Some(left) = interval.checked_sub(started.elapsed()) {
            if !event::poll(left)? {
                break;
            }
            if let Event::Key(key) = event::read()?
                && quits(&key)
            {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::StageSample;

    fn stage(name: &str, kind: &str, busy: f64, blocked: f64) -> StageSample {
        let mut s = StageSample::new(name, kind);
        s.threads = 1;
        s.items_in = 1000.0;
        s.items_out = 1000.0;
        s.busy_seconds = busy;
        s.blocked_seconds = blocked;
        s.queue_capacity = 100.0;
        s.queue_depth = 95.0;
        s
    }

    #[test]
    fn the_table_names_the_bottleneck_and_the_backpressured_stage() {
        let now = Snapshot {
            at: Instant::now(),
            elapsed: Duration::from_secs(10),
            running: true,
            stages: vec![
                stage("numbers", "frontend", 1.0, 0.0),
                stage("double", "transport", 2.0, 7.0),
                stage("slow-sink", "backend", 9.5, 0.0),
            ],
            beans: Vec::new(),
        };
        let lines = render("127.0.0.1:9464", None, &now);
        assert!(lines[0].contains("bottleneck: slow-sink"), "{lines:?}");
        let sink = lines.iter().find(|l| l.starts_with("slow-sink")).unwrap();
        assert!(
            sink.contains("bottleneck") && sink.contains("95%"),
            "{sink}"
        );
        let double = lines.iter().find(|l| l.starts_with("double")).unwrap();
        assert!(double.contains("backpressured"), "{double}");
    }

    #[test]
    fn addresses_become_metrics_urls() {
        assert_eq!(
            Scraper::new("127.0.0.1:9464").unwrap().url(),
            "http://127.0.0.1:9464/metrics"
        );
        assert_eq!(
            Scraper::new("http://h:1/").unwrap().url(),
            "http://h:1/metrics"
        );
        assert!(matches!(Scraper::new(""), Err(TopError::BadAddress(_))));
    }
}
