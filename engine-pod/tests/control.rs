//! The control API on the status bean, through [`ControlClient`]: list, stop one bean,
//! restart one bean, signal a label, stop the pod; a token refuses requests without it
//! (401) and nothing changes; no bind beyond loopback without a token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_pod::{
    BeanContext, BeanId, BeanSpec, BeanState, ControlClient, ControlToken, CtlError, Pod,
    PodConfig, PodHandle, StatusServer, Target, bean_fn,
};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(20);

/// A bean that counts the `poke` signals it hears and waits for its stop.
fn poked(count: Arc<Mutex<Vec<BeanId>>>) -> impl engine_pod::Bean {
    bean_fn(move |ctx: BeanContext| {
        let count = Arc::clone(&count);
        async move {
            let id = ctx.id();
            ctx.on_signal("poke", move |_| count.lock().unwrap().push(id));
            ctx.mark_ready();
            ctx.stopping().await;
        }
    })
}

/// A pod of a status bean (1), two `workers` (2, 3) and an `other` (4).
async fn pod(
    config: PodConfig,
    params: toml::Table,
) -> (PodHandle, std::net::SocketAddr, Arc<Mutex<Vec<BeanId>>>) {
    let poked_ids = Arc::new(Mutex::new(Vec::new()));
    let status = StatusServer::new();
    let addr = status.local_addr();
    let mut pod = Pod::new(config);
    pod.add(BeanSpec::new("status", status).params(params));
    for label in ["workers", "workers", "other"] {
        pod.add(
            BeanSpec::new("poked", poked(Arc::clone(&poked_ids)))
                .label(label)
                .declares_readiness(),
        );
    }
    let handle = pod.start();
    let addr = timeout(PATIENCE, addr.get()).await.unwrap().unwrap();
    let all_ready = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans.iter().all(|b| b.state == BeanState::Ready)
        })
        .await;
    assert!(all_ready, "{:?}", handle.status());
    (handle, addr, poked_ids)
}

#[tokio::test]
async fn stop_restart_and_signal_one_bean_or_a_label_through_the_control_api() {
    let (handle, addr, poked) = pod(PodConfig::default(), toml::Table::new()).await;
    let client = ControlClient::new(addr, None);
    let status = client.status().await.unwrap();
    assert_eq!(status.len(), 4);
    assert_eq!(status[0].address, Some(addr));

    // A signal to a label reaches only its beans.
    let ran = client
        .signal(
            "poke",
            Target::Label("workers".into()),
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    assert_eq!(ran, 2);
    let mut got = poked.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, [BeanId(2), BeanId(3)]);

    // Restart: a new run, with a new start time and one more restart.
    let before = client.status().await.unwrap()[3].clone();
    client.restart(BeanId(4)).await.unwrap();
    let restarted = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans[3].restarts == 1 && beans[3].state == BeanState::Ready
        })
        .await;
    assert!(restarted, "{:?}", handle.status());
    let after = client.status().await.unwrap()[3].clone();
    assert!(
        after.uptime_secs < before.uptime_secs + 0.5,
        "{before:?} {after:?}"
    );
    // The new run registered its handler again, once.
    assert_eq!(
        client
            .signal("poke", Target::Id(BeanId(4)), serde_json::Value::Null)
            .await
            .unwrap(),
        1
    );

    // Stop ends one bean while the others run.
    client.stop(BeanId(2)).await.unwrap();
    let stopped = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans[1].state == BeanState::Finished
        })
        .await;
    assert!(stopped);
    let status = client.status().await.unwrap();
    assert!(
        [0, 2, 3]
            .iter()
            .all(|&i| status[i].state == BeanState::Ready),
        "{status:?}"
    );
    // A stopped bean cannot be stopped again; an unknown one is not found.
    match client.stop(BeanId(2)).await {
        Err(CtlError::Refused { status, .. }) => assert_eq!(status.as_u16(), 409),
        other => panic!("{other:?}"),
    }
    match client.restart(BeanId(99)).await {
        Err(CtlError::Refused { status, .. }) => assert_eq!(status.as_u16(), 404),
        other => panic!("{other:?}"),
    }
    // A bean that ended for good starts again on request.
    client.restart(BeanId(2)).await.unwrap();
    let back = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans[1].state == BeanState::Ready && beans[1].restarts == 1
        })
        .await;
    assert!(back, "{:?}", handle.status());

    client.shutdown().await.unwrap();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(
        report.stopped && !report.forced && report.is_success(),
        "{report:?}"
    );
}

