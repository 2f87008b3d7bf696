//! The views of a running engine, tested as a person would use them: `engine top` and the
//! progress line in a real terminal (tmux), and the dashboard page in a real browser
//! (headless Chromium), also a pod's page behind its token. Both programs must be installed
//! (`.ci/run` installs them); a missing one fails the test, it is never skipped.

#![cfg(feature = "observe")]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::observe::{MetricsServer, Scraper};
use engine::threads::{Engine, EngineHandle};
use prometheus_client::registry::Registry;

mod support;

use support::{Tmux, chromium, chromium_for, dump_dom};

/// An engine whose backend is deliberately slow, and which gets slower as it runs (so its
/// rate changes from one look to the next), served on a loopback metrics server.
fn slow_engine() -> (EngineHandle, MetricsServer) {
    slow_engine_with(|_| {})
}

/// As [`slow_engine`], with more in the registry.
fn slow_engine_with(more: impl FnOnce(&mut Registry)) -> (EngineHandle, MetricsServer) {
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
    more(&mut registry);
    let server = MetricsServer::builder(Arc::new(registry)).start().unwrap();
    (handle, server)
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
    // A whole screen: one captured mid-redraw may hold the head line and not yet every stage.
    let screen = tmux.wait_for("top", "the bottleneck", |s| {
        let drawn = |stage: &str| s.lines().any(|l| l.starts_with(stage));
        s.contains("bottleneck: backend")
            && s.contains("backpressured")
            && drawn("transport")
            && drawn("backend")
    });
    let transport = screen
        .lines()
        .find(|l| l.starts_with("transport"))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(transport.contains("backpressured"), "{screen}");
    let backend = screen.lines().find(|l| l.starts_with("backend")).unwrap();
    assert!(backend.contains("bottleneck"), "{screen}");
    // Each stage's recent rate out, as a sparkline.
    assert!(screen.contains("OUT TREND"), "{screen}");
    assert!(backend.chars().any(|c| "▁▂▃▄▅▆▇█".contains(c)), "{screen}");
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
    // From a pipe (endless): items and rates (what limits `seq`'s pipe depends on the
    // machine: tests/observe_verdict.rs checks the verdict); from a file: also the share done.
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
    let first = tmux.wait_for("pipe", "the progress line with its rates", |s| {
        count(s).is_some() && s.contains("/s")
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

/// The rate shown in a stage's box.
fn rate_of(dom: &str, stage: &str) -> Option<String> {
    let start = dom.find(&format!("data-stage=\"{stage}\""))?;
    let rest = &dom[start..];
    let rate = rest.find("class=\"rate\">")? + "class=\"rate\">".len();
    let end = rest[rate..].find('<')?;
    Some(rest[rate..rate + end].to_owned())
}

/// The resident memory each worker reports: 24 MiB.
const WORKER_MEMORY: i64 = 24 << 20;

/// Worker processes and a Redis stream as their collectors report them (engine-proc's
/// `WorkerMetrics`, engine-redis' `StreamMetrics`), with counts that move as time passes: one
/// worker of the placed stage `double` died once and was started again.
#[derive(Debug)]
struct WorkersAndStream {
    started: Instant,
}

impl prometheus_client::collector::Collector for WorkersAndStream {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let ms = self.started.elapsed().as_millis() as u64;
        let workers = [("0", ms * 3, 0), ("1", ms * 2, 1)];
        for (name, read) in [
            ("engine_worker_tasks", 0),
            ("engine_worker_deaths", 1),
            ("engine_worker_respawns", 1),
        ] {
            let mut family =
                encoder.encode_descriptor(name, "worker counts", None, MetricType::Counter)?;
            for (worker, tasks, deaths) in workers {
                let labels = [("pool", "double"), ("worker", worker)];
                let value = if read == 0 { tasks } else { deaths };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut up =
            encoder.encode_descriptor("engine_worker_up", "up", None, MetricType::Gauge)?;
        for (worker, ..) in workers {
            let labels = [("pool", "double"), ("worker", worker)];
            ConstGauge::new(1).encode(up.encode_family(&labels)?)?;
        }
        let mut memory = encoder.encode_descriptor(
            "engine_worker_memory_bytes",
            "memory",
            None,
            MetricType::Gauge,
        )?;
        for (worker, ..) in workers {
            let labels = [("pool", "double"), ("worker", worker)];
            ConstGauge::new(WORKER_MEMORY).encode(memory.encode_family(&labels)?)?;
        }
        let up = encoder.encode_descriptor("engine_redis_up", "up", None, MetricType::Gauge)?;
        ConstGauge::new(1).encode(up)?;
        for (name, value) in [
            ("engine_redis_lag", 5000 - (ms as i64 / 2).min(4000)),
            ("engine_redis_pending", 64),
        ] {
            let mut family = encoder.encode_descriptor(name, "group", None, MetricType::Gauge)?;
            let labels = [("stream", "orders"), ("group", "engine")];
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        let mut dead = encoder.encode_descriptor(
            "engine_redis_dead_letters",
            "dead",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(2).encode(dead.encode_family(&[("stream", "orders")])?)?;
        Ok(())
    }
}

/// The `points` of every chart line drawn for `stage`, in order.
fn chart_points(dom: &str, stage: &str) -> Vec<String> {
    let marker = format!("data-chart=\"{stage}\"");
    dom.match_indices(&marker)
        .flat_map(|(at, _)| {
            let cell = &dom[at..];
            let cell = &cell[..cell.find("</svg>").unwrap_or(cell.len())];
            cell.split("points=\"")
                .skip(1)
                .map(|p| p[..p.find('"').unwrap_or(0)].to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_dashboard_shows_every_stage_with_live_rates_and_charts_in_a_browser() {
    let (handle, server) = slow_engine_with(|registry| {
        registry.register_collector(Box::new(WorkersAndStream {
            started: Instant::now(),
        }));
    });
    let url = format!("http://{}/", server.local_addr());

    // The first paint: the page as loaded, before it reads /metrics, shows the stages.
    let first_paint = chromium_for(&url, "--dump-dom", None);
    for stage in ["frontend", "transport", "backend"] {
        assert!(
            first_paint.contains(&format!("data-stage=\"{stage}\"")),
            "{first_paint}"
        );
    }

    let first = dump_dom(&url);
    for stage in ["frontend", "transport", "backend"] {
        assert!(
            first.contains(&format!("data-stage=\"{stage}\"")),
            "{first}"
        );
        // Three charts per stage (rate in and out, queue fill, working share), each drawn.
        let lines = chart_points(&first, stage);
        assert_eq!(lines.len(), 4, "{stage}: {lines:?}");
        assert!(lines.iter().all(|p| p.split(' ').count() >= 2), "{lines:?}");
    }
    assert!(first.contains("bottleneck"), "{first}");
    // The worker processes and the Redis stream, each in its panel.
    assert!(!first.contains("id=\"workers-panel\" hidden"), "{first}");
    assert_eq!(first.matches("data-pool=\"double\"").count(), 2, "{first}");
    assert!(first.contains("● up"), "{first}");
    // Each worker's resident memory (engine-proc's `engine_worker_memory_bytes`).
    assert_eq!(first.matches(">24.0 MiB<").count(), 2, "{first}");
    assert!(!first.contains("id=\"redis-panel\" hidden"), "{first}");
    assert!(first.contains("data-stream=\"orders\""), "{first}");
    let rate = rate_of(&first, "backend").unwrap_or_else(|| panic!("{first}"));
    assert!(rate.ends_with("/s"), "{rate}");
    let drawn = chart_points(&first, "backend");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut rate_moved, mut chart_moved) = (false, false);
    while !(rate_moved && chart_moved) {
        let again = dump_dom(&url);
        rate_moved |= rate_of(&again, "backend").unwrap_or_else(|| panic!("{again}")) != rate;
        chart_moved |= chart_points(&again, "backend") != drawn;
        assert!(
            Instant::now() < deadline,
            "the rate stayed {rate} or the charts stayed {drawn:?}"
        );
    }
    let shot = std::env::temp_dir().join(format!("engine-dashboard-{}.png", std::process::id()));
    chromium(&url, &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    handle.stop_now();
    handle.join().unwrap();
}

/// `engine pod run` with a status bean, a sleeping bean and `--token s3cret`; its address.
#[cfg(feature = "pod")]
#[allow(
    clippy::zombie_processes,
    reason = "the child is handed to the caller, who kills and waits for it"
)]
fn pod_with_a_token() -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "pod",
            "run",
            "--token",
            "s3cret",
            "status",
            "sleep:label=sleepers",
        ])
        .env_remove("ENGINE_POD_CONTROL_TOKEN")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the engine binary runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap_or(0) > 0,
            "the pod ended before it listened"
        );
        if line.contains("status server listening")
            && let Some(rest) = line.split("addr=").nth(1)
        {
            let addr = rest
                .split_whitespace()
                .next()
                .expect("an address")
                .to_owned();
            // The rest of the log is not read: a thread drains it so the pod never blocks.
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            return (child, addr);
        }
    }
}

#[cfg(feature = "pod")]
#[test]
fn a_browser_opens_a_pods_dashboard_with_the_token_given_once_in_the_address() {
    let (mut child, addr) = pod_with_a_token();
    // Without the token: the login form, and no beans.
    let dom = dump_dom(&format!("http://{addr}/"));
    assert!(dom.contains("action=\"/login\""), "{dom}");
    assert!(!dom.contains("sleepers"), "{dom}");
    // With `?token=`: the server swaps it for a cookie and sends the browser back to `/`,
    // where the dashboard shows the pod's beans; the token is nowhere in the page.
    let dom = dump_dom(&format!("http://{addr}/?token=s3cret"));
    assert!(dom.contains("<title>engine dashboard</title>"), "{dom}");
    assert!(dom.contains("sleepers") && dom.contains("running"), "{dom}");
    assert!(!dom.contains("s3cret"), "{dom}");
    let _ = child.kill();
    let _ = child.wait();
}
