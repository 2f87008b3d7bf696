//! `inline_when_idle`: a call into an idle engine runs its stages on the caller's thread, and
//! every promise of the engine holds for it: answers, counts, failures and panics, the stop
//! policy, many callers at once, a graceful stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use engine_core::{ErrorPolicy, StageError, StageKind, try_map};
use engine_pod::{Call, CallError, Feed, feed};
use engine_threads::{Engine, EngineHandle};

const PATIENCE: Duration = Duration::from_secs(30);

/// The square of the item, the thread the transport ran on and the thread the backend ran on.
type Traced = (u64, ThreadId, ThreadId);

/// An engine with `inline_when_idle` whose transport squares (failing on 5, panicking on 3)
/// and whose backend answers, each saying which thread it ran on.
fn squaring(policy: ErrorPolicy) -> (Feed<Call<u64, Traced>>, EngineHandle) {
    let (calls, frontend) = feed::<Call<u64, Traced>>(16);
    let handle = Engine::builder(frontend)
        .transport(try_map(|call: Call<u64, Traced>| {
            call.try_map(|x| match x {
                3 => panic!("three panics"),
                5 => Err(StageError::msg("five fails")),
                x => Ok((x * x, thread::current().id())),
            })
        }))
        .backend(|call: Call<(u64, ThreadId), Traced>| {
            let (square, transported) = *call.item();
            call.reply((square, transported, thread::current().id()));
        })
        .transport_threads(2)
        .error_policy(policy)
        .inline_when_idle()
        .spawn()
        .expect("the engine starts");
    (calls, handle)
}

async fn join(handle: EngineHandle) -> Result<engine_core::RunReport, engine_threads::EngineError> {
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .expect("the joining task")
}

