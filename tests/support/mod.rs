//! What the tests of the views share: a terminal of their own (tmux) to run `engine top` and
//! the progress line in, and a headless browser (Chromium) to load the dashboard with. Both
//! programs must be installed (`.ci/run` installs them); a missing one fails the test, it is
//! never skipped.

#![allow(
    dead_code,
    reason = "each test file that includes this module uses some of its helpers"
)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A tmux server of its own, killed at the end.
pub(crate) struct Tmux {
    socket: String,
}

impl Tmux {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            socket: format!("engine-test-{name}-{}", std::process::id()),
        }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (apt-get install -y tmux)")
    }

    /// Starts `command` in a detached 150x40 session `name`.
    pub(crate) fn start(&self, name: &str, command: &str) {
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

    pub(crate) fn screen(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", name]).stdout).into_owned()
    }

    /// Reads the screen until `done` holds for it, within 30 s.
    pub(crate) fn wait_for(&self, name: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
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

    pub(crate) fn is_alive(&self, name: &str) -> bool {
        self.run(&["has-session", "-t", name]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Runs headless Chromium on `url` with a profile of its own (no cookies from an earlier
/// run), doing `what` (`--dump-dom`, `--screenshot=FILE`); returns its standard output.
pub(crate) fn chromium(url: &str, what: &str) -> String {
    chromium_for(url, what, Some(3000))
}

/// As [`chromium`], letting the page run `budget_ms` of virtual time after it loads (`None`:
/// the DOM as the load left it, before the page's first read of `/metrics`, which it makes a
/// second after).
pub(crate) fn chromium_for(url: &str, what: &str, budget_ms: Option<u32>) -> String {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile =
        std::env::temp_dir().join(format!("engine-chromium-{}-{run}", std::process::id()));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ])
        .args(budget_ms.map(|ms| format!("--virtual-time-budget={ms}")))
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([what, url])
        .output()
        .expect("chromium is installed (apt-get install -y chromium)");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loads the dashboard in headless Chromium and returns the DOM it rendered.
pub(crate) fn dump_dom(url: &str) -> String {
    chromium(url, "--dump-dom")
}
