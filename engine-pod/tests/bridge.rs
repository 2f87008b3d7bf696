//! The async bridge: items sent from an async bean through a threaded engine bean and back,
//! with backpressure reaching the sender and the sender's end ending the run; HTTP requests
//! to the adapter bean awaiting their items' results.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engine_core::{StageError, try_map};
use engine_pod::axum::Router;
use engine_pod::axum::extract::State;
use engine_pod::axum::http::StatusCode;
use engine_pod::axum::routing::post;
use engine_pod::{
    BeanContext, BeanId, BeanSpec, BeanState, Call, CallError, Feed, FeedError, HttpServer, Pod,
    PodConfig, bean_fn, deliver, engine_bean, feed,
};
use engine_threads::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const ITEMS: usize = 100_000;
const FEED: usize = 32;
const DELIVER: usize = 32;
const QUEUE: usize = 64;
/// What a threaded engine holds at most: its two queues, plus one batch (a quarter of a
/// queue at most) in each hand of its threads (the frontend's, the transport's two, the
/// backend's): three queues' worth.
const ENGINE_HOLDS: usize = 3 * QUEUE;
/// Items in the hands of the sender, the frontend, the backend and the receiver.
const IN_HANDS: usize = 8;
const PATIENCE: Duration = Duration::from_secs(30);

/// Work that makes the engine slower than the sender (a few microseconds an item).
fn slow_double(x: u64) -> u64 {
    let mut acc = x;
    for i in 0..400 {
        acc = std::hint::black_box(acc.wrapping_mul(31).wrapping_add(i));
    }
    std::hint::black_box(acc);
    x * 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_items_go_through_an_engine_and_back_with_bounded_memory() {
    let (tx, frontend) = feed::<u64>(FEED);
    let (backend, results) = deliver::<u64>(DELIVER);
    let engine = engine_bean(move |_ctx| {
        Engine::builder(frontend.clone())
            .transport(slow_double)
            .backend(backend.clone())
            .queue_capacity(QUEUE)
    });
    let report = engine.last_report();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let waited = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(vec![false; ITEMS]));

    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("engine", engine));
    let tx = std::sync::Mutex::new(Some(tx));
    let results = Arc::new(results);
    let client = {
        let (in_flight, most, waited, seen) = (
            Arc::clone(&in_flight),
            Arc::clone(&most_in_flight),
            Arc::clone(&waited),
            Arc::clone(&seen),
        );
        bean_fn(move |_ctx: BeanContext| {
            let tx: Feed<u64> = tx.lock().unwrap().take().expect("one run");
            let results = Arc::clone(&results);
            let (in_flight, most, waited, seen) = (
                Arc::clone(&in_flight),
                Arc::clone(&most),
                Arc::clone(&waited),
                Arc::clone(&seen),
            );
            async move {
                let send = {
                    let in_flight = Arc::clone(&in_flight);
                    async move {
                        for i in 0..ITEMS as u64 {
                            // Counted before it leaves: an item in the sender's hand is in
                            // flight too.
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            match tx.try_send(i) {
                                Ok(()) => {}
                                Err(FeedError::Full(i)) => {
                                    waited.fetch_add(1, Ordering::SeqCst);
                                    tx.send(i).await.map_err(StageError::new)?;
                                }
                                Err(err) => return Err(StageError::new(err)),
                            }
                        }
                        // The end of the sender ends the engine's run.
                        drop(tx);
                        Ok::<_, StageError>(())
                    }
                };
                let receive = async move {
                    for _ in 0..ITEMS {
                        let x = results
                            .recv()
                            .await
                            .ok_or_else(|| StageError::msg("the results ended early"))?;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let i = usize::try_from(x / 2).map_err(StageError::new)?;
                        let mut seen = seen.lock().unwrap();
                        if std::mem::replace(&mut seen[i], true) {
                            return Err(StageError::msg(format!("item {i} came back twice")));
                        }
                    }
                    Ok::<_, StageError>(())
                };
                tokio::try_join!(send, receive)?;
                Ok::<_, StageError>(())
            }
        })
    };
    pod.add(BeanSpec::new("client", client));
    let handle = pod.start();
    let done = handle
        .wait_status(Instant::now() + PATIENCE, |beans| {
            beans.iter().all(|b| b.state.is_final())
        })
        .await;
    assert!(done, "{:?}", handle.status());
    let pod_report = handle.wait().await;
    assert!(pod_report.is_success(), "{pod_report:?}");
    assert!(
        !pod_report.stopped,
        "nobody stopped the pod: the sender's end ended it"
    );
    assert_eq!(pod_report.beans[0].state, BeanState::Finished);
    let run = report.get().expect("the engine's run ended");
    assert_eq!(run.processed(), ITEMS as u64);
    assert!(
        seen.lock().unwrap().iter().all(|s| *s),
        "every item came back"
    );
    let most = most_in_flight.load(Ordering::SeqCst);
    let bound = FEED + DELIVER + ENGINE_HOLDS + IN_HANDS;
    assert!(
        most <= bound,
        "{most} items in flight at most, above the bound {bound}"
    );
    // The engine was the slower side: the sender found the feed full and waited.
    let waited = waited.load(Ordering::SeqCst);
    assert!(waited > 0 && most > FEED, "waited {waited}, most {most}");
    eprintln!("at most {most} in flight (bound {bound}); the sender waited {waited} times");
}

