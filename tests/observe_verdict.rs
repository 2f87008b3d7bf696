//! What the views say limits a run, tested with real processes, a real terminal (tmux) and a
//! real browser (headless Chromium): a pipe fed slowly is "waiting for input" in the metrics,
//! `engine top`, the progress line and the dashboard, with no stage named the bottleneck; a
//! transport that spins is named; an async stage's futures in flight show against its limit.

#![cfg(feature = "observe")]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use engine::observe::{MetricsServer, Scraper, Snapshot, StageRates, Verdict, rates, verdict};
use engine::threads::Engine;
use prometheus_client::registry::Registry;

mod support;

use support::{Tmux, chromium, dump_dom};

/// Scrapes until `done` holds for the snapshot, within 30 s.
fn scrape_until(scraper: &Scraper, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(snapshot) = scraper.scrape()
            && done(&snapshot)
        {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// Items the last stage has finished with.
fn processed(snapshot: &Snapshot) -> f64 {
    snapshot.stages.last().map_or(0.0, |s| s.handled())
}

/// The rates over an interval of at least 2 s of the engine's clock from `before`, once
/// `more` items went through.
fn rates_over_2s(scraper: &Scraper, before: &Snapshot, more: f64) -> Vec<StageRates> {
    let now = scrape_until(scraper, "2 s of running", |s| {
        s.elapsed.saturating_sub(before.elapsed) >= Duration::from_secs(2)
            && processed(s) >= processed(before) + more
    });
    rates(Some(before), &now)
}

/// The stage's box in a dashboard's DOM, up to the next box or the end of the pipeline.
fn stage_box<'a>(dom: &'a str, stage: &str) -> &'a str {
    let start = dom
        .find(&format!("data-stage=\"{stage}\""))
        .unwrap_or_else(|| panic!("no box for {stage}: {dom}"));
    let rest = &dom[start..];
    let end = ["data-stage=", "id=\"history-panel\""]
        .iter()
        .filter_map(|m| rest[1..].find(m))
        .min()
        .map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

/// The share the dashboard shows in `<b class="CLASS">N%</b>` of a stage's box, in percent.
fn shown_share(stage_box: &str, class: &str) -> f64 {
    let marker = format!("<b class=\"{class}\">");
    let at = stage_box.find(&marker).expect("a share") + marker.len();
    let text = &stage_box[at..at + stage_box[at..].find('%').expect("a percentage")];
    text.parse()
        .unwrap_or_else(|_| panic!("{text:?} in {stage_box}"))
}

/// The dashboard's status line.
fn status(dom: &str) -> &str {
    let at = dom.find("id=\"status\">").expect("a status line") + "id=\"status\">".len();
    &dom[at..at + dom[at..].find('<').unwrap_or(0)]
}

#[test]
fn a_slow_pipe_is_waiting_for_input_in_every_view_and_no_stage_is_the_bottleneck() {
    let dir = std::env::temp_dir().join(format!("engine-slow-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("lines");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());

    // `engine run` on a terminal of its own (so that it draws its progress line), reading
    // the pipe this test writes a line into every 10 ms.
    let tmux = Tmux::new("slow-pipe");
    let bin = env!("CARGO_BIN_EXE_engine");
    tmux.start(
        "run",
        &format!(
            "{bin} run --log-level warn --metrics-addr 127.0.0.1:0 < {}",
            fifo.display()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, fifo) = (stop.clone(), fifo.clone());
        std::thread::spawn(move || {
            // Opening waits for the reader: the shell in tmux opens the pipe for `engine run`.
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo)?;
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                writeln!(pipe, "line {n}")?;
                pipe.flush()?;
                n += 1;
                // The pace of the slow source, not a synchronisation.
                std::thread::sleep(Duration::from_millis(10));
            }
            std::io::Result::Ok(n)
        })
    };
    // The whole address, not only the start of its line: the pane may be read mid-write.
    let screen = tmux.wait_for("run", "the metrics address", |s| metrics_addr(s).is_some());
    let addr = metrics_addr(&screen).expect("an address");

    // The metrics: over 2 s, the frontend works under 10% of the time and waits for its
    // pipe most of it; no stage is busy enough to be the bottleneck.
    let scraper = Scraper::new(&addr).unwrap();
    let before = scrape_until(&scraper, "20 lines through", |s| processed(s) >= 20.0);
    let looks = rates_over_2s(&scraper, &before, 50.0);
    let frontend = looks.iter().find(|r| r.kind == "frontend").unwrap();
    assert!(frontend.busy < 0.1, "{looks:#?}");
    assert!(frontend.waiting_for_input > 0.5, "{looks:#?}");
    assert!(frontend.in_per_second < 150.0, "{looks:#?}");
    assert_eq!(verdict(&looks), Verdict::WaitingForInput, "{looks:#?}");

    // The progress line on the run's terminal.
    let screen = tmux.wait_for("run", "the progress line", |s| {
        s.contains(" items |") && s.contains("waiting for input")
    });
    assert!(!screen.contains("bottleneck"), "{screen}");

    // `engine top`, refreshing every 250 ms.
    tmux.start("top", &format!("{bin} top --interval 250ms {addr}"));
    let top = tmux.wait_for("top", "engine top's verdict", |s| {
        s.lines()
            .next()
            .is_some_and(|l| l.ends_with("waiting for input (source-bound)"))
            && s.contains("WAIT IN")
    });
    // A few refreshes: no look names a stage.
    for _ in 0..4 {
        let first = tmux.screen("top").lines().next().unwrap_or("").to_owned();
        let screen = tmux.wait_for("top", "a refresh", |s| {
            s.lines().next().is_some_and(|l| l != first)
        });
        assert!(!screen.contains("bottleneck"), "{screen}");
    }
    let row = top
        .lines()
        .find(|l| l.starts_with("frontend"))
        .unwrap_or_else(|| panic!("{top}"));
    // The frontend's queue column is `-`: its first share is WORK, then WAIT IN.
    let shares: Vec<f64> = row
        .split_whitespace()
        .filter_map(|c| c.strip_suffix('%'))
        .map(|c| c.parse().unwrap())
        .collect();
    assert!(shares[0] < 10.0 && shares[1] > 50.0, "{top}");

    // The dashboard.
    let dom = dump_dom(&format!("http://{addr}/"));
    assert!(
        status(&dom).contains("waiting for input (source-bound)"),
        "{}",
        status(&dom)
    );
    assert!(!dom.contains("class=\"badge bn\""), "{dom}");
    assert!(!dom.contains("class=\"stage bottleneck\""), "{dom}");
    let frontend = stage_box(&dom, "frontend");
    assert!(frontend.contains("class=\"badge wi\""), "{frontend}");
    assert!(shown_share(frontend, "w") < 10.0, "{frontend}");
    assert!(shown_share(frontend, "wi") > 50.0, "{frontend}");

    // The end of the pipe ends the run, and its terminal.
    stop.store(true, Ordering::Relaxed);
    let written = feeder.join().unwrap().unwrap();
    assert!(written > 100, "{written} lines");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tmux.is_alive("run") {
        assert!(Instant::now() < deadline, "the run did not end");
        std::thread::yield_now();
    }
    drop(tmux);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_spinning_transport_is_named_the_bottleneck_by_top_and_the_dashboard() {
    // The queue before the transport holds 100 ms of its work, so that a frontend kept off
    // the CPU for a while (a loaded machine) does not leave it waiting for input.
    let handle = Engine::builder(0_u64..)
        .transport(|x: u64| {
            let until = Instant::now() + Duration::from_micros(100);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            x
        })
        .backend(|_: u64| {})
        .queue_capacity(1000)
        .spawn()
        .unwrap();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(handle.metrics()));
    let server = MetricsServer::builder(Arc::new(registry)).start().unwrap();
    let addr = server.local_addr().to_string();

    let scraper = Scraper::new(&addr).unwrap();
    let before = scrape_until(&scraper, "items through", |s| processed(s) > 0.0);
    let looks = rates_over_2s(&scraper, &before, 100.0);
    let Verdict::Bottleneck(stage) = verdict(&looks) else {
        panic!("{looks:#?}");
    };
    assert_eq!(stage.name, "transport", "{looks:#?}");
    // On a crowded CPU its frontend is often ready but not running, which leaves it waiting
    // for input a part of the time: it is named as it holds back a frontend waiting for room.
    assert!(stage.work_share() >= 0.5, "{looks:#?}");
    assert!(looks[0].backpressured, "{looks:#?}");

    let top = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["top", "--once", &addr])
        .output()
        .unwrap();
    assert!(top.status.success(), "{top:?}");
    let table = String::from_utf8_lossy(&top.stdout);
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .ends_with("bottleneck: transport"),
        "{table}"
    );

    let dom = dump_dom(&format!("http://{addr}/"));
    assert!(
        status(&dom).ends_with("bottleneck: transport"),
        "{}: {}",
        status(&dom),
        &dom[dom.find("id=\"pipeline\"").unwrap_or(0)
            ..dom.find("id=\"history-panel\"").unwrap_or(0)]
    );
    let transport = stage_box(&dom, "transport");
    assert!(transport.contains("class=\"badge bn\""), "{transport}");
    let working = shown_share(transport, "w");
    assert!(working >= 50.0, "{transport}");
    for other in ["frontend", "backend"] {
        assert!(shown_share(stage_box(&dom, other), "w") < working, "{dom}");
    }
    handle.stop_now();
    handle.join().unwrap();
}

