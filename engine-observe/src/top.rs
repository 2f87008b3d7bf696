//! `engine top`: a live table of a running engine's stages and a pod's beans, read from its
//! `/metrics` and refreshed in place (the engine's `vector top`), with a sparkline of each
//! stage's recent rate, the split of its time between working, waiting for input and
//! waiting for room downstream, and an async stage's futures in flight against its limit.

use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, terminal};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

mod history;

pub use history::RateHistory;

use crate::snapshot::{ParseError, Snapshot};
use crate::verdict::{StageRates, Verdict, Window, rates, verdict};

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
    /// The server asks for a token that was not given, or refused the one given.
    #[error("{}", unauthorized(*.token_given))]
    Unauthorized {
        /// Whether a token was sent.
        token_given: bool,
    },
    /// What came back is not metrics.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The terminal could not be driven.
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
}

fn unauthorized(token_given: bool) -> &'static str {
    if token_given {
        "unauthorized: the token was refused; pass the pod's token with --token or ENGINE_POD_CONTROL_TOKEN"
    } else {
        "unauthorized: pass --token or ENGINE_POD_CONTROL_TOKEN"
    }
}

/// Reads `/metrics` of an engine's or pod's metrics server, sending a token if the server
/// asks for one (a pod's status server with a control token).
pub struct Scraper {
    url: String,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl fmt::Debug for Scraper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: only whether there is one shows.
        f.debug_struct("Scraper")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
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
            token: None,
            runtime,
            client,
        })
    }

    /// Sends `token` with every scrape (`Authorization: Bearer TOKEN`), as a pod's status
    /// server with a control token asks; an empty token sends none.
    ///
    /// ```
    /// use engine::observe::Scraper;
    ///
    /// let scraper = Scraper::new("127.0.0.1:9100")?.with_token("s3cret");
    /// assert!(!format!("{scraper:?}").contains("s3cret"));
    /// # Ok::<(), engine::observe::TopError>(())
    /// ```
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
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
    /// [`TopError::Unauthorized`] if it asks for a token, [`TopError::Parse`] if the answer
    /// is not metrics.
    pub fn scrape(&self) -> Result<Snapshot, TopError> {
        let fetch = |reason: String| TopError::Fetch {
            url: self.url.clone(),
            reason,
        };
        let mut request = hyper::Request::get(&self.url);
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            // The message names the URL only: the header holds the token.
            .map_err(|_| fetch("the token is not a valid header value".into()))?;
        let text = self.runtime.block_on(async {
            let response =
                tokio::time::timeout(Duration::from_secs(2), self.client.request(request))
                    .await
                    .map_err(|_| fetch("no answer within 2 s".into()))?
                    .map_err(|e| fetch(e.to_string()))?;
            if response.status() == hyper::StatusCode::UNAUTHORIZED {
                return Err(TopError::Unauthorized {
                    token_given: self.token.is_some(),
                });
            }
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

/// The table `engine top` shows for `now`, with rates since `before` (or since the start);
/// its sparklines hold this one look ([`render_with`] keeps them across looks).
pub fn render(source: &str, before: Option<&Snapshot>, now: &Snapshot) -> Vec<String> {
    render_with(source, before, now, &mut RateHistory::new())
}

/// The table `engine top` shows for `now`, with rates since `before` (or since the start),
/// recorded into `history`, whose sparklines it shows.
pub fn render_with(
    source: &str,
    before: Option<&Snapshot>,
    now: &Snapshot,
    history: &mut RateHistory,
) -> Vec<String> {
    let rates: Vec<StageRates> = rates(before, now);
    history.record(&rates);
    let verdict = verdict(&rates);
    let worst = verdict
        .bottleneck()
        .map(|r| (r.name.clone(), r.kind.clone()));
    let mut lines = Vec::new();
    let mut head = format!(
        "engine top - {source} - {} {}",
        if now.running { "running" } else { "finished" },
        duration(now.elapsed)
    );
    match verdict {
        Verdict::Bottleneck(stage) => {
            let _ = write!(head, " - bottleneck: {}", stage.name);
        }
        Verdict::WaitingForInput => head.push_str(" - waiting for input (source-bound)"),
        _ => {}
    }
    lines.push(head);
    lines.push(String::new());
    if !rates.is_empty() {
        lines.push(format!(
            "{:<16} {:<10} {:>3} {:>10} {:>10} {:<16} {:>6} {:>5} {:>7} {:>8} {:>11}  {}",
            "STAGE",
            "KIND",
            "THR",
            "IN",
            "OUT",
            "OUT TREND",
            "QUEUE",
            "WORK",
            "WAIT IN",
            "WAIT OUT",
            "IN FLIGHT",
            "STATE"
        ));
        for (r, s) in rates.iter().zip(&now.stages) {
            let queue = if s.queue_capacity > 0.0 {
                format!("{:.0}%", 100.0 * r.queue_fill)
            } else {
                "-".to_owned()
            };
            let in_flight = if r.is_async() {
                format!("{}/{}", r.in_flight, r.concurrency_limit)
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
                "{:<16} {:<10} {:>3} {:>10} {:>10} {} {:>6} {:>5} {:>7} {:>8} {:>11}  {}",
                truncate(&r.name, 16),
                r.kind,
                s.threads.max(1),
                rate(r.in_per_second),
                rate(r.out_per_second),
                history.sparkline(&r.name, &r.kind),
                queue,
                percent(r.work_share()),
                percent(r.input_share()),
                percent(r.room_share()),
                in_flight,
                state.join(", ")
            ));
        }
        lines.push(
            "WORK: share of the time working; WAIT IN: waiting for input; WAIT OUT: waiting for room downstream"
                .to_owned(),
        );
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

fn percent(share: f64) -> String {
    format!("{:.0}%", 100.0 * share)
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

/// Runs `engine top` against `addr`, sending `token` if given, refreshing every `interval`
/// until `q`, Esc or Ctrl-C. When standard output is not a terminal, or with `once`, prints
/// the table once and returns.
///
/// # Errors
///
/// [`TopError`] for a bad address, a terminal that cannot be driven, a server that asks for
/// a token ([`TopError::Unauthorized`], at once), or (printing once) a scrape that fails.
/// While the table runs, another failed scrape is shown and retried.
pub fn run(
    addr: &str,
    token: Option<&str>,
    interval: Duration,
    once: bool,
) -> Result<(), TopError> {
    let mut scraper = Scraper::new(addr)?;
    if let Some(token) = token {
        scraper = scraper.with_token(token);
    }
    if once || !io::stdout().is_terminal() {
        let now = scraper.scrape()?;
        let mut out = io::stdout().lock();
        for line in render(addr, None, &now) {
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let screen = Screen::enter()?;
    // Rates over a second or more, however often the table refreshes.
    let mut window = Window::default();
    let mut history = RateHistory::new();
    loop {
        let started = Instant::now();
        match scraper.scrape() {
            Ok(now) => {
                let before = window.base_for(&now);
                screen.draw(&render_with(addr, before.as_ref(), &now, &mut history))?;
            }
            // Retrying cannot help: the token is given at start.
            Err(error @ TopError::Unauthorized { .. }) => return Err(error),
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
    fn a_source_bound_pipeline_says_it_waits_for_input_and_names_no_stage() {
        let mut stdin = stage("frontend", "frontend", 0.1, 0.0);
        stdin.waiting_input_seconds = 9.9;
        let mut sink = stage("backend", "backend", 0.3, 0.0);
        sink.waiting_input_seconds = 9.6;
        let now = Snapshot::new(
            Instant::now(),
            Duration::from_secs(10),
            true,
            vec![stdin, sink],
        );
        let lines = render("x", None, &now);
        assert!(
            lines[0].ends_with("waiting for input (source-bound)"),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("bottleneck")), "{lines:?}");
        // WORK, WAIT IN and WAIT OUT of the frontend.
        let row = lines.iter().find(|l| l.starts_with("frontend")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[cells.len() - 4..], ["1%", "99%", "0%", "-"], "{row}");
    }

    #[test]
    fn an_async_stage_shows_its_futures_in_flight_against_its_limit() {
        let mut fetch = stage("fetch", "transport", 1.0, 0.0);
        fetch.in_flight = 812.0;
        fetch.concurrency_limit = 1024.0;
        let now = Snapshot::new(
            Instant::now(),
            Duration::from_secs(10),
            true,
            vec![stage("urls", "frontend", 0.5, 9.0), fetch],
        );
        let lines = render("x", None, &now);
        assert!(lines.iter().any(|l| l.contains("IN FLIGHT")), "{lines:?}");
        let row = lines.iter().find(|l| l.starts_with("fetch")).unwrap();
        assert!(row.contains(" 812/1024 "), "{row}");
        // 79% of its limit in flight, and the stage before it waits for room: the bottleneck.
        assert!(row.ends_with("bottleneck"), "{row}");
        let urls = lines.iter().find(|l| l.starts_with("urls")).unwrap();
        assert!(
            urls.contains(" - ") && urls.contains("backpressured"),
            "{urls}"
        );
    }

    #[test]
    fn the_sparkline_of_a_stage_follows_its_rate() {
        let mut history = RateHistory::new();
        let mut before = None;
        let start = Instant::now();
        let mut lines = Vec::new();
        // The sink's rate rises look after look: 100, 200, 300, 400 items a second, drawn
        // as levels 2, 4, 5 and 7 of 0 to 7.
        for (i, total) in [100.0, 300.0, 600.0, 1000.0].into_iter().enumerate() {
            let mut sink = stage("sink", "backend", 0.0, 0.0);
            sink.items_out = total;
            let now = Snapshot {
                at: start + Duration::from_secs(i as u64 + 1),
                elapsed: Duration::from_secs(i as u64 + 1),
                running: true,
                stages: vec![sink],
                beans: Vec::new(),
            };
            lines = render_with("x", before.as_ref(), &now, &mut history);
            before = Some(now);
        }
        let spark = history.sparkline("sink", "backend");
        assert_eq!(spark.trim_start(), "▃▅▆█", "{spark:?}");
        let row = lines.iter().find(|l| l.starts_with("sink")).unwrap();
        assert!(row.contains("▃▅▆█"), "{row}");
        assert!(lines.iter().any(|l| l.contains("OUT TREND")), "{lines:?}");
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
