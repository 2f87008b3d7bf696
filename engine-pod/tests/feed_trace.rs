//! One trace per item through the async bridge: an item sent with `feed().call()` from inside
//! a handler's span carries that span's context, and the engine's span for it is its child.
//! This binary installs a trace hook (once: a hook is per process), which records what the
//! engine asks of it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use engine_core::trace::{self, BatchInfo, HookSpan, TraceHook, TraceParent};
use engine_pod::{Call, feed};
use engine_threads::Engine;
use tracing::Instrument;

/// The one trace id this test's contexts have.
const TRACE: u128 = 0x7e57;

/// A batch span the hook opened: its stage kind, its parents and its own context.
#[derive(Debug, Clone)]
struct Opened {
    kind: String,
    parents: Vec<TraceParent>,
    context: TraceParent,
}

static OPENED: Mutex<Vec<Opened>> = Mutex::new(Vec::new());

/// A hook whose current span is tracing's (by span id), which starts no trace of its own and
/// records each batch span it opens.
struct Recorder;

impl TraceHook for Recorder {
    fn current(&self) -> Option<TraceParent> {
        let id = tracing::Span::current().id()?;
        TraceParent::new(TRACE, id.into_u64(), TraceParent::SAMPLED)
    }

    fn items_per_trace(&self) -> u64 {
        0
    }

    fn produced(&self, _stage: &str) -> Option<TraceParent> {
        None
    }

    fn enter_batch(&self, batch: BatchInfo<'_>) -> Option<HookSpan> {
        // Batch span ids far from tracing's, which count up from 1.
        static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
        let context = TraceParent::new(
            batch.parents[0].trace_id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            TraceParent::SAMPLED,
        )?;
        OPENED.lock().unwrap().push(Opened {
            kind: batch.kind.to_owned(),
            parents: batch.parents.to_vec(),
            context,
        });
        Some(HookSpan {
            context,
            guard: Box::new(()),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_sent_from_a_handlers_span_is_traced_as_its_child_in_the_engine() {
    // Spans get ids from a subscriber; the registry gives them and records nothing else.
    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("the only subscriber of this test binary");
    trace::install(Recorder).expect("the only hook of this test binary");

    let (calls, frontend) = feed::<Call<u64, u64>>(8);
    let handle = Engine::builder(frontend)
        .transport(|call: Call<u64, u64>| call.map(|x| x * 2))
        .backend(|call: Call<u64, u64>| {
            call.answer();
        })
        .spawn()
        .expect("the engine starts");

    // An item sent outside any span carries nothing: the engine opens no span for it.
    assert_eq!(calls.call(1).await, Ok(2));
    let opened = OPENED.lock().unwrap().clone();
    assert!(opened.is_empty(), "{opened:?}");

    // The handler's span, as a web framework's request span would be.
    let handler = tracing::info_span!("handler");
    let caller = TraceParent::new(
        TRACE,
        handler.id().expect("a span with an id").into_u64(),
        TraceParent::SAMPLED,
    )
    .expect("a valid context");
    assert_eq!(calls.call(21).instrument(handler).await, Ok(42));

    drop(calls);
    let report = tokio::task::spawn_blocking(move || handle.join())
        .await
        .expect("the joining task")
        .expect("the run");
    assert_eq!(report.processed(), 2);
    let opened = OPENED.lock().unwrap().clone();
    // The transport's batch span is the child of the handler's span; the backend's, of the
    // transport's: one trace from the request to the end of the engine.
    let [transport, backend] = &opened[..] else {
        panic!("one batch span per consumer stage: {opened:?}");
    };
    assert_eq!(transport.kind, "transport");
    assert_eq!(transport.parents, [caller]);
    assert_eq!(backend.kind, "backend");
    assert_eq!(backend.parents, [transport.context]);
    assert_eq!(backend.context.trace_id(), TRACE);
}