/// An engine with an async stage as its metrics show it: `fetch` has 812 futures in flight
/// of a limit of 1024, and its frontend waits for room.
#[derive(Debug)]
struct AsyncStage {
    started: Instant,
}

impl prometheus_client::collector::Collector for AsyncStage {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let seconds = self.started.elapsed().as_secs_f64() + 10.0;
        let stages = [
            ("urls", "frontend"),
            ("fetch", "transport"),
            ("store", "backend"),
        ];
        // Per stage: items, and the shares of time working, waiting for input and for room.
        let counts = [(0.1, 0.0, 0.85), (0.1, 0.05, 0.0), (0.05, 0.9, 0.0)];
        let families = [
            ("engine_items_in", 0),
            ("engine_items_out", 0),
            ("engine_busy_seconds", 1),
            ("engine_waiting_input_seconds", 2),
            ("engine_blocked_seconds", 3),
        ];
        for (name, which) in families {
            let mut family =
                encoder.encode_descriptor(name, "stage counts", None, MetricType::Counter)?;
            for ((stage, kind), (work, wait_in, wait_out)) in stages.iter().zip(counts) {
                let labels = [("stage", *stage), ("kind", *kind), ("thread", "0")];
                let value = [seconds * 1000.0, work, wait_in, wait_out][which];
                let value = if which == 0 {
                    value.round()
                } else {
                    value * seconds
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, value) in [
            ("engine_stage_in_flight", 812),
            ("engine_stage_concurrency_limit", 1024),
        ] {
            let mut family =
                encoder.encode_descriptor(name, "async stage", None, MetricType::Gauge)?;
            let labels = [("stage", "fetch"), ("kind", "transport")];
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        let elapsed = encoder.encode_descriptor(
            "engine_elapsed_seconds",
            "time since the start",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(seconds).encode(elapsed)?;
        Ok(())
    }
}

#[test]
fn an_async_stage_shows_its_futures_in_flight_against_its_limit() {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AsyncStage {
        started: Instant::now(),
    }));
    let server = MetricsServer::builder(Arc::new(registry)).start().unwrap();
    let addr = server.local_addr().to_string();

    let top = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["top", "--once", &addr])
        .output()
        .unwrap();
    assert!(top.status.success(), "{top:?}");
    let table = String::from_utf8_lossy(&top.stdout);
    let fetch = table.lines().find(|l| l.starts_with("fetch")).unwrap();
    assert!(fetch.contains(" 812/1024 "), "{table}");
    // Its thread mostly waits for its futures, but 79% of its limit is in flight and the
    // frontend waits for room: it limits the pipeline.
    assert!(fetch.ends_with("bottleneck"), "{table}");
    let urls = table.lines().find(|l| l.starts_with("urls")).unwrap();
    assert!(urls.contains("backpressured"), "{table}");

    let dom = dump_dom(&format!("http://{addr}/"));
    let fetch = stage_box(&dom, "fetch");
    assert!(
        fetch.contains("<span>in flight</span><span>812/1024</span>"),
        "{fetch}"
    );
    assert!(fetch.contains("class=\"badge bn\""), "{fetch}");
    assert!(!stage_box(&dom, "store").contains("in flight"), "{dom}");
    let shot = std::env::temp_dir().join(format!("engine-async-{}.png", std::process::id()));
    chromium(
        &format!("http://{addr}/"),
        &format!("--screenshot={}", shot.display()),
    );
    assert!(
        std::fs::read(&shot)
            .expect("a screenshot")
            .starts_with(b"\x89PNG")
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}

/// The `host:port` after "metrics on http://" on a terminal screen, once it is all there.
fn metrics_addr(screen: &str) -> Option<String> {
    let rest = screen.split("metrics on http://").nth(1)?;
    let (addr, _) = rest.split_once('/')?;
    let addr = addr.trim();
    (addr.contains(':') && !addr.contains(char::is_whitespace)).then(|| addr.to_owned())
}