/// Callers that each call until a call fails, checking every answer; they count the answers
/// in `answered`.
fn call_until_refused(
    calls: &Feed<Call<u64, Traced>>,
    callers: u64,
    answered: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..callers)
        .map(|c| {
            let (calls, answered) = (calls.clone(), Arc::clone(answered));
            tokio::spawn(async move {
                for i in 0.. {
                    let x = 6 + c * 1_000_000 + i;
                    match calls.call(x).await {
                        Ok((square, _, _)) => {
                            assert_eq!(square, x * x);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

/// Waits until `answered` reaches `n`.
async fn until_answered(answered: &AtomicU64, n: u64) {
    while answered.load(Ordering::Relaxed) < n {
        tokio::task::yield_now().await;
    }
}

/// Waits for every caller to end.
async fn ends(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("each caller ends")
            .expect("a caller");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_into_an_idle_engine_runs_every_stage_on_the_callers_thread() {
    let (calls, handle) = squaring(ErrorPolicy::Skip);
    let deadline = Instant::now() + PATIENCE;
    let (mut sent, mut inline) = (0_u64, 0_u64);
    // The first calls may meet stage threads not yet asleep; once they sleep, a call runs on
    // the caller's thread. At least a hundred calls, each answered.
    while inline == 0 || sent < 100 {
        assert!(
            Instant::now() < deadline,
            "no call ran on its caller's thread"
        );
        let x = 10 + sent;
        let caller = thread::current().id();
        let (square, transported, backed) = calls.call(x).await.expect("an answer");
        assert_eq!(square, x * x);
        // Both stages idle: both ran on the caller's thread. (A backend thread still
        // finishing the previous call is not idle: the call then goes to it.)
        inline += u64::from(transported == caller && backed == caller);
        sent += 1;
    }
    drop(calls);
    let report = join(handle).await.expect("the run");
    assert_eq!(report.produced(), sent);
    assert_eq!(report.processed(), sent);
    assert!(inline > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_failing_or_panicking_inline_are_counted_and_their_callers_told() {
    let (calls, handle) = squaring(ErrorPolicy::Skip);
    for round in 0..20_u64 {
        for x in 0..8_u64 {
            let answer = calls.call(x).await;
            match x {
                3 | 5 => assert_eq!(answer, Err(CallError::Dropped), "round {round}, {x}"),
                x => assert_eq!(answer.expect("an answer").0, x * x),
            }
        }
    }
    drop(calls);
    let report = join(handle).await.expect("the run");
    assert_eq!(report.produced(), 160);
    assert_eq!(report.failed(), 40);
    assert_eq!(report.processed(), 120);
    let transport = report
        .stage_of_kind(StageKind::Transport)
        .expect("a transport");
    assert_eq!(transport.counts.failed, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_inline_under_the_stop_policy_stops_the_run() {
    let (calls, handle) = squaring(ErrorPolicy::Stop);
    for x in [1, 2, 4] {
        assert_eq!(calls.call(x).await.expect("an answer").0, x * x);
    }
    assert_eq!(calls.call(5).await, Err(CallError::Dropped));
    // The run stops: it ends without the senders' end, with the failure.
    let error = tokio::time::timeout(PATIENCE, join(handle))
        .await
        .expect("the run ends")
        .expect_err("the run failed");
    assert!(error.to_string().contains("five fails"), "{error}");
    // Nothing is taken any more.
    let after = calls.call(6).await;
    assert!(after.is_err(), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_at_once_each_get_their_answer_once() {
    const CALLERS: u64 = 16;
    const EACH: u64 = 500;
    let (calls, handle) = squaring(ErrorPolicy::Skip);
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut inline = 0;
                for i in 0..EACH {
                    // Past 5, so that every item succeeds.
                    let x = 6 + c * EACH + i;
                    let caller = thread::current().id();
                    let (square, transported, _) = calls.call(x).await.expect("an answer");
                    assert_eq!(square, x * x);
                    inline += u64::from(transported == caller);
                }
                inline
            })
        })
        .collect();
    let mut inline = 0;
    for task in tasks {
        inline += task.await.expect("a caller");
    }
    drop(calls);
    let report = join(handle).await.expect("the run");
    assert_eq!(report.produced(), CALLERS * EACH);
    assert_eq!(report.processed(), CALLERS * EACH);
    println!(
        "{inline} of {} calls ran on their caller's thread",
        CALLERS * EACH
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_drains_what_was_taken_and_answers_every_caller() {
    let (calls, handle) = squaring(ErrorPolicy::Skip);
    let answered = Arc::new(AtomicU64::new(0));
    let tasks = call_until_refused(&calls, 4, &answered);
    // Stop once the callers are well under way.
    until_answered(&answered, 2_000).await;
    handle.stop();
    let report = tokio::time::timeout(PATIENCE, join(handle))
        .await
        .expect("the run ends")
        .expect("a graceful stop is a success");
    // The frontend's end leaves the feed without a taker: every caller hears of it.
    ends(tasks).await;
    drop(calls);
    assert_eq!(report.processed(), answered.load(Ordering::Relaxed));
    assert_eq!(report.produced(), report.processed());
    assert_eq!(
        report
            .stage_of_kind(StageKind::Backend)
            .expect("a backend")
            .counts
            .dropped,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ordered_mode_calls_run_on_the_stage_threads() {
    let (calls, frontend) = feed::<Call<u64, (u64, ThreadId)>>(16);
    let handle = Engine::builder(frontend)
        .transport(|call: Call<u64, (u64, ThreadId)>| call.map(|x| (x + 1, thread::current().id())))
        .backend(|call: Call<(u64, ThreadId), (u64, ThreadId)>| {
            call.answer();
        })
        .ordered(true)
        .inline_when_idle()
        .spawn()
        .expect("the engine starts");
    for x in 0..200 {
        let caller = thread::current().id();
        let (y, transported) = calls.call(x).await.expect("an answer");
        assert_eq!(y, x + 1);
        assert_ne!(transported, caller, "ordered mode ran a call inline");
    }
    drop(calls);
    assert_eq!(join(handle).await.expect("the run").processed(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_now_amid_calls_inline_leaves_every_count_accounted_for() {
    let (calls, handle) = squaring(ErrorPolicy::Skip);
    let answered = Arc::new(AtomicU64::new(0));
    let tasks = call_until_refused(&calls, 4, &answered);
    until_answered(&answered, 2_000).await;
    handle.stop_now();
    let report = tokio::time::timeout(PATIENCE, join(handle))
        .await
        .expect("the run ends")
        .expect("a forced stop ends the run");
    ends(tasks).await;
    drop(calls);
    // Every item produced is processed, failed or dropped, stage by stage.
    report.check().expect("the counts add up");
    assert_eq!(report.processed(), answered.load(Ordering::Relaxed));
}