#[tokio::test]
async fn with_a_token_a_request_without_it_gets_401_and_changes_nothing() {
    let mut config = PodConfig::default();
    config.control_token = ControlToken::new("s3cret");
    let (handle, addr, poked) = pod(config, toml::Table::new()).await;
    for token in [None, ControlToken::new("wrong")] {
        let client = ControlClient::new(addr, token);
        assert!(matches!(client.status().await, Err(CtlError::Unauthorized)));
        assert!(matches!(
            client.stop(BeanId(2)).await,
            Err(CtlError::Unauthorized)
        ));
        assert!(matches!(
            client.restart(BeanId(3)).await,
            Err(CtlError::Unauthorized)
        ));
        let signal = client
            .signal("poke", Target::All, serde_json::Value::Null)
            .await;
        assert!(matches!(signal, Err(CtlError::Unauthorized)));
        assert!(matches!(
            client.shutdown().await,
            Err(CtlError::Unauthorized)
        ));
        // The readiness probe stays open, for probes.
        assert!(client.ready().await.unwrap());
    }
    // Nothing changed.
    let status = handle.status();
    assert!(
        status
            .iter()
            .all(|b| b.state == BeanState::Ready && b.restarts == 0)
    );
    assert!(poked.lock().unwrap().is_empty());
    assert!(!handle.stop_handle().is_stopping());

    let client = ControlClient::new(addr, ControlToken::new("s3cret"));
    assert_eq!(client.status().await.unwrap().len(), 4);
    client.stop(BeanId(2)).await.unwrap();
    client.shutdown().await.unwrap();
    let report = timeout(PATIENCE, handle.wait()).await.unwrap();
    assert!(report.is_success(), "{report:?}");
}

#[tokio::test]
async fn the_status_bean_does_not_listen_beyond_loopback_without_a_token() {
    let mut params = toml::Table::new();
    params.insert("host".into(), "0.0.0.0".into());
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("status", StatusServer::new()).params(params));
    let report = timeout(PATIENCE, pod.run()).await.unwrap();
    assert_eq!(report.beans[0].state, BeanState::Failed);
    let error = report.beans[0].last_error.clone().unwrap();
    assert!(error.contains("without a control token"), "{error}");
}