/// Doubles the number in the body through the engine.
async fn double(State(calls): State<Feed<Call<u64, u64>>>, body: String) -> (StatusCode, String) {
    let Ok(n) = body.trim().parse::<u64>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{body:?} is not a number\n"),
        );
    };
    match calls.call(n).await {
        Ok(doubled) => (StatusCode::OK, doubled.to_string()),
        Err(CallError::Dropped) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "the engine could not double it\n".to_owned(),
        ),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_posts_become_items_and_each_request_gets_its_result() {
    let (calls, frontend) = feed::<Call<u64, u64>>(16);
    let engine = engine_bean(move |_ctx| {
        Engine::builder(frontend.clone())
            .transport(try_map(|call: Call<u64, u64>| {
                call.try_map(|x| x.checked_mul(2).ok_or("overflow"))
            }))
            .backend(|call: Call<u64, u64>| {
                call.answer();
            })
            .transport_threads(2)
    });
    let server = HttpServer::new(
        Router::new()
            .route("/double", post(double))
            .with_state(calls),
    );
    let addr = server.local_addr();
    let mut pod = Pod::new(PodConfig::default());
    pod.add(BeanSpec::new("engine", engine));
    pod.add(BeanSpec::new("http", server));
    let handle = pod.start();
    let addr = tokio::time::timeout(PATIENCE, addr.get())
        .await
        .expect("the server binds in time")
        .expect("the server listens");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let post = |body: String| {
        let client = client.clone();
        async move {
            let request = hyper::Request::post(format!("http://{addr}/double"))
                .body(Full::new(Bytes::from(body)))
                .expect("a request");
            let response = client.request(request).await.expect("an answer");
            let status = response.status();
            let body = response.into_body().collect().await.expect("a body");
            (
                status,
                String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            )
        }
    };
    let requests: Vec<_> = (0..500_u64)
        .map(|n| tokio::spawn(post(n.to_string())))
        .collect();
    for (n, request) in requests.into_iter().enumerate() {
        let (status, body) = request.await.expect("the request's task");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, (2 * n).to_string());
    }
    // An item the engine fails: its caller hears of it, and the others go on.
    let (status, _) = post(u64::MAX.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = post("x".to_owned()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        post("21".to_owned()).await,
        (StatusCode::OK, "42".to_owned())
    );

    handle.stop();
    let report = handle.wait().await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.beans[0].id, BeanId(1));
    assert!(!report.forced);
}

/// An engine fed slowly through a feed (an item every 10 ms, as requests come to a quiet
/// server) waits for its input: its frontend counts that time as waiting, not as work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_fed_slowly_waits_for_input_and_is_not_busy() {
    const SENT: u64 = 30;
    let (tx, frontend) = feed::<u64>(4);
    let handle = Engine::builder(frontend)
        .transport(|x: u64| x + 1)
        .backend(|_: u64| {})
        .spawn()
        .expect("the engine starts");
    let stats = handle.stats_reader();
    for i in 0..SENT {
        // The pace of the source, not a synchronisation: the engine waits for each item.
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(i).await.expect("the engine takes items");
    }
    drop(tx);
    let report = tokio::task::spawn_blocking(move || handle.join())
        .await
        .expect("the joining task")
        .expect("the run");
    assert_eq!(report.processed(), SENT);
    let front = report
        .stage_of_kind(engine_core::StageKind::Frontend)
        .expect("a frontend");
    let elapsed = report.elapsed;
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(
        front.busy() < elapsed / 10,
        "the feed's frontend counts {:?} busy of {elapsed:?}",
        front.busy()
    );
    let live = stats.read();
    let thread = &live.stages[0].threads[0];
    assert!(
        thread.waiting_for_input >= Duration::from_millis(250),
        "{thread:?}"
    );
    assert!(thread.waiting_for_input > 10 * thread.busy, "{thread:?}");
}
