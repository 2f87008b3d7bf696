//! The views of a running engine, tested as a person would use them: `engine top` and the
//! progress line in a real terminal (tmux), and the dashboard page in a real browser
//! (headless Chromium). Both programs must be installed (`.ci/run` installs them); a missing
//! one fails the test, it is never skipped.

#![cfg(feature = "observe")]

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::observe::{MetricsServer, Scraper};
use engine::threads::{Engine, EngineHandle};
use prometheus_client::registry::Registry;

/// An engine whose backend is deliberately slow, and which gets slower as it runs (so its
/// rate changes from one look to the next), served on a loopback metrics server.
fn slow_engine() -> (EngineHandle, MetricsServer) {
    let started = Instant::now();
    let handle = Engine::builder(0_u64..)
        .transport(|x: u64| x)
        .queue_capacity(256)
        .backend(move |_: u64| {
            let work = Duration::from_micros(20 + started.elapsed().as_millis() as u64 / 20);
            let until = Instant::now() + work;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        })
        .spawn()
        .unwrap();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(handle.metrics()));
    let server = MetricsServer::builder(Arc::new(registry)).start().unwrap();
    (handle, server)
}

/// A tmux server of its own, killed at the end.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Self {
        Self {
            socket: format!("engine-test-{name}-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (apt-get install -y tmux)")
    }

    /// Starts `command` in a detached 150x40 session `name`.
    fn start(&self, name: &str, command: &str) {
        let out = self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "150",
            "-y",
            "40",
            command,
        ]);
        assert!(out.status.success(), "{out:?}");
    }

    fn screen(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", name]).stdout).into_owned()
    }

    /// Reads the screen until `done` holds for it, within 30 s.
    fn wait_for(&self, name: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen(name);
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{screen}"
            );
            std::thread::yield_now();
        }
    }

    fn is_alive(&self, name: &str) -> bool {
        self.run(&["has-session", "-t", name]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn engine_top_names_the_slow_backend_as_the_bottleneck_and_quits_on_q() {
    let (handle, server) = slow_engine();
    let addr = server.local_addr().to_string();
    // The metric: the stage before the slow backend waits for room.
    let scraper = Scraper::new(&addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scraper
        .scrape()
        .unwrap()
        .stages
        .iter()
        .any(|s| s.kind == "transport" && s.blocked_seconds > 0.0)
    {
        assert!(
            Instant::now() < deadline,
            "the transport never waited for the backend"
        );
        std::thread::yield_now();
    }

    let tmux = Tmux::new("top");
    let top = format!(
        "{} top --interval 250ms {addr}",
        env!("CARGO_BIN_EXE_engine")
    );
    tmux.start("top", &top);
    let screen = tmux.wait_for("top", "the bottleneck", |s| {
        s.contains("bottleneck: backend") && s.contains("backpressured")
    });
    let transport = screen
        .lines()
        .find(|l| l.starts_with("transport"))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(transport.contains("backpressured"), "{screen}");
    let backend = screen.lines().find(|l| l.starts_with("backend")).unwrap();
    assert!(backend.contains("bottleneck"), "{screen}");
    // It refreshes in place: the elapsed time in the head line moves on.
    let first = screen.lines().next().unwrap_or_default().to_owned();
    tmux.wait_for("top", "a refresh", |s| {
        s.lines().next() != Some(first.as_str())
    });
    let out = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.is_alive("top") {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::yield_now();
    }
    handle.stop_now();
    handle.join().unwrap();
}

#[test]
fn the_progress_line_shows_and_updates_on_a_terminal() {
    let dir = std::env::temp_dir().join(format!("engine-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("input.txt");
    // Long enough that the run outlasts the looks at it (a run that ends clears its line).
    let lines: String = (0..8_000_000).map(|n| format!("{n}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let tmux = Tmux::new("progress");
    let bin = env!("CARGO_BIN_EXE_engine");
    // From a pipe (endless): items, rates and the bottleneck; from a file: also the share
    // done.
    tmux.start(
        "pipe",
        &format!("seq 1 1000000000 | {bin} run --log-level warn"),
    );
    tmux.start(
        "file",
        &format!("{bin} run --log-level warn < {}", input.display()),
    );
    let count = |screen: &str| -> Option<u64> {
        screen
            .lines()
            .find(|l| l.contains(" items |"))
            .and_then(|l| l.split(" items |").next())
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
    };
    // The first lines may come before any stage has worked: no bottleneck yet.
    let first = tmux.wait_for("pipe", "the progress line with its bottleneck", |s| {
        count(s).is_some() && s.contains("bottleneck")
    });
    let n = count(&first).unwrap();
    tmux.wait_for("pipe", "the progress line to move", |s| {
        count(s).is_some_and(|m| m > n)
    });
    let file = tmux.wait_for("file", "the share done", |s| {
        s.contains('%') && s.contains("eta")
    });
    assert!(file.contains(" items |"), "{file}");
    drop(tmux);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Loads the dashboard in headless Chromium and returns the DOM it rendered.
fn dump_dom(url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium is installed (apt-get install -y chromium)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rate shown in a stage's box.
fn rate_of(dom: &str, stage: &str) -> Option<String> {
    let start = dom.find(&format!("data-stage=\"{stage}\""))?;
    let rest = &dom[start..];
    let rate = rest.find("class=\"rate\">")? + "class=\"rate\">".len();
    let end = rest[rate..].find('<')?;
    Some(rest[rate..rate + end].to_owned())
}

#[test]
fn the_dashboard_shows_every_stage_with_live_rates_in_a_browser() {
    let (handle, server) = slow_engine();
    let url = format!("http://{}/", server.local_addr());
    let first = dump_dom(&url);
    for stage in ["frontend", "transport", "backend"] {
        assert!(
            first.contains(&format!("data-stage=\"{stage}\"")),
            "{first}"
        );
    }
    assert!(first.contains("bottleneck"), "{first}");
    let rate = rate_of(&first, "backend").unwrap_or_else(|| panic!("{first}"));
    assert!(rate.ends_with("/s"), "{rate}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let again = dump_dom(&url);
        let now = rate_of(&again, "backend").unwrap_or_else(|| panic!("{again}"));
        if now != rate {
            break;
        }
        assert!(Instant::now() < deadline, "the rate stayed {rate}");
    }
    handle.stop_now();
    handle.join().unwrap();
}