/// One raw HTTP/1.1 exchange (the connection closed after it): the status code, the headers
/// (names lowercase) and every byte after them.
async fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    if !body.is_empty() {
        request += &format!(
            "content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n",
            body.len()
        );
    }
    request += "\r\n";
    request += body;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let answer = timeout(PATIENCE, exchange).await.expect("an answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = answer.split_once("\r\n\r\n").expect("a whole answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, rest.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn a_browser_gives_the_token_once_and_gets_a_cookie_that_opens_the_views_only() {
    let mut config = PodConfig::default();
    config.control_token = ControlToken::new("s3 cr/et");
    let (handle, addr, _poked) = pod(config, toml::Table::new()).await;

    // Without the token, the page is the login form, which holds no token.
    let (status, headers, page) = raw(addr, "GET", "/", &[], "").await;
    assert_eq!(status, 401);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.contains("action=\"/login\"") && !page.contains("s3"),
        "{page}"
    );
    assert_eq!(raw(addr, "GET", "/metrics", &[], "").await.0, 401);

    // A wrong token in the address: back to the page without it, and no cookie.
    let (status, headers, _) = raw(addr, "GET", "/?token=wrong", &[], "").await;
    assert_eq!((status, header(&headers, "location")), (303, Some("/")));
    assert_eq!(header(&headers, "set-cookie"), None);

    // The right one (percent-encoded): a cookie that is not the token, and an address without it.
    let (status, headers, _) = raw(addr, "GET", "/?token=s3%20cr%2Fet", &[], "").await;
    assert_eq!((status, header(&headers, "location")), (303, Some("/")));
    let set_cookie = header(&headers, "set-cookie").expect("a cookie").to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert!(!set_cookie.contains("s3"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let with_cookie = [("cookie", cookie.as_str())];

    // The cookie opens the page, the metrics and the status, and nothing that acts.
    let (status, _, page) = raw(addr, "GET", "/", &with_cookie, "").await;
    assert!(status == 200 && page.contains("<title>engine dashboard</title>"));
    assert!(!page.contains("s3 cr"), "the token is never in the page");
    let (status, _, metrics) = raw(addr, "GET", "/metrics", &with_cookie, "").await;
    assert!(
        status == 200 && metrics.contains("engine_bean_state"),
        "{metrics}"
    );
    assert_eq!(raw(addr, "GET", "/status", &with_cookie, "").await.0, 200);
    assert_eq!(
        raw(addr, "POST", "/beans/2/stop", &with_cookie, "").await.0,
        401
    );
    assert_eq!(raw(addr, "POST", "/stop", &with_cookie, "").await.0, 401);
    assert!(handle.status().iter().all(|b| b.state == BeanState::Ready));

    // The login form: a wrong token shows it again, the right one sets the cookie.
    let (status, _, form) = raw(addr, "GET", "/login", &[], "").await;
    assert!(status == 200 && form.contains("name=\"token\""), "{form}");
    let (status, headers, _) = raw(addr, "POST", "/login", &[], "token=nope").await;
    assert_eq!((status, header(&headers, "set-cookie")), (401, None));
    let (status, headers, _) = raw(addr, "POST", "/login", &[], "token=s3+cr%2Fet").await;
    assert_eq!((status, header(&headers, "location")), (303, Some("/")));
    let cookie = header(&headers, "set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        raw(addr, "GET", "/metrics", &[("cookie", &cookie)], "")
            .await
            .0,
        200
    );

    handle.stop();
    timeout(PATIENCE, handle.wait()).await.unwrap();
}

#[tokio::test]
async fn head_answers_every_get_route_without_a_body() {
    let (handle, addr, _poked) = pod(PodConfig::default(), toml::Table::new()).await;
    for path in [
        "/",
        "/index.html",
        "/metrics",
        "/status",
        "/ready",
        "/login",
    ] {
        let method = if path == "/login" { "GET" } else { "HEAD" };
        let (_, get_headers, get_body) = raw(addr, "GET", path, &[], "").await;
        let (status, headers, body) = raw(addr, method, path, &[], "").await;
        if path == "/login" {
            // Without a token there is nothing to log in to: back to the dashboard.
            assert_eq!(status, 303);
            continue;
        }
        assert_eq!(status, 200, "HEAD {path}");
        assert_eq!(body, "", "HEAD {path} has no body");
        assert!(!get_body.is_empty(), "GET {path}");
        assert_eq!(
            header(&headers, "content-type"),
            header(&get_headers, "content-type"),
            "HEAD {path}"
        );
    }
    handle.stop();
    timeout(PATIENCE, handle.wait()).await.unwrap();
}

#[test]
fn a_config_with_a_status_bean_beyond_loopback_and_no_token_does_not_build() {
    let registry = engine_pod::Registry::with_builtins();
    let public = "[[beans]]\ncore = \"status\"\nhost = \"0.0.0.0\"\n";
    let Err(error) = registry.build(engine_pod::PodFile::parse(public).unwrap()) else {
        panic!("refused before anything starts");
    };
    let message = error.to_string();
    assert!(
        message.contains("control_token") && message.contains("0.0.0.0"),
        "{message}"
    );
    // A token, the pod's or the bean's, or loopback: it builds.
    for text in [
        format!("control_token = \"s3cret\"\n{public}"),
        format!("{public}token = \"s3cret\"\n"),
        "[[beans]]\ncore = \"status\"\n".to_owned(),
    ] {
        let file = engine_pod::PodFile::parse(&text).unwrap();
        assert!(registry.build(file).is_ok(), "{text}");
    }
}
