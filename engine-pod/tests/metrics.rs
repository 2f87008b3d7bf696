//! The pod's metrics over real HTTP: the status bean's `/metrics` shows a restarting bean's
//! restart count rising and one state per bean, `/` serves the dashboard, and a program can
//! register the same collector into its own registry.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine_core::StageError;
use engine_pod::{
    BeanContext, BeanSpec, Pod, PodConfig, Restart, RestartPolicy, StatusServer, bean_fn,
};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const PATIENCE: Duration = Duration::from_secs(20);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> (u16, String, String) {
    let response = client
        .get(format!("http://{addr}{path}").parse().expect("a URI"))
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.into_body().collect().await.expect("a body");
    let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    (status, content_type, body)
}

/// The value of the one sample of `metric` whose labels start with `labels`.
fn sample(text: &str, metric: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{metric}{{{labels}");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes until `check` holds for the value of a sample, with a deadline.
async fn scrape_until(
    client: &HttpClient,
    addr: SocketAddr,
    (metric, labels): (&str, &str),
    check: impl Fn(f64) -> bool,
) -> (f64, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _, text) = get(client, addr, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        if let Some(value) = sample(&text, metric, labels)
            && check(value)
        {
            return (value, text);
        }
        assert!(Instant::now() < deadline, "{metric}{{{labels}...}}: {text}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_beans_metrics_show_a_restarting_beans_restarts_rising() {
    let status = StatusServer::new();
    let addr = status.local_addr();
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("status", status));
    // Fails at once, again and again, restarted under on-failure.
    let policy = RestartPolicy::new(Restart::OnFailure)
        .limit(1_000_000, Duration::from_secs(3600))
        .backoff(Duration::from_millis(5), Duration::from_millis(5));
    pod.add(
        BeanSpec::new(
            "flaky",
            bean_fn(
                |_ctx: BeanContext| async move { Err::<(), _>(StageError::msg("fails at once")) },
            ),
        )
        .label("flakes")
        .restart(policy),
    );
    pod.add(BeanSpec::new(
        "steady",
        bean_fn(|ctx: BeanContext| async move { ctx.stopping().await }),
    ));
    let handle = pod.start();
    let addr = tokio::time::timeout(PATIENCE, addr.get())
        .await
        .expect("the status server binds in time")
        .expect("it listens");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let restarts = (
        "engine_bean_restarts_total",
        r#"id="2",label="flakes",core="flaky""#,
    );
    let (first, text) = scrape_until(&client, addr, restarts, |n| n >= 1.0).await;
    let (second, _) = scrape_until(&client, addr, restarts, |n| n > first).await;
    assert!(second > first, "{first} -> {second}");

    // One state per bean has the value 1; every state has a sample.
    for id in 1..=3 {
        let states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("engine_bean_state{{id=\"{id}\"")))
            .collect();
        assert_eq!(states.len(), 9, "{states:?}");
        let current: Vec<_> = states.iter().filter(|l| l.ends_with(" 1")).collect();
        assert_eq!(current.len(), 1, "{states:?}");
    }
    assert_eq!(
        sample(
            &text,
            "engine_bean_state",
            r#"id="3",label="",core="steady",state="running""#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "engine_bean_state",
            r#"id="1",label="",core="status",state="ready""#
        ),
        Some(1.0)
    );
    assert!(
        sample(&text, "engine_bean_uptime_seconds", r#"id="3""#).is_some_and(|s| s >= 0.0),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");

    // The dashboard next to it, and the status as before.
    let (status, content_type, page) = get(&client, addr, "/").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    // The dashboard, with the beans' metrics of the moment in it for its first paint.
    assert!(page.contains("<title>engine dashboard</title>"), "{page}");
    assert!(!page.contains("__ENGINE_FIRST_SCRAPE__"), "{page}");
    assert!(page.contains("engine_bean_state{id=\\\"1\\\""), "{page}");
    let (status, _, json) = get(&client, addr, "/status").await;
    assert_eq!(status, 200);
    assert!(json.contains("\"core\":\"flaky\""), "{json}");

    // A program's own registry gets the same metrics.
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(handle.metrics()));
    let mut own = String::new();
    prometheus_client::encoding::text::encode(&mut own, &registry).expect("encodes");
    let restarts_now = sample(&own, restarts.0, restarts.1).expect("the flaky bean");
    assert!(restarts_now >= second, "{own}");

    handle.stop();
    let report = handle.wait().await;
    assert!(!report.forced, "{report:?}");
}
